"""The student's first run: the handout, untouched, run whole once for the exercise tests.

`churnlab handout` writes the student edition of this checkout; a student with a Unicode
name runs `churnlab workbook` inside it with the handout's own package. The handout tests
read its console output and report, the "Your work" tests its summary and executed
notebooks (they share the ``handout-run`` xdist group).
"""

from __future__ import annotations

import os
import subprocess

import pytest
from support import CHURNLAB, UNICODE_NAME, WorkbookOutput

from churnlab import store


@pytest.fixture(scope="session")
def untouched_handout(tmp_path_factory) -> WorkbookOutput:
    """A fresh handout of this checkout, run whole by its own console script and package;
    its reports are in the handout's own ``reports/``."""
    folder = tmp_path_factory.mktemp("student")
    handout = folder / "handout"
    env = {k: v for k, v in os.environ.items() if k not in store.SERVER_VARIABLES}
    env["CHURNLAB_HOME"] = str(folder / "home")
    # a hang guard: writing the handout takes 2-10 s
    made = subprocess.run(
        [CHURNLAB, "handout", str(handout)], capture_output=True, text=True, env=env, timeout=300
    )
    assert made.returncode == 0, made.stderr
    env["PYTHONPATH"] = str(handout)  # the handout's own package, not this checkout's
    done = subprocess.run(
        [CHURNLAB, "workbook", "--student", UNICODE_NAME],
        capture_output=True,
        text=True,
        env=env,
        cwd=handout,
        # a hang guard: a whole run takes 50-250 s
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    return WorkbookOutput(handout / "reports", done.returncode, done.stdout, done.stderr)
