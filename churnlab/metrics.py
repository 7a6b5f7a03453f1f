"""How good a churn model is: the standard metrics and a business value from a cost matrix."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

THRESHOLD = 0.5  # probability at or above which a customer is predicted to churn


@dataclass(frozen=True)
class CostMatrix:
    """What churn costs and what a retention offer costs, per customer (USD).

    A customer predicted to churn gets an offer (``offer_cost``); an offer keeps a real
    churner with probability ``offer_success``, saving ``lost_customer``. Business value is
    the average saving per customer compared with doing nothing.
    """

    lost_customer: float = 500.0
    offer_cost: float = 60.0
    offer_success: float = 0.4

    def value(self, tp: int, fp: int, n: int) -> float:
        saved = tp * self.lost_customer * self.offer_success
        spent = (tp + fp) * self.offer_cost
        return float((saved - spent) / max(n, 1))

    def as_params(self) -> dict[str, float]:
        return {f"cost_{k}": v for k, v in asdict(self).items()}


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, int]:
    """Counts of true/false positives/negatives."""
    y_true, y_pred = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    return {
        "tp": int(np.sum(y_true & y_pred)),
        "fp": int(np.sum(~y_true & y_pred)),
        "fn": int(np.sum(y_true & ~y_pred)),
        "tn": int(np.sum(~y_true & ~y_pred)),
    }


def score(
    y_true: np.ndarray, proba: np.ndarray, costs: CostMatrix | None = None
) -> dict[str, float]:
    """Accuracy, ROC AUC, F1, precision, recall, log loss and business value, rounded to 6."""
    from sklearn import metrics as m

    costs = costs or CostMatrix()
    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype=float)
    y_pred = (proba >= THRESHOLD).astype(int)
    c = confusion(y_true, y_pred)
    both = len(np.unique(y_true)) == 2
    out = {
        "accuracy": m.accuracy_score(y_true, y_pred),
        "roc_auc": m.roc_auc_score(y_true, proba) if both else float("nan"),
        "f1": m.f1_score(y_true, y_pred, zero_division=0),
        "precision": m.precision_score(y_true, y_pred, zero_division=0),
        "recall": m.recall_score(y_true, y_pred, zero_division=0),
        "log_loss": m.log_loss(y_true, np.clip(proba, 1e-15, 1 - 1e-15), labels=[0, 1]),
        "business_value": costs.value(c["tp"], c["fp"], len(y_true)),
    }
    return {k: round(float(v), 6) for k, v in out.items()}
