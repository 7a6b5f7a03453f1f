"""The staging smoke check: does the real backend serve this version, correctly and fast?

:func:`smoke_check` starts the serving backend for a stage as a real process (uvicorn on
a free port of 127.0.0.1), then checks that ``/health`` names the expected stage and
version, that ``/predict`` on the version's evaluation snapshot agrees with the model
loaded in-process to 1e-9, how fast single-row requests are (p50/p95 over HTTP), how much
memory the server took (peak RSS), and that bad input is answered with 4xx. It stops the
process and records the verdict and figures on the model version (tags
``churnlab.smoke.*`` and the artifact ``smoke/v<N>.json``). Promotion to production reads
exactly ``churnlab.smoke.verdict``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from churnlab import store
from churnlab.errors import ChurnlabError, InputError, Refused

SMOKE_PREFIX = "churnlab.smoke."
#: single-row p95 over HTTP the backend must stay under (ms)
LATENCY_P95_MS = 500.0
#: peak resident memory the backend must stay under (MB)
PEAK_RSS_MB = 1500.0
#: predictions over HTTP must equal the in-process model's to this tolerance
TOLERANCE = 1e-9
STARTUP_TIMEOUT_S = 120.0  # generous: a loaded 2-core machine starts two backends at once
BATCH = 1000  # records per /predict call when scoring the evaluation snapshot


class BackendFailed(ChurnlabError):
    """The backend process did not start or stopped answering (exit 1).

    ``output`` holds what the process wrote (secrets redacted).
    """

    exit_code = 1

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident memory (VmHWM) in MB, or None where /proc is absent."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


class Backend:
    """A serving backend running as a real uvicorn process on 127.0.0.1."""

    def __init__(
        self,
        stage: str,
        *,
        port: int | None = None,
        model_name: str = store.DEFAULT_MODEL_NAME,
        env: dict[str, str] | None = None,
    ) -> None:
        self.stage = stage
        self.model_name = model_name
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self._log: Any = None
        self._output = ""
        self._session: Any = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> Backend:
        """Start the process (does not wait; see :meth:`wait_ready`)."""
        if not _port_free(self.port):
            raise InputError(f"port {self.port} on 127.0.0.1 is in use; choose another port")
        env = {**os.environ, **(self.env or {})}
        env.update(MODEL_NAME=self.model_name, MODEL_STAGE=self.stage)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._log = tempfile.TemporaryFile(mode="w+b")
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "serving.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        self._started = time.monotonic()
        self.process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=store.project_root(),
        )
        return self

    def output(self) -> str:
        """Everything the process wrote so far (kept after :meth:`stop`), secrets redacted."""
        if self._log is not None:
            self._log.flush()
            self._log.seek(0)
            self._output = store.redact(self._log.read().decode(errors="replace"))
        return self._output

    def last_line(self) -> str:
        """The last line the process wrote (its error, when it died)."""
        lines = [ln.strip() for ln in self.output().splitlines()]
        wanted = [ln for ln in lines if ln and "Application startup failed" not in ln]
        return wanted[-1] if wanted else ""

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> Backend:
        """Wait until ``/health`` answers 200; raise :class:`BackendFailed` otherwise."""
        import requests

        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                why = self.last_line() or f"exit code {code}"
                raise BackendFailed(
                    f"the {self.stage} backend exited with code {code} at start-up: {why}",
                    self.output(),
                )
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    self.startup_s = round(time.monotonic() - self._started, 3)
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise BackendFailed(
            f"the {self.stage} backend did not answer /health within {timeout:.0f} s"
            + (f": {self.last_line()}" if self.last_line() else ""),
            self.output(),
        )

    @property
    def session(self):
        import requests

        if self._session is None:
            self._session = requests.Session()
        return self._session

    def health(self) -> dict[str, Any]:
        """``GET /health`` as a dict."""
        response = self.session.get(self.url + "/health", timeout=10)
        response.raise_for_status()
        return response.json()

    def predict(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """``POST /predict`` with ``records``; the answer as a dict."""
        response = self.session.post(
            self.url + "/predict", json={"records": list(records)}, timeout=60
        )
        if response.status_code != 200:
            raise BackendFailed(f"/predict answered {response.status_code}: {response.text[:300]}")
        return response.json()

    def peak_rss_mb(self) -> float | None:
        """The server process's peak resident memory so far (MB)."""
        return peak_rss_mb(self.pid) if self.pid and self.process.poll() is None else None

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s) and release its log."""
        if self._session is not None:
            self._session.close()
            self._session = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._log is not None:
            self.output()
            self._log.close()
            self._log = None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def running_backend(
    stage: str,
    *,
    port: int | None = None,
    model_name: str = store.DEFAULT_MODEL_NAME,
    env: dict[str, str] | None = None,
    timeout: float = STARTUP_TIMEOUT_S,
) -> Iterator[Backend]:
    """Start the backend for ``stage`` as a real uvicorn process; stop it on exit.

    Waits until ``/health`` answers (``timeout`` seconds); if the process dies first,
    raises :class:`BackendFailed` with its last line of output.
    """
    backend = Backend(stage, port=port, model_name=model_name, env=env)
    try:
        backend.start()
        backend.wait_ready(timeout)
        yield backend
    finally:
        backend.stop()


# ---------------------------------------------------------------------------- the check
@dataclass
class SmokeResult:
    """The smoke check's verdict on one version, its checks and figures."""

    model_name: str
    version: int
    stage: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    health: dict[str, Any] = field(default_factory=dict)
    p50_ms: float | None = None
    p95_ms: float | None = None
    peak_rss_mb: float | None = None
    startup_s: float | None = None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and not any(c["status"] == "fail" for c in self.checks)

    @property
    def verdict(self) -> str:
        return "passed" if self.passed else "failed"

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if c["status"] == "fail"]

    def figures(self) -> dict[str, float | None]:
        return {
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "peak_rss_mb": self.peak_rss_mb,
            "startup_s": self.startup_s,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "version": self.version,
            "stage": self.stage,
            "verdict": self.verdict,
            "checks": [dict(c) for c in self.checks],
            "health": dict(self.health),
            **self.figures(),
        }

    def table(self):
        """The checks as a DataFrame (for notebooks and reports)."""
        import pandas as pd

        return pd.DataFrame(self.checks, columns=["name", "status", "value", "threshold", "detail"])

    def summary(self) -> str:
        """One line: verdict, and the figures or the failing checks."""
        who = f"{self.model_name} v{self.version} ({self.stage})"
        if self.passed:
            return (
                f"Smoke check passed: {who}: p50 {_num(self.p50_ms)} ms, "
                f"p95 {_num(self.p95_ms)} ms, peak RSS {_num(self.peak_rss_mb)} MB, "
                f"start-up {_num(self.startup_s)} s"
            )
        why = "; ".join(_why(c) for c in self.failed)
        return f"Smoke check failed: {who}: {why or 'no checks ran'}"


