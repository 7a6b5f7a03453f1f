"""Shared fixtures: every test gets its own embedded registry under a temporary folder.

Training is the slow part, so one session-wide template registry is trained once and
each test that needs trained versions gets a copy of its database (the artifacts it
points at are only read).

A test that starts a server, a browser, PostgreSQL, the notebooks or a load is marked
``slow`` (``make test-fast`` leaves those out); one that forgets fails, naming what it
started (``support.slow_program``). A test that needs a system program (wrk, Chromium,
PostgreSQL, Java, ...) asks ``support.needs``; a load test is also marked ``load`` and
runs at two sizes (``make test`` and ``make test-load``).

Every bound on time says beside it why it is what it is. A ``timeout=`` on a request to a
server on 127.0.0.1 only guards against a hang (an answer takes milliseconds), as do
``support.COMMAND_TIMEOUT_S`` (one console-script process) and ``WORKBOOK_TIMEOUT_S``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from pathlib import Path

import pytest
from support import copy_db, slow_program

from churnlab import store


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch) -> Path:
    """A private CHURNLAB_HOME and config; the tracking server variables are cleared."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("CHURNLAB_HOME", str(home))
    monkeypatch.setenv("CHURNLAB_CONFIG", str(home / "churnlab.toml"))
    for key in (*store.SERVER_VARIABLES, "CHURNLAB_MODEL", "CHURNLAB_EXPERIMENT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CHURNLAB_ACTOR", "pytest")
    store.configure()
    return home


@pytest.fixture(scope="session")
def template_home(tmp_path_factory) -> Path:
    """A registry with two trained versions: v1 logistic regression, v2 random forest.

    Trained once for the whole run: under xdist the first worker trains it (holding a
    lock) into the folder all workers share, and the others wait for it and read it.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    home = root / "template"
    with open(root / "template.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (home / ".trained").exists():
            shutil.rmtree(home, ignore_errors=True)  # a run that died half-way
            home.mkdir()
            _train_template(home)
            (home / ".trained").touch()
    return home


def _train_template(home: Path) -> None:
    from churnlab import train

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


# ---------------------------------------------------------------------------- the fast tier
_RUNNING: dict = {"item": None, "hooked": False}  # the test being set up or run


def _refuse_unmarked_servers(event: str, args: tuple) -> None:
    """Audit hook: a test not marked slow may not start a server, browser or load."""
    if event != "subprocess.Popen":
        return
    item = _RUNNING["item"]
    if item is None or item.get_closest_marker("slow") is not None:
        return
    what = slow_program(args[1])
    if what:
        pytest.fail(
            f"{item.nodeid} starts {what} but is not marked slow: add "
            "`@pytest.mark.slow` (or `pytestmark = pytest.mark.slow`) so that "
            "`make test-fast` leaves it out",
            pytrace=False,
        )


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "load: a test whose point is load; `make test` runs it at a size that still proves "
        "the behaviour, `make test-load` (`-m load`, the sizes in the Makefile) at full size",
    )
    if not _RUNNING.get("hooked"):  # an audit hook stays for the life of the process
        sys.addaudithook(_refuse_unmarked_servers)
        _RUNNING["hooked"] = True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    # a fixture's set-up counts for the test it is set up for; tear-downs may stop anything
    _RUNNING["item"] = item
    try:
        return (yield)
    finally:
        _RUNNING["item"] = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    _RUNNING["item"] = item
    try:
        return (yield)
    finally:
        _RUNNING["item"] = None


# ---------------------------------------------------------------------------- xdist groups
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items) -> None:
    """Keep each ``xdist_group`` on one worker under ``make test`` (``--dist loadgroup``).

    pytest-xdist 3.8 writes an item's group into ``item._nodeid``, which pytest 9.2 no
    longer reads, so the groups were silently ignored (and the session's workbook run, a
    module's server, ran once per worker). On a worker, this puts the ``@group`` suffix
    into the node id as xdist means to; where xdist managed it, there is nothing to do.
    """
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodeid import coerce_node_id
    except ImportError:  # a pytest before 9.2: xdist set the suffix itself
        return
    for item in items:
        groups = sorted(
            {
                str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                for mark in item.iter_markers("xdist_group")
            }
        )
        suffix = "@" + "_".join(groups)
        if groups and not item.nodeid.endswith(suffix):
            item._id = coerce_node_id(item.nodeid + suffix)
