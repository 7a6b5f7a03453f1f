"""The history of moves and the approvals, kept as tags on the registered model: read and appended.

Each event or approval is one JSON tag (``churnlab.event.<time ns>.<nonce>``,
``churnlab.approval.…``), so two people recording at once never overwrite each other and a
team sharing a server shares the history. Tags churnlab did not write are skipped.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from churnlab import tags
from churnlab.registry.boundary import Boundary
from churnlab.registry.records import PRODUCTION, Approval, Event


def _tagged(found: dict[str, str], prefix: str) -> list[tuple[str, dict]]:
    """The JSON records under ``prefix`` in the model's tags, by time (their key)."""
    out = []
    for key in sorted(k for k in found if k.startswith(prefix)):
        try:
            value = json.loads(found[key])
        except ValueError:
            continue  # a tag we did not write
        if isinstance(value, dict):
            out.append((key[len(prefix) :], value))
    return out


def _records(found: dict[str, str], prefix: str, make) -> list[tuple[str, Any]]:
    """The records under ``prefix`` built by ``make``, by time; tags it refuses are skipped."""
    out = []
    for key, value in _tagged(found, prefix):
        try:
            out.append((key, make(value)))
        except TypeError:
            continue  # a tag we did not write
    return out


def events_in(found: dict[str, str]) -> list[Event]:
    """Every recorded move in the model's tags, oldest first (old events read as declared)."""
    return [event for _, event in _records(found, tags.EVENT_PREFIX, Event.from_dict)]


def approvals_in(found: dict[str, str], version: int | None = None) -> list[Approval]:
    """Every recorded approval in the model's tags (of ``version`` only, when given)."""
    return [
        approval
        for _, approval in _records(found, tags.APPROVAL_PREFIX, Approval.from_dict)
        if version is None or approval.version == int(version)
    ]


def timeline_in(found: dict[str, str]) -> list[dict[str, Any]]:
    """Moves and approvals as plain dicts, in the order they were recorded."""
    merged = [(key, e.to_dict()) for key, e in _records(found, tags.EVENT_PREFIX, Event.from_dict)]
    merged += [
        (key, {"action": "approve", "alias": PRODUCTION, **a.to_dict()})
        for key, a in _records(found, tags.APPROVAL_PREFIX, Approval.from_dict)
    ]
    return [record for _, record in sorted(merged, key=lambda kv: kv[0])]


def append(mlflow: Boundary, record: Event | Approval) -> None:
    """Record an event or an approval as a new tag on the registered model."""
    prefix = tags.APPROVAL_PREFIX if isinstance(record, Approval) else tags.EVENT_PREFIX
    key = f"{prefix}{time.time_ns():020d}.{uuid.uuid4().hex[:8]}"
    mlflow.set_model_tag(key, json.dumps(record.to_dict(), sort_keys=True))
