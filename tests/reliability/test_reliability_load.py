"""Load: 32 concurrent clients for 30 s against one real backend on 127.0.0.1.

Uses wrk (Debian's package; .ci/run installs it) with a POST script and ``--latency``, or,
where wrk is absent (never under CI), a bounded asyncio client on httpx. Zero errors are
allowed; p99 is reported; the server's resident memory (VmRSS) after the run may be at most
1.2 times what it was after a warm-up.

``make test`` runs 8 s (``CHURNLAB_LOAD_SECONDS``): thousands of requests on 32 connections,
enough for an error or a leak to show; ``make test-load`` runs the full 30 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from support import needs, running_backend, staged_copy

from churnlab.backend import memory_kb
from churnlab.gate import Policy, run_gate
from churnlab.schema import EXAMPLE_RECORD

pytestmark = [pytest.mark.slow, pytest.mark.load, pytest.mark.xdist_group("load-backend")]

CLIENTS = 32
SECONDS = int(os.environ.get("CHURNLAB_LOAD_SECONDS", "8"))
#: the warm-up before the memory baseline: every code path has run and the allocator's
#: arenas have grown by then (3 s are some 5,000 requests; the full run keeps its 5 s)
WARMUP_SECONDS = 5 if SECONDS >= 30 else 3
MAX_MEMORY_GROWTH = 1.2
BODY = json.dumps({"records": [EXAMPLE_RECORD]})


def rss_mb(pid: int) -> float:
    """Resident memory of a process now (VmRSS), in MB."""
    kb = memory_kb(pid)
    assert kb is not None, f"no VmRSS for process {pid}"
    return kb / 1024


def _unit(value: str, unit: str) -> float:
    """wrk's latency text (``us``, ``ms``, ``s``) in milliseconds."""
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(wrk: str, url: str, seconds: int, folder: Path) -> dict[str, float]:
    """wrk -t2 -c32 with a POST script; requests, errors and latency percentiles."""
    script = folder / "predict.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(BODY)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    done = subprocess.run(
        [wrk, "-t2", f"-c{CLIENTS}", f"-d{seconds}s", "--timeout", "10s", "--latency"]
        + ["-s", str(script), f"{url}/predict"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,  # wrk stops itself after `seconds`; a minute more is a hang
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    figures = {"requests": float(re.search(r"(\d+) requests in", out).group(1))}
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["errors"] = (sum(map(int, socket.groups())) if socket else 0) + (
        int(non_2xx.group(1)) if non_2xx else 0
    )
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        figures[f"p{pct}_ms"] = _unit(m.group(1), m.group(2))
    figures["tool"] = "wrk"
    return figures


def run_httpx(url: str, seconds: int) -> dict[str, float]:
    """The same load from a bounded asyncio client: 32 tasks until the deadline."""
    import httpx

    latencies: list[float] = []
    errors = 0

    async def client(session: httpx.AsyncClient, deadline: float) -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                response = await session.post("/predict", content=BODY, headers=HEADERS)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - start) * 1000)
            errors += not ok

    async def main() -> None:
        limits = httpx.Limits(max_connections=CLIENTS)
        # an answer takes milliseconds; 10 s is wrk's --timeout too
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as session:
            deadline = time.monotonic() + seconds
            await asyncio.gather(*(client(session, deadline) for _ in range(CLIENTS)))

    asyncio.run(main())
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    return {
        "requests": float(len(ordered)),
        "errors": float(errors),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "tool": "httpx",
    }


HEADERS = {"Content-Type": "application/json"}


def load(url: str, seconds: int, folder: Path) -> dict[str, float]:
    wrk = needs("wrk", fallback=True)  # httpx stands in only outside CI
    if wrk:
        return run_wrk(wrk, url, seconds, folder)
    return run_httpx(url, seconds)


@pytest.fixture(scope="module")
def backend(template_home, tmp_path_factory):
    # the gate proves the ONNX graph's parity, so the backend serves what production would
    home = staged_copy(
        template_home,
        tmp_path_factory.mktemp("load-home"),
        "load test",
        prepare=lambda registry: run_gate(
            1, registry=registry, policy=Policy.load(latency_samples=20)
        ),
    )
    # start-up takes 5-20 s; 120 s means it hangs
    with running_backend("staging", env={"CHURNLAB_HOME": str(home)}, timeout=120) as running:
        assert running.health()["scorer"] == "onnx"
        yield running


def test_32_clients_for_30_seconds_no_errors_and_memory_holds(backend, tmp_path, capsys):
    warm = load(backend.url, WARMUP_SECONDS, tmp_path)
    assert warm["errors"] == 0, warm
    after_warmup = rss_mb(backend.pid)

    figures = load(backend.url, SECONDS, tmp_path)
    after_run = rss_mb(backend.pid)
    ratio = after_run / after_warmup
    with capsys.disabled():
        print(
            f"\n[load] {figures['tool']}: {CLIENTS} clients x {SECONDS} s: "
            f"{figures['requests']:.0f} requests ({figures['requests'] / SECONDS:.0f}/s), "
            f"{figures['errors']:.0f} errors; latency p50 {figures['p50_ms']:.1f} ms, "
            f"p90 {figures['p90_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms; "
            f"RSS {after_warmup:.0f} MB after warm-up -> {after_run:.0f} MB "
            f"after the run (x{ratio:.3f})"
        )
    assert figures["errors"] == 0, figures
    assert figures["requests"] >= CLIENTS  # every client got answers
    assert ratio <= MAX_MEMORY_GROWTH, (after_warmup, after_run)
    assert backend.process.poll() is None
    assert backend.health()["status"] == "ok"
