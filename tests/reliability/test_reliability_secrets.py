"""Secrets stay secret: a marker set as the tracking password and token appears nowhere.

Two runs carry the marker: the whole CLI flow against a real ``mlflow server`` with the
credentials in the tracking URI (``http://user:MARKER@127.0.0.1:PORT``; the server has no
auth and ignores them) and the whole workbook (``churnlab workbook``) on a fresh embedded
registry, where the variables are merely present. Afterwards the marker must be in no
output, log, file of the store or the reports, tag, parameter, dataset source or model
artifact, and every printed tracking URI must be redacted.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest
from support import cli, free_port, remote_env, sqlite_server

pytestmark = pytest.mark.slow

MARKER = f"m4rker{uuid.uuid4().hex[:12]}"
USER = "student"


def marker_forms(marker: str) -> list[bytes]:
    """The marker as text, and as it would appear in a Basic auth header."""
    basic = base64.b64encode(f"{USER}:{marker}".encode())
    return [marker.encode(), basic]


def files_containing(folder: Path, marker: str) -> list[str]:
    """Every file under ``folder`` whose bytes contain the marker (in any of its forms)."""
    forms = marker_forms(marker)
    hits = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            raw = path.read_bytes()
            if any(form in raw for form in forms):
                hits.append(str(path))
    return hits


def registry_texts(client) -> list[str]:
    """Every tag, parameter, description, dataset source and logged-model field we wrote."""
    texts: list[str] = []
    for model in client.search_registered_models():
        texts += [model.name, model.description or "", *map(str, model.tags.items())]
        texts += [str(a) for a in getattr(model, "aliases", {})]
        for mv in client.search_model_versions(f"name='{model.name}'"):
            full = client.get_model_version(mv.name, mv.version)
            texts += [full.source or "", full.description or "", *map(str, full.tags.items())]
    for exp in client.search_experiments():
        texts += [exp.name, exp.artifact_location or "", *map(str, exp.tags.items())]
        for run in client.search_runs([exp.experiment_id]):
            texts += [*map(str, run.data.tags.items()), *map(str, run.data.params.items())]
            texts += [run.info.artifact_uri or ""]
            for ds in run.inputs.dataset_inputs if run.inputs else []:
                texts += [ds.dataset.source or "", ds.dataset.name, ds.dataset.digest]
        for logged in client.search_logged_models([exp.experiment_id]):
            texts += [str(logged.params), str(logged.tags), logged.artifact_location or ""]
    return texts


# ---------------------------------------------------------------- the CLI on a server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with sqlite_server(tmp_path_factory.mktemp("secrets-server")) as srv:
        yield srv


def secret_env(url: str) -> dict[str, str]:
    host = url.split("://", 1)[1]
    return {
        "MLFLOW_TRACKING_URI": f"http://{USER}:{MARKER}@{host}",
        "MLFLOW_TRACKING_USERNAME": USER,
        "MLFLOW_TRACKING_PASSWORD": MARKER,
        "MLFLOW_TRACKING_TOKEN": MARKER,
    }


@pytest.mark.xdist_group("secrets-server")  # its own server: beside the workbook's tests
def test_cli_flow_with_credentials_in_the_uri_leaks_nothing(server, isolated_home):
    env = secret_env(server.url)
    steps = [
        (("train", "--rows", "1200"), (0,)),
        (("gate", "1", "--set", "latency_samples=20"), (0, 1)),
        (("stage", "1", "--override", "--reason", "secrets test"), (0,)),
        (("smoke", "--requests", "20"), (0, 1)),
        (("promote", "1", "--override", "--reason", "secrets test"), (0,)),
        (("status",), (0,)),
        (("status", "--json"), (0,)),
        (("history",), (0,)),
        (("--model", "no-such-model", "status"), (2,)),  # an error that names the registry
    ]
    outputs = []
    for args, codes in steps:
        # a hang guard: a step takes 2-60 s (train, smoke)
        done = cli(*args, env=env, timeout=600)
        outputs.append(done)
        assert done.returncode in codes, (args, done.stdout, done.stderr)
    # the CLI against an unreachable server with the same credentials
    dead = {**env, "MLFLOW_TRACKING_URI": f"http://{USER}:{MARKER}@127.0.0.1:{free_port()}"}
    # it fails in 2-5 s; 60 s means it hangs
    unreachable = cli("status", env=dead, timeout=60)
    assert unreachable.returncode == 3, unreachable.stderr
    outputs.append(unreachable)

    for done in outputs:
        for stream in (done.stdout, done.stderr):
            assert MARKER not in stream, (done.args, stream)
    redacted = f"http://***@127.0.0.1:{server.port}"
    status_text = outputs[5].stdout
    assert redacted in status_text, status_text
    assert redacted in outputs[8].stderr, outputs[8].stderr
    assert "http://***@127.0.0.1:" in unreachable.stderr, unreachable.stderr

    # nothing the server stored (its database, artifacts, log) and nothing on this side
    assert files_containing(server.folder, MARKER) == []
    assert files_containing(isolated_home, MARKER) == []

    from mlflow.tracking import MlflowClient

    with remote_env(server.url):
        texts = registry_texts(MlflowClient())
    assert len(texts) > 50  # the walk really saw the runs, versions and events
    assert [t for t in texts if MARKER in t] == []
    assert any("churnlab.event." in t for t in texts)
    sources = [t for t in texts if "/api/2.0/mlflow-artifacts/artifacts/" in t]
    assert sources and all(f'"http://127.0.0.1:{server.port}/api/' in t for t in sources)
    events = json.loads(cli("history", "--json", env=env).stdout)
    assert events and MARKER not in json.dumps(events)


# ---------------------------------------------------------------- the whole workbook


@pytest.mark.xdist_group("workbook")  # the session's one workbook run, on its worker
def test_workbook_run_with_secret_variables_leaks_nothing(tmp_path_factory, monkeypatch):
    from support import SECRET_MARKER, default_run

    run = default_run(tmp_path_factory)  # the session's one run carries the marker
    # leaks first: they are this test's subject, even in a run that stopped early
    assert SECRET_MARKER not in run.stdout + run.stderr
    assert files_containing(run.folder, SECRET_MARKER) == []  # notebooks, report, registry
    assert run.returncode == 0, run.stderr[-3000:]  # ... and the whole workbook ran
    assert len(sorted(run.executed.glob("*.ipynb"))) == 5 and run.report.is_file()

    from mlflow.tracking import MlflowClient

    from churnlab import store

    monkeypatch.setenv("CHURNLAB_HOME", str(run.registry_home))
    store.configure()
    texts = registry_texts(MlflowClient())
    assert len(texts) > 50
    assert [t for t in texts if SECRET_MARKER in t] == []
