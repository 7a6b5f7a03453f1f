"""The "Your turn" tasks' checks: is each task done, judged from the registry alone?

Each check reads what the registry recorded (versions, their tags, the history of moves)
and, for Task 4, the serving backends running on this machine
(:func:`churnlab.backend.running_backends`); never a notebook variable.
It answers with a :class:`Verdict`: done with the evidence, or not yet with one line naming
the first step still missing (the steps before it are checked first) and how to take it,
in Python terms and naming the student's candidate as ``workbook.my_candidate(registry)``,
so that the line holds in the lab and in a replay alike. :func:`check` prints that line
for a notebook's check cell and never raises, except under nbgrader's autograder
(``NBGRADER_EXECUTION=autograde``), where a task not done is an ``AssertionError``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from churnlab import store, tags
from churnlab.backend import RunningBackend, registry_of, running_backends

if TYPE_CHECKING:
    from churnlab.registry import Event, Registry

#: the exercise's first run required this accuracy; every candidate fails it
STRICT_ACCURACY = 0.9
#: how the task lines name the student's candidate in code (never a literal number)
MINE = "workbook.my_candidate(registry)"

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
    part: int | None = None  # a check of one part only (01 checks Task 1's first part)

    def line(self) -> str:
        """``Task N done: <evidence>`` or ``Task N not yet: <what is missing>`` (``Task N,
        part P ...`` for one part)."""
        number = self.id.removeprefix("task")
        if self.part is not None:
            number += f", part {self.part}"
        if self.done:
            return f"Task {number} done: {self.evidence}"
        return f"Task {number} not yet: {self.missing}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- reading
def is_own(version: Any) -> bool:
    """True for a model version (MLflow's object) tagged as the student's own candidate."""
    return tags.EXERCISE_OWN in (getattr(version, "tags", None) or {})


def own_versions(registry: Registry) -> list[int]:
    """The student's own candidates, oldest first."""
    return [int(v.version) for v in registry.versions() if is_own(v)]


def my_version(registry: Registry) -> int | None:
    """The student's candidate now: the newest own one (``workbook.train_own``), or None."""
    own = own_versions(registry)
    return own[-1] if own else None


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


def _params(evidence: Any) -> dict[str, Any]:
    """The hyperparameters the student set on an own candidate (recorded by ``train_own``,
    else read from the run's ``clf_*`` parameters)."""
    recorded = _json_tag(evidence.tags, tags.EXERCISE_PARAMS)
    if recorded is not None:
        return recorded
    return {k[4:]: v for k, v in sorted(evidence.params.items()) if k.startswith("clf_")}


def _shown(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "defaults"


def _verdict(task: str, done: bool, text: str) -> Verdict:
    if done:
        return Verdict(task, TASKS[task], True, evidence=text)
    return Verdict(task, TASKS[task], False, missing=text)


def _yours(version: int) -> str:
    return f"your candidate (v{version})"


# ---------------------------------------------------------------------------- the tasks
def task1(registry: Registry, part: int | None = None) -> Verdict:
    """Task 1: an own candidate with a hyperparameter the student set; the exercise's 0.90
    gate replayed on it failed; then the default policy passed it. Done when one of the
    student's candidates did all of it; otherwise the newest one's first missing step.

    ``part=1`` checks the first part only (01_train: the candidate is registered).
    """
    own = own_versions(registry)
    if not own:
        found = _verdict(
            "task1",
            False,
            "no candidate of your own is registered: in 01's Your turn cell, train one with "
            "workbook.train_own(story, ESTIMATOR, {HYPERPARAMETER: VALUE})",
        )
        return found if part is None else replace(found, part=part)
    if part != 1:
        for earlier in reversed(own[:-1]):
            found = _task1_of(registry, earlier)
            if found.done:
                return found
    found = _task1_of(registry, own[-1], part)
    return found if part is None else replace(found, part=part)


def _task1_of(registry: Registry, mine: int, part: int | None = None) -> Verdict:
    """Task 1 judged on one own candidate."""
    from churnlab import gate

    evidence = registry.evidence(mine)
    params = _params(evidence)
    if not params:
        return _verdict(
            "task1",
            False,
            f"{_yours(mine)} is a {evidence.estimator} with its defaults, and the task asks you "
            "to set at least one hyperparameter: in 01's Your turn cell train it with one, "
            f"e.g. workbook.train_own(story, {evidence.estimator!r}, {{NAME: VALUE}})",
        )
    trained = (
        f"v{mine} is yours: {evidence.estimator} ({_shown(params)}), "
        f"accuracy {evidence.metrics.get('accuracy', float('nan')):.4f}"
    )
    if part == 1:
        return _verdict("task1", True, f"{trained}; replay the gate on it in 02")
    strict = _json_tag(evidence.tags, tags.EXERCISE_STRICT_GATE)
    if strict is None:
        return _verdict(
            "task1",
            False,
            f"the exercise's 0.90 gate was not replayed on {_yours(mine)}: in 02's Your turn "
            f"cell run workbook.replay_gate(registry, {MINE}, accuracy_min=0.9)",
        )
    if strict.get("accuracy_min") != STRICT_ACCURACY:
        return _verdict(
            "task1",
            False,
            f"the replay on {_yours(mine)} ran at accuracy_min={strict.get('accuracy_min')}, "
            "not at the exercise's 0.90: replay it with "
            f"workbook.replay_gate(registry, {MINE}, accuracy_min=0.9)",
        )
    if strict.get("verdict") != "failed":
        return _verdict(
            "task1",
            False,
            f"the 0.90 gate passed {_yours(mine)}, so it cannot show a refusal: train a "
            "candidate in 01 whose accuracy is below 0.90 (every realistic one is)",
        )
    latest = gate.recorded_result(registry, mine)
    default = gate.Policy.load().to_dict()
    if latest is None or latest.policy != default:
        ran = "the 0.90 replay" if latest and latest.policy.get("accuracy_min") == 0.9 else None
        ran = ran or "a policy of your own"
        return _verdict(
            "task1",
            False,
            f"the replay failed {_yours(mine)} as it should; its last gate run was {ran}: "
            f"now run the default policy, gate.run_gate({MINE}, registry=registry)",
        )
    if not latest.passed:
        why = "; ".join(
            f"{c.name} {c.value} (needs {c.operator} {c.threshold})" for c in latest.failed
        )
        return _verdict(
            "task1",
            False,
            f"the default policy fails {_yours(mine)} too ({why}): train a better candidate "
            "in 01 (workbook.train_own) and replay the gates on it",
        )
    return _verdict(
        "task1",
        True,
        f"{trained}; {strict.get('summary')}, yet it stayed registered and unstaged; "
        "the default policy passed it",
    )


def task2(registry: Registry) -> Verdict:
    """Task 2: an own candidate was staged and its smoke check passed."""
    from churnlab.registry import STAGING

    events = registry.history()
    for own in reversed(own_versions(registry)):
        staged = [e for e in events if e.action == "stage" and e.to_version == own]
        evidence = registry.evidence(own, with_metrics=False)
        if staged and evidence.smoke == "passed":
            checks = ", ".join(
                k for k, v in evidence.smoke_checks.items() if v in ("pass", "fail", "skip")
            )
            return _verdict(
                "task2",
                True,
                f"{move_line(registry.model_name, staged[-1])}; its smoke check passed ({checks})",
            )
    mine = my_version(registry)
    if mine is None:
        return _verdict("task2", False, "no candidate of your own yet: do Task 1 first (01, 02)")
    verdicts = registry.verdicts(mine)
    if verdicts["gate"] != "passed":
        return _verdict(
            "task2",
            False,
            f"{_yours(mine)} has not passed the default gate: finish Task 1 in 02 first",
        )
    stage_it = f"registry.stage({MINE})"
    smoke_it = f"smoke.smoke_check({MINE}, stage='staging', registry=registry)"
    if not any(e.action == "stage" and e.to_version == mine for e in events):
        return _verdict(
            "task2",
            False,
            f"{_yours(mine)} passed the gate but was never staged: in 03's Your turn cell run "
            f"{stage_it}, then {smoke_it}",
        )
    if verdicts["smoke"] == "failed":
        return _verdict(
            "task2",
            False,
            f"the smoke check of {_yours(mine)} failed: read its checks, then run {smoke_it} "
            "again while it is staged",
        )
    if registry.holder(STAGING) != mine:
        return _verdict(
            "task2",
            False,
            f"{_yours(mine)} was staged but left staging before its smoke check: run "
            f"{stage_it} again, then {smoke_it}",
        )
    return _verdict(
        "task2", False, f"{_yours(mine)} is staged, but not smoke-checked: run {smoke_it}"
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
    own = own_versions(registry)
    moves = [e for e in registry.history() if e.alias == "production"]
    for candidate in sorted(own, reverse=True):
        steps = iter(moves)  # in order: a promotion, then a rollback from it, then another
        first = next(
            (e for e in steps if e.action == "promote" and e.to_version == candidate), None
        )
        back = next(
            (e for e in steps if e.action == "rollback" and e.from_version == candidate), None
        )
        again = next(
            (e for e in steps if e.action == "promote" and e.to_version == candidate), None
        )
        if first and back and again:
            return _verdict(
                "task3",
                True,
                f"{move_line(registry.model_name, first)}; rolled back to "
                f"v{back.to_version}; promoted again: {move_line(registry.model_name, again)}",
            )
    mine = my_version(registry)
    if mine is None:
        return _verdict("task3", False, "no candidate of your own yet: do Tasks 1 and 2 first")
    steps = iter(moves)
    first = next((e for e in steps if e.action == "promote" and e.to_version == mine), None)
    back = next((e for e in steps if e.action == "rollback" and e.from_version == mine), None)
    promote_it = f"registry.promote({MINE})"
    if first is None:
        verdicts = registry.verdicts(mine)
        if verdicts["gate"] != "passed":
            return _verdict(
                "task3",
                False,
                f"{_yours(mine)} has not passed the default gate: do Tasks 1 and 2 first",
            )
        if verdicts["smoke"] != "passed":
            return _verdict(
                "task3",
                False,
                f"{_yours(mine)} has no passed smoke check, so the registry refuses to promote "
                f"it: do Task 2 in 03 first, or promote it by override, {promote_it[:-1]}, "
                'override=True, reason="why")',
            )
        return _verdict(
            "task3",
            False,
            f"{_yours(mine)} was never promoted: in 04's Your turn cell run {promote_it}",
        )
    if back is None:
        return _verdict(
            "task3",
            False,
            f"{_yours(mine)} was promoted, but production was not rolled back from it: run "
            f'registry.rollback(reason="why"), then {promote_it} again',
        )
    return _verdict(
        "task3", False, f"after the rollback, promote {_yours(mine)} again: {promote_it}"
    )


def task4(registry: Registry, live: bool = True) -> Verdict:
    """Task 4: production's backend serves the student's version; the newest one nobody.

    ``live``: look at the backends running on this machine (the notebook's own and a
    ``churnlab serve`` from a terminal) and record what production's answered on the
    version (:data:`churnlab.tags.EXERCISE_SERVED`); otherwise, and when none runs, judge
    the recorded answer against the registry as it is now.
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
            f"production holds {shown}, not {_yours(my_version(registry) or own[-1])}: "
            "promote it in 04 (Task 3)",
        )
    newest = registry.latest_version()
    holders = {registry.holder(STAGING), production}
    run_id = registry.version(production).run_id
    record: dict[str, Any] | None = None
    if live:
        answers, elsewhere = [], []
        here = registry_of(os.environ)
        for backend in running_backends():
            if backend.registry != here:
                elsewhere.append(backend)
                continue
            health = _health(backend)
            if health is not None and health.get("model_name") == registry.model_name:
                answers.append((backend, health))
        serving = [(b, h) for b, h in answers if h.get("stage") == "production"]
        mine = [(b, h) for b, h in serving if h.get("run_id") == run_id]
        if mine:
            record = {
                "health": mine[0][1],
                "newest": newest,
                "served": [h.get("model_version") for _, h in answers],
            }
            registry.set_version_tags(
                production, {tags.EXERCISE_SERVED: json.dumps(record, sort_keys=True)}
            )
        elif serving:
            backend, health = serving[0]
            where = f"the production backend on 127.0.0.1:{backend.port}"
            if health.get("model_version") != production:
                return _verdict(
                    "task4",
                    False,
                    f"{where} serves v{health.get('model_version')}, but @production names "
                    f"v{production}: it was started before the last move; restart it (or start "
                    "it with follow on: churnlab serve --stage production --follow)",
                )
            return _verdict(
                "task4",
                False,
                f"{where} serves a {registry.model_name} v{production} from another registry "
                f"(its run id is not v{production}'s): start it on this registry (the same "
                "CHURNLAB_HOME, or your login)",
            )
    if record is None:
        record = _json_tag(
            registry.evidence(production, with_metrics=False).tags, tags.EXERCISE_SERVED
        )
        if record is None:
            others = [b for b in (elsewhere if live else []) if b.stage == "production"]
            note = (
                f" (the one on 127.0.0.1:{others[0].port} serves {others[0].registry}, not "
                f"{registry_of(os.environ)})"
                if others
                else ""
            )
            return _verdict(
                "task4",
                False,
                f"no production backend of this registry is running on this machine{note}: in "
                "05's Your turn cell start one, backend.Backend('production').start()"
                ".wait_ready() (or `churnlab serve --stage production` in a terminal), and "
                "leave it running while the check runs",
            )
        if (record.get("health") or {}).get("model_version") != production:
            return _verdict("task4", False, "the recorded /health answer is not production's")
    served = record.get("health") or {}
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
    model_name: str | None = None,
    **options: Any,
) -> Verdict:
    """One task's verdict; any failure to read the registry is a "not yet", never a raise.

    Without ``registry``, the run's model (``model_name`` None: :func:`store.model_name`).
    """
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


def verdicts(registry: Registry | None = None, *, model_name: str | None = None) -> list[Verdict]:
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
    model_name: str | None = None,
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
    "MINE",
    "TASKS",
    "Verdict",
    "check",
    "is_own",
    "move_line",
    "my_version",
    "own_versions",
    "task1",
    "task2",
    "task3",
    "task4",
    "verdict",
    "verdicts",
]
