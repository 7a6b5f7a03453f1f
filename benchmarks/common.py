"""What the benchmarks share: the machine's description, servers on 127.0.0.1, tables, JSON."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from churnlab.backend import peak_rss_mb

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OUT_DIR = ROOT / "reports" / "bench"
HOST = "127.0.0.1"


def machine() -> dict[str, Any]:
    """Where the figures come from: cores, CPU model, load, Python and library versions."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("mlflow", "scikit-learn", "onnxruntime", "skl2onnx", "fastapi", "uvicorn"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


class Server:
    """One server process tree, started in its own session, stopped by its process group."""

    def __init__(self, name: str, command: list[str], port: int, env: dict[str, str]) -> None:
        self.name, self.command, self.port, self.env = name, command, port, env
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self.log = None
        self.log_path: Path | None = None

    def start(self, log_path: Path) -> None:
        self.log_path = log_path
        self.log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pids(self) -> list[int]:
        """The process and all its descendants."""
        return process_tree(self.process) if self.alive() else []

    def cpu_seconds(self) -> float:
        """User + system CPU time of the tree so far (children that exited included)."""
        import psutil

        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        return total

    def peak_rss_mb(self) -> dict[str, float]:
        """Peak resident memory (VmHWM) of the whole tree and of its largest process, MiB."""
        peaks = [mb for mb in map(peak_rss_mb, self.pids()) if mb is not None]
        return {
            "total": round(sum(peaks), 1),
            "largest": round(max(peaks, default=0.0), 1),
            "processes": len(peaks),
        }

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after 10 s; always closes the log."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        # children that outlived their parent are still in the group we created
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self.log is not None:
            self.log.close()
            self.log = None

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the server printed."""
        with contextlib.suppress(OSError, TypeError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def process_tree(process: subprocess.Popen | None) -> list[int]:
    """A running process's pid and all its descendants' ([] once it has ended)."""
    import psutil

    if process is None or process.poll() is not None:
        return []
    try:
        root = psutil.Process(process.pid)
        return [root.pid, *(p.pid for p in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


@contextlib.contextmanager
def running(servers: Sequence[Server]) -> Iterator[None]:
    """Stop every server on the way out, whatever happened."""
    try:
        yield
    finally:
        for server in servers:
            server.stop()


def post(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, bytes]:
    """One POST on a kept-alive connection; status and body.

    A connection the server closed while idle (uvicorn's keep-alive timeout) is reopened once.
    """
    for attempt in (1, 2):
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            conn.close()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def wait_until_serving(server: Server, path: str, body: bytes, timeout: float = 120.0) -> float:
    """Seconds from process start to the first 200 answer to ``body`` on ``path``."""
    deadline = server.started + timeout
    while time.perf_counter() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited before it answered:\n{server.log_tail()}")
        try:
            conn = http.client.HTTPConnection(HOST, server.port, timeout=5)
            status, _ = post(conn, path, body)
            conn.close()
            if status == 200:
                return time.perf_counter() - server.started
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{server.name} did not answer within {timeout:.0f} s:\n{server.log_tail()}")


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """``reports/bench/<name>.json``."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (readable in a terminal too)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def machine_line(info: dict[str, Any]) -> str:
    """One line naming the machine, for tables and the README."""
    v = info["versions"]
    return (
        f"{info['nproc']} cores, {info['cpu_model']}; Python {info['python']}, "
        f"mlflow {v.get('mlflow')}, scikit-learn {v.get('scikit-learn')}, "
        f"onnxruntime {v.get('onnxruntime')}; load average at start {info['load_average'][0]}"
    )
