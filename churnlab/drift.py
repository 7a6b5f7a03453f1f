"""The drift check: a version's drift-reference snapshot against a newer batch of customers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from churnlab.checks import Check, Result

if TYPE_CHECKING:
    from churnlab.registry import Registry

#: the PSI from which a feature counts as moved (``data.population_stability``'s levels)
PSI_MOVED = 0.1

_ADVICE = {
    "major": "major drift: train a new candidate",
    "moderate": "moderate drift: investigate, plan a new candidate",
    "stable": "no drift",
}


@dataclass
class DriftResult(Result):
    """PSI per feature of a version's drift-reference snapshot against new customers.

    One check per feature, failed when the feature moved (PSI of 0.1 or more): the result
    passes when the population is stable. ``psi`` is the table of every feature's PSI.
    """

    psi: pd.DataFrame = field(default_factory=pd.DataFrame)
    accuracy_reference: float = float("nan")
    accuracy_current: float = float("nan")
    rows: int = 0

    title: ClassVar[str] = "Drift check"

    @property
    def level(self) -> str:
        """``stable``, ``moderate`` (some PSI of 0.1 or more) or ``major`` (0.25 or more)."""
        levels = set(self.psi["level"]) if len(self.psi) else set()
        return "major" if "major" in levels else "moderate" if "moderate" in levels else "stable"

    @property
    def drifted(self) -> bool:
        """True when any feature moved by a moderate amount or more (PSI of 0.1 or more)."""
        return self.level != "stable"

    def figures(self) -> dict[str, Any]:
        """Accuracy on the drift-reference snapshot and on the new batch, and its size."""
        return {
            "accuracy_reference": self.accuracy_reference,
            "accuracy_current": self.accuracy_current,
            "rows": self.rows,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "level": self.level, **self.figures()}

    def summary(self) -> str:
        """One line: the drift level and its advice, the features that moved, the accuracies."""
        moved = self.psi[self.psi["level"] != "stable"]
        names = ", ".join(f"{r.feature} {r.psi:.3f}" for r in moved.itertuples()) or "none"
        return (
            f"v{self.version}: {_ADVICE[self.level]}. Features that moved (PSI): {names}. "
            f"Accuracy {self.accuracy_reference:.4f} on the drift-reference snapshot, "
            f"{self.accuracy_current:.4f} on the new batch of {self.rows} customers."
        )


def drift_check(
    registry: Registry, version: int, *, rows: int = 2000, seed: int = 2024, drift: float = 0.5
) -> DriftResult:
    """PSI per feature of ``version``'s drift-reference snapshot against ``rows`` new
    customers generated with ``drift`` (0 = the same population), and accuracy on both."""
    from churnlab import data
    from churnlab.metrics import score_one

    reference = registry.snapshot(version, "reference")
    current = data.generate(rows, seed=seed, drift=drift)
    model = registry.load_model(version)

    def accuracy(frame: pd.DataFrame) -> float:
        proba = model.predict_proba(data.features(frame))[:, 1]
        return score_one("accuracy", data.labels(frame), proba)

    psi = data.population_stability(reference, current)
    checks = [
        Check.of(r.feature, r.level == "stable", float(r.psi), PSI_MOVED, "<", r.level)
        for r in psi.itertuples()
    ]
    return DriftResult(
        model_name=registry.model_name,
        version=int(version),
        checks=checks,
        psi=psi,
        accuracy_reference=accuracy(reference),
        accuracy_current=accuracy(current),
        rows=rows,
    )


__all__ = ["DriftResult", "drift_check"]
