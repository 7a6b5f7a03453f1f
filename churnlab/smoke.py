"""The smoke check: does the real backend of a stage serve this version, correctly and fast?

:func:`smoke_check` starts the serving backend for a stage as a real process
(:class:`churnlab.backend.Backend`), then checks that ``/health`` names the expected stage
and version, that ``/predict`` on the version's evaluation snapshot agrees with the model
loaded in-process to 1e-9, how fast single-row requests are (p50/p95 over HTTP), how much
memory the server took (peak RSS), and that bad input is answered with 4xx. It stops the
process and records the verdict, checks and figures on the model version
(``Registry.record("smoke", result)``). Promotion to production reads exactly that verdict.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from churnlab import store
from churnlab.backend import STARTUP_TIMEOUT_S, Backend, BackendFailed
from churnlab.checks import Check, Result
from churnlab.errors import InputError, Refused
from churnlab.registry import Registry, parse_stage
from churnlab.schema import EXAMPLE_RECORD
from churnlab.scoring import TOLERANCE

#: single-row p95 over HTTP the backend must stay under (ms)
LATENCY_P95_MS = 500.0
#: peak resident memory the backend must stay under (MB)
PEAK_RSS_MB = 1500.0
#: records per ``/predict`` call when scoring the evaluation snapshot
BATCH = 1000


@dataclass
class SmokeResult(Result):
    """The smoke check's verdict on one version served by one stage, its checks and figures."""

    stage: str = field(kw_only=True)
    health: dict[str, Any] = field(default_factory=dict)
    p50_ms: float | None = None
    p95_ms: float | None = None
    peak_rss_mb: float | None = None
    startup_s: float | None = None

    title: ClassVar[str] = "Smoke check"
    needs_checks: ClassVar[bool] = True

    def figures(self) -> dict[str, float | None]:
        """Latency, memory and start-up time, recorded as tags beside the checks."""
        return {
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "peak_rss_mb": self.peak_rss_mb,
            "startup_s": self.startup_s,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "stage": self.stage,
            "health": dict(self.health),
            **self.figures(),
        }

    def summary(self) -> str:
        """One line: verdict, and the figures or the failing checks."""
        who = f"{self.model_name} v{self.version} ({self.stage})"
        if self.passed:
            return (
                f"{self.title} passed: {who}: p50 {_num(self.p50_ms)} ms, "
                f"p95 {_num(self.p95_ms)} ms, peak RSS {_num(self.peak_rss_mb)} MB, "
                f"start-up {_num(self.startup_s)} s"
            )
        why = "; ".join(_why(c) for c in self.failed)
        return f"{self.title} failed: {who}: {why or 'no checks ran'}"


def _why(check: Check) -> str:
    value, limit = check.value, check.threshold
    if isinstance(value, int | float) and isinstance(limit, int | float):
        return f"{check.name}: {value:g} over the limit {limit:g} ({check.detail})"
    return f"{check.name}: {check.detail}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def bad_inputs(example: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Requests the backend must refuse with 4xx: ``(name, requests keyword arguments)``."""
    good = dict(example)
    nan_record = json.dumps({"records": [{**good, "MonthlyCharges": float("nan")}]})  # NaN literal
    return [
        ("unknown field", {"json": {"records": [{**good, "shoe_size": 44}]}}),
        (
            "missing field",
            {"json": {"records": [{k: v for k, v in good.items() if k != "tenure"}]}},
        ),
        ("wrong type", {"json": {"records": [{**good, "tenure": "twelve"}]}}),
        ("unknown category", {"json": {"records": [{**good, "Contract": "Monthly"}]}}),
        ("out of range", {"json": {"records": [{**good, "tenure": -1}]}}),
        ("NaN", {"data": nan_record, "headers": {"Content-Type": "application/json"}}),
        ("empty batch", {"json": {"records": []}}),
        (
            "malformed JSON",
            {"data": '{"records": [', "headers": {"Content-Type": "application/json"}},
        ),
        ("wrong content type", {"data": "records", "headers": {"Content-Type": "text/plain"}}),
    ]


