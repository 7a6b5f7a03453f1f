"""The quality gate: may a registered version move on to staging?

A declarative policy (``policy/default.yaml``, every value overridable) drives a list of
checks. Each check yields pass, fail or skip with the measured value and its threshold.
The verdict and every check are recorded on the model version (tags plus a JSON artifact
on its run). A failed gate moves nothing: the version stays registered and unstaged.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from churnlab import data, schema, tags
from churnlab.checks import Check, Result
from churnlab.errors import InputError
from churnlab.metrics import score, score_one
from churnlab.registry import PRODUCTION, Registry


@dataclass(frozen=True)
class Policy:
    """The gate's thresholds (see ``policy/default.yaml`` for what each one means)."""

    min_eval_rows: int = 500
    accuracy_min: float = 0.75
    roc_auc_min: float = 0.80
    latency_p95_ms: float = 50.0
    latency_samples: int = 200
    slice_columns: tuple[str, ...] = ("SeniorCitizen", "Contract", "InternetService")
    slice_metric: str = "roc_auc"
    slice_max_gap: float = 0.20
    slice_min_rows: int = 50
    slice_min_class_rows: int = 20
    robustness_noise: float = 0.05
    robustness_max_drop: float = 0.02
    invariance_columns: tuple[str, ...] = ("customerID", "gender")
    invariance_tolerance: float = 1e-9
    directional_max_violations: float = 0.0
    champion_metric: str = "roc_auc"
    champion_tolerance: float = 0.01
    onnx_parity_max: float = 1e-9
    production_approvals: int = 0

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Policy:
        """The shipped defaults, then the file at ``path``, then ``overrides``."""
        import yaml

        text = resources.files("churnlab").joinpath("policy/default.yaml").read_text()
        values = yaml.safe_load(text) or {}
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise InputError(f"policy file {p}: no such file")
            try:
                loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as exc:
                raise InputError(
                    f"policy file {p}: not valid YAML ({type(exc).__name__})"
                ) from None
            if not isinstance(loaded, dict):
                raise InputError(f"policy file {p}: expected a mapping of settings")
            values.update(loaded)
        values.update(overrides)
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Policy:
        """Validate names and types; errors name the setting and what it accepts."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InputError(f"unknown policy setting(s) {unknown}; known: {sorted(known)}")
        clean: dict[str, Any] = {}
        for name, value in values.items():
            default = getattr(cls, name)
            try:
                if isinstance(default, tuple):
                    items = value.split(",") if isinstance(value, str) else list(value)
                    clean[name] = tuple(str(v).strip() for v in items if str(v).strip())
                elif isinstance(default, bool):
                    clean[name] = str(value).lower() in ("1", "true", "yes")
                elif isinstance(default, int):
                    if isinstance(value, bool) or (isinstance(value, float) and value % 1):
                        raise ValueError(value)  # YAML `true` or `2.5` is not a count
                    clean[name] = int(value)
                elif isinstance(default, float):
                    if isinstance(value, bool) or not math.isfinite(float(value)):
                        raise ValueError(value)  # YAML `true` or `.nan` is not a threshold
                    clean[name] = float(value)
                else:
                    clean[name] = str(value)
            except (TypeError, ValueError):
                kind = type(default).__name__
                raise InputError(f"policy setting {name} must be a {kind}, got {value!r}") from None
        policy = cls(**clean)
        for col in (*policy.slice_columns, *policy.invariance_columns):
            if col not in schema.CSV_COLUMNS:
                raise InputError(
                    f"policy names unknown column {col!r}; known: {list(schema.CSV_COLUMNS)}"
                )
        for metric in (policy.slice_metric, policy.champion_metric):
            if metric not in ("accuracy", "roc_auc", "f1", "precision", "recall"):
                raise InputError(
                    f"metric must be one of ['accuracy', 'roc_auc', 'f1', 'precision', 'recall'], got {metric!r}"
                )
        return policy

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class GateResult(Result):
    """The gate's verdict on one version, the checks behind it and the policy applied."""

    policy: dict[str, Any] = field(default_factory=dict)

    title: ClassVar[str] = "Gate"

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "policy": self.policy}

    def summary(self) -> str:
        """One line: verdict and the failing checks."""
        if self.passed:
            return f"Gate passed: {self.model_name} v{self.version} ({len(self.checks)} checks)"
        why = "; ".join(
            f"{c.name} {c.value} (needs {c.operator} {c.threshold})" for c in self.failed
        )
        return f"Gate failed: {self.model_name} v{self.version}: {why}"


