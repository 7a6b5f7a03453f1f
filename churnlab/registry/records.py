"""The registry's records (events, approvals, moves, evidence) and the parsers of what people type.

Nothing here talks to MLflow: these are plain values, built from tags or from a command line.
"""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from churnlab import tags
from churnlab.errors import InputError

STAGING, PRODUCTION = "staging", "production"
ALIASES: dict[str, str] = {STAGING: "Staging", PRODUCTION: "Production"}
MAX_REASON = 2000  # characters; an event is stored in one registered-model tag
#: how an actor was established: the server's login, or a name the user declared
SERVER, DECLARED = "server", "declared"


@dataclass(frozen=True)
class Event:
    """One move of an alias: who moved which alias from which version to which, and why."""

    time: str
    actor: str
    alias: str
    from_version: int | None
    to_version: int | None
    action: str  # stage | promote | rollback | repair | unstage
    reason: str = ""
    override: bool = False
    actor_source: str = DECLARED  # server: the login the server checked; declared: a name
    approved_by: tuple[str, ...] = ()  # who approved the version a promotion moved to

    def to_dict(self) -> dict[str, Any]:
        """The stored form; ``actor_source`` and ``approved_by`` only when they say something,
        so a declared event keeps the shape every earlier churnlab reads."""
        out = asdict(self)
        if self.actor_source == DECLARED:
            del out["actor_source"]
        if self.approved_by:
            out["approved_by"] = list(self.approved_by)
        else:
            del out["approved_by"]
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Event:
        values = dict(values)
        values["approved_by"] = tuple(values.get("approved_by") or ())
        return cls(**values)


@dataclass(frozen=True)
class Approval:
    """One person's approval of one exact version for production (four eyes)."""

    time: str
    actor: str
    version: int
    reason: str
    actor_source: str = DECLARED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Approval:
        return cls(**values)


@dataclass(frozen=True)
class Move:
    """The result of a stage, promote or rollback: the event and the line to print."""

    event: Event
    message: str
    archived: int | None = None


def actor() -> str:
    """Who is acting: ``CHURNLAB_ACTOR``, ``GITHUB_ACTOR``, ``USER``, or the login name."""
    for key in ("CHURNLAB_ACTOR", "GITHUB_ACTOR", "USER", "USERNAME"):
        if os.environ.get(key):
            return os.environ[key]
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def parse_version(text: str | int, model_name: str) -> int:
    """Turn ``6``, ``"6"``, ``"v6"`` or ``"models:/<name>/6"`` into 6; refuse anything else."""
    if isinstance(text, int) and not isinstance(text, bool):
        number = text
    else:
        raw = str(text).strip()
        m = re.fullmatch(r"(?:models:/)?(?:(?P<name>[^/@]+)/)?v?(?P<num>\d+)", raw)
        if not m:
            raise InputError(f"version must be a positive whole number like 3, got {raw!r}")
        if m.group("name") and m.group("name") != model_name:
            raise InputError(
                f"version {raw!r} belongs to model {m.group('name')!r}, not {model_name!r}"
            )
        number = int(m.group("num"))
    if number < 1:
        raise InputError(f"version must be a positive whole number like 3, got {text!r}")
    return number


def parse_stage(text: str) -> str:
    """Turn ``staging`` / ``Production`` / `` production `` into the alias; refuse others."""
    key = str(text).strip().lower()
    if key not in ALIASES:
        raise InputError(f"stage must be one of {list(ALIASES)}, got {text!r}")
    return key


def verdicts_of(found: dict[str, str]) -> dict[str, str]:
    """The gate and smoke verdicts in a version's tags (a fresh version's where none is set)."""
    return {
        kind: found.get(tag, tags.INITIAL_VERDICTS[tag])
        for kind, (tag, _) in tags.VERDICT_TAGS.items()
    }


@dataclass(frozen=True)
class Evidence:
    """What a version carries: its run, verdicts, checks, data digests and metrics.

    ``metrics``, ``params`` and ``run_tags`` come from the version's run (empty when read
    without it).
    """

    model_name: str
    version: int
    run_id: str
    description: str
    tags: dict[str, str]
    metrics: dict[str, float]
    params: dict[str, str] = field(default_factory=dict)
    run_tags: dict[str, str] = field(default_factory=dict)

    @property
    def estimator(self) -> str | None:
        return self.tags.get(tags.ESTIMATOR)

    @property
    def gate(self) -> str:
        """The gate's verdict: pending, passed or failed."""
        return verdicts_of(self.tags)["gate"]

    @property
    def smoke(self) -> str:
        """The smoke check's verdict: none, pending, passed or failed."""
        return verdicts_of(self.tags)["smoke"]

    @property
    def gate_checks(self) -> dict[str, str]:
        """Each gate check's status, by check name."""
        found = tags.under(self.tags, tags.GATE_PREFIX)
        return {k: v for k, v in found.items() if k != "verdict"}

    @property
    def smoke_checks(self) -> dict[str, str]:
        """Each smoke check's status and each recorded figure, by name."""
        found = tags.under(self.tags, tags.SMOKE_PREFIX)
        return {k: v for k, v in found.items() if k != "verdict"}

    @property
    def data(self) -> dict[str, str]:
        """The digest of each data snapshot, by kind."""
        return tags.under(self.tags, tags.DATA_PREFIX)


def now() -> str:
    """The time an event or an approval is recorded at: UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def label(version: int | None) -> str:
    """``v3``, or ``nothing`` for no version (in the lines status and repair print)."""
    return "nothing" if version is None else f"v{version}"
