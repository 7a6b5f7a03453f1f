"""What the notebooks call: whose story they tell, the candidates they train, the versions
they pick, refusals, a backend that follows its alias, four eyes by a second person, the
customers most at risk, and the student's own candidate for the "Your turn" tasks.

The tables they show are in :mod:`churnlab.tables`, the drift check in
:mod:`churnlab.drift`, the tasks' checks in :mod:`churnlab.exercises`; the runner behind
``churnlab workbook`` is :mod:`churnlab.runner`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from churnlab import exercises, store, tags
from churnlab.drift import drift_check  # 05_verify's ``drift`` parameter hides the module
from churnlab.errors import InputError, Refused

if TYPE_CHECKING:
    import pandas as pd

    from churnlab.backend import Backend
    from churnlab.gate import GateResult
    from churnlab.registry import Approval, Registry
    from churnlab.train import TrainResult

DEFAULT_SEED = 42
DEFAULT_ROWS = 7043
#: the reference story's seeds of the later candidates (what the committed notebooks show)
REFERENCE_SEEDS: dict[str, int] = {"retrain": 7, "main": 11}
#: a student's later candidates: the base seed plus these offsets
SEED_OFFSETS: dict[str, int] = {"base": 0, "retrain": 1, "main": 2}
#: the ``/health`` fields of a following backend that two correct runs share (``last_check``
#: and the switches' times change on every run)
FOLLOW_FIELDS: tuple[str, ...] = ("model_version", "alias_version", "following", "reason")
#: seconds a following backend is given to load, prove and swap in a version its alias names
SWITCH_TIMEOUT_S = 120.0
#: the seed of the retention team's batch of customers (05): new customers, always the same
AT_RISK_SEED = 2024


# ---------------------------------------------------------------------------- whose story
@dataclass(frozen=True)
class Story:
    """Whose story the notebooks tell: the student, the seeds from the name, the data.

    ``student`` None is the reference story (seed ``seed``, the committed outputs). A name
    derives every seed (:func:`churnlab.student.seed_of`): the data, the split and the
    models of the base candidates, and the "retrain" and "main" candidates' seeds as
    offsets of it. ``data`` is a CSV in the IBM Telco layout instead of synthetic data;
    every candidate then trains on that file, split with the base seed.
    """

    student: str | None = None
    seed: int = DEFAULT_SEED
    rows: int = DEFAULT_ROWS
    data: str | None = None

    @classmethod
    def of(
        cls,
        student: str | None = None,
        *,
        seed: int = DEFAULT_SEED,
        rows: int = DEFAULT_ROWS,
        data: str | None = None,
    ) -> Story:
        """A validated story: a blank name or a missing data file is refused in one line."""
        from churnlab.student import normal_name

        name = None if student is None else normal_name(student)
        path = None
        if data is not None and str(data).strip():
            found = Path(str(data)).expanduser()
            if not found.is_file():
                raise InputError(f"data must be a CSV file in the Telco layout, got {data!r}")
            path = str(found.resolve())
        return cls(name, int(seed), int(rows), path)

    @property
    def base_seed(self) -> int:
        """The seed of the data, the split and the walkthrough's first candidates."""
        from churnlab.student import seed_of

        return self.seed if self.student is None else seed_of(self.student)

    def seed_for(self, role: str) -> int:
        """The seed of a candidate's role: ``base``, ``retrain`` or ``main``."""
        if role not in SEED_OFFSETS:
            raise InputError(f"role must be one of {list(SEED_OFFSETS)}, got {role!r}")
        if role == "base" or self.data is not None:  # one file: every candidate splits it alike
            return self.base_seed
        if self.student is None:
            return REFERENCE_SEEDS[role]
        from churnlab.student import SEED_BOUND

        return (self.base_seed + SEED_OFFSETS[role]) % SEED_BOUND

    @property
    def source(self) -> str:
        """``synthetic`` or the CSV's file name."""
        return "synthetic" if self.data is None else Path(self.data).name

    def frame(self) -> pd.DataFrame | None:
        """The CSV's validated rows, or None for synthetic data."""
        return None if self.data is None else _load_csv(self.data)

    def train(
        self,
        estimator: str,
        params: dict[str, Any] | None = None,
        *,
        role: str = "base",
        description: str = "",
        model_name: str = store.DEFAULT_MODEL_NAME,
    ) -> TrainResult:
        """Train and register one candidate on this story's data with the role's seed."""
        from churnlab import train

        return train.train_candidate(
            self.frame(),
            model_name=model_name,
            estimator=estimator,
            params=params,
            seed=self.seed_for(role),
            rows=self.rows,
            description=description,
            data_source=None if self.data is None else self.source,
        )


