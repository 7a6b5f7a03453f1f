"""Where the registry lives, and that credentials never reach the screen."""

from __future__ import annotations

import os
import socket

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from support import ROOT, run_cli

from churnlab import store
from churnlab.errors import RegistryUnavailable


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the embedded store


def test_default_home_is_the_project_folder(monkeypatch):
    monkeypatch.delenv("CHURNLAB_HOME")
    assert store.home() == ROOT / ".churnlab"
    assert store.tracking_uri() == f"sqlite:///{ROOT / '.churnlab' / 'mlflow.db'}"


def test_churnlab_home_moves_the_store(tmp_path, monkeypatch):
    for name in ("first", "second"):
        home = tmp_path / name
        monkeypatch.setenv("CHURNLAB_HOME", str(home))
        uri = store.configure()
        assert uri == f"sqlite:///{home / 'mlflow.db'}"
        assert mlflow.get_tracking_uri() == uri
        assert mlflow.get_registry_uri() == uri
        assert store.artifact_root() == (home / "artifacts").as_uri()
        assert store.display_uri() == uri
        assert home.is_dir()
        assert not store.is_remote()


def test_configure_keeps_the_environment_as_the_user_set_it(monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; the embedded store must not then
    look like a server the user chose (that would skip the registry's file lock)."""
    store.configure()
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    assert not store.is_remote()
    server = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    store.configure()
    assert os.environ["MLFLOW_TRACKING_URI"] == server
    assert mlflow.get_registry_uri() == server


def test_configure_does_not_create_a_local_store_for_a_server(tmp_path, monkeypatch):
    home = tmp_path / "unused"
    monkeypatch.setenv("CHURNLAB_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    assert store.configure().startswith("http://127.0.0.1:")
    assert store.is_remote() and store.artifact_root() is None
    assert not home.exists()


def test_cli_from_another_folder_uses_churnlab_home(trained_home, clean_copy):
    """The CLI, run from an unrelated folder with MLFLOW_TRACKING_URI unset, moves an alias
    in $CHURNLAB_HOME and leaves nothing in that folder. (Starts one CLI process.)"""
    proc = run_cli("stage", "1", "--override", "--reason", "store test", cwd=clean_copy)
    assert proc.returncode == 0, proc.stderr
    assert "Staged churn-model v1 -> Staging" in proc.stdout
    assert list(clean_copy.iterdir()) == [], "the CLI wrote into the working folder"
    uri = f"sqlite:///{trained_home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert int(client.get_model_version_by_alias("churn-model", "staging").version) == 1


# ---------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("http://alice:s3cret@example.org:5000/", "s3cret"),
        ("https://bob:pa55word@mlflow.internal/path?x=1", "pa55word"),
        ("postgresql://user:hunter2@db:5432/mlflow", "hunter2"),
        ("cannot reach http://alice:s3cret@10.0.0.1:5000 (timeout)", "s3cret"),
        ("https://mlflow.example.org/?token=abcd1234&x=1", "abcd1234"),
        ("GET /api?password=letmein", "letmein"),
        ("signed url ...&key=AKIAXYZ123", "AKIAXYZ123"),
    ],
)
def test_redact_removes_credentials(text, secret):
    out = store.redact(text)
    assert secret not in out
    assert "***" in out


def test_redact_keeps_what_is_not_secret():
    assert store.redact("http://127.0.0.1:5000/") == "http://127.0.0.1:5000/"
    assert store.redact("sqlite:////tmp/home/mlflow.db") == "sqlite:////tmp/home/mlflow.db"
    redacted = store.redact("http://alice:s3cret@example.org:5000/api")
    assert redacted == "http://***@example.org:5000/api"


def test_redact_removes_secret_variable_values_anywhere(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-ABCDEF-123456")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-zyx-987")
    text = "header Authorization: Bearer tok-ABCDEF-123456 and basic pw-zyx-987"
    out = store.redact(text)
    assert "tok-ABCDEF-123456" not in out and "pw-zyx-987" not in out


def test_display_uri_hides_credentials(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@127.0.0.1:5000")
    assert "s3cret" not in store.display_uri()
    assert store.display_uri() == "http://***@127.0.0.1:5000"


def test_unreachable_server_raises_a_redacted_error(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{closed_port()}")
    with pytest.raises(RegistryUnavailable) as err:
        store.check_reachable(timeout=2)
    assert "s3cret" not in str(err.value)
    assert "cannot reach" in str(err.value)


SECRETS = {
    "MLFLOW_TRACKING_TOKEN": "tok-9f8e7d6c5b4a",
    "MLFLOW_TRACKING_PASSWORD": "pw-0a1b2c3d4e",
    "MLFLOW_TRACKING_USERNAME": "carol",
}


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["train", "--rows", "200"],
    ],
)
def test_cli_never_prints_secrets_for_an_unreachable_server(command, clean_copy):
    """Each case starts one CLI process against a closed port (a few seconds each)."""
    uri = f"http://alice:s3cret-in-uri@127.0.0.1:{closed_port()}"
    env = {"MLFLOW_TRACKING_URI": uri, **SECRETS}
    # it fails in 2-5 s; 120 s means it hangs
    proc = run_cli(*command, env=env, cwd=clean_copy, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 3, output
    for secret in (
        "s3cret-in-uri",
        SECRETS["MLFLOW_TRACKING_TOKEN"],
        SECRETS["MLFLOW_TRACKING_PASSWORD"],
    ):
        assert secret not in output
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        "churnlab: cannot reach the MLflow tracking server at http://***@127.0.0.1:"
    )
    assert list(clean_copy.iterdir()) == []


def test_a_write_waits_a_minute_for_a_busy_server(monkeypatch):
    """MLflow's client resends a request whose answer is late; a write resent while a busy
    server is still doing it lands twice (a unique-key error on a tag, a second version).
    Inside patient_writes a request waits a minute; outside, the 5 s default comes back."""
    store.environment_defaults()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with store.patient_writes():
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == str(store.WRITE_TIMEOUT_S)
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"  # a closed idle connection
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")  # the user's own, longer
    with store.patient_writes():
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT")
    with store.patient_writes():
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == str(store.WRITE_TIMEOUT_S)
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ
