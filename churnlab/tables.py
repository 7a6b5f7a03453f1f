"""The tables the notebooks and the report show: versions, data, history and checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from churnlab import tags
from churnlab.checks import Check

if TYPE_CHECKING:
    from churnlab.registry import Registry

#: checks whose measured value differs on every run (shown through the sanitizer, not in tables)
VOLATILE_CHECKS = ("latency", "startup", "rss", "memory", "uptime", "_ms", "_s", "_mb")


# ---------------------------------------------------------------------------- the registry
def candidates_table(registry: Registry, versions: Sequence[int]) -> pd.DataFrame:
    """One row per candidate: version, estimator, evaluation metrics, read from the registry."""
    rows = []
    for version in versions:
        evidence = registry.evidence(version)
        m = evidence.metrics
        rows.append(
            {
                "version": evidence.version,
                "estimator": evidence.estimator or "?",
                "accuracy": round(m["accuracy"], 4),
                "roc_auc": round(m["roc_auc"], 4),
                "f1": round(m["f1"], 4),
                "business_value": round(m["business_value"], 2),
            }
        )
    return _indexed(rows, ["version", "estimator", "accuracy", "roc_auc", "f1", "business_value"])


def versions_table(registry: Registry) -> pd.DataFrame:
    """Every version with its estimator, evaluation metrics, verdicts and the stage it holds."""
    from churnlab.registry import PRODUCTION, STAGING

    holders = {registry.holder(STAGING): STAGING, registry.holder(PRODUCTION): PRODUCTION}
    rows = []
    for mv in registry.versions():
        evidence = registry.evidence(mv.version)
        metrics = evidence.metrics
        rows.append(
            {
                "version": evidence.version,
                "estimator": evidence.tags.get(tags.ESTIMATOR, "?"),
                "accuracy": round(metrics.get("accuracy", float("nan")), 4),
                "roc_auc": round(metrics.get("roc_auc", float("nan")), 4),
                "gate": evidence.gate,
                "smoke": evidence.smoke,
                "holds": holders.get(evidence.version, "-"),
                "description": evidence.description,
            }
        )
    columns = ["version", "estimator", "accuracy", "roc_auc", "gate", "smoke", "holds"]
    return _indexed(rows, [*columns, "description"])


def data_table(registry: Registry) -> pd.DataFrame:
    """The data snapshot digests recorded on every version (tags ``churnlab.data.<kind>``)."""
    rows = []
    for mv in registry.versions():
        found = mv.tags or {}
        rows.append(
            {
                "version": int(mv.version),
                **{k: found.get(tags.data_tag(k), "-") for k in tags.DATA_KINDS},
            }
        )
    return _indexed(rows, ["version", *tags.DATA_KINDS])


def _indexed(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """The rows as a table indexed by its first column; an empty one keeps its columns (a
    class's model exists before its first version)."""
    return pd.DataFrame(rows, columns=columns).set_index(columns[0])


def history_table(registry: Registry) -> pd.DataFrame:
    """Every move of an alias, oldest first, as a table."""
    columns = ["time", "actor", "action", "alias", "from", "to", "override", "reason"]
    rows = []
    for e in registry.history():
        rows.append(
            {
                "time": e.time,
                "actor": e.actor,
                "action": e.action,
                "alias": e.alias,
                "from": "-" if e.from_version is None else f"v{e.from_version}",
                "to": "-" if e.to_version is None else f"v{e.to_version}",
                "override": "yes" if e.override else "",
                "reason": e.reason,
            }
        )
    return pd.DataFrame(rows, columns=columns)


def timeline_table(registry: Registry) -> pd.DataFrame:
    """Moves and four-eyes approvals, in the order they were recorded (an approval's
    ``to`` is the version it approves)."""
    columns = ["time", "actor", "action", "alias", "from", "to", "reason"]
    rows = []
    for r in registry.timeline():
        before, after = r.get("from_version"), r.get("to_version", r.get("version"))
        rows.append(
            {
                "time": r["time"],
                "actor": r["actor"],
                "action": r["action"],
                "alias": r["alias"],
                "from": "-" if before is None else f"v{before}",
                "to": "-" if after is None else f"v{after}",
                "reason": r.get("reason", ""),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def history_events(registry: Registry) -> list[dict[str, Any]]:
    """The history as plain dicts (what ``plots.stage_timeline`` draws)."""
    return [e.to_dict() for e in registry.history()]


# ---------------------------------------------------------------------------- checks
def is_volatile(name: str) -> bool:
    """True for checks whose measured value changes from run to run (times, memory)."""
    key = name.lower()
    return any(key.endswith(s) if s.startswith("_") else s in key for s in VOLATILE_CHECKS)


def checks_table(checks: Sequence[Check]) -> pd.DataFrame:
    """Checks as a table whose text is the same on every run.

    Measured times and memory vary between runs: their value shows as ``measured`` and
    :func:`measurements` prints the numbers with their units instead.
    """
    rows = []
    for c in checks:
        volatile = is_volatile(c.name)
        rows.append(
            {
                "check": c.name,
                "status": c.status,
                "value": "measured" if volatile else _shown(c.value),
                "operator": c.operator,
                "threshold": _shown(c.threshold),
                "detail": "" if volatile else str(c.detail or ""),
            }
        )
    return pd.DataFrame(rows).set_index("check")


def measurements(checks: Sequence[Check]) -> str:
    """One line per volatile check: ``name: value unit (threshold)``, e.g. for p95 latency."""
    lines = []
    for c in checks:
        if not is_volatile(c.name) or c.value is None:
            continue
        unit = _unit(c.name)
        op = c.operator or "<="
        if unit == "MB":  # memory is not masked when outputs are compared: say where it stands
            side = "within" if c.status == "pass" else "over"
            lines.append(f"{c.name}: {side} the {c.threshold} MB limit -> {c.status}")
            continue
        bound = f" (needs {op} {c.threshold} {unit})" if c.threshold is not None else ""
        lines.append(f"{c.name}: {_number(c.value)} {unit}{bound} -> {c.status}")
    return "\n".join(lines)


def _unit(name: str) -> str:
    key = name.lower()
    if key.endswith("_ms") or "latency" in key:
        return "ms"
    if "rss" in key or "memory" in key or key.endswith("_mb"):
        return "MB"
    return "s"


def _number(value: Any) -> str:
    try:
        return f"{float(value):.2f}"
    except (TypeError, ValueError):
        return str(value)


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"  # 4 significant digits: 0.8035, 1e-09
    return "-" if value is None else str(value)


__all__ = [
    "VOLATILE_CHECKS",
    "checks_table",
    "data_table",
    "history_events",
    "history_table",
    "is_volatile",
    "measurements",
    "candidates_table",
    "versions_table",
]
