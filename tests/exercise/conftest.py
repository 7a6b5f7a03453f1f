"""The student's first run: the handout, untouched, run whole once for the exercise tests.

`churnlab handout` writes the student edition of this checkout; a student with a Unicode
name runs `churnlab workbook` inside it with the handout's own package. The handout tests
read its console output and report, the "Your work" tests its summary and executed
notebooks (they share the ``handout-run`` xdist group).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import CHURNLAB, UNICODE_NAME

from churnlab import runner, store


@dataclass(frozen=True)
class HandoutRun:
    """What `churnlab workbook --student UNICODE_NAME` did inside a fresh handout."""

    handout: Path
    returncode: int
    stdout: str
    stderr: str

    @property
    def reports(self) -> Path:
        return self.handout / "reports"

    def workbook_run(self) -> runner.WorkbookRun:
        """The run as the runner describes it (for rebuilding its report)."""
        return runner.WorkbookRun(
            runs=[
                runner.NotebookRun(name, self.reports / "executed" / f"{name}.ipynb", 0.0)
                for name in runner.NOTEBOOKS
            ],
            report=self.reports / "workbook.html",
            registry_label=str(self.reports / "registry"),
            parameters={"student": UNICODE_NAME},
        )


@pytest.fixture(scope="session")
def untouched_handout(tmp_path_factory) -> HandoutRun:
    """A fresh handout of this checkout, run whole by its own console script and package."""
    folder = tmp_path_factory.mktemp("student")
    handout = folder / "handout"
    env = {k: v for k, v in os.environ.items() if k not in store.SERVER_VARIABLES}
    env["CHURNLAB_HOME"] = str(folder / "home")
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
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    return HandoutRun(handout, done.returncode, done.stdout, done.stderr)