def _bound(name: str, value: float, threshold: float, op: str, detail: str = "") -> Check:
    ok = value >= threshold if op == ">=" else value <= threshold
    shown = int(value) if isinstance(value, int) else round(float(value), 6)
    return Check(name, "pass" if ok else "fail", shown, threshold, op, detail)


def _proba(model, frame: pd.DataFrame) -> np.ndarray:
    return model.predict_proba(frame)[:, 1]


def check_signature(signature) -> Check:
    """The logged signature's inputs equal the serving schema."""
    expected = schema.input_schema()
    actual = signature.inputs if signature is not None else None
    if actual == expected:
        return Check("signature", "pass", "matches", "feature schema", "==")
    got = [] if actual is None else [c.name for c in actual.inputs]
    want = [c.name for c in expected.inputs]
    diff = sorted(set(got) ^ set(want)) or "types or order differ"
    return Check("signature", "fail", "differs", "feature schema", "==", f"difference: {diff}")


def check_latency(model, X: pd.DataFrame, policy: Policy, scorer=None) -> Check:
    """p95 of single-row predictions, in milliseconds.

    Times ``scorer`` (what the server will run, record by record) when given, else the
    scikit-learn pipeline on one-row frames.
    """
    n = policy.latency_samples + 10
    if scorer is not None:
        records = X.head(n).to_dict(orient="records")
        calls = [[records[i % len(records)]] for i in range(n)]
        predict, what = scorer.score_records, f"served {scorer.kind} scorer"
    else:
        calls = [X.iloc[[i % len(X)]] for i in range(n)]
        predict, what = model.predict_proba, "scikit-learn pipeline"
    for call in calls[:10]:
        predict(call)
    times = []
    for call in calls[10:]:
        start = time.perf_counter()
        predict(call)
        times.append((time.perf_counter() - start) * 1000)
    p95 = float(np.percentile(times, 95))
    return _bound(
        "latency_p95_ms",
        p95,
        policy.latency_p95_ms,
        "<=",
        f"{policy.latency_samples} single-row calls of the {what}; "
        f"p50 {np.percentile(times, 50):.2f} ms",
    )


def check_slices(model, frame: pd.DataFrame, policy: Policy) -> Check:
    """Largest gap of the slice metric between segments of each slice column."""
    X, y = data.features(frame), data.labels(frame)
    p = _proba(model, X)
    worst, where, skipped = 0.0, "", []
    for col in policy.slice_columns:
        values = {}
        for seg, idx in frame.groupby(col).indices.items():
            ys = y[idx]
            if len(idx) < policy.slice_min_rows or (
                policy.slice_metric == "roc_auc" and ys.min() == ys.max()
            ):
                skipped.append(f"{col}={seg}")
                continue
            few = min(ys.sum(), len(ys) - ys.sum()) < policy.slice_min_class_rows
            if policy.slice_metric == "roc_auc" and few:
                skipped.append(f"{col}={seg}")
                continue
            values[seg] = score_one(policy.slice_metric, ys, p[idx])
        if len(values) >= 2:
            gap = max(values.values()) - min(values.values())
            if gap > worst:
                lo = min(values, key=values.get)
                hi = max(values, key=values.get)
                worst, where = gap, f"{col}: {lo} {values[lo]:.3f} vs {hi} {values[hi]:.3f}"
    detail = f"{policy.slice_metric}; worst {where}" if where else f"{policy.slice_metric}"
    if skipped:
        detail += f"; too small to judge: {', '.join(map(str, skipped))}"
    return _bound("slice_gap", worst, policy.slice_max_gap, "<=", detail)


