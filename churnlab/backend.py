"""The serving backend as a real uvicorn process on 127.0.0.1: start, wait, talk, stop; and
the backends already running on this machine.

The smoke check, side-by-side verification, the tests and the benchmarks all run the
backend this way: ``python -m uvicorn serving.app:app`` in a child process, configured by
``MODEL_NAME`` and ``MODEL_STAGE``. The package names the app by its import string and
never imports :mod:`serving` itself.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from churnlab import store
from churnlab.errors import ChurnlabError, InputError

if TYPE_CHECKING:
    import requests

#: the ASGI app a backend process runs (an import string: the package never imports it)
APP = "serving.app:app"
#: the port each stage's backend listens on unless told otherwise
DEFAULT_PORTS: dict[str, int] = {"staging": 8000, "production": 8001}
#: seconds a backend may take to answer ``/health`` (generous: a loaded 2-core machine
#: starts two backends at once)
STARTUP_TIMEOUT_S = 120.0


class BackendFailed(ChurnlabError):
    """The backend process did not start or stopped answering (exit 1).

    ``output`` holds what the process wrote (secrets redacted).
    """

    exit_code = 1

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


#: The ports :func:`free_port` gave this process lately. The kernel can hand out one free
#: port twice in a row (2 pairs in 20,000 here), and two backends started together, as
#: ``churnlab verify`` starts staging and production, would then share it: the one that
#: binds second fails, and its ``/health`` is answered by the other.
_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=64)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now, and not one of the last
    64 this process was given (a backend given one may not have bound it yet)."""
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            break
    _HANDED_OUT.append(port)
    return port


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when ``host:port`` can be bound now (IPv4 or IPv6 ``host``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def memory_kb(pid: int, field: str = "VmRSS") -> int | None:
    """A memory figure of the process from ``/proc/<pid>/status`` (``VmRSS`` now, ``VmHWM``
    its peak), in kB; None where the process or /proc is absent."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident memory (VmHWM) in MB, or None where /proc is absent."""
    kb = memory_kb(pid, "VmHWM")
    return None if kb is None else round(kb / 1024, 1)


def end_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process's group, then SIGKILL it if it has not ended within ``grace`` s.

    For a process started with ``start_new_session=True`` (its own process group).
    """
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)


class Backend:
    """A serving backend running as a real uvicorn process on 127.0.0.1."""

    def __init__(
        self,
        stage: str,
        *,
        port: int | None = None,
        model_name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.stage = stage
        self.model_name = model_name or store.model_name()
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self._started = 0.0
        self._log: IO[bytes] | None = None
        self._output = ""
        self._session: requests.Session | None = None

    @property
    def pid(self) -> int | None:
        """The process id, once started."""
        return self.process.pid if self.process else None

    def start(self) -> Backend:
        """Start the process (does not wait; see :meth:`wait_ready`)."""
        if not port_free(self.port):
            raise InputError(f"port {self.port} on 127.0.0.1 is in use; choose another port")
        env = {**os.environ, **(self.env or {})}
        env.update(MODEL_NAME=self.model_name, MODEL_STAGE=self.stage)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._log = tempfile.TemporaryFile(mode="w+b")
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            APP,
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
                answer = requests.get(self.url + "/health", timeout=2)
            except requests.RequestException:
                answer = None
            if answer is not None and answer.status_code == 200:
                self._check_is_ours(answer)
                self.startup_s = round(time.monotonic() - self._started, 3)
                return self
            time.sleep(0.05)
        self.stop()
        raise BackendFailed(
            f"the {self.stage} backend did not answer /health within {timeout:.0f} s"
            + (f": {self.last_line()}" if self.last_line() else ""),
            self.output(),
        )

    def _check_is_ours(self, health: requests.Response) -> None:
        """Raise :class:`BackendFailed` when ``/health`` on this port is another server's
        (one that bound the port between :meth:`start`'s check and this process).

        Another server of the same model and stage (another registry's) is not told apart.
        """
        try:
            shown = health.json()
            stage, model = str(shown["stage"]).strip().lower(), str(shown["model_name"]).strip()
        except (ValueError, KeyError, TypeError):
            stage, model = "?", "?"
        if (stage, model) != (self.stage.strip().lower(), self.model_name.strip()):
            self.stop()
            raise BackendFailed(
                f"port {self.port} answers as another server ({model} {stage}), not this "
                f"{self.model_name} {self.stage} backend: start it again on another port",
                self.output(),
            )

    @property
    def session(self) -> requests.Session:
        """One kept-alive HTTP session to the backend (closed by :meth:`stop`)."""
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
        if self.process is None or self.process.poll() is not None:
            return None
        return peak_rss_mb(self.process.pid)

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


# ---------------------------------------------------------------------------- backends running here
@dataclass(frozen=True)
class RunningBackend:
    """A serving backend process running on this machine, as its command line says.

    ``registry`` names the registry its environment points at (:func:`registry_of`).
    """

    pid: int
    stage: str
    model_name: str
    port: int
    registry: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def registry_of(environ: dict[str, str] | os._Environ) -> str:
    """Which registry an environment points at, as far as it says: a tracking URI, an
    embedded store's folder, or the project's default."""
    uri = environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return store.redact(uri.rstrip("/"))
    home = environ.get("CHURNLAB_HOME", "").strip()
    return f"embedded store in {home}" if home else "the project's own"


def running_backends(*, children_only: bool = False) -> list[RunningBackend]:
    """The serving backends running on this machine for this user: ``uvicorn
    serving.app:app`` processes (what the notebooks and ``churnlab`` start) and
    ``churnlab serve`` commands started from a terminal. ``children_only``: those this
    process started. Read from ``/proc`` (empty where it is absent)."""
    found = []
    me, uid = str(os.getpid()), os.getuid()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if entry.stat().st_uid != uid or entry.name == me:
                continue
            stat = (entry / "stat").read_text()
            if children_only and stat.rsplit(")", 1)[1].split()[1] != me:
                continue
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            served = APP in argv
            typed = any(Path(a).name == "churnlab" for a in argv[:2]) and "serve" in argv
            if not (served or typed):
                continue
            environ = dict(
                item.split("=", 1)
                for item in (entry / "environ").read_bytes().decode(errors="replace").split("\0")
                if "=" in item
            )
            stage = _option(argv, "--stage") or environ.get("MODEL_STAGE") or "staging"
            port = int(_option(argv, "--port") or DEFAULT_PORTS.get(stage.lower(), 0))
            model = _option(argv, "--model") or environ.get("MODEL_NAME") or ""
        except (OSError, IndexError, ValueError):
            continue
        found.append(
            RunningBackend(int(entry.name), stage.lower(), model, port, registry_of(environ))
        )
    return sorted(found, key=lambda b: b.pid)


def _option(argv: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in a command line, or None."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None
