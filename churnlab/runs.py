"""What one run of the workbook did: the notebooks in order, and how each one ended.

Made by the runner (:mod:`churnlab.runner`), read by the report (:mod:`churnlab.report`):
below both, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

NOTEBOOKS = ("01_train", "02_gate", "03_staging", "04_promote", "05_verify")


@dataclass
class NotebookRun:
    """One executed notebook: where it was written, how long it took, how it ended."""

    name: str
    path: Path
    seconds: float
    status: str = "ok"  # ok | failed
    error: str = ""


@dataclass
class WorkbookRun:
    """What ``churnlab workbook`` did."""

    runs: list[NotebookRun]
    report: Path | None
    registry_label: str
    parameters: dict[str, Any]
    seconds: float = 0.0

    @property
    def failed(self) -> NotebookRun | None:
        """The notebook that failed, or None."""
        return next((r for r in self.runs if r.status != "ok"), None)

    @property
    def notebooks(self) -> tuple[str, ...]:
        """Every notebook of the workbook, in order, whether this run ran it or not."""
        return NOTEBOOKS
