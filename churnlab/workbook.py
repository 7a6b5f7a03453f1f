"""What the notebooks call: the candidates they train, the versions they pick, refusals.

The tables they show are in :mod:`churnlab.tables`, the drift check in
:mod:`churnlab.drift`; the runner behind ``churnlab workbook`` is :mod:`churnlab.runner`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from churnlab import store, tags
from churnlab.drift import drift_check  # 05_verify's ``drift`` parameter hides the module
from churnlab.errors import InputError, Refused

if TYPE_CHECKING:
    from churnlab.registry import Registry
    from churnlab.train import TrainResult


# ---------------------------------------------------------------------------- candidates
@dataclass(frozen=True)
class Candidate:
    """A named way to train a candidate: estimator, its parameters, data seed, a note."""

    estimator: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
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
    "retrain": Candidate("logreg", seed=7, description="logistic regression on fresh data"),
    "main": Candidate("logreg", seed=11, description="built from the latest commit on main"),
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
    rows: int = 7043,
    seed: int = 42,
    model_name: str = store.DEFAULT_MODEL_NAME,
) -> list[TrainResult]:
    """Train and register each named candidate in order; return the ``TrainResult`` list."""
    from churnlab import train

    results = []
    for name in candidate_names(names):
        spec = CANDIDATES[name]
        results.append(
            train.train_candidate(
                model_name=model_name,
                estimator=spec.estimator,
                params=spec.params,
                seed=spec.seed if spec.seed is not None else seed,
                rows=rows,
                description=spec.description,
            )
        )
    return results


# ---------------------------------------------------------------------------- versions
def pending_versions(registry: Registry) -> list[int]:
    """Versions whose gate verdict is still pending, oldest first."""
    return [
        int(v.version)
        for v in registry.versions()
        if (v.tags or {}).get(tags.GATE_VERDICT, "pending") == "pending"
    ]


def ever_held(registry: Registry) -> set[int]:
    """Versions that held staging or production at some point of the history."""
    held: set[int] = set()
    for e in registry.history():
        held.update(v for v in (e.from_version, e.to_version) if v is not None)
    return held


def next_to_stage(registry: Registry) -> int | None:
    """The newest version that passed the gate and never held a stage, or None."""
    held = ever_held(registry)
    passed = [
        int(v.version)
        for v in registry.versions()
        if (v.tags or {}).get(tags.GATE_VERDICT) == "passed" and int(v.version) not in held
    ]
    return max(passed, default=None)


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
    "CANDIDATES",
    "Candidate",
    "candidate_names",
    "drift_check",
    "evaluation",
    "ever_held",
    "next_to_stage",
    "pending_versions",
    "refusal",
    "train_candidates",
]