def perturb(frame: pd.DataFrame, noise: float, seed: int = 7) -> pd.DataFrame:
    """Relative Gaussian noise on the numeric features (clipped to the schema's range)."""
    rng = np.random.default_rng(seed)
    out = frame.copy()
    for name in schema.NUMERIC:
        feat = schema.feature(name)
        values = out[name].to_numpy(dtype=float) * (1 + rng.normal(0, noise, len(out)))
        values = np.clip(values, feat.minimum, feat.maximum)
        out[name] = np.round(values).astype(np.int64) if feat.kind == "integer" else values
    return out


def check_robustness(model, frame: pd.DataFrame, policy: Policy) -> Check:
    """Accuracy drop under relative noise on the numeric inputs."""
    X, y = data.features(frame), data.labels(frame)
    base = score_one("accuracy", y, _proba(model, X))
    noisy = score_one("accuracy", y, _proba(model, perturb(X, policy.robustness_noise)))
    return _bound(
        "robustness_drop",
        max(base - noisy, 0.0),
        policy.robustness_max_drop,
        "<=",
        f"accuracy {base:.4f} -> {noisy:.4f} with {policy.robustness_noise:.0%} noise",
    )


def check_invariance(model, frame: pd.DataFrame, policy: Policy) -> Check:
    """Changing irrelevant columns (customerID, gender) keeps every probability."""
    X = frame[[schema.ID_COLUMN, *schema.FEATURE_NAMES]].copy()
    base = _proba(model, X)
    changed = X.copy()
    rng = np.random.default_rng(11)
    for col in policy.invariance_columns:
        if col == schema.ID_COLUMN:
            changed[col] = [f"{i:04d}-INVAR" for i in rng.integers(0, 10000, len(X))]
        else:
            vocab = list(schema.feature(col).values)
            changed[col] = changed[col].map(
                lambda v, vocab=vocab: vocab[(vocab.index(v) + 1) % len(vocab)]
            )
    delta = float(np.max(np.abs(_proba(model, changed) - base)))
    return _bound(
        "invariance",
        delta,
        policy.invariance_tolerance,
        "<=",
        f"max probability change after changing {', '.join(policy.invariance_columns)}",
    )


def check_directional(model, frame: pd.DataFrame, policy: Policy) -> Check:
    """A two-year contract must not raise churn probability over month-to-month."""
    X = data.features(frame)
    p_m2m = _proba(model, X.assign(Contract="Month-to-month"))
    p_two = _proba(model, X.assign(Contract="Two year"))
    share = float(np.mean(p_two > p_m2m + 1e-12))
    return _bound(
        "directional",
        share,
        policy.directional_max_violations,
        "<=",
        "share of customers whose churn probability rises from month-to-month to two-year",
    )


def check_champion(
    registry: Registry, version: int, model, frame: pd.DataFrame, policy: Policy
) -> Check:
    """Candidate vs the current production version on the candidate's evaluation snapshot."""
    champion = registry.holder(PRODUCTION)
    if champion is None or champion == version:
        why = "no production version yet" if champion is None else "the candidate is production"
        return Check("champion", "skip", None, -policy.champion_tolerance, ">=", why)
    X, y = data.features(frame), data.labels(frame)
    mine = score_one(policy.champion_metric, y, _proba(model, X))
    theirs = score_one(policy.champion_metric, y, _proba(registry.load_model(champion), X))
    return _bound(
        "champion",
        mine - theirs,
        -policy.champion_tolerance,
        ">=",
        f"{policy.champion_metric} v{version} {mine:.4f} vs production v{champion} {theirs:.4f}",
    )


