"""Shared fixtures: every test gets its own embedded registry under a temporary folder.

Training is the slow part, so one session-wide template registry is trained once and
each test that needs trained versions gets a copy of its database (the artifacts it
points at are only read).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import copy_db

from churnlab import store


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
    copy_db(template_home, isolated_home)
    store.configure()
    return isolated_home


@pytest.fixture
def registry(trained_home):
    from churnlab.registry import Registry

    return Registry()


@pytest.fixture
def clean_copy(tmp_path) -> Path:
    """An empty working folder (to check nothing is left behind in the cwd)."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    return folder
