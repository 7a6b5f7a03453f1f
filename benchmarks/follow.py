"""Switching benchmark: a following production backend under steady load while the alias moves.

A fresh embedded registry gets two gated candidates; v1 is promoted. A production backend
started with ``churnlab serve --follow`` serves it while wrk keeps 8 connections busy and a
probe sends one request every 20 ms. The alias is then promoted to v2 and rolled back to
v1, ten switches in all, first noticed by polling, then (against a real ``mlflow server``
with a webhook registered to the backend) by MLflow's signed webhook. Reported: failed
requests (wrk's and the probe's, target 0), the time from the alias move (the start of the
promote or rollback call) to the first answer from the new version (targets: <= poll
interval + 2 s by polling, <= 2 s by webhook), and the backend's memory before the first
switch, after the first two (both versions loaded once) and after the last.

    python -m benchmarks.follow [--switches 10] [--poll-interval 2]

The measuring parts (:class:`Load`, :class:`Probe`, :func:`measure`) are what
``tests/backend/test_follow.py`` runs too. Needs Debian's ``wrk``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from churnlab.backend import memory_kb
from churnlab.schema import EXAMPLE_RECORD

CONNECTIONS = 8
PROBE_EVERY_S = 0.02
BODY = json.dumps({"records": [EXAMPLE_RECORD]}).encode()
LUA = Path(__file__).resolve().parent / "post.lua"
#: the figures' targets (issue 12)
WEBHOOK_TARGET_S = 2.0
POLL_MARGIN_S = 2.0
MEMORY_GROWTH_TARGET = 1.10  # after ten switches, at most 10% above the warm figure
WEBHOOK_EVENTS = ["model_version_alias.created", "model_version_alias.deleted"]


def rss_mb(pid: int) -> float:
    """A process's resident memory now (VmRSS), in MiB."""
    kb = memory_kb(pid)
    if kb is None:
        raise RuntimeError(f"no VmRSS for process {pid}")
    return round(kb / 1024, 1)


def wrk_figures(out: str) -> dict[str, Any]:
    """Requests, requests per second and errors (socket errors + non-2xx) from wrk's output."""
    total = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if total is None or rps is None:
        raise RuntimeError(f"wrk printed no figures:\n{out}")
    errors = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(map(int, sockets.groups())) if sockets else 0
    )
    return {"requests": int(total.group(1)), "rps": float(rps.group(1)), "errors": errors}


