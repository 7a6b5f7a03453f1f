"""MLflow's scoring protocol on the churnlab backend: ``POST /invocations``, ``/ping``, ``/version``.

In-process (FastAPI's TestClient): every request format gives ``/predict``'s probabilities
in MLflow's answer shape, and bad input is refused with the field named. As real processes
(slow): MLflow's own client (``ScoringServerClient``) talks to a running churnlab backend,
and the same requests sent to ``mlflow models serve --env-manager local`` and to churnlab,
serving the same registered version, get the same answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import requests
from support import running_backend, staged_copy

from churnlab import schema, store
from churnlab.backend import free_port
from serving import contract
from serving.app import Settings, create_app

pytestmark = pytest.mark.xdist_group("invocations")  # its module fixtures, one worker

MAX_RECORDS = 50
MAX_BODY = 64 * 1024
JSON = {"Content-Type": "application/json"}
CSV = {"Content-Type": "text/csv"}
GOOD = {name: schema.EXAMPLE_RECORD[name] for name in schema.FEATURE_NAMES}
BIN = Path(sys.executable).parent


def customers(home: Path, rows: int) -> list[dict]:
    """``rows`` customers of v1's evaluation snapshot, as records (customerID included)."""
    from churnlab.registry import Registry

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHURNLAB_HOME", str(home))
        store.configure()
        frame = Registry().snapshot(1, "evaluation").head(rows)
    store.configure()
    return json.loads(frame[[schema.ID_COLUMN, *schema.FEATURE_NAMES]].to_json(orient="records"))


def bodies(records: list[dict]) -> dict[str, tuple[dict[str, str], bytes]]:
    """The same customers in every format MLflow's scoring server reads: name -> (headers, body)."""
    names = list(schema.FEATURE_NAMES)
    rows = [{n: r[n] for n in names} for r in records]
    columns = {n: [r[n] for r in rows] for n in names}
    frame = pd.DataFrame(rows, columns=names)

    def as_json(payload) -> tuple[dict[str, str], bytes]:
        return JSON, json.dumps(payload).encode()

    return {
        "dataframe_split": as_json(
            {"dataframe_split": {"columns": names, "data": [[r[n] for n in names] for r in rows]}}
        ),
        "dataframe_split with index": as_json(
            {"dataframe_split": json.loads(frame.to_json(orient="split"))}
        ),
        "dataframe_records": as_json({"dataframe_records": rows}),
        "inputs as records": as_json({"inputs": rows}),
        "inputs as columns": as_json({"inputs": columns}),
        "instances as records": as_json({"instances": rows}),
        "instances as columns": as_json({"instances": columns}),
        "text/csv": (CSV, frame.to_csv(index=False).encode()),
        "text/csv with pandas' index": (CSV, frame.to_csv().encode()),
    }


def churn(answer: dict) -> list[float]:
    """P(churns) of each customer in an MLflow-shaped answer, checking the shape."""
    assert list(answer) == ["predictions"], answer
    assert all(len(row) == 2 for row in answer["predictions"])
    assert all(abs(p0 + p1 - 1.0) <= 1e-12 for p0, p1 in answer["predictions"])
    return [p1 for _, p1 in answer["predictions"]]


# ---------------------------------------------------------------------------- in-process
@pytest.fixture(scope="module")
def served(template_home, tmp_path_factory):
    """A TestClient on an app serving @staging = v1 of a private copy of the template."""
    with warnings.catch_warnings():  # starlette's note about its httpx client
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    home = staged_copy(template_home, tmp_path_factory.mktemp("inv-home"), "invocations tests")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHURNLAB_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        store.configure()
        app = create_app(
            Settings(stage="staging", max_records=MAX_RECORDS, max_body_bytes=MAX_BODY)
        )
        with TestClient(app) as client:
            yield client, home


@pytest.fixture
def client(served):
    return served[0]


def invoke(client, payload, headers=JSON):
    body = payload if isinstance(payload, bytes | str) else json.dumps(payload)
    return client.post("/invocations", content=body, headers=headers)


