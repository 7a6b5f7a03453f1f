"""What one run of the workbook did: the notebooks in order, and how each one ended.

Made by the runner (:mod:`churnlab.runner`: a replay, or the lab's notebooks as saved), read
by the report (:mod:`churnlab.report`): below both, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

NOTEBOOKS = ("01_train", "02_gate", "03_staging", "04_promote", "05_verify")
#: the kinds of report: a replay executed headless, or the notebooks as saved in the lab
REPLAY, LAB = "replay", "lab"
#: the model a run uses when nobody names one
DEFAULT_MODEL = "churn-model"


@dataclass
class NotebookRun:
    """One notebook of a run: where it is, how long it took, how it ended.

    ``status``: ``ok`` or ``failed`` (executed), or ``saved``, ``error`` (an error output
    saved) or ``not run`` (no outputs) for a notebook as saved in JupyterLab.
    ``exit_code``: what a failure means for ``churnlab workbook`` (a churnlab error's own
    code, such as 4 for a permission the server refused; else 1).
    """

    name: str
    path: Path
    seconds: float
    status: str = "ok"
    error: str = ""
    exit_code: int = 0


@dataclass
class WorkbookRun:
    """What ``churnlab workbook`` did (``kind`` replay), or what ``churnlab report`` found in
    the notebooks as saved in JupyterLab (``kind`` lab), on ``model_name``."""

    runs: list[NotebookRun]
    report: Path | None
    registry_label: str
    parameters: dict[str, Any]
    seconds: float = 0.0
    kind: str = REPLAY
    model_name: str = DEFAULT_MODEL

    @property
    def failed(self) -> NotebookRun | None:
        """The notebook that failed, or None."""
        return next((r for r in self.runs if r.status == "failed"), None)

    @property
    def notebooks(self) -> tuple[str, ...]:
        """Every notebook of the workbook, in order, whether this run ran it or not."""
        return NOTEBOOKS
