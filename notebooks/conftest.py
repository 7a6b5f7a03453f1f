"""``pytest --nbval notebooks/``: the five notebooks, in order, against ONE fresh registry.

nbval re-executes every notebook and compares its outputs with the committed ones. The
notebooks hand values to each other through the registry, so the session gets a new empty
embedded store (tracking-server variables and this checkout's config are ignored) and the
actor the committed outputs were recorded with. The store is deleted when the session ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_HOME = pytest.StashKey[str]()


def _nbval(config) -> bool:
    return bool(
        getattr(config.option, "nbval", False) or getattr(config.option, "nbval_lax", False)
    )


def pytest_configure(config) -> None:
    if not _nbval(config):
        return
    from churnlab.runner import REFERENCE_ACTOR
    from churnlab.store import SERVER_VARIABLES

    home = tempfile.mkdtemp(prefix="churnlab-nbval-")
    config.stash[_HOME] = home
    os.environ["CHURNLAB_HOME"] = home  # the kernels nbval starts inherit it
    os.environ["CHURNLAB_ACTOR"] = REFERENCE_ACTOR
    # the reference story: no student name and no login from this checkout's config
    os.environ["CHURNLAB_CONFIG"] = os.path.join(home, "no-config.toml")
    os.environ.pop("CHURNLAB_MODEL", None)
    for key in SERVER_VARIABLES:
        os.environ.pop(key, None)


def pytest_collection_modifyitems(config, items) -> None:
    # 01 before 02 ...: later notebooks read what earlier ones wrote to the registry
    if _nbval(config):
        items.sort(key=lambda item: (str(item.fspath), getattr(item, "cell_num", 0)))


def pytest_unconfigure(config) -> None:
    home = config.stash.get(_HOME, None)
    if home:
        shutil.rmtree(home, ignore_errors=True)
