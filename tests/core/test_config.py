"""The project's config (churnlab.toml) and MLflow's credentials file, and what they decide:
the registry, the model and the experiment every command and notebook uses."""

from __future__ import annotations

import stat

import pytest

from churnlab import cli, config, store
from churnlab.errors import InputError


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private HOME (MLflow's credentials live under it)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_the_name_is_set_once_and_read_back_exactly(capsys):
    assert config.read() == {}
    assert cli.main(["config", "student", '  Zoë Ñúñez "张伟"  ']) == 0
    out = capsys.readouterr().out
    assert out.startswith('student = Zoë Ñúñez "张伟" (in ')
    assert config.get("student") == 'Zoë Ñúñez "张伟"'
    assert config.path().read_text(encoding="utf-8").count("student =") == 1
    assert cli.main(["config"]) == 0
    assert capsys.readouterr().out == 'student = Zoë Ñúñez "张伟"\n'
    assert cli.main(["config", "student", "--unset"]) == 0
    assert config.get("student") is None and not config.path().exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["config", "student", "   "], "student name must not be empty or blank"),
        (["config", "tracking_uri", "http://x"], "churnlab config sets student only"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(args, message, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not config.path().exists(), "nothing is written"


def test_a_broken_config_file_is_named_in_one_line():
    config.path().write_text("student = [unclosed\n")
    with pytest.raises(InputError, match=r"churnlab.toml is not valid TOML .*: fix or delete it"):
        config.read()
    config.path().write_text('colour = "blue"\n')
    with pytest.raises(InputError, match=r"unknown setting\(s\) \['colour'\]"):
        config.read()


def test_credentials_go_where_mlflow_reads_them_and_only_there(home, monkeypatch):
    from mlflow.utils.credentials import read_mlflow_creds

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    (home / ".mlflow").mkdir(parents=True)
    (home / ".mlflow" / "credentials").write_text("[other]\nkey = kept\n")
    written = config.store_credentials("alice", "p%ss w0rd")
    assert written == home / ".mlflow" / "credentials"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    creds = read_mlflow_creds()  # MLflow's own reader gives back what was typed
    assert (creds.username, creds.password) == ("alice", "p%ss w0rd")
    assert config.stored_username() == "alice"
    assert store.redact("it said p%ss w0rd") == "it said ***"
    assert config.remove_credentials()
    assert written.read_text() == "[other]\nkey = kept\n\n"
    assert read_mlflow_creds().username is None
    assert not config.remove_credentials()


def test_a_login_chooses_the_server_model_and_experiment(home, monkeypatch):
    assert (store.is_remote(), store.model_name(), store.experiment_name()) == (
        False,
        "churn-model",
        "churnlab",
    )
    config.store_credentials("bob", "secret-password")
    config.update(tracking_uri="http://127.0.0.1:5999")
    assert store.tracking_uri() == "http://127.0.0.1:5999" and store.is_remote()
    assert (store.logged_in_user(), store.model_name(), store.experiment_name()) == (
        "bob",
        "churn-model-bob",
        "churnlab-bob",
    )
    monkeypatch.setenv("CHURNLAB_MODEL", "churn-model-test")
    assert store.model_name() == "churn-model-test", "a run's --model wins"
    monkeypatch.delenv("CHURNLAB_MODEL")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:6000")
    assert store.tracking_uri() == "http://127.0.0.1:6000", "MLflow's variable overrides"
    assert store.login_server() is None and store.model_name() == "churn-model"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    config.update(tracking_uri=None)
    assert not store.is_remote() and store.model_name() == "churn-model"