def _check_bad_inputs(backend: Backend) -> Check:
    wrong = []
    cases = bad_inputs(EXAMPLE_RECORD)
    for name, kwargs in cases:
        try:
            response = backend.session.post(backend.url + "/predict", timeout=30, **kwargs)
            if not 400 <= response.status_code < 500 or "detail" not in response.json():
                wrong.append(f"{name} -> {response.status_code}")
        except Exception as exc:  # a dropped connection is a failure too
            wrong.append(f"{name} -> {type(exc).__name__}")
    try:
        still = backend.health().get("status") == "ok"
    except Exception:
        still = False
    if not still:
        wrong.append("/health stopped answering afterwards")
    rejected = len(cases) - len([w for w in wrong if "->" in w])
    detail = (
        "; ".join(wrong)
        if wrong
        else f"{', '.join(n for n, _ in cases)} each answered 4xx; /health still ok"
    )
    return Check.of(
        "bad_input",
        not wrong,
        f"{rejected}/{len(cases)}",
        f"{len(cases)}/{len(cases)}",
        detail=detail,
    )


def _check_health(
    health: dict[str, Any], model_name: str, version: int, stage: str, run_id: str
) -> Check:
    want = {"stage": stage, "model_name": model_name, "model_version": version, "run_id": run_id}
    wrong = [
        f"{k} is {health.get(k)!r}, expected {v!r}" for k, v in want.items() if health.get(k) != v
    ]
    served = f"{health.get('model_name')} v{health.get('model_version')} {health.get('stage')}"
    return Check.of(
        "health",
        not wrong and health.get("status") == "ok",
        served,
        f"{model_name} v{version} {stage}",
        detail="; ".join(wrong) or "stage, model, version and run id as registered",
    )


@dataclass
class Reference:
    """What the served predictions must equal: the evaluation snapshot scored in-process."""

    records: list[dict[str, Any]]
    expected: Any  # numpy array of churn probabilities, one per record


def reference(registry: Registry, version: int) -> Reference:
    """Score ``version``'s evaluation snapshot with its scikit-learn pipeline, in-process.

    The smoke check computes it while the backend starts (the two use different cores).
    """
    from churnlab import data, schema
    from churnlab.scoring import Scorer

    frame = registry.snapshot(version, "evaluation")
    expected = Scorer.from_registry(registry, version, kind="sklearn").predict_proba(
        data.features(frame)
    )
    records = frame[[schema.ID_COLUMN, *schema.FEATURE_NAMES]].to_dict(orient="records")
    return Reference(records, expected)


def _check_predictions(backend: Backend, ref: Reference | Exception) -> Check:
    import numpy as np

    if isinstance(ref, Exception):  # computing it failed while the backend started
        raise ref
    records, expected = ref.records, ref.expected
    served: list[float] = []
    flags: list[bool] = []
    for start in range(0, len(records), BATCH):
        answer = backend.predict(records[start : start + BATCH])
        served += [p["churn_probability"] for p in answer["predictions"]]
        flags += [p["churn"] for p in answer["predictions"]]
    if len(served) != len(expected):
        return Check.of(
            "predictions",
            False,
            len(served),
            len(expected),
            detail=f"{len(served)} predictions for {len(expected)} records",
        )
    diff = float(np.max(np.abs(np.asarray(served) - expected))) if len(served) else 0.0
    flags_ok = flags == [bool(p >= 0.5) for p in served]
    ok = diff <= TOLERANCE and flags_ok
    detail = f"max |served - in-process| over {len(served)} rows of the evaluation snapshot"
    if not flags_ok:
        detail += "; churn flags disagree with the probabilities"
    return Check.of("predictions", ok, diff, TOLERANCE, detail=detail)


def _check_latency(
    backend: Backend, requests_count: int, limit_ms: float
) -> tuple[float, float, Check]:
    """p50 and p95 of ``requests_count`` single-row requests (ms), and the latency check."""
    body = json.dumps({"records": [EXAMPLE_RECORD]})
    headers = {"Content-Type": "application/json"}
    for _ in range(min(10, requests_count)):  # warm up: first calls pay for lazy set-up
        backend.session.post(backend.url + "/predict", data=body, headers=headers, timeout=30)
    timings = []
    for _ in range(requests_count):
        t0 = time.perf_counter()
        response = backend.session.post(
            backend.url + "/predict", data=body, headers=headers, timeout=30
        )
        timings.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 200:
            raise BackendFailed(f"/predict answered {response.status_code} during the latency run")
    p50, p95 = round(_percentile(timings, 50), 3), round(_percentile(timings, 95), 3)
    detail = f"p95 of {requests_count} single-row requests over HTTP (p50 {p50} ms)"
    return p50, p95, Check.of("latency", p95 <= limit_ms, p95, limit_ms, detail=detail)