def _why(check: dict[str, Any]) -> str:
    value, limit = check["value"], check["threshold"]
    if isinstance(value, int | float) and isinstance(limit, int | float):
        return f"{check['name']}: {value:g} over the limit {limit:g} ({check['detail']})"
    return f"{check['name']}: {check['detail']}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _check(name: str, ok: bool | None, value: Any, threshold: Any, detail: str = "") -> dict:
    status = "skip" if ok is None else ("pass" if ok else "fail")
    return {
        "name": name,
        "status": status,
        "value": value,
        "threshold": threshold,
        "detail": detail,
    }


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


def _check_bad_inputs(backend: Backend) -> dict[str, Any]:
    from serving.contract import EXAMPLE_RECORD

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
    return _check(
        "bad_input", not wrong, f"{rejected}/{len(cases)}", f"{len(cases)}/{len(cases)}", detail
    )


def _check_health(health: dict[str, Any], model_name: str, version: int, stage: str, run_id: str):
    want = {"stage": stage, "model_name": model_name, "model_version": version, "run_id": run_id}
    wrong = [
        f"{k} is {health.get(k)!r}, expected {v!r}" for k, v in want.items() if health.get(k) != v
    ]
    served = f"{health.get('model_name')} v{health.get('model_version')} {health.get('stage')}"
    return _check(
        "health",
        not wrong and health.get("status") == "ok",
        served,
        f"{model_name} v{version} {stage}",
        "; ".join(wrong) or "stage, model, version and run id as registered",
    )


@dataclass
class Reference:
    """What the served predictions must equal: the evaluation snapshot scored in-process."""

    records: list[dict[str, Any]]
    expected: Any  # numpy array of churn probabilities, one per record


def reference(registry, version: int) -> Reference:
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


def _check_predictions(backend: Backend, ref: Reference | Exception) -> dict[str, Any]:
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
        return _check(
            "predictions",
            False,
            len(served),
            len(expected),
            f"{len(served)} predictions for {len(expected)} records",
        )
    diff = float(np.max(np.abs(np.asarray(served) - expected))) if len(served) else 0.0
    flags_ok = flags == [bool(p >= 0.5) for p in served]
    ok = diff <= TOLERANCE and flags_ok
    detail = f"max |served - in-process| over {len(served)} rows of the evaluation snapshot"
    if not flags_ok:
        detail += "; churn flags disagree with the probabilities"
    return _check("predictions", ok, diff, TOLERANCE, detail)