def test_every_format_scores_as_predict_does_in_mlflow_shape(served):
    client, home = served
    records = customers(home, 30)
    expected = [
        p["churn_probability"]
        for p in client.post("/predict", json={"records": records}).json()["predictions"]
    ]
    for name, (headers, body) in bodies(records).items():
        answer = client.post("/invocations", content=body, headers=headers)
        assert answer.status_code == 200, (name, answer.text)
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["x-model-version"] == "1"
        got = churn(answer.json())
        assert got == pytest.approx(expected, abs=1e-12), name


def test_a_split_scores_as_predict_whether_few_or_many_rows(served):
    """A split of a few rows reaches the contract's fast path as records, a longer one as
    columns: both answer what ``/predict`` answers for the same customers, as does a value
    only the contract of record accepts (tenure sent as 3.0)."""
    client, home = served
    few = contract.FEW_RECORDS
    records = customers(home, few + 1)
    records[0] = {**records[0], schema.ID_COLUMN: None}
    names = [schema.ID_COLUMN, *schema.FEATURE_NAMES]

    def predicted(rows: list[dict]) -> list[float]:
        answer = client.post("/predict", json={"records": rows}).json()
        return [p["churn_probability"] for p in answer["predictions"]]

    def split(rows: list[dict]) -> dict:
        return {
            "dataframe_split": {"columns": names, "data": [[r[n] for n in names] for r in rows]}
        }

    for size in (1, 2, few, few + 1):
        answer = invoke(client, split(records[:size]))
        assert answer.status_code == 200, (size, answer.text)
        assert churn(answer.json()) == predicted(records[:size]), size
    lax = [{**r, "tenure": float(r["tenure"])} for r in records[:2]]
    assert contract.Contract().decode_fast(json.dumps({"records": lax}).encode()) is None
    assert churn(invoke(client, split(lax)).json()) == predicted(records[:2])


def test_one_customer_as_an_object_params_and_charset_are_accepted(client):
    single = invoke(client, {"inputs": GOOD}).json()
    listed = invoke(client, {"instances": [GOOD]}).json()
    assert single == listed and len(single["predictions"]) == 1
    assert invoke(client, {"dataframe_records": [GOOD], "params": {"x": 1}}).json() == listed
    with_id = {"dataframe_records": [{**GOOD, "customerID": "7590-VHVEG"}]}
    headers = {"Content-Type": "application/json; charset=utf-8"}
    assert invoke(client, with_id, headers).json() == listed


def test_ping_and_version_answer_as_mlflow_models_serve(client):
    from mlflow.version import VERSION

    ping = client.get("/ping")
    assert (ping.status_code, ping.content) == (200, b"\n")
    assert ping.headers["content-type"] == "application/json"
    version = client.get("/version")
    assert (version.status_code, version.text) == (200, VERSION)
    assert version.headers["content-type"] == "application/json"


