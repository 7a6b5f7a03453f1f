"""Training a candidate: what it logs, what it registers, and what the CLI prints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import IPython.lib.pretty
import mlflow
import mlflow.models
import mlflow.pyfunc
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from support import ROOT, run_cli

from churnlab import cli, data, schema, store, train
from churnlab.errors import InputError
from churnlab.tags import GATE_VERDICT as GATE_TAG
from churnlab.tags import SMOKE_VERDICT as SMOKE_TAG

METRICS = {"accuracy", "roc_auc", "f1", "precision", "recall", "log_loss", "business_value"}
KINDS = {"training", "evaluation", "reference"}
CSV_ROWS = 1500


def published_csv(path: Path, rows: int, seed: int) -> Path:
    """A CSV in the real published layout: UTF-8 BOM, CRLF, " " TotalCharges for tenure 0."""
    frame = data.generate(rows, seed=seed)
    frame.loc[[5, 50, 500], ["tenure", "TotalCharges"]] = [0, 0.0]
    text = data.to_csv_text(frame).replace("\n", "\r\n")
    assert text.count(", ,") >= 3
    path.write_bytes(("\ufeff" + text).encode("utf-8"))
    return path


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment without any tracking-server settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.pop("CHURNLAB_HOME", None)
    return {**env, "CHURNLAB_ACTOR": "pytest", **extra}


@pytest.fixture(scope="module")
def csv_trained(tmp_path_factory):
    """`churnlab train --data <Telco CSV>`, run once from an unrelated folder with
    CHURNLAB_HOME pointing at a folder that does not exist yet (slow: one real training in a
    CLI process, 10-30 s)."""
    base = tmp_path_factory.mktemp("csv_trained")
    csv = published_csv(base / "telco.csv", CSV_ROWS, seed=11)
    cwd = base / "cwd"
    cwd.mkdir()
    home = base / "moved" / "home"
    exe = Path(sys.executable).with_name("churnlab")
    proc = subprocess.run(
        [str(exe), "train", "--data", str(csv), "--seed", "7"],
        capture_output=True,
        text=True,
        # a hang guard: the training takes 10-40 s
        timeout=600,
        cwd=cwd,
        env=cli_env(CHURNLAB_HOME=str(home)),
    )
    return {"proc": proc, "home": home, "cwd": cwd, "csv": csv}


@pytest.fixture
def csv_client(csv_trained) -> MlflowClient:
    assert csv_trained["proc"].returncode == 0, csv_trained["proc"].stderr
    uri = f"sqlite:///{csv_trained['home'] / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture
def csv_summary(csv_trained) -> dict:
    proc = csv_trained["proc"]
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def csv_registry_uri(csv_trained, monkeypatch):
    """Point this process's MLflow at the CLI-trained store (for models:/ URIs)."""
    monkeypatch.setenv("CHURNLAB_HOME", str(csv_trained["home"]))
    return store.configure()


# ---------------------------------------------------------------- the CLI run


def test_cli_train_prints_one_json_line(csv_trained):
    proc = csv_trained["proc"]
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    summary = json.loads(lines[0])
    assert re.fullmatch(r"[0-9a-f]{32}", summary["run_id"])
    assert summary["model_version"] == 1
    assert summary["model_name"] == "churn-model"
    assert summary["estimator"] == "logreg"
    assert set(summary["metrics"]) == METRICS


def test_cli_train_output_is_quiet(csv_trained):
    proc = csv_trained["proc"]
    assert proc.stderr == "", f"stderr not empty: {proc.stderr[:800]}"
    for noise in ("INFO", "WARNING", "Warning", "warn", "%|", "it/s", "View run", "Downloading"):
        assert noise not in proc.stdout, noise


def test_cli_train_keeps_the_store_in_churnlab_home(csv_trained, csv_client):
    assert sorted(p.name for p in csv_trained["cwd"].iterdir()) == []
    home = csv_trained["home"]
    assert (home / "mlflow.db").is_file()
    assert (home / "artifacts").is_dir()
    assert csv_client.get_registered_model("churn-model").name == "churn-model"


def test_cli_train_with_a_telco_csv_uses_all_its_rows(csv_client, csv_summary):
    run = csv_client.get_run(csv_summary["run_id"])
    assert run.data.params["rows"] == str(CSV_ROWS)
    assert run.data.params["estimator"] == "logreg"
    assert run.data.params["seed"] == "7"
    assert run.data.tags["churnlab.data_source"] == "telco.csv"
    profiles = [json.loads(d.dataset.profile) for d in run.inputs.dataset_inputs]
    assert sum(p["num_rows"] for p in profiles) == CSV_ROWS


