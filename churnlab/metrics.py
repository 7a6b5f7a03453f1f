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


_FIGURES = ("accuracy", "roc_auc", "f1", "precision", "recall", "log_loss", "business_value")


def score(
    y_true: np.ndarray, proba: np.ndarray, costs: CostMatrix | None = None
) -> dict[str, float]:
    """Accuracy, ROC AUC, F1, precision, recall, log loss and business value, rounded to 6."""
    return _score(y_true, proba, costs or CostMatrix(), _FIGURES)


def score_one(name: str, y_true: np.ndarray, proba: np.ndarray) -> float:
    """``score(y_true, proba)[name]``, computing only that figure where the inputs allow."""
    return _score(y_true, proba, CostMatrix(), (name,))[name]


def _score(
    y_true: np.ndarray, proba: np.ndarray, costs: CostMatrix, names: tuple[str, ...]
) -> dict[str, float]:
    """The figures in ``names`` (all of them for unusual inputs), rounded to 6.

    On plain inputs (:func:`_plain`) accuracy, F1, precision and recall come from the
    confusion counts by scikit-learn's own formulas (``zero_division=0``), without its
    per-call validation; ROC AUC and log loss stay with scikit-learn. Any other input
    goes through scikit-learn for every figure, so its errors and warnings are unchanged.
    """
    from sklearn import metrics as m

    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype=float)
    y_pred = (proba >= THRESHOLD).astype(int)
    c = confusion(y_true, y_pred)
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    if _plain(y_true, proba):
        n = len(y_true)
        out: dict[str, float] = {
            "accuracy": (tp + tn) / n,
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "business_value": costs.value(tp, fp, n),
        }
        if "roc_auc" in names:
            both = 0 < tp + fn < n  # both classes present
            out["roc_auc"] = m.roc_auc_score(y_true, proba) if both else float("nan")
        if "log_loss" in names:
            clipped = np.clip(proba, 1e-15, 1 - 1e-15)
            out["log_loss"] = m.log_loss(y_true, clipped, labels=[0, 1])
    else:
        names = _FIGURES
        both = len(np.unique(y_true)) == 2
        out = {
            "accuracy": m.accuracy_score(y_true, y_pred),
            "roc_auc": m.roc_auc_score(y_true, proba) if both else float("nan"),
            "f1": m.f1_score(y_true, y_pred, zero_division=0),
            "precision": m.precision_score(y_true, y_pred, zero_division=0),
            "recall": m.recall_score(y_true, y_pred, zero_division=0),
            "log_loss": m.log_loss(y_true, np.clip(proba, 1e-15, 1 - 1e-15), labels=[0, 1]),
            "business_value": costs.value(tp, fp, len(y_true)),
        }
    return {k: round(float(out[k]), 6) for k in _FIGURES if k in names}


def _plain(y_true: np.ndarray, proba: np.ndarray) -> bool:
    """Non-empty 1-D 0/1 labels with as many finite probabilities."""
    return (
        y_true.ndim == 1
        and proba.shape == y_true.shape
        and len(y_true) > 0
        and bool(np.all((y_true == 0) | (y_true == 1)))
        and bool(np.all(np.isfinite(proba)))
    )


def _ratio(num: int, den: int) -> float:
    """``num / den``, 0 when ``den`` is 0; correctly rounded, as numpy divides the counts."""
    return num / den if den else 0.0