ROW = [GOOD[n] for n in schema.FEATURE_NAMES]
NAMES = list(schema.FEATURE_NAMES)
BAD_INPUT = {
    "value outside the vocabulary": (
        {"dataframe_records": [GOOD, {**GOOD, "Contract": "monthly"}]},
        422,
        "dataframe_records[1].Contract",
    ),
    "missing column": (
        {"dataframe_records": [{k: v for k, v in GOOD.items() if k != "tenure"}]},
        422,
        "dataframe_records[0].tenure",
    ),
    "unknown column": ({"instances": [{**GOOD, "foo": 1}]}, 422, "instances[0].foo"),
    "text for a number": ({"inputs": [{**GOOD, "tenure": "3"}]}, 422, "inputs[0].tenure"),
    "out of range, as columns": (
        {"inputs": {**{n: [GOOD[n]] * 2 for n in NAMES}, "tenure": [1, -3]}},
        422,
        "inputs.tenure[1]",
    ),
    "one object, null number": (
        {"inputs": {**GOOD, "TotalCharges": None}},
        422,
        "inputs.TotalCharges",
    ),
    "split: bad value": (
        {"dataframe_split": {"columns": NAMES, "data": [ROW, [*ROW[:-1], -5.0]]}},
        422,
        "dataframe_split.data[1].TotalCharges",
    ),
    "split: short row": (
        {"dataframe_split": {"columns": NAMES, "data": [ROW, ROW[:-1]]}},
        422,
        "dataframe_split.data[1]",
    ),
    "split: no columns": ({"dataframe_split": {"data": [ROW]}}, 422, "dataframe_split.columns"),
    "split: a column missing": (
        {"dataframe_split": {"columns": NAMES[1:], "data": [ROW[1:]]}},
        422,
        "dataframe_split.columns.gender",
    ),
    "split: index of another length": (
        {"dataframe_split": {"columns": NAMES, "data": [ROW], "index": [0, 1]}},
        422,
        "dataframe_split.index",
    ),
    "empty batch": ({"dataframe_records": []}, 422, "dataframe_records"),
    "too many customers": (
        {"dataframe_records": [GOOD] * (MAX_RECORDS + 1)},
        422,
        "dataframe_records",
    ),
    "two formats": ({"dataframe_records": [GOOD], "inputs": [GOOD]}, 422, "body"),
    "no format": ({"records": [GOOD]}, 422, "body"),
    "params not an object": ({"dataframe_records": [GOOD], "params": 3}, 422, "params"),
    "malformed JSON": (b'{"dataframe_records": [', 400, "body"),
    "csv: bad value": (
        ",".join(NAMES) + "\n" + ",".join(map(str, ROW)).replace("Month-to-month", "x") + "\n",
        422,
        "csv[0].Contract",
    ),
    "csv: text for a number": (
        ",".join(NAMES) + "\n" + ",".join(map(str, ROW)).replace("29.85", "lots", 1) + "\n",
        422,
        "csv[0].MonthlyCharges",
    ),
    "csv: a column missing": (
        ",".join(NAMES[1:]) + "\n" + ",".join(map(str, ROW[1:])) + "\n",
        422,
        "csv.columns.gender",
    ),
    "csv: empty": ("", 400, "body"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_refused_naming_the_field(client, case):
    payload, status, field = BAD_INPUT[case]
    headers = CSV if case.startswith("csv") else JSON
    answer = invoke(client, payload, headers)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error_code"] == "BAD_REQUEST"
    assert body["message"].startswith(f"{field}: "), body["message"]
    assert body["errors"][0]["field"] == field


def test_content_type_and_size_are_checked_as_mlflow_and_predict_do(client):
    body = json.dumps({"dataframe_records": [GOOD]})
    for ctype in ("text/plain", "application/json; charset=latin-1", "application/json; x=1"):
        answer = client.post("/invocations", content=body, headers={"Content-Type": ctype})
        assert answer.status_code == 415, ctype
        assert answer.json()["error_code"] == "BAD_REQUEST"
    assert client.post("/invocations", content=body).status_code == 415  # no Content-Type
    huge = json.dumps({"dataframe_records": [GOOD] * 200})
    assert len(huge) > MAX_BODY
    answer = invoke(client, huge)
    assert answer.status_code == 413 and "limit" in answer.json()["message"]


def test_openapi_documents_the_routes_with_the_contract_limits(client):
    spec = client.get("/openapi.json").json()
    assert {"/invocations", "/ping", "/version"} <= set(spec["paths"])
    content = spec["paths"]["/invocations"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "text/csv"}
    formats = {s["title"]: s["properties"] for s in content["application/json"]["schema"]["anyOf"]}
    assert set(formats) == {"dataframe_split", "dataframe_records", "inputs", "instances"}
    assert formats["dataframe_records"]["dataframe_records"]["maxItems"] == MAX_RECORDS
    for name, example in content["application/json"]["examples"].items():
        assert invoke(client, example["value"]).status_code == 200, name
    assert invoke(client, content["text/csv"]["example"], CSV).status_code == 200


# ---------------------------------------------------------------------------- real processes
def _prove_onnx(registry) -> None:
    """The gate's own ONNX parity check on v1, recorded: the backend then serves the graph."""
    from churnlab import gate
    from churnlab.tags import ONNX_PARITY

    check = gate.check_onnx_parity(
        registry, 1, registry.load_model(1), registry.snapshot(1), gate.Policy.load()
    )
    assert check.status == "pass", check
    registry.client.set_model_version_tag(registry.model_name, "1", ONNX_PARITY, "pass")


@pytest.fixture(scope="module")
def onnx_home(template_home, tmp_path_factory):
    """A copy of the template with v1 staged and its ONNX graph proven."""
    folder = tmp_path_factory.mktemp("inv-onnx-home")
    return staged_copy(template_home, folder, "invocations side by side", prepare=_prove_onnx)


@pytest.fixture(scope="module")
def churnlab_backend(onnx_home):
    # start-up takes 5-20 s; 120 s means it hangs
    with running_backend("staging", env={"CHURNLAB_HOME": str(onnx_home)}, timeout=120) as b:
        assert b.health()["scorer"] == "onnx"
        yield b


@contextlib.contextmanager
# it starts in 10-30 s; 180 s means it hangs
def mlflow_models_serve(home: Path, timeout: float = 180.0):
    """``mlflow models serve --env-manager local`` on 127.0.0.1 for ``@staging`` of ``home``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # it runs `uvicorn` from PATH
    log = home / "mlflow-models-serve.log"
    command = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/churn-model@staging"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow models serve exited:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow models serve not ready in {timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                # it stops about 1 s after SIGTERM
                proc.wait(timeout=15)
                break


@pytest.mark.slow
def test_mlflow_s_own_client_talks_to_a_running_churnlab_backend(churnlab_backend, onnx_home):
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient
    from mlflow.version import VERSION

    records = customers(onnx_home, 200)
    frame = pd.DataFrame(records)[list(schema.FEATURE_NAMES)]
    expected = [p["churn_probability"] for p in churnlab_backend.predict(records)["predictions"]]

    client = ScoringServerClient("127.0.0.1", churnlab_backend.port)
    # already up: it answers at once
    client.wait_server_ready(timeout=30)
    assert client.get_version() == VERSION
    answer = client.invoke(frame)  # dataframe_split, as MLflow's client sends a DataFrame
    predictions = answer.get_predictions()  # MLflow's own reading of the answer
    assert predictions.shape == (len(records), 2)
    assert predictions[1].tolist() == pytest.approx(expected, abs=1e-12)
    as_inputs = client.invoke(frame.to_dict(orient="records")).get_predictions()  # {"inputs"}
    assert as_inputs[1].tolist() == pytest.approx(expected, abs=1e-12)
    with pytest.raises(Exception, match=r"error code 422.*dataframe_split\.data\[1\]\.Contract"):
        client.invoke(frame.head(2).assign(Contract=["Two year", "monthly"]))


@pytest.mark.slow
def test_side_by_side_with_mlflow_models_serve_on_the_same_version(
    churnlab_backend, onnx_home, capsys
):
    records = customers(onnx_home, 500)
    worst: dict[str, float] = {}
    with mlflow_models_serve(onnx_home) as theirs:
        from mlflow.version import VERSION

        for path in ("/ping", "/version"):
            a = requests.get(f"{churnlab_backend.url}{path}", timeout=10)
            b = requests.get(f"{theirs}{path}", timeout=10)
            assert (a.status_code, a.content) == (b.status_code, b.content), path
        assert b.text == VERSION
        for name, (headers, body) in bodies(records).items():
            ours = requests.post(f"{churnlab_backend.url}/invocations", data=body, headers=headers)
            mlflow = requests.post(f"{theirs}/invocations", data=body, headers=headers)
            assert (ours.status_code, mlflow.status_code) == (200, 200), (name, mlflow.text[:300])
            a, b = ours.json(), mlflow.json()
            assert list(a) == list(b) == ["predictions"]
            assert len(a["predictions"]) == len(b["predictions"]) == len(records)
            worst[name] = max(
                abs(x - y)
                for row_a, row_b in zip(a["predictions"], b["predictions"], strict=True)
                for x, y in zip(row_a, row_b, strict=True)
            )
        # both refuse a customer without a column (churnlab names it; see serving/README.md)
        missing = {"dataframe_records": [{k: v for k, v in GOOD.items() if k != "tenure"}]}
        for url in (churnlab_backend.url, theirs):
            answer = requests.post(f"{url}/invocations", json=missing, timeout=30)
            assert 400 <= answer.status_code < 500 and "error_code" in answer.json()
    with capsys.disabled():
        print(f"\n[invocations] max |churnlab - mlflow models serve| per format: {worst}")
    assert max(worst.values()) <= 1e-9, worst