def test_registered_version_has_the_schema_signature_and_an_input_example(
    csv_registry_uri, csv_summary
):
    uri = f"models:/churn-model/{csv_summary['model_version']}"
    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs == schema.input_schema()
    assert info.signature.inputs.input_names() == list(schema.FEATURE_NAMES)
    example = mlflow.models.Model.load(uri).load_input_example()
    assert list(example.columns) == list(schema.FEATURE_NAMES)
    assert len(example) >= 1
    model = mlflow.pyfunc.load_model(uri)
    proba = np.asarray(model.predict(example))
    assert proba.shape == (len(example), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_registered_version_requirements_hold_no_test_tools(csv_registry_uri, csv_summary):
    path = mlflow.pyfunc.get_model_dependencies(
        f"models:/churn-model/{csv_summary['model_version']}"
    )
    lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    names = {re.split(r"[=<>!~ \[]", ln, maxsplit=1)[0].lower() for ln in lines}
    assert {"mlflow", "scikit-learn", "pandas", "numpy"} <= names
    assert not names & {"pytest", "ruff", "httpx"}, lines
    from importlib.metadata import version

    assert f"scikit-learn=={version('scikit-learn')}" in lines


def test_run_has_roc_and_confusion_plots(csv_client, csv_summary, tmp_path):
    run_id = csv_summary["run_id"]
    plots = {a.path for a in csv_client.list_artifacts(run_id, "plots")}
    assert {"plots/roc_curve.png", "plots/confusion_matrix.png"} <= plots
    for name in plots:
        local = csv_client.download_artifacts(run_id, name, str(tmp_path))
        assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_is_tagged_with_the_git_commit(csv_client, csv_summary):
    tags = csv_client.get_run(csv_summary["run_id"]).data.tags
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode == 0:
        expected = head.stdout.strip()
        assert re.fullmatch(rf"{expected}(\+dirty)?", tags["mlflow.source.git.commit"])
    else:  # not a git checkout (an unpacked archive): recorded as unknown, not invented
        assert tags["mlflow.source.git.commit"] == "unknown"
    assert tags["git_commit"] == tags["mlflow.source.git.commit"]


def test_run_inputs_are_the_snapshots_with_their_digests(csv_client, csv_summary, tmp_path):
    run = csv_client.get_run(csv_summary["run_id"])
    mv = csv_client.get_model_version("churn-model", str(csv_summary["model_version"]))
    inputs = {}
    for item in run.inputs.dataset_inputs:
        context = {t.key: t.value for t in item.tags}["mlflow.data.context"]
        inputs[context] = item.dataset
    assert set(inputs) == KINDS
    for kind, dataset in inputs.items():
        digest = mv.tags[f"churnlab.data.{kind}"]
        assert dataset.digest == digest
        assert dataset.name == f"{kind}-{digest}"
        # the artifact behind the input really has that digest
        local = csv_client.download_artifacts(
            run.info.run_id, f"data/{kind}-{digest}.csv", str(tmp_path)
        )
        assert data.digest_of(data.load_csv(local)) == digest


def test_registered_version_starts_pending(csv_client, csv_summary):
    mv = csv_client.get_model_version("churn-model", str(csv_summary["model_version"]))
    assert mv.tags[GATE_TAG] == "pending"
    assert mv.tags[SMOKE_TAG] == "none"
    assert mv.tags["churnlab.estimator"] == "logreg"
    assert mv.aliases == [] and mv.current_stage == "None"
    assert mv.run_id == csv_summary["run_id"]


# ---------------------------------------------------------------- in-process training


def test_train_candidate_returns_what_it_registered(trained_home):
    """Trains one small candidate into a copy of the template registry (a few seconds)."""
    result = train.train_candidate(estimator="logreg", rows=800, seed=5, description="note")
    assert isinstance(result, train.TrainResult)
    assert result.model_name == "churn-model"
    assert result.model_version == 3  # after the template's v1 and v2
    assert result.estimator == "logreg"
    assert set(result.metrics) == METRICS
    for name in ("accuracy", "roc_auc", "f1", "precision", "recall"):
        assert 0.0 <= result.metrics[name] <= 1.0, name
    assert result.metrics["log_loss"] > 0
    assert np.isfinite(result.metrics["business_value"])
    assert result.metrics["roc_auc"] > 0.7  # it learned the churn effects
    assert set(result.snapshots) == KINDS
    assert sum(s["rows"] for s in result.snapshots.values()) == 800
    # a notebook cell ending with the call shows one line (IPython's pretty printer)
    accuracy = result.metrics["accuracy"]
    assert result.line().startswith(f"churn-model v3: logreg, accuracy {accuracy:.4f}, roc_auc ")
    assert IPython.lib.pretty.pretty(result) == result.line()

    client = MlflowClient()
    mv = client.get_model_version("churn-model", "3")
    assert mv.run_id == result.run_id
    assert mv.description == "note"
    for kind, snap in result.snapshots.items():
        assert mv.tags[f"churnlab.data.{kind}"] == snap["digest"]
        assert snap["file"] == f"{kind}-{snap['digest']}.csv"
    run = client.get_run(result.run_id)
    for name, value in result.metrics.items():
        assert run.data.metrics[name] == pytest.approx(value)

    line = train.result_json(result)
    assert "\n" not in line
    assert json.loads(line) == json.loads(json.dumps(result.summary()))


@pytest.mark.parametrize(
    ("estimator", "classifier"),
    [
        ("logreg", "LogisticRegression"),
        ("forest", "RandomForestClassifier"),
        ("gbm", "HistGradientBoostingClassifier"),
    ],
)
def test_build_pipeline_preprocesses_every_model_feature(estimator, classifier):
    pipeline = train.build_pipeline(estimator, {"random_state": 3} if estimator != "logreg" else {})
    assert type(pipeline.named_steps["classifier"]).__name__ == classifier
    pre = pipeline.named_steps["preprocess"]
    used = [c for _, _, cols in pre.transformers for c in cols]
    assert sorted(used) == sorted(f.name for f in schema.MODEL_FEATURES)
    assert "gender" not in used  # accepted as input, never used by the model


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--rows", "0"], "n must be a positive number"), (["--rows", "12"], "at least 40 rows")],
)
def test_too_little_data_is_refused_before_the_store_is_touched(
    isolated_home, capsys, argv, message
):
    assert cli.main(["train", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (isolated_home / "mlflow.db").exists()


def test_unknown_estimator_is_refused_before_anything_is_written(isolated_home):
    with pytest.raises(InputError, match=r"estimator must be one of \['logreg', 'forest', 'gbm'\]"):
        train.train_candidate(estimator="svm", rows=200)
    assert not (isolated_home / "mlflow.db").exists()


# ---------------------------------------------------------------- bad input


def registry_counts(client: MlflowClient) -> tuple[int, int, int]:
    models = client.search_registered_models()
    versions = client.search_model_versions()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments) if experiments else []
    return len(models), len(versions), len(runs)


def _non_numeric(text: str) -> str:
    lines = text.splitlines()
    cells = lines[2].split(",")
    cells[schema.CSV_COLUMNS.index("tenure")] = "twelve"
    lines[2] = ",".join(cells)
    return "\n".join(lines) + "\n"


BAD_FILES = {
    "missing-column.csv": lambda text: text.replace(",Contract,", ",Contrakt,", 1),
    "vocabulary.csv": lambda text: text.replace("Month-to-month", "monthly", 3),
    "non-numeric.csv": _non_numeric,
    "truncated.csv": lambda text: text[: len(text) * 2 // 3],
    "empty.csv": lambda text: "",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_cli_train_refuses_a_bad_csv_without_touching_the_registry(
    name, trained_home, tmp_path, capsys
):
    good = data.to_csv_text(data.generate(300, seed=12))
    path = tmp_path / name
    path.write_text(BAD_FILES[name](good), encoding="utf-8")
    client = MlflowClient()
    before = registry_counts(client)
    location = client.get_experiment_by_name("churnlab").artifact_location
    root = Path(location.removeprefix("file://"))
    artifacts = sorted(root.rglob("*"))
    assert artifacts, "the template's runs have artifacts"

    code = cli.main(["train", "--data", str(path)])

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("churnlab: ")
    assert name in err  # names the file
    assert registry_counts(client) == before
    assert sorted(root.rglob("*")) == artifacts


def test_cli_train_bad_csv_exits_2_with_one_line_and_creates_no_store(tmp_path, clean_copy):
    """The real console script on a CSV with an unknown Contract value (one CLI process)."""
    frame = data.generate(300, seed=12)
    frame["Contract"] = frame["Contract"].astype(object)
    frame.loc[7, "Contract"] = "Monthly"
    path = tmp_path / "bad.csv"
    path.write_text(data.to_csv_text(frame), encoding="utf-8")
    home = tmp_path / "fresh-home"

    proc = run_cli("train", "--data", str(path), cwd=clean_copy, env={"CHURNLAB_HOME": str(home)})

    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Contract" in lines[0] and "Monthly" in lines[0]
    assert not home.exists(), "a refused CSV must not create the registry store"
    assert list(clean_copy.iterdir()) == []
