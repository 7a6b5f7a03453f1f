"""Figures for training, the gate, the stage timeline and drift. Each returns a Figure."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _figure(width: float = 5.0, height: float = 4.0):
    import matplotlib

    if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline",):
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=100)


def roc_curve(y_true: np.ndarray, proba: np.ndarray, title: str = "ROC curve"):
    """ROC curve with its AUC."""
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as curve

    fpr, tpr, _ = curve(y_true, proba)
    fig, ax = _figure()
    ax.plot(fpr, tpr, label=f"AUC = {roc_auc_score(y_true, proba):.3f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def confusion_matrix(counts: dict[str, int], title: str = "Confusion matrix"):
    """2x2 confusion matrix from ``{"tn", "fp", "fn", "tp"}`` counts."""
    grid = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
    fig, ax = _figure(4.2, 3.8)
    ax.imshow(grid, cmap="Blues")
    for (i, j), v in np.ndenumerate(grid):
        color = "white" if v > grid.max() / 2 else "black"
        ax.text(j, i, str(v), ha="center", va="center", color=color, fontsize=12)
    ax.set_xticks([0, 1], ["stays", "churns"])
    ax.set_yticks([0, 1], ["stays", "churns"])
    ax.set(xlabel="Predicted", ylabel="Actual", title=title)
    fig.tight_layout()
    return fig


def gate_checks(checks: Sequence[dict], title: str = "Gate checks"):
    """One bar per numeric check: its measured value as a share of its threshold.

    Bars right of the line at 1.0 are on the good side of a lower bound; for upper
    bounds (latency, gaps, drops) the ratio is inverted so that right is always good.
    """
    rows = [c for c in checks if isinstance(c.get("value"), (int, float)) and c.get("threshold")]
    fig, ax = _figure(6.5, 0.45 * max(len(rows), 3) + 1.2)
    names, ratios, colors = [], [], []
    palette = {"pass": "#2e7d32", "fail": "#c62828", "skip": "#9e9e9e"}
    for c in rows:
        value, threshold = float(c["value"]), float(c["threshold"])
        if c.get("operator") == "<=":
            ratio = threshold / value if value > 0 else 2.0
        else:
            ratio = value / threshold if threshold else 2.0
        names.append(c["name"])
        ratios.append(min(ratio, 2.0))
        colors.append(palette.get(c["status"], "#9e9e9e"))
    ax.barh(names, ratios, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.invert_yaxis()
    ax.set(xlabel="headroom (1.0 = at the threshold, right is good; capped at 2)", title=title)
    fig.tight_layout()
    return fig


def stage_timeline(events: Sequence[dict], title: str = "Who held which stage"):
    """Step plot of the version holding each alias, one step per promotion event."""
    fig, ax = _figure(6.5, 3.2)
    for alias, color in (("staging", "#1565c0"), ("production", "#2e7d32")):
        xs, ys = [], []
        for i, e in enumerate(events):
            if e["alias"] == alias:
                xs.append(i)
                ys.append(e["to_version"] if e["to_version"] is not None else np.nan)
        if xs:
            xs.append(len(events))
            ys.append(ys[-1])
            ax.step(xs, ys, where="post", label=alias, color=color, linewidth=2)
            ax.scatter(xs[:-1], ys[:-1], color=color, zorder=3)
    ax.set(xlabel="event number", ylabel="model version", title=title)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def drift(psi_table, title: str = "Population stability per feature"):
    """Horizontal bars of PSI per feature with the 0.1 and 0.25 guide lines."""
    fig, ax = _figure(6.0, 0.3 * len(psi_table) + 1.2)
    ax.barh(psi_table["feature"], psi_table["psi"], color="#6a1b9a")
    for x, style in ((0.1, "--"), (0.25, "-")):
        ax.axvline(x, color="grey", linestyle=style, linewidth=1)
    ax.invert_yaxis()
    ax.set(xlabel="PSI (0.1 moderate, 0.25 major)", title=title)
    fig.tight_layout()
    return fig
