"""The retention team's list (05): new customers scored by the version a stage holds, the
ones most likely to churn first, exactly as ``churnlab score`` scores a file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from churnlab.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from churnlab.registry import Registry

#: the seed of the retention team's batch of customers: new customers, always the same
AT_RISK_SEED = 2024
#: the columns shown beside each at-risk customer's score (why a caller would phone them)
AT_RISK_CONTEXT: tuple[str, ...] = ("Contract", "tenure", "MonthlyCharges", "InternetService")


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


__all__ = ["AT_RISK_CONTEXT", "AT_RISK_SEED", "AtRisk", "new_customers", "top_at_risk"]
