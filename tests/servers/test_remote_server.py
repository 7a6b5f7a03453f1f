"""The whole CLI flow against a real `mlflow server` on loopback, checked with a plain client.

The server (its own sqlite backend and proxied artifact folder) is started once for this
module: starting it takes a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from support import sqlite_server

from churnlab.tags import GATE_VERDICT as GATE_TAG

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("remote-server")]

TOKEN = "remote-test-token-5f4e3d2c"
FAST_GATE = ("--set", "latency_samples=20", "--set", "latency_p95_ms=10000")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real tracking server on 127.0.0.1 with `--serve-artifacts` (slow: ~5-20 s to start)."""
    with sqlite_server(tmp_path_factory.mktemp("mlflow-server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def flow(server, tmp_path_factory):
    """train -> gate -> stage -> promote --override -> status -> history, each a real CLI
    process against the server (slow: 30-90 s in all)."""
    base = tmp_path_factory.mktemp("remote-flow")
    home, cwd = base / "local-home", base / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_TRACKING_URI=server.url,
        MLFLOW_TRACKING_TOKEN=TOKEN,
        CHURNLAB_HOME=str(home),
        CHURNLAB_ACTOR="remote-tester",
    )
    exe = str(Path(sys.executable).with_name("churnlab"))
    steps = {
        "train": ["train", "--rows", "2000"],
        "gate": ["gate", "1", *FAST_GATE],
        "stage": ["stage", "1"],
        "promote": ["promote", "1", "--override", "--reason", "remote flow"],
        "status": ["status", "--json"],
        "history": ["history", "--json"],
    }
    results = {}
    for name, argv in steps.items():
        # a hang guard: a step takes 2-60 s (train)
        results[name] = subprocess.run(
            [exe, *argv], capture_output=True, text=True, timeout=600, env=env, cwd=cwd
        )
        if results[name].returncode != 0:
            break
    return {"results": results, "home": home, "cwd": cwd, "url": server.url}


@pytest.fixture
def client(flow) -> MlflowClient:
    return MlflowClient(tracking_uri=flow["url"], registry_uri=flow["url"])


def test_every_step_succeeds_quietly(flow):
    results = flow["results"]
    assert list(results) == ["train", "gate", "stage", "promote", "status", "history"], {
        k: (p.returncode, p.stderr[-500:]) for k, p in results.items()
    }
    for name, proc in results.items():
        assert proc.returncode == 0, (name, proc.stdout[-1500:], proc.stderr[-1500:])
        assert proc.stderr == "", (name, proc.stderr)
    summary = json.loads(results["train"].stdout)
    assert summary["model_version"] == 1 and summary["model_name"] == "churn-model"
    assert "Gate passed: churn-model v1" in results["gate"].stdout
    assert results["stage"].stdout == "Staged churn-model v1 -> Staging\n"
    assert results["promote"].stdout == (
        "Promoted churn-model v1 -> Production [override: remote flow]\n"
    )


def test_the_token_is_never_printed(flow):
    for name, proc in flow["results"].items():
        assert TOKEN not in proc.stdout + proc.stderr, name


def test_a_plain_client_sees_the_moves(flow, client):
    production = client.get_model_version_by_alias("churn-model", "production")
    assert int(production.version) == 1
    assert production.current_stage == "Production"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        latest = client.get_latest_versions("churn-model", stages=["Production"])
        staged = client.get_latest_versions("churn-model", stages=["Staging"])
    assert [int(v.version) for v in latest] == [1]
    assert staged == []  # promoting the staging holder leaves staging empty
    assert production.tags[GATE_TAG] == "passed"
    assert "staging" not in production.aliases


def test_status_and_history_agree_with_the_server(flow, client):
    status = json.loads(flow["results"]["status"].stdout)
    assert status["consistent"] is True
    assert status["stages"]["production"]["version"] == 1
    assert status["stages"]["staging"]["version"] is None
    history = json.loads(flow["results"]["history"].stdout)
    assert [(e["action"], e["alias"], e["to_version"]) for e in history] == [
        ("stage", "staging", 1),
        ("promote", "production", 1),
        ("unstage", "staging", None),
    ]
    promote = history[1]
    assert promote["override"] is True and promote["reason"] == "remote flow"
    assert promote["actor"] == "remote-tester"
    tags = client.get_registered_model("churn-model").tags
    stored = [json.loads(v) for k, v in sorted(tags.items()) if k.startswith("churnlab.event.")]
    assert stored == history


def test_artifacts_live_on_the_server(flow, client, server, tmp_path):
    run_id = json.loads(flow["results"]["train"].stdout)["run_id"]
    gate_json = client.download_artifacts(run_id, "gate/v1.json", str(tmp_path))
    assert json.loads(Path(gate_json).read_text())["verdict"] == "passed"
    names = {a.path for a in client.list_artifacts(run_id, "data")}
    assert len(names) == 3 and all(n.endswith(".csv") for n in names)
    stored = {p.name for p in (server.folder / "artifacts").rglob("*") if p.is_file()}
    assert {"requirements.txt", "MLmodel", "v1.json", "roc_curve.png"} <= stored
    for dataset_input in client.get_run(run_id).inputs.dataset_inputs:
        source = json.loads(dataset_input.dataset.source)
        assert TOKEN not in json.dumps(source)
        assert not str(source.get("uri", "")).startswith("file:")


def test_nothing_was_written_locally(flow):
    home = flow["home"]
    assert not home.exists() or list(home.rglob("*")) == [], sorted(home.rglob("*"))
    assert list(flow["cwd"].iterdir()) == []
