"""What the notebooks call: the session they run in, the candidates they train or find again,
the versions each step picks, and the student's own candidate.

Every notebook can run again on the registry it left: a step finds what an earlier run
recorded (the same story's candidates, a gate verdict under the same policy, a version in
staging), says so and goes on; a notebook run before the one it builds on stops with one
line naming what to run first (:class:`~churnlab.errors.OutOfOrder`). In a notebook, any
error a user can cause shows as that one line (``%tb`` shows the traceback).

Whose story it is is :mod:`churnlab.story`; a backend that follows its alias is
:mod:`churnlab.following`, four eyes :mod:`churnlab.four_eyes`, the retention list
:mod:`churnlab.retention`, the tables :mod:`churnlab.tables`, the tasks' checks
:mod:`churnlab.exercises`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from churnlab import exercises, store, tags
from churnlab.drift import drift_check  # 05_verify's ``drift`` parameter hides the module
from churnlab.errors import ChurnlabError, InputError, OutOfOrder, Refused
from churnlab.story import DEFAULT_ROWS, DEFAULT_SEED, Story, student_name

if TYPE_CHECKING:
    from churnlab.gate import GateResult, Policy
    from churnlab.registry import Move, Registry
    from churnlab.train import TrainResult


# ---------------------------------------------------------------------------- a notebook's session
#: the notebook that registers what every later one builds on
FIRST_NOTEBOOK = "01_train"


def begin(
    notebook: str,
    *,
    student: str | None = None,
    data: str | None = None,
    seed: int | None = None,
    rows: int = DEFAULT_ROWS,
) -> tuple[Registry, Story]:
    """A notebook's first cell: point MLflow at the registry, show churnlab's errors in one
    line, and print which registry, model and story this run tells.

    The model is the run's one model (``churnlab --model``, a login's own, or
    ``churn-model``); the student is :func:`student_name` of ``student``. ``seed`` is given
    by the notebook that trains the first candidates (01): its story line names the seed
    and the data.
    """
    from churnlab.registry import Registry

    store.configure()
    show_errors_in_one_line()
    registry = Registry()
    if notebook != FIRST_NOTEBOOK and not registry.exists():
        raise OutOfOrder(
            f"{notebook} builds on what {FIRST_NOTEBOOK} registers, and {registry.model_name} "
            f"has nothing at {store.display_uri()} yet: run {FIRST_NOTEBOOK} first"
        )
    story = Story.of(
        student_name(student), data=data, seed=DEFAULT_SEED if seed is None else seed, rows=rows
    )
    print(f"{notebook}: registry {store.display_uri()}, model {registry.model_name}")
    print(story.line(details=seed is not None))
    return registry, story


def one_line(exc: BaseException) -> str:
    """A churnlab error as the one line a notebook shows: its class and its Python wording
    (a message that already opens with the class's name, "refused: ...", says it once)."""
    name = type(exc).__name__
    text = getattr(exc, "in_python", None) or str(exc)
    if text[: len(name) + 1].lower() == f"{name.lower()}:":
        text = text[len(name) + 1 :].lstrip()
    return f"{name}: {text}"


def show_errors_in_one_line() -> bool:
    """In IPython, show every churnlab error as one line instead of a traceback.

    ``%tb`` still prints the whole traceback. The cell still fails (a notebook run stops
    there), so nothing after it runs on a state it did not expect. False outside IPython.
    """
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python: nothing to change
        return False
    shell = get_ipython()
    if shell is None:
        return False

    def handler(shell, etype, value, tb, tb_offset=None):
        sys.last_type, sys.last_value, sys.last_traceback = etype, value, tb  # for %tb
        sys.last_exc = value
        line = f"{one_line(value)}   (%tb shows the traceback)"
        shell._showtraceback(etype, value, [line])  # noqa: SLF001 - IPython's display hook
        return [line]

    shell.set_custom_exc((ChurnlabError,), handler)
    return True


# ---------------------------------------------------------------------------- candidates
@dataclass(frozen=True)
class Candidate:
    """A named way to train a candidate: estimator, its parameters, the role of its seed
    (``base``, or ``retrain``/``main`` for fresh data, see :meth:`Story.seed_for`), a note."""

    estimator: str
    params: dict[str, Any] = field(default_factory=dict)
    role: str = "base"
    description: str = ""


CANDIDATES: dict[str, Candidate] = {
    "baseline": Candidate(
        "logreg",
        {"C": 0.0005},
        description="baseline: an over-regularised logistic regression",
    ),
    "logreg": Candidate("logreg", description="logistic regression"),
    "forest": Candidate("forest", {"n_estimators": 100}, description="random forest"),
    "gbm": Candidate("gbm", description="gradient boosting"),
    "retrain": Candidate("logreg", role="retrain", description="logistic regression on fresh data"),
    "main": Candidate("logreg", role="main", description="built from the latest commit on main"),
}


def candidate_names(names: str | Sequence[str]) -> list[str]:
    """``"baseline,logreg"`` or a list as validated candidate names."""
    items = names.split(",") if isinstance(names, str) else list(names)
    chosen = [str(n).strip() for n in items if str(n).strip()]
    unknown = [n for n in chosen if n not in CANDIDATES]
    if unknown or not chosen:
        raise InputError(f"candidates must be names from {list(CANDIDATES)}, got {names!r}")
    return chosen


@dataclass(frozen=True)
class Candidates:
    """The walkthrough's candidates of one story: their versions, which were trained now and
    which an earlier run had registered already."""

    versions: dict[str, int]
    new: tuple[int, ...]

    @property
    def found(self) -> tuple[int, ...]:
        return tuple(v for v in self.versions.values() if v not in self.new)

    def summary(self) -> str:
        """One line: what was registered now and what was found."""
        parts = []
        if self.new:
            named = ", ".join(f"v{v} ({n})" for n, v in self.versions.items() if v in self.new)
            parts.append(f"registered {named} with gate pending and no stage")
        if self.found:
            named = ", ".join(f"v{v} ({n})" for n, v in self.versions.items() if v not in self.new)
            parts.append(
                f"found {named}, registered by an earlier run of this story: not trained again"
            )
        return "; ".join(parts)


def register_candidates(
    registry: Registry, story: Story, names: str | Sequence[str], *, again: bool = False
) -> Candidates:
    """Each named candidate of ``story``: found when an earlier run registered it (same
    story, same code), else trained and registered now. ``again`` trains them anew (04's
    retrained candidate, which arrives fresh each time the story reaches it)."""
    versions: dict[str, int] = {}
    new: list[int] = []
    for name in candidate_names(names):
        spec = CANDIDATES[name]
        key = story.key(spec.role)
        found = None if again else _newest(registry, name, key)
        if found is None:
            found = story.train(
                spec.estimator,
                spec.params,
                role=spec.role,
                description=spec.description,
                model_name=registry.model_name,
            ).model_version
            registry.set_version_tags(
                found, {tags.WORKBOOK_CANDIDATE: name, tags.WORKBOOK_STORY: key}
            )
            new.append(found)
        versions[name] = found
    return Candidates(versions, tuple(new))


def _newest(registry: Registry, name: str, key: str | None = None) -> int | None:
    """The newest version of the walkthrough's candidate ``name`` (of story ``key``)."""
    found = [
        int(v.version)
        for v in registry.versions()
        if (v.tags or {}).get(tags.WORKBOOK_CANDIDATE) == name
        and (key is None or (v.tags or {}).get(tags.WORKBOOK_STORY) == key)
    ]
    return max(found, default=None)


def train_candidates(
    names: str | Sequence[str],
    *,
    rows: int = DEFAULT_ROWS,
    seed: int = DEFAULT_SEED,
    story: Story | None = None,
    model_name: str | None = None,
) -> list[TrainResult]:
    """Train and register each named candidate in order (always anew, untagged); return the
    ``TrainResult`` list. On ``story``'s data and seeds; without one, the reference story
    with ``seed`` and ``rows`` of synthetic data."""
    story = story or Story(seed=seed, rows=rows)
    return [
        story.train(
            spec.estimator,
            spec.params,
            role=spec.role,
            description=spec.description,
            model_name=model_name,
        )
        for spec in (CANDIDATES[name] for name in candidate_names(names))
    ]


# ---------------------------------------------------------------------------- 02: the gate
#: the roles of the candidates 01 trains (04's and 05's arrive later and wait elsewhere)
_FIRST_ROLE = "base"


def _is_later_candidate(version: Any) -> bool:
    name = (getattr(version, "tags", None) or {}).get(tags.WORKBOOK_CANDIDATE)
    return name in CANDIDATES and CANDIDATES[name].role != _FIRST_ROLE


def pending_versions(registry: Registry) -> list[int]:
    """Versions whose gate verdict is still pending, oldest first: the student's own
    candidates and the later walkthrough's (04's retrained, 05's from main) left out."""
    return [
        int(v.version)
        for v in registry.versions()
        if (v.tags or {}).get(tags.GATE_VERDICT, "pending") == "pending"
        and not exercises.is_own(v)
        and not _is_later_candidate(v)
    ]


def to_judge(registry: Registry) -> list[int]:
    """What 02 judges: the versions waiting for the gate, or else the candidates the latest
    run of 01 registered (judged already: their recorded verdicts are shown again).

    :class:`OutOfOrder` when 01 has registered nothing yet.
    """
    pending = pending_versions(registry)
    if pending:
        return pending
    first = [
        v
        for v in registry.versions()
        if (name := (v.tags or {}).get(tags.WORKBOOK_CANDIDATE)) in CANDIDATES
        and CANDIDATES[name].role == _FIRST_ROLE
    ]
    if not first:
        raise OutOfOrder(
            f"02_gate judges the candidates 01_train registers, and {registry.model_name} has "
            "none: run 01_train first"
        )
    story = (first[-1].tags or {}).get(tags.WORKBOOK_STORY)
    names = {(v.tags or {}).get(tags.WORKBOOK_CANDIDATE) for v in first}
    return sorted(filter(None, (_newest(registry, n, story) for n in names)))


@dataclass
class Judged:
    """02's gate results by version, and what was judged now or found judged already."""

    results: dict[int, GateResult]
    lines: list[str]


def judge(registry: Registry, versions: Sequence[int], policy: Policy) -> Judged:
    """Run the gate on each version still pending and record it; a version judged already
    under the same policy shows its recorded result. Under another policy it is judged
    again, unless it holds a stage: a version in service keeps its recorded verdict."""
    from churnlab import gate
    from churnlab.registry import PRODUCTION, STAGING

    in_service = {registry.holder(STAGING), registry.holder(PRODUCTION)}
    results: dict[int, GateResult] = {}
    lines = []
    for version in versions:
        recorded = None
        if registry.verdicts(version)["gate"] != "pending":
            recorded = gate.recorded_result(registry, version)
        if recorded is not None and recorded.policy == policy.to_dict():
            lines.append(f"v{version}: judged already under this policy: {recorded.verdict}")
            results[version] = recorded
        elif recorded is not None and version in in_service:
            lines.append(
                f"v{version}: judged already ({recorded.verdict}) under another policy; it "
                "holds a stage, so its recorded verdict stands"
            )
            results[version] = recorded
        else:
            results[version] = gate.run_gate(version, registry=registry, policy=policy)
    return Judged(results, lines)


# ---------------------------------------------------------------------------- 03: staging
@dataclass(frozen=True)
class Staged:
    """What 03 smoke-checks: the version staging holds and how it got there."""

    version: int
    message: str


def stage_next(registry: Registry, version: int | None = None) -> Staged:
    """03's move: stage ``version``, or the newest candidate that passed the gate and never
    held a stage; when there is none, what staging holds already is checked again.

    :class:`OutOfOrder` when nothing can be staged and staging is empty.
    """
    from churnlab.registry import STAGING

    chosen = version if version is not None else next_to_stage(registry)
    if chosen is not None:
        move = registry.stage(chosen)
        return Staged(int(move.event.to_version), move.message)
    holder = registry.holder(STAGING)
    if holder is not None:
        return Staged(
            holder,
            f"nothing new passed the gate since the last staging: staging holds v{holder} "
            "already, and the smoke check below checks it again",
        )
    verdicts = [registry.verdicts(v)["gate"] for v in pending_versions(registry)]
    if verdicts:
        raise OutOfOrder(
            "03_staging stages a candidate that passed the gate, and the gate has not judged "
            "01's candidates yet: run 02_gate first"
        )
    raise OutOfOrder(
        f"03_staging has nothing to stage: no version of {registry.model_name} passed the gate "
        "since the last staging and staging is empty; run 01_train and 02_gate for a new "
        "candidate (a policy that fails every candidate stops the story here)"
    )


def ever_held(registry: Registry) -> set[int]:
    """Versions that held staging or production at some point of the history."""
    held: set[int] = set()
    for e in registry.history():
        held.update(v for v in (e.from_version, e.to_version) if v is not None)
    return held


def next_to_stage(registry: Registry) -> int | None:
    """The newest version that passed the gate and never held a stage, or None (the
    student's own candidates left out)."""
    held = ever_held(registry)
    passed = [
        int(v.version)
        for v in registry.versions()
        if (v.tags or {}).get(tags.GATE_VERDICT) == "passed"
        and int(v.version) not in held
        and not exercises.is_own(v)
    ]
    return max(passed, default=None)


# ---------------------------------------------------------------------------- 04: promotion
def next_to_promote(registry: Registry) -> int | None:
    """The version staging holds; when that is the student's own candidate, the newest
    other version with gate and smoke passed that production does not hold, or None."""
    from churnlab.registry import PRODUCTION, STAGING

    staged = registry.holder(STAGING)
    if staged is not None and staged not in exercises.own_versions(registry):
        return staged
    production = registry.holder(PRODUCTION)
    ready = [
        int(v.version)
        for v in registry.versions()
        if (v.tags or {}).get(tags.GATE_VERDICT) == "passed"
        and (v.tags or {}).get(tags.SMOKE_VERDICT) == "passed"
        and int(v.version) != production
        and not exercises.is_own(v)
    ]
    return max(ready, default=None)


def to_promote(registry: Registry, version: int | None = None) -> int:
    """04's version to promote: ``version``, or :func:`next_to_promote`; :class:`OutOfOrder`
    when nothing is ready (03 has not staged and smoke-checked a candidate)."""
    chosen = version if version is not None else next_to_promote(registry)
    if chosen is None:
        raise OutOfOrder(
            f"04_promote promotes a version that passed its smoke check in staging, and "
            f"{registry.model_name} has none: run 03_staging first (or pass -p model_version N)"
        )
    return int(chosen)


def promote(registry: Registry, version: int, *, reason: str = "") -> Move:
    """Promote ``version`` (by override when ``reason`` is given).

    Where the model needs approvals nobody gave yet (a class with four eyes), a notebook
    cannot wait for a reviewer: it promotes by override (the walkthrough's promotion, and
    the teacher's solution of Task 3) and the recorded reason says why.
    """
    if not reason and registry.missing_approvals(version):
        needed = registry.missing_approvals(version)
        reason = (
            f"promoted from the notebook without a reviewer: {registry.model_name} needs "
            f"{needed} more approval(s) of v{version}, which only a reviewer's login can give"
        )
    return registry.promote(version, override=bool(reason), reason=reason)


def latest_from_main(registry: Registry, story: Story) -> Candidates:
    """05's "latest code on main": the newest version when it is this story's candidate from
    main and nothing serves it; otherwise main builds a new one now."""
    from churnlab.registry import PRODUCTION, STAGING

    newest = registry.latest_version()
    held = {registry.holder(STAGING), registry.holder(PRODUCTION)}
    key = story.key(CANDIDATES["main"].role)
    if newest is not None and newest not in held and _newest(registry, "main", key) == newest:
        return Candidates({"main": newest}, ())
    return register_candidates(registry, story, "main", again=True)


# ---------------------------------------------------------------------------- your turn
def train_own(
    story: Story,
    estimator: str,
    params: dict[str, Any] | None = None,
    *,
    model_name: str | None = None,
    **hyperparameters: Any,
) -> TrainResult:
    """Train the student's own candidate (Task 1) on the story's data; tag it as theirs.

    Hyperparameters come as a dict (``{"max_depth": 8}``) or as keywords (``max_depth=8``).
    The estimator and its hyperparameters are checked first (one line naming the valid
    ones); ``random_state`` is the story's seed, not a choice. Each call registers a new
    version, which becomes :func:`my_candidate`: a task done on an earlier one stays done.
    """
    from churnlab import train
    from churnlab.registry import Registry

    chosen = {**dict(params or {}), **hyperparameters}
    if "random_state" in chosen:
        raise InputError(
            "random_state is the story's seed (it comes from your name): choose another "
            "hyperparameter, e.g. max_depth for forest or C for logreg"
        )
    train.build_pipeline(estimator, chosen)  # refuses an unknown estimator or hyperparameter
    registry = Registry(model_name)
    shown = ", ".join(f"{k}={v!r}" for k, v in sorted(chosen.items()))
    result = story.train(
        estimator,
        chosen,
        description=f"your candidate: {estimator}({shown})",
        model_name=registry.model_name,
    )
    registry.set_version_tags(
        result.model_version,
        {
            tags.EXERCISE_OWN: story.student or "reference",
            tags.EXERCISE_PARAMS: json.dumps(chosen, sort_keys=True, default=str),
        },
    )
    return result


def my_candidate(registry: Registry) -> int:
    """The student's own candidate: the newest one :func:`train_own` trained.

    Refused in one line when there is none: Task 1 in 01 trains it.
    """
    mine = exercises.my_version(registry)
    if mine is None:
        raise OutOfOrder(
            f"no candidate of your own in {registry.model_name}: train one in 01's Your turn "
            "cell (workbook.train_own)"
        )
    return mine


def replay_gate(registry: Registry, version: int, accuracy_min: float = 0.9) -> GateResult:
    """Run the gate on ``version`` with a stricter accuracy (the exercise's first run: 0.90).

    Records the verdict like any gate run, and the replay itself on the version
    (:data:`churnlab.tags.EXERCISE_STRICT_GATE`), so Task 1's check can see it later. A
    version that holds a stage keeps its recorded verdict: the replay is then noted only.
    """
    from churnlab import gate
    from churnlab.registry import PRODUCTION, STAGING

    number = int(registry.version(version).version)
    policy = gate.Policy.load(accuracy_min=accuracy_min)
    in_service = number in (registry.holder(STAGING), registry.holder(PRODUCTION))
    if in_service:
        result = gate.evaluate(registry, number, policy)
    else:
        result = gate.run_gate(number, registry=registry, policy=policy)
    record = {
        "accuracy_min": accuracy_min,
        "verdict": result.verdict,
        "summary": result.summary(),
        "staged": in_service,
    }
    registry.set_version_tags(number, {tags.EXERCISE_STRICT_GATE: json.dumps(record)})
    return result


def refusal(action: Callable[[], Any]) -> str | None:
    """Run ``action``; return the refusal's line (in Python terms) if a rule said no, else
    None."""
    try:
        action()
    except Refused as exc:
        return exc.in_python
    return None


def evaluation(registry: Registry, version: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Labels, churn probabilities and confusion counts of ``version`` on its evaluation
    snapshot, read back from the registry."""
    from churnlab import data
    from churnlab.metrics import THRESHOLD, confusion

    frame = registry.snapshot(version, "evaluation")
    model = registry.load_model(version)
    y = data.labels(frame)
    proba = model.predict_proba(data.features(frame))[:, 1]
    return y, proba, confusion(y, proba >= THRESHOLD)


__all__ = [
    "CANDIDATES",
    "Candidate",
    "Candidates",
    "Judged",
    "Staged",
    "begin",
    "candidate_names",
    "drift_check",
    "evaluation",
    "ever_held",
    "judge",
    "latest_from_main",
    "my_candidate",
    "next_to_promote",
    "next_to_stage",
    "one_line",
    "pending_versions",
    "promote",
    "refusal",
    "register_candidates",
    "replay_gate",
    "show_errors_in_one_line",
    "stage_next",
    "to_judge",
    "to_promote",
    "train_candidates",
    "train_own",
]
