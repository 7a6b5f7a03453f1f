"""The "Your turn" tasks' checks: is each task done, judged from the registry alone?

Each check reads what the registry recorded (versions, their tags, the history of moves)
and, for Task 4, the serving backends this process runs; never a notebook variable. It
answers with a :class:`Verdict`: done with the evidence, or not yet with one line naming
what is missing and how to do it. :func:`check` prints that line for a notebook's check
cell and never raises, except under nbgrader's autograder
(``NBGRADER_EXECUTION=autograde``), where a task not done is an ``AssertionError``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from churnlab import store, tags

if TYPE_CHECKING:
    from churnlab.registry import Event, Registry

#: the exercise's first run required this accuracy; every candidate fails it
STRICT_ACCURACY = 0.9

TASKS: dict[str, str] = {
    "task1": "Train a candidate of your own; the 0.90 gate refuses it, the default policy passes it",
    "task2": "Stage your candidate and smoke-check it",
    "task3": "Promote your candidate by number, roll back, promote it again",
    "task4": "Production serves your version; the newest version is served by nobody",
}


@dataclass(frozen=True)
class Verdict:
    """One task's verdict: done with its evidence, or what is missing."""

    id: str
    title: str
    done: bool
    evidence: str = ""
    missing: str = ""

    def line(self) -> str:
        """``Task N done: <evidence>`` or ``Task N not yet: <what is missing>``."""
        number = self.id.removeprefix("task")
        if self.done:
            return f"Task {number} done: {self.evidence}"
        return f"Task {number} not yet: {self.missing}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunningBackend:
    """A serving backend process this process started and that still runs."""

    pid: int
    stage: str
    model_name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# ---------------------------------------------------------------------------- reading
def is_own(version: Any) -> bool:
    """True for a model version (MLflow's object) tagged as the student's own candidate."""
    return tags.EXERCISE_OWN in (getattr(version, "tags", None) or {})


def own_versions(registry: Registry) -> list[int]:
    """The student's own candidates, oldest first."""
    return [int(v.version) for v in registry.versions() if is_own(v)]


def running_backends() -> list[RunningBackend]:
    """The serving backends (``uvicorn serving.app:app``) this process started, still running.

    Read from ``/proc``: the children of this process, their command line and environment.
    Empty where ``/proc`` is absent.
    """
    from churnlab.backend import APP

    found = []
    me = str(os.getpid())
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[1] != me:
                continue
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if APP not in argv or "--port" not in argv:
                continue
            environ = dict(
                item.split("=", 1)
                for item in (entry / "environ").read_bytes().decode(errors="replace").split("\0")
                if "=" in item
            )
            port = int(argv[argv.index("--port") + 1])
        except (OSError, IndexError, ValueError):
            continue
        found.append(
            RunningBackend(
                int(entry.name),
                environ.get("MODEL_STAGE", ""),
                environ.get("MODEL_NAME", store.DEFAULT_MODEL_NAME),
                port,
            )
        )
    return sorted(found, key=lambda b: b.pid)


def _health(backend: RunningBackend) -> dict[str, Any] | None:
    import requests

    try:
        answer = requests.get(backend.url + "/health", timeout=5)
        return answer.json() if answer.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def _json_tag(found: dict[str, str], key: str) -> dict[str, Any] | None:
    try:
        value = json.loads(found.get(key, ""))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _params(params: dict[str, str]) -> str:
    """The hyperparameters a version's run logged (``clf_*``), as ``name=value`` text."""
    shown = [f"{k[4:]}={v}" for k, v in sorted(params.items()) if k.startswith("clf_")]
    return ", ".join(shown) or "defaults"


def _verdict(task: str, done: bool, text: str) -> Verdict:
    if done:
        return Verdict(task, TASKS[task], True, evidence=text)
    return Verdict(task, TASKS[task], False, missing=text)


