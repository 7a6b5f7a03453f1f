"""Shared fixtures: every test gets its own embedded registry under a temporary folder.

Training is the slow part, so one session-wide template registry is trained once and
each test that needs trained versions gets a copy of its database (the artifacts it
points at are only read).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from churnlab import store

ROOT = Path(__file__).resolve().parent.parent
#: Flags for Debian's headless Chromium on this closed network (no background fetches).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch) -> Path:
    """A private CHURNLAB_HOME; the tracking server variables are cleared."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("CHURNLAB_HOME", str(home))
    for key in store.SERVER_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CHURNLAB_ACTOR", "pytest")
    store.configure()
    return home


def _copy_db(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(src / "mlflow.db") as a, sqlite3.connect(dst / "mlflow.db") as b:
        a.backup(b)


def staged_copy(template_home: Path, home: Path, reason: str, prepare=None) -> Path:
    """A copy of the template registry in ``home`` with v1 in staging; ``home`` returned.

    ``prepare(registry)`` runs first (e.g. a gate). ``CHURNLAB_HOME`` is set only while
    it works: module-scoped fixtures use this, before the autouse ``isolated_home``. No
    ``store.configure()`` afterwards: with ``CHURNLAB_HOME`` unset again it would create
    the project's own ``.churnlab``; ``isolated_home`` configures each test.
    """
    from churnlab.registry import Registry

    _copy_db(template_home, home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHURNLAB_HOME", str(home))
        for key in store.SERVER_VARIABLES:
            mp.delenv(key, raising=False)
        registry = Registry()
        if prepare is not None:
            prepare(registry)
        registry.stage(1, override=True, reason=reason)
    return home


@pytest.fixture(scope="session")
def template_home(tmp_path_factory) -> Path:
    """A registry with two trained versions: v1 logistic regression, v2 random forest."""
    from churnlab import train

    home = tmp_path_factory.mktemp("template")
    old = {k: os.environ.get(k) for k in ("CHURNLAB_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["CHURNLAB_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        train.train_candidate(estimator="logreg", rows=3000)
        train.train_candidate(estimator="forest", rows=3000, params={"n_estimators": 60})
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return home


@pytest.fixture
def trained_home(template_home, isolated_home) -> Path:
    """This test's own copy of the template registry (v1 logreg, v2 forest, nothing staged)."""
    _copy_db(template_home, isolated_home)
    store.configure()
    return isolated_home


@pytest.fixture
def registry(trained_home):
    from churnlab.registry import Registry

    return Registry()


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 300):
    """Run the real `churnlab` console script; return the CompletedProcess."""
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("churnlab")
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


@pytest.fixture
def clean_copy(tmp_path) -> Path:
    """An empty working folder (to check nothing is left behind in the cwd)."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    return folder
