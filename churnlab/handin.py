"""Handing in through the server: a student's report and its JSON, logged to a run in their
experiment, with what a grader needs to trust it (``churnlab handin``; ``make workbook``
does it after a run on a class server).

The run (named ``hand-in``) carries the report as artifacts (``handin/workbook.html``,
``handin/workbook.json``) and, as tags, its kind (replay or lab), its SHA-256, the handout's
commit, the login the server checked, the model it describes and what production's backend
answered for Task 4. The teacher's ``churnlab grade --server`` reads the latest one. On the
embedded registry there is nobody to hand in to: that is refused in one line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churnlab import store, tags
from churnlab.errors import InputError

#: where the hand-in run keeps the report
ARTIFACT_DIR = "handin"
REPORT, SUMMARY = "workbook.html", "workbook.json"
RUN_NAME = "hand-in"
#: the file ``churnlab handout`` writes into the student edition: the teacher's commit
HANDOUT_FILE = "handout.json"


@dataclass(frozen=True)
class HandIn:
    """One hand-in: its run, where, by whom, and the report's kind and digest."""

    run_id: str
    experiment: str
    login: str
    kind: str
    digest: str

    def line(self) -> str:
        """What ``churnlab handin`` prints."""
        return (
            f"handed in the {self.kind} report ({self.digest[:12]}) to {store.display_uri()} "
            f"as {self.login}: run {self.run_id} in experiment {self.experiment}"
        )


def handout_commit(root: Path | None = None) -> str:
    """The commit the student's handout was written from (``handout.json``), else this
    checkout's own commit, else ``unknown``."""
    from churnlab import train

    root = root or store.project_root()
    try:
        found = json.loads((root / HANDOUT_FILE).read_text(encoding="utf-8"))
        commit = str(found.get("commit") or "")
    except (OSError, ValueError, AttributeError):
        commit = ""
    return commit or train.git_commit(root) or "unknown"


def digest_of(path: Path) -> str:
    """The SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def hand_in(report: Path, *, echo: Callable[[str], None] | None = None) -> HandIn:
    """Hand in ``report`` (and the JSON beside it) to the tracking server the student uses.

    Refused on the embedded registry, and for a file that is not a churnlab report. What
    production's backend answers right now (Task 4) is looked at and recorded first.
    """
    from churnlab import exercises, work
    from churnlab.registry import PRODUCTION, Registry

    report = Path(report)
    if not store.is_remote():  # asked before configure(), which would create the store
        raise InputError(
            "nothing to hand in to: the registry is the embedded store on this machine; "
            "`churnlab login URL` (your class server) first, then run the workbook there"
        )
    store.configure()
    try:
        page = report.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise InputError(
            f"{report}: no report to hand in (make workbook or churnlab report writes one)"
        ) from None
    summary = work.read_work(page)
    if summary is None:
        raise InputError(f"{report} is not a churnlab workbook report")
    beside = report.with_suffix(".json")
    registry = Registry(summary.get("model_name") or None)
    login, source = registry.identity()
    served: dict[str, Any] | None = None
    exercises.verdict(4, registry=registry)  # records production's live answer, if one runs
    holder = registry.holder(PRODUCTION)
    if holder is not None:
        found = registry.evidence(holder, with_metrics=False).tags.get(tags.EXERCISE_SERVED)
        served = json.loads(found) if found else None
    digest = digest_of(report)
    run_tags = {
        tags.HANDIN: str(summary.get("kind") or "replay"),
        tags.HANDIN_DIGEST: digest,
        tags.HANDIN_COMMIT: handout_commit(),
        tags.HANDIN_LOGIN: login if source == "server" else f"{login} (declared)",
        tags.HANDIN_MODEL: registry.model_name,
        tags.HANDIN_SERVED: json.dumps(served, sort_keys=True) if served else "",
    }
    artifacts = {f"{ARTIFACT_DIR}/{REPORT}": report}
    if beside.is_file():
        artifacts[f"{ARTIFACT_DIR}/{SUMMARY}"] = beside
    run_id = registry.log_run(RUN_NAME, run_tags, artifacts)
    done = HandIn(run_id, store.experiment_name(), login, run_tags[tags.HANDIN], digest)
    if echo is not None:
        echo(done.line())
    return done


__all__ = [
    "ARTIFACT_DIR",
    "HANDOUT_FILE",
    "REPORT",
    "RUN_NAME",
    "SUMMARY",
    "HandIn",
    "digest_of",
    "hand_in",
]