# ---------------------------------------------------------------------------- the tasks
def task1(registry: Registry, part: int | None = None) -> Verdict:
    """Task 1: an own candidate; the 0.90 gate failed it; the default policy passed it.

    ``part=1`` checks the first part only (01_train: the candidate is registered).
    """
    own = own_versions(registry)
    if not own:
        return _verdict(
            "task1",
            False,
            "no candidate of your own is registered: in 01's Your turn cell, train one with "
            "workbook.train_own(story, ESTIMATOR, {HYPERPARAMETER: VALUE})",
        )
    mine = own[-1]
    evidence = registry.evidence(mine)
    trained = (
        f"v{mine} is yours: {evidence.estimator} ({_params(evidence.params)}), "
        f"accuracy {evidence.metrics.get('accuracy', float('nan')):.4f}"
    )
    if part == 1:
        return _verdict("task1", True, f"{trained}; replay the gate on it in 02")
    strict = _json_tag(evidence.tags, tags.EXERCISE_STRICT_GATE)
    if strict is None:
        return _verdict(
            "task1",
            False,
            f"the exercise's 0.90 gate was not replayed on v{mine}: in 02's Your turn cell run "
            f"workbook.replay_gate(registry, {mine}, accuracy_min=0.9)",
        )
    if strict.get("verdict") != "failed":
        return _verdict(
            "task1",
            False,
            f"the replayed gate at accuracy_min={strict.get('accuracy_min')} passed v{mine}; "
            "replay it with accuracy_min=0.9, which every candidate fails",
        )
    if evidence.gate != "passed":
        return _verdict(
            "task1",
            False,
            f"v{mine}'s gate verdict under the default policy is {evidence.gate}: run "
            f"gate.run_gate({mine}, registry=registry) after the replay (if it fails, train a "
            "better candidate in 01)",
        )
    return _verdict(
        "task1",
        True,
        f"{trained}; {strict.get('summary')}, yet it stayed registered and unstaged; "
        f"the default policy passed it",
    )


def task2(registry: Registry) -> Verdict:
    """Task 2: an own candidate was staged and its smoke check passed."""
    events = registry.history()
    for mine in reversed(own_versions(registry)):
        staged = [e for e in events if e.action == "stage" and e.to_version == mine]
        evidence = registry.evidence(mine, with_metrics=False)
        if staged and evidence.smoke == "passed":
            checks = ", ".join(
                k for k, v in evidence.smoke_checks.items() if v in ("pass", "fail", "skip")
            )
            return _verdict(
                "task2",
                True,
                f"{move_line(registry.model_name, staged[-1])}; its smoke check passed ({checks})",
            )
    mine = max(own_versions(registry), default=None)
    if mine is None:
        return _verdict("task2", False, "no candidate of your own yet: do Task 1 first (01, 02)")
    if registry.verdicts(mine)["gate"] != "passed":
        return _verdict(
            "task2", False, f"v{mine} has not passed the default gate: finish Task 1 in 02 first"
        )
    return _verdict(
        "task2",
        False,
        f"v{mine} was not staged and smoke-checked: in 03's Your turn cell run "
        f"registry.stage({mine}) then smoke.smoke_check({mine}, stage='staging', "
        "registry=registry)",
    )


def move_line(model_name: str, event: Event) -> str:
    """The line ``churnlab stage`` or ``churnlab promote`` printed for a recorded move."""
    verb = {"stage": "Staged", "promote": "Promoted", "rollback": "Rolled back"}[event.action]
    stage = "Production" if event.alias == "production" else "Staging"
    archived = f" (archived v{event.from_version})" if event.from_version is not None else ""
    note = f" [override: {event.reason}]" if event.override else ""
    return f"{verb} {model_name} v{event.to_version} -> {stage}{archived}{note}"


def task3(registry: Registry) -> Verdict:
    """Task 3: an own candidate promoted, production rolled back from it, promoted again."""
    own = set(own_versions(registry))
    moves = [e for e in registry.history() if e.alias == "production"]
    best = ""
    for mine in sorted(own, reverse=True):
        steps = iter(moves)  # in order: a promotion, then a rollback from it, then another
        first = next((e for e in steps if e.action == "promote" and e.to_version == mine), None)
        back = next((e for e in steps if e.action == "rollback" and e.from_version == mine), None)
        again = next((e for e in steps if e.action == "promote" and e.to_version == mine), None)
        if first and back and again:
            return _verdict(
                "task3",
                True,
                f"{move_line(registry.model_name, first)}; rolled back to "
                f"v{back.to_version}; promoted again: {move_line(registry.model_name, again)}",
            )
        if not best:
            if first is None:
                best = (
                    f"v{mine} was never promoted: in 04's Your turn cell run "
                    f"registry.promote({mine}) (or with override=True, reason=TEXT)"
                )
            elif back is None:
                best = (
                    f"v{mine} was promoted but production was not rolled back from it: run "
                    "registry.rollback(reason=TEXT), then promote it again"
                )
            else:
                best = f"after the rollback, promote v{mine} again: registry.promote({mine})"
    if not own:
        best = "no candidate of your own yet: do Tasks 1 and 2 first"
    return _verdict("task3", False, best)