class Load:
    """wrk with ``connections`` connections POSTing one customer to ``/predict`` until
    :meth:`stop` (SIGINT: wrk then prints its figures) or ``max_seconds``."""

    def __init__(self, url: str, connections: int = CONNECTIONS, max_seconds: int = 600) -> None:
        self.url, self.connections, self.max_seconds = url, connections, max_seconds
        self.process: subprocess.Popen | None = None
        self._body: str | None = None

    def start(self) -> Load:
        with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as handle:
            handle.write(BODY)
        self._body = handle.name
        self.process = subprocess.Popen(
            ["wrk", "-t1", f"-c{self.connections}", f"-d{self.max_seconds}s"]
            + ["--timeout", "10s", "-s", str(LUA), self.url, "--", "/predict", handle.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        return self

    def stop(self) -> dict[str, Any]:
        """End the load; wrk's figures."""
        assert self.process is not None, "start() first"
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
            out, _ = self.process.communicate(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=10)
            if self._body:
                os.unlink(self._body)
                self._body = None
        return wrk_figures(out)


@dataclass
class Probe:
    """One request every ``every_s`` seconds on its own connection: which version answered
    when (``version`` None: the request failed)."""

    url: str
    every_s: float = PROBE_EVERY_S
    answers: list[tuple[float, int | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Probe:
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        import requests

        headers = {"Content-Type": "application/json"}
        with requests.Session() as session:
            while not self._stop.is_set():
                version = None
                try:
                    answer = session.post(
                        self.url + "/predict", data=BODY, headers=headers, timeout=10
                    )
                    if answer.status_code == 200:
                        version = int(answer.json()["model_version"])
                except (requests.RequestException, ValueError, KeyError):
                    pass
                self.answers.append((time.monotonic(), version))
                self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)

    @property
    def failures(self) -> int:
        return sum(version is None for _, version in self.answers)

    def first(self, version: int, since: float) -> float | None:
        """Seconds from ``since`` to the first answer from ``version`` after it, or None."""
        for at, answered in list(self.answers):
            if at >= since and answered == version:
                return at - since
        return None


@contextlib.contextmanager
def under_load(url: str, connections: int = CONNECTIONS) -> Iterator[tuple[Load, Probe]]:
    """wrk and a probe against ``url`` for the block; both always stopped."""
    load, probe = Load(url, connections), Probe(url)
    load.start()
    probe.start()
    try:
        yield load, probe
    finally:
        probe.stop()
        if load.process is not None and load.process.poll() is None:
            with contextlib.suppress(Exception):
                load.stop()


@dataclass(frozen=True)
class Move:
    """One alias move: a label, the call that makes it, the version it leads to."""

    label: str
    call: Callable[[], Any]
    to_version: int


def measure(
    url: str,
    pid: int,
    moves: Sequence[Move],
    *,
    timeout_s: float,
    settle_s: float = 0.5,
    connections: int = CONNECTIONS,
) -> dict[str, Any]:
    """Run ``moves`` one after the other under load; the switching figures.

    Each move waits until the probe sees the new version (at most ``timeout_s``), then
    ``settle_s``. Returns failed requests, seconds per switch, the trigger of each switch
    (from ``/metadata``) and the backend's memory before, after two switches and at the end.
    """
    import requests

    seconds: list[float | None] = []
    rss = {"before": rss_mb(pid)}
    with under_load(url, connections) as (load, probe):
        time.sleep(1.0)  # the load is steady before the first move
        for number, move in enumerate(moves, 1):
            started = time.monotonic()
            move.call()
            deadline = started + timeout_s
            took = probe.first(move.to_version, started)
            while took is None and time.monotonic() < deadline:
                time.sleep(0.01)
                took = probe.first(move.to_version, started)
            seconds.append(None if took is None else round(took, 3))
            if took is None:
                break
            time.sleep(settle_s)
            if number == 2:
                rss["after_2"] = rss_mb(pid)
        rss["after"] = rss_mb(pid)
        figures = load.stop()
    switches = requests.get(url + "/metadata", timeout=10).json().get("switches", [])
    done = [s for s in seconds if s is not None]
    return {
        "moves": [m.label for m in moves],
        "switch_s": seconds,
        "max_switch_s": max(done, default=None),
        "median_switch_s": sorted(done)[len(done) // 2] if done else None,
        "triggers": [s["trigger"] for s in switches[-len(moves) :]],
        "ready_s": [s["ready_s"] for s in switches[-len(moves) :]],
        "wrk": figures,
        "probe_requests": len(probe.answers),
        "failed_requests": figures["errors"] + probe.failures,
        "rss_mb": rss,
    }


def summary(name: str, found: dict[str, Any]) -> str:
    """One line of figures for a run of :func:`measure`."""
    rss = found["rss_mb"]
    return (
        f"[follow/{name}] {len(found['switch_s'])} switches under wrk -c{CONNECTIONS} "
        f"({found['wrk']['requests']} requests, {found['wrk']['rps']:.0f}/s) + probe "
        f"({found['probe_requests']}): failed requests {found['failed_requests']}; "
        f"alias move -> first answer from the new version: max {found['max_switch_s']} s, "
        f"median {found['median_switch_s']} s (each: {found['switch_s']}; triggers "
        f"{sorted(set(found['triggers']))}; load + readiness {found['ready_s']} s); RSS "
        f"{rss['before']} MiB before, {rss.get('after_2')} after 2 switches, "
        f"{rss['after']} after {len(found['switch_s'])}"
    )


# ---------------------------------------------------------------------------- the benchmark
def alternate(registry, a: int, b: int, switches: int) -> list[Move]:
    """Promote ``b`` over ``a``, roll back to ``a``, and again: ``switches`` moves."""

    def promote() -> None:
        registry.promote(b, override=True, reason="benchmarks.follow: promote")

    def rollback() -> None:
        registry.rollback(reason="benchmarks.follow: roll back")

    return [
        Move(f"promote v{b}", promote, b) if i % 2 == 0 else Move(f"rollback to v{a}", rollback, a)
        for i in range(switches)
    ]


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import BIN, Server, machine, machine_line, write_json
    from benchmarks.serving import run
    from churnlab.backend import free_port

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=10)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--estimator", default="logreg")
    args = parser.parse_args(argv)
    info = machine()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="churnlab-follow-") as tmp:
        home = Path(tmp) / "home"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(CHURNLAB_HOME=str(home), CHURNLAB_ACTOR="benchmarks.follow")
        churnlab = str(BIN / "churnlab")
        for version in ("1", "2"):  # two candidates, each gated (its ONNX parity proven)
            run([churnlab, "train", "--estimator", args.estimator, "--seed", version], env)
            subprocess.run(  # a failed gate (e.g. latency on a busy machine) is fine here
                [churnlab, "gate", version], env=env, capture_output=True, text=True, timeout=600
            )
        run([churnlab, "promote", "1", "--override", "--reason", "benchmarks.follow"], env)
        os.environ.update(CHURNLAB_HOME=str(home), CHURNLAB_ACTOR="benchmarks.follow")
        for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
            del os.environ[key]

        # 1. polling: the embedded store, no webhook
        port = free_port()
        command = [churnlab, "serve", "--stage", "production", "--port", str(port), "--follow"]
        command += ["--poll-interval", str(args.poll_interval)]
        backend = Server("following backend", command, port, env)
        results["poll"] = _run(backend, Path(tmp) / "poll.log", args, webhook=None)

        # 2. webhook: an mlflow server on the same store sends signed alias webhooks
        mlflow_port = free_port()
        server_env = {
            **env,
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        mlflow = Server(
            "mlflow server",
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{home}/mlflow.db"]
            + ["--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
            mlflow_port,
            server_env,
        )
        uri = f"http://127.0.0.1:{mlflow_port}"
        secret = os.urandom(16).hex()
        port = free_port()
        backend_env = {**env, "MLFLOW_TRACKING_URI": uri, "CHURNLAB_WEBHOOK_SECRET": secret}
        command = [churnlab, "serve", "--stage", "production", "--port", str(port), "--follow"]
        command += ["--poll-interval", "300"]  # only the webhook can explain a fast switch
        backend = Server("following backend (webhook)", command, port, backend_env)
        try:
            mlflow.start(Path(tmp) / "mlflow.log")
            _wait_http(uri + "/health", mlflow)
            os.environ["MLFLOW_TRACKING_URI"] = uri
            results["webhook"] = _run(backend, Path(tmp) / "webhook.log", args, webhook=secret)
        finally:
            mlflow.stop()
    results["machine"] = info
    print(render(results))
    print(f"\nmachine: {machine_line(info)}")
    path = write_json("follow", results)
    print(f"wrote {path}")
    return 0


def _wait_http(url: str, server, timeout: float = 120.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited:\n{server.log_tail()}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not answer {url} within {timeout:.0f} s")


def _run(backend, log: Path, args, webhook: str | None) -> dict[str, Any]:
    """Start the backend, (register the webhook,) measure the switches, stop it."""
    from churnlab import store
    from churnlab.registry import Registry

    store.configure()
    registry = Registry()
    try:
        backend.start(log)
        _wait_http(f"http://127.0.0.1:{backend.port}/health", backend)
        url = f"http://127.0.0.1:{backend.port}"
        if webhook is not None:
            from mlflow import MlflowClient

            MlflowClient().create_webhook(
                name="churnlab-production",
                url=url + "/webhooks/mlflow",
                events=WEBHOOK_EVENTS,
                secret=webhook,
            )
        found = measure(
            url,
            backend.process.pid,
            alternate(registry, 1, 2, args.switches),
            timeout_s=(10.0 if webhook else args.poll_interval + 10.0),
        )
    finally:
        backend.stop()
    found["poll_interval_s"] = None if webhook else args.poll_interval
    print(summary("webhook" if webhook else "poll", found), flush=True)
    return found


def render(results: dict[str, Any]) -> str:
    """The switching table (Markdown)."""
    from benchmarks.common import table

    rows = []
    for name in ("poll", "webhook"):
        found = results.get(name)
        if not found:
            continue
        target = WEBHOOK_TARGET_S if name == "webhook" else found["poll_interval_s"] + POLL_MARGIN_S
        worst = found["max_switch_s"]
        rss = found["rss_mb"]
        growth = rss["after"] / rss.get("after_2", rss["before"])
        how = "webhook" if name == "webhook" else f"polling every {found['poll_interval_s']:g} s"
        rows.append(
            [
                how,
                len(found["switch_s"]),
                f"{found['wrk']['requests']} ({found['wrk']['rps']:.0f}/s)",
                found["failed_requests"],
                f"{found['median_switch_s']} / {worst}",
                f"<= {target:g} s: {'met' if worst is not None and worst <= target else 'MISSED'}",
                f"{rss['before']} / {rss.get('after_2')} / {rss['after']}",
                f"x{growth:.3f}: {'met' if growth <= MEMORY_GROWTH_TARGET else 'MISSED'}",
            ]
        )
    return table(
        [
            "alias watched by",
            "switches",
            "requests under load",
            "failed (target 0)",
            "move -> new version, median / max (s)",
            "target",
            "RSS before / after 2 / after all (MiB)",
            "growth after 2 -> end",
        ],
        rows,
    )


if __name__ == "__main__":
    sys.exit(main())
