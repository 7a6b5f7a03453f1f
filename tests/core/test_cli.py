"""The `churnlab` command line: sub-commands, exit codes, one-line errors, the whole local flow."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient
from support import run_cli

from churnlab import cli
from churnlab.tags import SMOKE_VERDICT as SMOKE_TAG

CORE_COMMANDS = ("train", "gate", "stage", "promote", "rollback", "status", "history", "repair")
FAST_GATE = ("--set", "latency_samples=20", "--set", "latency_p95_ms=10000")


def test_help_lists_every_core_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in CORE_COMMANDS:
        assert name in out


@pytest.mark.parametrize(
    "argv",
    [[], ["fly"], ["stage"], ["train", "--estimator", "svm"], ["train", "--rows", "many"]],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert "usage: churnlab" in capsys.readouterr().err


def test_console_script_exit_codes_and_one_line_errors(registry):
    """The installed `churnlab` script (two CLI processes, a few seconds each); exit 0 is
    covered by test_store and test_train."""
    unknown = run_cli("stage", "9")
    assert unknown.returncode == 2
    assert unknown.stdout == ""
    assert unknown.stderr == "churnlab: churn-model has no version 9 (latest is 2)\n"

    refused = run_cli("promote", "1")
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("churnlab: refused: churn-model v1 -> Production")


def test_override_without_reason_exits_2(registry, capsys):
    assert cli.main(["promote", "1", "--override"]) == 2
    err = capsys.readouterr().err
    assert "--override --reason TEXT" in err
    assert cli.main(["stage", "1", "--override", "--reason", " "]) == 2
    assert registry.holder("production") is None and registry.holder("staging") is None


def test_rollback_with_nothing_in_production_exits_1(registry, capsys):
    assert cli.main(["rollback"]) == 1
    assert "no production version" in capsys.readouterr().err


def test_the_local_flow_from_gate_to_rollback(registry, capsys):
    """gate -> stage -> promote (refused, then with evidence) -> gate the challenger ->
    override -> rollback, all through the CLI (in-process: the same main())."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("gate", "1", *FAST_GATE)
    assert code == 0 and "Gate passed: churn-model v1" in out

    code, out, _ = run("stage", "1")
    assert (code, out) == (0, "Staged churn-model v1 -> Staging\n")

    code, _, err = run("promote", "1")
    assert code == 1 and "smoke is none" in err

    MlflowClient().set_model_version_tag("churn-model", "1", SMOKE_TAG, "passed")
    code, out, _ = run("promote", "1")
    assert (code, out) == (0, "Promoted churn-model v1 -> Production\n")

    # the challenger is judged against production now; its verdict is whatever the checks say
    code, out, _ = run("gate", "2", *FAST_GATE, "--json")
    verdict = json.loads(out)
    champion = next(c for c in verdict["checks"] if c["name"] == "champion")
    assert champion["status"] in ("pass", "fail") and "production v1" in champion["detail"]
    assert code == (0 if verdict["verdict"] == "passed" else 1)

    code, out, _ = run("promote", "2", "--override", "--reason", "try the forest")
    assert code == 0
    assert out == "Promoted churn-model v2 -> Production (archived v1) [override: try the forest]\n"

    code, out, _ = run("rollback", "--reason", "forest too slow")
    assert (code, out) == (0, "Rolled back churn-model v1 -> Production (archived v2)\n")

    code, out, _ = run("status", "--json")
    status = json.loads(out)
    assert code == 0 and status["consistent"]
    assert status["stages"]["production"]["version"] == 1
    assert status["stages"]["staging"]["version"] is None

    code, out, _ = run("history", "--json")
    actions = [(e["action"], e["alias"], e["to_version"]) for e in json.loads(out)]
    assert actions == [
        ("stage", "staging", 1),
        ("promote", "production", 1),
        ("unstage", "staging", None),
        ("promote", "production", 2),
        ("rollback", "production", 1),
    ]


