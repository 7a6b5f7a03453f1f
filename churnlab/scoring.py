"""Scoring a registered version: the one path from customer records to churn probabilities.

The serving backend, the staging smoke check and the verification all score through a
:class:`Scorer`, so they cannot disagree about how a record becomes a probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from churnlab import schema
from churnlab.metrics import THRESHOLD


def records_to_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Customer records (dicts keyed by feature name) as a model input frame."""
    frame = pd.DataFrame.from_records(list(records), columns=list(schema.FEATURE_NAMES))
    return frame.astype(schema.pandas_dtypes())


@dataclass
class Scorer:
    """A loaded model version that turns records into churn probabilities."""

    model_name: str
    version: int
    run_id: str
    model: Any
    kind: str = "sklearn"

    @classmethod
    def from_registry(cls, registry, version: int) -> Scorer:
        """Load ``version`` of ``registry``'s model from the registry's artifact store."""
        mv = registry.version(version)
        model = registry.load_model(int(mv.version))
        return cls(registry.model_name, int(mv.version), mv.run_id, model)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Churn probability per row of a model input frame."""
        return np.asarray(self.model.predict_proba(frame)[:, 1], dtype=np.float64)

    def score_records(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """``[{"churn_probability": p, "churn": p >= 0.5}, ...]`` for each record."""
        proba = self.predict_proba(records_to_frame(records))
        return [{"churn_probability": float(p), "churn": bool(p >= THRESHOLD)} for p in proba]
