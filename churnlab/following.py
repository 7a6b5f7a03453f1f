"""A backend that follows its alias, as 04 shows it: start it, read what it serves, wait for
a switch, list its switches; and the backends a notebook leaves running, stopped."""

from __future__ import annotations

import atexit
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from churnlab import store
from churnlab.backend import running_backends

if TYPE_CHECKING:
    import pandas as pd

    from churnlab.backend import Backend

#: the ``/health`` fields of a following backend that two correct runs share (``last_check``
#: and the switches' times change on every run)
FOLLOW_FIELDS: tuple[str, ...] = ("model_version", "alias_version", "following", "reason")
#: seconds a following backend is given to load, prove and swap in a version its alias names
SWITCH_TIMEOUT_S = 120.0


def start_following(
    stage: str, *, poll_interval_s: float = 0.5, model_name: str | None = None
) -> Backend:
    """Start a backend that follows ``stage``'s alias (as ``churnlab serve --follow``,
    reading the alias every ``poll_interval_s`` seconds) and wait until it answers.

    Stop it with its ``stop()``; it is stopped at the latest when this process exits.
    """
    from churnlab.backend import Backend
    from churnlab.follow import validate_poll_interval

    seconds = validate_poll_interval(poll_interval_s, "poll_interval_s")
    env = {"MODEL_FOLLOW": "true", "MODEL_POLL_INTERVAL": f"{seconds:g}"}
    started = Backend(stage, model_name=model_name or store.model_name(), env=env)
    atexit.register(started.stop)
    return started.start().wait_ready()


def follow_health(backend: Backend) -> dict[str, Any]:
    """The backend's ``/health`` answer, only the fields in :data:`FOLLOW_FIELDS`."""
    answer = backend.health()
    return {name: answer.get(name) for name in FOLLOW_FIELDS}


def wait_until_serving(
    backend: Backend, version: int, timeout: float = SWITCH_TIMEOUT_S
) -> dict[str, Any]:
    """Wait until a following backend serves ``version`` and its alias names it; return
    :func:`follow_health`. Raises :class:`~churnlab.backend.BackendFailed` after
    ``timeout`` seconds, naming what it serves instead and why."""
    from churnlab.backend import BackendFailed

    deadline = time.monotonic() + timeout
    while True:
        health = follow_health(backend)
        if health["model_version"] == int(version) == health["alias_version"]:
            return health
        if time.monotonic() >= deadline:
            raise BackendFailed(
                f"the {backend.stage} backend still serves v{health['model_version']} after "
                f"{timeout:.0f} s (@{backend.stage} names v{health['alias_version']}): "
                f"{health['reason'] or 'no switch yet'}",
                backend.output(),
            )
        time.sleep(0.1)


def switches_table(backend: Backend) -> pd.DataFrame:
    """Every switch a following backend made (its ``/metadata``), oldest first: from, to,
    trigger (the times and load durations are left out: they change on every run)."""
    import pandas as pd

    response = backend.session.get(backend.url + "/metadata", timeout=10)
    response.raise_for_status()
    rows = [
        {"from": f"v{s['from']}", "to": f"v{s['to']}", "trigger": s["trigger"]}
        for s in response.json().get("switches") or []
    ]
    return pd.DataFrame(rows, columns=["from", "to", "trigger"])


def stop_backends() -> int:
    """Stop the serving backends this process started and left running; return how many."""
    stopped = 0
    for found in running_backends(children_only=True):
        try:
            os.kill(found.pid, signal.SIGTERM)
            os.waitpid(found.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            continue
        stopped += 1
    return stopped


__all__ = [
    "FOLLOW_FIELDS",
    "follow_health",
    "start_following",
    "stop_backends",
    "switches_table",
    "wait_until_serving",
]
