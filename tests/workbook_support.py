"""One real run of ``churnlab workbook``, shared by the runner and browser tests.

The whole workbook takes a minute or more, so it runs once per session: the first test
that asks for it starts the real console script on a fresh registry in a temporary
folder; later tests read what it wrote (executed notebooks, report, registry).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from churnlab import store

CHURNLAB = str(Path(sys.executable).with_name("churnlab"))


@dataclass(frozen=True)
class WorkbookOutput:
    """What one ``churnlab workbook`` process left behind."""

    folder: Path
    returncode: int
    stdout: str
    stderr: str

    @property
    def report(self) -> Path:
        return self.folder / "workbook.html"

    @property
    def executed(self) -> Path:
        return self.folder / "executed"

    @property
    def registry_home(self) -> Path:
        return self.folder / "registry"


#: set as the tracking password and token for the default run: it must appear nowhere
#: in what the run writes (tests/test_reliability_secrets.py greps for it)
SECRET_MARKER = f"wb-secret-{os.getpid()}-7c1e9a"
SECRETS = {
    "MLFLOW_TRACKING_TOKEN": SECRET_MARKER,
    "MLFLOW_TRACKING_PASSWORD": SECRET_MARKER,
    "MLFLOW_TRACKING_USERNAME": "student",
}


def run_workbook(
    folder: Path, *args: str, timeout: float = 900, secrets: bool = False
) -> WorkbookOutput:
    """Run the real console script with ``--output folder``; capture everything.

    ``secrets`` puts :data:`SECRETS` in the environment (no tracking server is set, so
    they are merely present, as on a student's machine configured for DagsHub).
    """
    env = {k: v for k, v in os.environ.items() if k not in store.SERVER_VARIABLES}
    if secrets:
        env.update(SECRETS)
    env["CHURNLAB_HOME"] = str(folder / "own-home")  # must stay untouched without --reuse
    env["CHURNLAB_ACTOR"] = "pytest"
    done = subprocess.run(
        [CHURNLAB, "workbook", "--output", str(folder), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=folder.parent,
    )
    return WorkbookOutput(folder, done.returncode, done.stdout, done.stderr)


_DEFAULT_RUN: list[WorkbookOutput] = []


def default_run(tmp_path_factory) -> WorkbookOutput:
    """The whole workbook with default parameters, once per session."""
    # (not functools.cache: pytest's TempPathFactory is not hashable)
    if not _DEFAULT_RUN:
        folder = tmp_path_factory.mktemp("workbook") / "reports"
        _DEFAULT_RUN.append(run_workbook(folder, secrets=True))
    return _DEFAULT_RUN[0]