@functools.lru_cache(maxsize=4)
def _load_csv(path: str) -> pd.DataFrame:
    from churnlab import data

    return data.load_csv(path)


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


def train_candidates(
    names: str | Sequence[str],
    *,
    rows: int = DEFAULT_ROWS,
    seed: int = DEFAULT_SEED,
    story: Story | None = None,
    model_name: str = store.DEFAULT_MODEL_NAME,
) -> list[TrainResult]:
    """Train and register each named candidate in order; return the ``TrainResult`` list.

    On ``story``'s data and seeds; without one, the reference story with ``seed`` and
    ``rows`` of synthetic data.
    """
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


# ---------------------------------------------------------------------------- your turn
def train_own(
    story: Story,
    estimator: str,
    params: dict[str, Any] | None = None,
    *,
    model_name: str = store.DEFAULT_MODEL_NAME,
) -> TrainResult:
    """Train the student's own candidate (Task 1) on the story's data; tag it as theirs."""
    from churnlab.registry import Registry

    shown = ", ".join(f"{k}={v!r}" for k, v in sorted((params or {}).items()))
    result = story.train(
        estimator,
        params,
        description=f"your candidate: {estimator}({shown})",
        model_name=model_name,
    )
    Registry(model_name).set_version_tags(
        result.model_version, {tags.EXERCISE_OWN: story.student or "reference"}
    )
    return result


def my_candidate(registry: Registry) -> int:
    """The student's newest own candidate (trained with :func:`train_own`).

    Refused in one line when there is none: Task 1 in 01 trains it.
    """
    own = exercises.own_versions(registry)
    if not own:
        raise InputError(
            f"no candidate of your own in {registry.model_name}: train one in 01's Your turn "
            "cell (workbook.train_own)"
        )
    return own[-1]


def replay_gate(registry: Registry, version: int, accuracy_min: float = 0.9) -> GateResult:
    """Run the gate on ``version`` with a stricter accuracy (the exercise's first run: 0.90).

    Records the verdict like any gate run, and the replay itself on the version
    (:data:`churnlab.tags.EXERCISE_STRICT_GATE`), so Task 1's check can see it later.
    """
    from churnlab import gate
    from churnlab.registry import STAGING

    result = gate.run_gate(
        version, registry=registry, policy=gate.Policy.load(accuracy_min=accuracy_min)
    )
    record = {
        "accuracy_min": accuracy_min,
        "verdict": result.verdict,
        "summary": result.summary(),
        "staged": registry.holder(STAGING) == int(version),
    }
    registry.set_version_tags(version, {tags.EXERCISE_STRICT_GATE: json.dumps(record)})
    return result