def _resolve(registry: Registry, version: int | str | None, stage: str) -> int:
    """The version the smoke check runs: the stage's holder, which ``version`` must be."""
    holder = registry.holder(stage)
    if version is None:
        if holder is None:
            raise Refused(
                f"refused: {registry.model_name} has no version in {stage}; "
                "stage one before the smoke check"
            )
        return holder
    number = int(registry.version(version).version)
    if holder != number:
        held = f"v{holder} does" if holder is not None else "nothing does"
        raise Refused(
            f"refused: {registry.model_name} v{number} does not hold {stage} ({held}); "
            f"the smoke check runs the {stage} backend, so move v{number} there first"
        )
    return number


def smoke_check(
    version: int | str | None = None,
    *,
    stage: str = "staging",
    registry: Registry | None = None,
    latency_requests: int = 200,
    max_p95_ms: float = LATENCY_P95_MS,
    max_rss_mb: float = PEAK_RSS_MB,
    record: bool = True,
) -> SmokeResult:
    """Start the ``stage`` backend for real, check it and record the verdict on the version.

    ``version`` None means the stage's holder (refused when the stage is empty); a given
    version must be the one the stage holds. The checks: start-up, ``/health``,
    predictions on the evaluation snapshot vs the in-process model (1e-9), single-row
    latency p95, peak memory, and 4xx answers to bad input.
    """
    if latency_requests < 1:
        raise InputError(f"latency_requests must be at least 1, got {latency_requests}")
    registry = registry or Registry()
    stage = parse_stage(stage)
    number = _resolve(registry, version, stage)
    run_id = registry.version(number).run_id
    result = SmokeResult(registry.model_name, number, stage=stage)
    backend = Backend(stage, model_name=registry.model_name)
    try:
        try:
            backend.start()
            try:  # while the backend process starts
                ref: Reference | Exception = reference(registry, number)
            except Exception as exc:  # noqa: BLE001 - reported by the predictions check
                ref = exc
            backend.wait_ready()
        except BackendFailed as exc:
            result.checks.append(
                Check.of("startup", False, None, STARTUP_TIMEOUT_S, detail=str(exc))
            )
        else:
            result.startup_s = backend.startup_s
            result.checks.append(
                Check.of(
                    "startup",
                    True,
                    backend.startup_s,
                    STARTUP_TIMEOUT_S,
                    detail="seconds from process start to /health answering",
                )
            )
            _run_checks(backend, run_id, ref, result, latency_requests, max_p95_ms, max_rss_mb)
    finally:
        backend.stop()
    if record:
        registry.record("smoke", result)
    return result


def _run_checks(
    backend: Backend,
    run_id: str,
    ref: Reference | Exception,
    result: SmokeResult,
    latency_requests: int,
    max_p95_ms: float,
    max_rss_mb: float,
) -> None:
    """The checks on a backend that started: health, predictions, latency, bad input, memory."""
    import requests

    try:
        result.health = backend.health()
        result.checks.append(
            _check_health(result.health, result.model_name, result.version, result.stage, run_id)
        )
        result.checks.append(_check_predictions(backend, ref))
        result.p50_ms, result.p95_ms, latency = _check_latency(
            backend, latency_requests, max_p95_ms
        )
        result.checks.append(latency)
        result.checks.append(_check_bad_inputs(backend))
    except (BackendFailed, requests.RequestException, ValueError, KeyError) as exc:
        detail = f"the backend failed during the check: {type(exc).__name__}: {exc}"
        if backend.process is not None and backend.process.poll() is not None:
            detail += f" (exited with code {backend.process.returncode}: {backend.last_line()})"
        result.checks.append(Check.of("backend", False, detail=store.redact(detail[:400])))
    result.peak_rss_mb = backend.peak_rss_mb()
    result.checks.append(
        Check.of(
            "memory",
            None if result.peak_rss_mb is None else result.peak_rss_mb <= max_rss_mb,
            result.peak_rss_mb,
            max_rss_mb,
            detail="peak resident memory of the server process (VmHWM)",
        )
    )
