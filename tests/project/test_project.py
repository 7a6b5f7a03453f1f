"""Project files: pyproject.toml and environment.yml agree; importing the package does nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
ENVIRONMENT = ROOT / "environment.yml"


def pyproject_specs(text: str) -> dict[str, SpecifierSet]:
    """Name -> version spec of the core dependencies, plus ``python`` (requires-python)."""
    project = tomllib.loads(text)["project"]
    specs = {"python": SpecifierSet(project["requires-python"])}
    for line in project["dependencies"]:
        req = Requirement(line)
        specs[canonicalize_name(req.name)] = req.specifier
    return specs


def conda_specs(text: str) -> dict[str, SpecifierSet]:
    """Name -> version spec of environment.yml's conda dependencies (pip and its list aside)."""
    env = yaml.safe_load(text)
    specs = {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict) or entry.strip() == "pip":
            continue
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", entry)
        assert m, f"unreadable conda dependency {entry!r}"
        name, spec = m.groups()
        specs[canonicalize_name(name)] = SpecifierSet(spec.replace(" ", ""))
    return specs


def drift(a: dict[str, SpecifierSet], b: dict[str, SpecifierSet]) -> list[str]:
    """Human-readable differences between two name -> spec maps."""
    out = [f"{n}: only in pyproject.toml" for n in sorted(set(a) - set(b))]
    out += [f"{n}: only in environment.yml" for n in sorted(set(b) - set(a))]
    out += [f"{n}: {a[n]} != {b[n]}" for n in sorted(set(a) & set(b)) if a[n] != b[n]]
    return out


def test_environment_yml_and_pyproject_declare_the_same_dependencies():
    problems = drift(pyproject_specs(PYPROJECT.read_text()), conda_specs(ENVIRONMENT.read_text()))
    assert not problems, "pyproject.toml and environment.yml drifted apart: " + "; ".join(problems)


def test_the_drift_check_notices_a_changed_or_missing_dependency():
    """The comparison above is not vacuous: edits to either file show up as drift."""
    env = ENVIRONMENT.read_text()
    py = pyproject_specs(PYPROJECT.read_text())
    assert "mlflow >=3.17,<3.18" in env
    changed = conda_specs(env.replace("mlflow >=3.17,<3.18", "mlflow >=3.16"))
    assert drift(py, changed) == ["mlflow: <3.18,>=3.17 != >=3.16"]
    dropped = conda_specs(re.sub(r"(?m)^\s*- pandas\b.*\n", "", env))
    assert drift(py, dropped) == ["pandas: only in pyproject.toml"]


def test_environment_yml_installs_the_project_itself():
    env = yaml.safe_load(ENVIRONMENT.read_text())
    pip = [e for e in env["dependencies"] if isinstance(e, dict)]
    assert pip and any(line.startswith("-e .") for line in pip[0]["pip"])


def test_requires_python_311_or_newer():
    for specs in (pyproject_specs(PYPROJECT.read_text()), conda_specs(ENVIRONMENT.read_text())):
        spec = specs["python"]
        assert "3.10.14" not in spec
        assert "3.11.0" in spec and "3.12.3" in spec and "3.13.1" in spec
    assert sys.version_info >= (3, 11)


def test_mlflow_is_pinned_to_the_3_17_series():
    spec = pyproject_specs(PYPROJECT.read_text())["mlflow"]
    assert all(v in spec for v in ("3.17.0", "3.17.2", "3.17.9"))
    assert not any(v in spec for v in ("3.16.2", "3.18.0", "4.0.0"))
    assert version("mlflow") in spec  # what this environment runs


def test_test_tools_are_dev_extras_not_runtime_dependencies():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    runtime = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    dev = {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["dev"]}
    assert {"pytest", "ruff", "httpx"} <= dev
    assert not runtime & {"pytest", "ruff", "httpx"}


IMPORT_PROBE = r"""
import importlib, json, os, pkgutil, sys
before = dict(os.environ)
import churnlab
import serving
names = ["churnlab", "serving"]
for pkg in (churnlab, serving):
    names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in names:
    importlib.import_module(name)
out = {
    "modules": names,
    "env_changed": sorted(k for k in set(os.environ) | set(before) if os.environ.get(k) != before.get(k)),
    "tracking_uri_set": None,
    "registry_uri": None,
}
if "mlflow" in sys.modules:
    from mlflow.tracking._tracking_service import utils as tracking
    from mlflow.tracking._model_registry import utils as registry
    out["tracking_uri_set"] = tracking.is_tracking_uri_set()
    out["registry_uri"] = registry._registry_uri
print(json.dumps(out))
"""


def test_importing_every_module_has_no_side_effects(tmp_path):
    """Imports every module of the package in a fresh interpreter (a few seconds: slow-ish)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    home = tmp_path / "home"  # must not be created
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(CHURNLAB_HOME=str(home), PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        # it imports every module: 10-30 s; 300 s means it hangs
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", f"importing printed to stderr: {proc.stderr[:500]}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"importing printed to stdout: {proc.stdout[:500]}"
    out = json.loads(lines[0])
    expected = {"churnlab." + m for m in ("cli", "data", "gate", "registry", "store", "train")}
    assert expected <= set(out["modules"])
    assert sorted(p.name for p in cwd.iterdir()) == [], "an import wrote into the working folder"
    assert not home.exists(), "an import created CHURNLAB_HOME"
    assert out["env_changed"] == [], (
        f"an import changed environment variables: {out['env_changed']}"
    )
    assert out["tracking_uri_set"] in (None, False), "an import set the MLflow tracking URI"
    assert out["registry_uri"] is None, "an import set the MLflow registry URI"


@pytest.mark.parametrize("name", ["mlruns", "mlflow.db", ".churnlab"])
def test_gitignore_keeps_local_stores_out_of_git(name):
    ignored = (ROOT / ".gitignore").read_text().split()
    assert name in ignored or f"{name}/" in ignored