def stop_backends() -> int:
    """Stop the serving backends this process started and left running; return how many."""
    import os
    import signal

    stopped = 0
    for found in exercises.running_backends():
        try:
            os.kill(found.pid, signal.SIGTERM)
            os.waitpid(found.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            continue
        stopped += 1
    return stopped


# ---------------------------------------------------------------------------- following
def start_following(
    stage: str, *, poll_interval_s: float = 0.5, model_name: str = store.DEFAULT_MODEL_NAME
) -> Backend:
    """Start a backend that follows ``stage``'s alias (as ``churnlab serve --follow``,
    reading the alias every ``poll_interval_s`` seconds) and wait until it answers.

    Stop it with its ``stop()``; it is stopped at the latest when this process exits.
    """
    from churnlab.backend import Backend
    from churnlab.follow import validate_poll_interval

    seconds = validate_poll_interval(poll_interval_s, "poll_interval_s")
    env = {"MODEL_FOLLOW": "true", "MODEL_POLL_INTERVAL": f"{seconds:g}"}
    started = Backend(stage, model_name=model_name, env=env)
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


# ---------------------------------------------------------------------------- four eyes
@contextlib.contextmanager
def acting_as(name: str) -> Iterator[str]:
    """Act as another declared person inside the block (``CHURNLAB_ACTOR``), then restore
    whoever acted before. On a server that authenticates the login decides, not this."""
    person = str(name).strip()
    if not person:
        raise InputError(f"name must be a person's name, got {name!r}")
    before = os.environ.get("CHURNLAB_ACTOR")
    os.environ["CHURNLAB_ACTOR"] = person
    try:
        yield person
    finally:
        if before is None:
            os.environ.pop("CHURNLAB_ACTOR", None)
        else:
            os.environ["CHURNLAB_ACTOR"] = before


def approve_as(registry: Registry, person: str, version: int, reason: str) -> Approval:
    """``person`` approves ``version`` for production (:meth:`Registry.approve`)."""
    with acting_as(person):
        return registry.approve(version, reason=reason)


# ---------------------------------------------------------------------------- at risk
@dataclass(frozen=True)
class AtRisk:
    """The customers most likely to churn, by the version a stage holds."""

    stage: str
    version: int
    scorer: str  # "onnx" or "sklearn"
    scored: int
    rejected: int
    customers: pd.DataFrame  # rank -> customerID, churn_probability, churn, context

    def summary(self) -> str:
        """One line: how many were scored, by what, and where the list starts and ends."""
        found = self.customers["churn_probability"]
        return (
            f"Scored {self.scored:,} customers with v{self.version} ({self.scorer}, "
            f"@{self.stage}); {self.rejected:,} rejected. The {len(self.customers)} most at "
            f"risk: churn probability {found.iloc[0]:.4f} down to {found.iloc[-1]:.4f}."
        )


#: the columns shown beside each at-risk customer's score (why a caller would phone them)
AT_RISK_CONTEXT: tuple[str, ...] = ("Contract", "tenure", "MonthlyCharges", "InternetService")


def new_customers(rows: int, seed: int = AT_RISK_SEED) -> pd.DataFrame:
    """``rows`` new synthetic customers in the Telco layout, the same ones on every run."""
    from churnlab import data

    return data.generate(int(rows), seed=seed)


def top_at_risk(registry: Registry, stage: str, customers: pd.DataFrame, n: int = 100) -> AtRisk:
    """The ``n`` customers of ``customers`` (Telco layout) most likely to churn, scored by
    the version ``stage`` holds exactly as ``churnlab score`` scores a file (the served
    scorer; rows the schema refuses are left out and counted).

    Highest probability first, ties broken by customerID, so the list is the same on every
    run; probabilities rounded to 4 decimals.
    """
    from churnlab import batch, schema
    from churnlab.registry import parse_stage

    if int(n) < 1:
        raise InputError(f"n must be a positive number of customers, got {n!r}")
    stage = parse_stage(stage)
    scorer = batch.served_scorer(registry, stage)
    version = scorer.version
    checked = batch.check_chunk(customers)
    scores = batch.score_chunk(scorer, checked)
    if schema.ID_COLUMN not in scores:
        scores.insert(0, schema.ID_COLUMN, [f"row-{i}" for i in range(len(scores))])
    kinds = {f.name: f.kind for f in schema.FEATURES}
    for name in AT_RISK_CONTEXT:  # as the customer file has them: tenure in whole months
        values = checked.columns[name]
        scores[name] = values.astype("int64") if kinds[name] == "integer" else values
    ranked = scores.sort_values(
        [batch.PROBABILITY, schema.ID_COLUMN], ascending=[False, True], kind="mergesort"
    ).head(int(n))
    ranked = ranked.assign(**{batch.PROBABILITY: ranked[batch.PROBABILITY].round(4)})
    ranked.index = range(1, len(ranked) + 1)
    ranked.index.name = "rank"
    return AtRisk(stage, version, scorer.kind, checked.accepted, len(checked.rejects), ranked)


# ---------------------------------------------------------------------------- versions
def pending_versions(registry: Registry) -> list[int]:
    """Versions whose gate verdict is still pending, oldest first (the student's own
    candidates left out: they are the student's task)."""
    return [
        int(v.version)
        for v in registry.versions()
        if (v.tags or {}).get(tags.GATE_VERDICT, "pending") == "pending" and not exercises.is_own(v)
    ]


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


def refusal(action: Callable[[], Any]) -> str | None:
    """Run ``action``; return the refusal's message if a rule said no, else None."""
    try:
        action()
    except Refused as exc:
        return str(exc)
    return None


__all__ = [
    "AT_RISK_SEED",
    "CANDIDATES",
    "FOLLOW_FIELDS",
    "AtRisk",
    "Candidate",
    "Story",
    "acting_as",
    "approve_as",
    "candidate_names",
    "drift_check",
    "evaluation",
    "ever_held",
    "follow_health",
    "my_candidate",
    "new_customers",
    "next_to_promote",
    "next_to_stage",
    "pending_versions",
    "refusal",
    "replay_gate",
    "start_following",
    "stop_backends",
    "switches_table",
    "top_at_risk",
    "train_candidates",
    "train_own",
    "wait_until_serving",
]