def _check_latency(backend: Backend, requests_count: int, limit_ms: float):
    from serving.contract import EXAMPLE_RECORD

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
    return (
        p50,
        p95,
        _check(
            "latency",
            p95 <= limit_ms,
            p95,
            limit_ms,
            f"p95 of {requests_count} single-row requests over HTTP (p50 {p50} ms)",
        ),
    )


def _resolve(registry, version: int | str | None, stage: str) -> int:
    from churnlab.registry import _normal_alias

    stage = _normal_alias(stage)
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
    registry=None,
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
    from churnlab.registry import Registry, _normal_alias

    if latency_requests < 1:
        raise InputError(f"latency_requests must be at least 1, got {latency_requests}")
    registry = registry or Registry()
    stage = _normal_alias(stage)
    number = _resolve(registry, version, stage)
    mv = registry.version(number)
    result = SmokeResult(registry.model_name, number, stage)
    backend = Backend(stage, model_name=registry.model_name)
    ref: Reference | Exception | None = None
    try:
        try:
            backend.start()
            try:  # while the backend process starts
                ref = reference(registry, number)
            except Exception as exc:  # noqa: BLE001 - reported by the predictions check
                ref = exc
            backend.wait_ready()
        except BackendFailed as exc:
            result.checks.append(_check("startup", False, None, STARTUP_TIMEOUT_S, str(exc)))
        else:
            result.startup_s = backend.startup_s
            result.checks.append(
                _check(
                    "startup",
                    True,
                    backend.startup_s,
                    STARTUP_TIMEOUT_S,
                    "seconds from process start to /health answering",
                )
            )
            _run_checks(
                backend, registry, mv, ref, result, latency_requests, max_p95_ms, max_rss_mb
            )
    finally:
        backend.stop()
    if record:
        record_result(registry, result)
    return result


def _run_checks(
    backend, registry, mv, ref, result, latency_requests, max_p95_ms, max_rss_mb
) -> None:
    import requests

    number = result.version
    try:
        result.health = backend.health()
        result.checks.append(
            _check_health(result.health, registry.model_name, number, result.stage, mv.run_id)
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
        result.checks.append(_check("backend", False, None, None, store.redact(detail[:400])))
    result.peak_rss_mb = backend.peak_rss_mb()
    result.checks.append(
        _check(
            "memory",
            None if result.peak_rss_mb is None else result.peak_rss_mb <= max_rss_mb,
            result.peak_rss_mb,
            max_rss_mb,
            "peak resident memory of the server process (VmHWM)",
        )
    )


def record_result(registry, result: SmokeResult) -> None:
    """Write checks, figures and the JSON report on the version; the verdict tag last."""
    from churnlab.registry import SMOKE_TAG

    client, name, version = registry.client, registry.model_name, str(result.version)
    registry._call(client.set_model_version_tag, name, version, SMOKE_TAG, "pending")
    for check in result.checks:
        registry._call(
            client.set_model_version_tag,
            name,
            version,
            SMOKE_PREFIX + check["name"],
            check["status"],
        )
    for key, value in result.figures().items():
        if value is not None:
            registry._call(
                client.set_model_version_tag, name, version, SMOKE_PREFIX + key, str(value)
            )
    mv = registry.version(result.version)
    registry._call(client.log_dict, mv.run_id, result.to_dict(), f"smoke/v{version}.json")
    registry._call(client.set_model_version_tag, name, version, SMOKE_TAG, result.verdict)


# ---------------------------------------------------------------------------- CLI
def cmd_smoke(args) -> int:
    from churnlab.registry import Registry, _normal_alias

    stage = _normal_alias(args.stage)  # a typo fails before the registry is opened
    result = smoke_check(
        args.version,
        stage=stage,
        registry=Registry(args.model),
        latency_requests=args.requests,
        max_p95_ms=args.max_p95_ms,
        max_rss_mb=args.max_rss_mb,
    )
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True, default=str))
    else:
        for c in result.checks:
            value = "-" if c["value"] is None else c["value"]
            print(
                f"  {c['status']:4}  {c['name']:12} {value!s:>22}  {c['threshold']!s:<10} {c['detail']}"
            )
        print(result.summary())
    return 0 if result.passed else 1


def add_cli(subparsers) -> None:
    """Add ``smoke`` to the churnlab command line."""
    p = subparsers.add_parser(
        "smoke", help="start the stage's backend for real, check it, record the smoke verdict"
    )
    p.add_argument("--stage", default="staging", help="staging (default) or production")
    p.add_argument("--version", default=None, help="must be the stage's holder (default)")
    p.add_argument("--requests", type=int, default=200, help="single-row requests to time")
    p.add_argument("--max-p95-ms", type=float, default=LATENCY_P95_MS, help="latency limit")
    p.add_argument("--max-rss-mb", type=float, default=PEAK_RSS_MB, help="memory limit")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_smoke)