def test_approve_status_and_repair_restore_on_the_command_line(registry, capsys, monkeypatch):
    from churnlab.tags import GATE_VERDICT

    client = MlflowClient()
    for key in (GATE_VERDICT, SMOKE_TAG):
        client.set_model_version_tag("churn-model", "1", key, "passed")
    assert cli.main(["promote", "1", "--set", "production_approvals=1"]) == 1
    assert "needs 1 approval(s) of v1 by someone other than pytest" in capsys.readouterr().err
    monkeypatch.setenv("CHURNLAB_ACTOR", "reviewer")
    assert cli.main(["approve", "1", "--reason", "checked"]) == 0
    assert capsys.readouterr().out == "Approved churn-model v1 for Production by reviewer\n"
    monkeypatch.setenv("CHURNLAB_ACTOR", "pytest")
    assert cli.main(["promote", "1", "--set", "production_approvals=1"]) == 0
    assert capsys.readouterr().out.endswith("(approved by reviewer)\n")
    assert cli.main(["status", "--set", "production_approvals=1"]) == 0
    assert "approved by reviewer" in capsys.readouterr().out
    assert cli.main(["history"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "approve" in lines[0] and "reviewer" in lines[0] and "checked" in lines[0]
    assert "approved by reviewer" in lines[1]

    client.set_registered_model_alias("churn-model", "production", "2")  # out of band
    assert cli.main(["status"]) == 1
    assert "no recorded event put it there" in capsys.readouterr().out
    assert cli.main(["repair", "--restore"]) == 0
    assert capsys.readouterr().out.startswith("restored: ")
    assert int(client.get_model_version_by_alias("churn-model", "production").version) == 1


def test_a_refusal_by_the_server_exits_4_with_one_line(registry, capsys, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, UNAUTHENTICATED

    from churnlab.registry import Registry

    def refused(*args, **kwargs):  # a 403 that reaches main() outside the registry's calls
        raise MlflowException(
            "API request to endpoint /api/2.0/mlflow/runs/create failed with error code 403 != 200",
            PERMISSION_DENIED,
        )

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("CHURNLAB_EXPERIMENT", "churnlab-bob")
    monkeypatch.setattr(Registry, "status", refused)
    assert cli.main(["--model", "churn-model", "status"]) == 4
    err = capsys.readouterr().err  # the endpoint's verb (churnlab.store.ENDPOINT_VERBS)
    assert (
        err == "churnlab: permission denied: alice may not start a run in experiment churnlab-bob\n"
    )

    def unauthenticated(*args, **kwargs):
        raise MlflowException("failed with error code 401 != 200", UNAUTHENTICATED)

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-password-9")
    monkeypatch.setattr(Registry, "status", unauthenticated)
    assert cli.main(["status"]) == 4
    err = capsys.readouterr().err
    assert "login refused by" in err and "wrong user name or password for alice" in err
    assert "s3cret-password-9" not in err


@pytest.mark.parametrize(
    "failure",
    [
        "requests.ConnectionError",  # an artifact upload to a server that went away
        "MlflowException: API request to endpoint /api/2.0/mlflow/registered-models/get failed "
        "with exception ('Connection aborted.', ConnectionResetError(104, 'Connection reset by "
        "peer'))",  # a server that dropped the connection
    ],
)
def test_one_failure_reads_the_same_from_the_registry_and_from_the_cli(
    registry, capsys, monkeypatch, failure
):
    """MLflow's errors are translated in one place: the same failure, raised inside the
    registry's calls or outside them, is the same line and the same exit code."""
    import requests
    from mlflow.exceptions import MlflowException

    from churnlab.errors import RegistryUnavailable
    from churnlab.registry import Registry

    def fail(*args, **kwargs):
        if failure.startswith("requests."):
            raise requests.ConnectionError("connection refused")
        raise MlflowException(failure.split(": ", 1)[1])

    class Failing:
        """The real client, except that reading the registered model fails."""

        def __init__(self, client):
            self._client = client

        def __getattr__(self, name):
            return getattr(self._client, name)

        get_registered_model = staticmethod(fail)

    with pytest.raises(RegistryUnavailable) as inside:
        Registry(client=Failing(registry.client)).status()
    monkeypatch.setattr(Registry, "status", fail)  # outside the registry's calls
    assert cli.main(["status"]) == inside.value.exit_code == 3
    assert capsys.readouterr().err == f"churnlab: {inside.value}\n"
    assert str(inside.value).startswith("cannot reach the MLflow tracking server at sqlite:///")
