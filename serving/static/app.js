"use strict";
// The page: health of this server, and a form built from /metadata's feature schema.

const $ = (id) => document.getElementById(id);

async function call(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  return { ok: response.ok, status: response.status, body };
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

async function checkHealth() {
  const status = $("health-status");
  status.textContent = "checking…";
  status.className = "";
  try {
    const { ok, status: code, body } = await call("/health");
    if (!ok || !body) throw new Error(`HTTP ${code}`);
    status.textContent = body.status;
    status.className = body.status === "ok" ? "good" : "bad";
    $("stage").textContent = body.stage;
    $("model-name").textContent = body.model_name;
    $("version").textContent = `v${body.model_version}`;
    $("run-id").textContent = body.run_id;
    $("checked-at").textContent = `checked ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    status.textContent = `unreachable (${err.message})`;
    status.className = "bad";
  }
}

function field(feature, example) {
  const wrap = document.createElement("label");
  wrap.className = "field";
  const name = document.createElement("span");
  name.textContent = feature.name;
  if (feature.description) wrap.title = feature.description;
  let input;
  if (Array.isArray(feature.values)) {
    input = document.createElement("select");
    for (const value of feature.values) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = value;
      input.append(option);
    }
  } else {
    input = document.createElement("input");
    input.type = "number";
    input.required = true;
    input.step = feature.type === "long" ? "1" : "any";
    if (feature.minimum !== undefined) input.min = String(feature.minimum);
    if (feature.maximum !== undefined) input.max = String(feature.maximum);
  }
  input.id = `f-${feature.name}`;
  input.name = feature.name;
  input.dataset.type = feature.type;
  if (example && feature.name in example) input.value = String(example[feature.name]);
  wrap.append(name, input);
  return wrap;
}

function readRecord() {
  const record = {};
  for (const el of $("fields").querySelectorAll("select, input")) {
    if (el.dataset.type === "string") record[el.name] = el.value;
    else record[el.name] = el.value === "" ? null : Number(el.value); // the server names bad ones
  }
  return record;
}

async function loadMetadata() {
  const { ok, status, body } = await call("/metadata");
  if (!ok || !body) {
    $("fields").textContent = `could not load /metadata (HTTP ${status})`;
    return;
  }
  const fields = $("fields");
  fields.replaceChildren(...body.schema.map((f) => field(f, body.example)));
  $("verdicts").textContent = `gate ${body.gate.verdict}, smoke ${body.smoke.verdict}`;
  $("predict-button").disabled = false;
}

async function predict(event) {
  event.preventDefault();
  showError("");
  $("result").hidden = true;
  const button = $("predict-button");
  button.disabled = true;
  try {
    const { ok, status, body } = await call("/predict", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ records: [readRecord()] }),
    });
    if (!ok) {
      showError(`HTTP ${status}: ${body && body.detail ? body.detail : "no answer"}`);
      return;
    }
    const p = body.predictions[0];
    $("result-probability").textContent = p.churn_probability.toFixed(4);
    $("result-percent").textContent = `${(100 * p.churn_probability).toFixed(1)}%`;
    $("result-churn").textContent = p.churn ? "yes" : "no";
    $("result-model").textContent = `${body.model_name} v${body.model_version} (${body.stage})`;
    $("result").hidden = false;
  } catch (err) {
    showError(`the server did not answer (${err.message})`);
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("health-button").addEventListener("click", checkHealth);
  $("predict-form").addEventListener("submit", predict);
  checkHealth();
  loadMetadata();
});