def check_onnx_parity(
    registry: Registry, version: int, model, frame: pd.DataFrame, policy: Policy
) -> Check:
    """The version's ONNX graph (what the server runs) gives the pipeline's probabilities.

    Compared on the evaluation snapshot and on a noisy copy of it (values off the training
    grid, nearer the trees' thresholds).
    """
    from churnlab import onnx_export
    from churnlab.scoring import Scorer

    limit = policy.onnx_parity_max
    if not (registry.version(version).tags or {}).get(tags.ONNX_ARTIFACT):
        why = "no ONNX artifact: the scikit-learn pipeline is served"
        return Check("onnx_parity", "skip", None, limit, "<=", why)
    X = data.features(frame)
    try:
        graph = Scorer.from_registry(registry, version, kind="onnx").model
        delta = max(
            onnx_export.max_difference(model, graph, X),
            onnx_export.max_difference(model, graph, perturb(X, policy.robustness_noise)),
        )
    except Exception as exc:  # an unreadable graph fails the check, it does not crash the gate
        return Check("onnx_parity", "fail", None, limit, "<=", f"cannot run the ONNX graph: {exc}")
    return Check(
        "onnx_parity",
        "pass" if delta <= limit else "fail",
        float(f"{delta:.3g}"),
        limit,
        "<=",
        f"max churn-probability difference, ONNX vs scikit-learn, on {2 * len(X)} rows",
    )


def _served_scorer(registry: Registry, version: int, parity: Check):
    """The ONNX scorer the server will run once parity is proven, else None (sklearn)."""
    if parity.status != "pass":
        return None
    from churnlab.scoring import Scorer

    return Scorer.from_registry(registry, version, kind="onnx")


def evaluate(registry: Registry, version: str | int, policy: Policy | None = None) -> GateResult:
    """Run every check of ``policy`` on ``version``, without recording anything."""
    policy = policy or Policy.load()
    mv = registry.version(version)
    number = int(mv.version)
    model = registry.load_model(number)
    frame = registry.snapshot(number, "evaluation")
    X, y = data.features(frame), data.labels(frame)
    metrics = score(y, _proba(model, X))
    info = registry.model_info(number)

    checks = [
        _bound(
            "min_eval_rows",
            len(frame),
            policy.min_eval_rows,
            ">=",
            "rows in the evaluation snapshot",
        ),
        _bound("accuracy", metrics["accuracy"], policy.accuracy_min, ">=", "evaluation snapshot"),
        _bound("roc_auc", metrics["roc_auc"], policy.roc_auc_min, ">=", "evaluation snapshot"),
        check_signature(info.signature),
        parity := check_onnx_parity(registry, number, model, frame, policy),
        check_latency(model, X, policy, _served_scorer(registry, number, parity)),
        check_slices(model, frame, policy),
        check_robustness(model, frame, policy),
        check_invariance(model, frame, policy),
        check_directional(model, frame, policy),
        check_champion(registry, number, model, frame, policy),
    ]
    return GateResult(registry.model_name, number, checks, policy.to_dict())


def recorded_result(registry: Registry, version: str | int) -> GateResult | None:
    """The gate result last recorded on ``version`` (its checks and the policy applied), or
    None when the gate never judged it."""
    found = registry.recorded("gate", version)
    if found is None:
        return None
    return GateResult(
        found.get("model_name", registry.model_name),
        int(found.get("version", version)),
        [Check.from_dict(c) for c in found.get("checks", [])],
        dict(found.get("policy") or {}),
    )


def record(registry: Registry, result: GateResult) -> None:
    """Write the verdict and each check as version tags, and the JSON on the version's run."""
    registry.record("gate", result)


def run_gate(
    version: str | int,
    *,
    registry: Registry | None = None,
    policy: Policy | None = None,
) -> GateResult:
    """Evaluate ``version`` against ``policy`` and record the outcome on the version."""
    registry = registry or Registry()
    result = evaluate(registry, version, policy)
    record(registry, result)
    return result