def task4(registry: Registry, live: bool = True) -> Verdict:
    """Task 4: production's backend serves the student's version; the newest one nobody.

    ``live``: look at the backends this process runs and record what production's
    answered on the version (:data:`churnlab.tags.EXERCISE_SERVED`); otherwise, and when none runs, judge the
    recorded answer against the registry as it is now.
    """
    from churnlab.registry import PRODUCTION, STAGING

    own = own_versions(registry)
    if not own:
        return _verdict("task4", False, "no candidate of your own yet: do Tasks 1 to 3 first")
    production = registry.holder(PRODUCTION)
    if production not in own:
        shown = "nothing" if production is None else f"v{production}"
        return _verdict(
            "task4",
            False,
            f"production holds {shown}, not your candidate (v{own[-1]}): promote it in 04 (Task 3)",
        )
    newest = registry.latest_version()
    holders = {registry.holder(STAGING), production}
    answers: list[dict[str, Any]] = []
    if live:
        for backend in running_backends():
            if backend.model_name != registry.model_name:
                continue
            health = _health(backend)
            if health is not None:
                answers.append(health)
    served = next((h for h in answers if h.get("stage") == "production"), None)
    if served is not None and served.get("model_version") == production:
        record = {
            "health": served,
            "newest": newest,
            "served": [h.get("model_version") for h in answers],
        }
        registry.set_version_tags(
            production, {tags.EXERCISE_SERVED: json.dumps(record, sort_keys=True)}
        )
    elif served is not None:
        return _verdict(
            "task4",
            False,
            f"the running production backend serves v{served.get('model_version')}, but "
            f"@production names v{production}: restart it",
        )
    else:
        record = _json_tag(
            registry.evidence(production, with_metrics=False).tags, tags.EXERCISE_SERVED
        )
        if record is None:
            return _verdict(
                "task4",
                False,
                "no production backend is running: in 05's Your turn cell start one, "
                "backend.Backend('production').start().wait_ready(), and print its /health",
            )
        served = record.get("health") or {}
        if served.get("model_version") != production:
            return _verdict("task4", False, "the recorded /health answer is not production's")
    unserved = newest is not None and newest > production and newest not in holders
    unserved = unserved and newest not in (record.get("served") or [])
    if not unserved:
        return _verdict(
            "task4",
            False,
            f"the newest registered version (v{newest}) must be one nobody serves: run 05's "
            "walkthrough, which registers the latest code on main",
        )
    return _verdict(
        "task4",
        True,
        f"/health of production: {served.get('model_name')} v{served.get('model_version')} "
        f"(stage {served.get('stage')}, status {served.get('status')}); the newest version, "
        f"v{newest}, is served by nobody",
    )


CHECKS: dict[str, Callable[..., Verdict]] = {
    "task1": task1,
    "task2": task2,
    "task3": task3,
    "task4": task4,
}


# ---------------------------------------------------------------------------- entry points
def verdict(
    task: int | str,
    *,
    registry: Registry | None = None,
    model_name: str = store.DEFAULT_MODEL_NAME,
    **options: Any,
) -> Verdict:
    """One task's verdict; any failure to read the registry is a "not yet", never a raise."""
    key = task if isinstance(task, str) and task.startswith("task") else f"task{task}"
    if key not in CHECKS:
        raise ValueError(f"task must be one of {list(CHECKS)}, got {task!r}")
    try:
        from churnlab.errors import InputError
        from churnlab.registry import Registry

        registry = registry or Registry(model_name)
        try:
            registry.model()
        except InputError:
            return _verdict(
                key,
                False,
                f"nothing is registered yet: run 01_train (no model {registry.model_name!r})",
            )
        return CHECKS[key](registry, **options)
    except Exception as exc:  # noqa: BLE001 - a check explains, it never shows a traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return _verdict(key, False, f"the registry could not be read ({store.redact(first)})")


def verdicts(
    registry: Registry | None = None, *, model_name: str = store.DEFAULT_MODEL_NAME
) -> list[Verdict]:
    """Every task's verdict from what the registry recorded (no backend is looked at)."""
    return [
        verdict(
            key,
            registry=registry,
            model_name=model_name,
            **({"live": False} if key == "task4" else {}),
        )
        for key in CHECKS
    ]


def check(
    task: int,
    part: int | None = None,
    *,
    registry: Registry | None = None,
    model_name: str = store.DEFAULT_MODEL_NAME,
) -> None:
    """A check cell: print the task's verdict line.

    Under nbgrader's autograder (``NBGRADER_EXECUTION=autograde``) a task not done raises
    ``AssertionError`` with that line, so the point is awarded only when it is done.
    """
    options = {"part": part} if part is not None else {}
    found = verdict(task, registry=registry, model_name=model_name, **options)
    print(found.line())
    if not found.done and os.environ.get("NBGRADER_EXECUTION") == "autograde":
        raise AssertionError(found.line())


__all__ = [
    "TASKS",
    "RunningBackend",
    "Verdict",
    "check",
    "is_own",
    "own_versions",
    "move_line",
    "running_backends",
    "task1",
    "task2",
    "task3",
    "task4",
    "verdict",
    "verdicts",
]
