"""The class server, started once for this folder by the real `churnlab class-server` command.

PostgreSQL (a private cluster in the server's folder) holds the registry and the auth
app's users; `mlflow server --app-name basic-auth` serves the artifacts. The fixture stops
the command with SIGTERM (as Ctrl-C would) and checks that it took the server and
PostgreSQL down with it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from support import CHURNLAB, cli, free_port, main, needs

from churnlab import classroom, postgres, store
from churnlab.backend import end_group, memory_kb


@dataclass
class Class:
    """A running class server and what the teacher knows about it."""

    url: str
    folder: Path
    proc: subprocess.Popen
    passwords: dict[str, str]
    add_output: str
    #: every student command's stdout and stderr, for the secrets test
    outputs: list[str] = field(default_factory=list)

    def env(self, user: str, password: str | None = None, **extra: str) -> dict[str, str]:
        """What a student exports (plus a lying CHURNLAB_ACTOR: the server must win)."""
        return {
            "MLFLOW_TRACKING_URI": self.url,
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": password or self.passwords[user],
            "CHURNLAB_EXPERIMENT": classroom.experiment_for(user),
            "CHURNLAB_ACTOR": "mallory",
            **extra,
        }

    def churnlab(self, user: str, *args: str, model: str | None = None, **extra: str):
        """Run the CLI's entry point as ``user`` on ``churn-model-<user>`` (or ``model``), in
        this process: the server's rules are the subject, not the console script (a wrong
        login's one line is also checked from real processes, test_class_server.py)."""
        model = model or classroom.model_for(user)
        done = main("--model", model, *args, env=self.env(user, **extra))
        self.outputs += [done.stdout, done.stderr]
        return done

    def admin(self):
        """A requests session logged in as the server's admin (from the ini, never shown)."""
        session = requests.Session()
        session.auth = classroom.admin_credentials(classroom.Layout(self.folder))
        return session

    def add_students(self, csv_text: str, *args: str) -> subprocess.CompletedProcess:
        path = self.folder.parent / f"students-{time.time_ns()}.csv"
        path.write_text(csv_text)
        teacher = {k: "" for k in store.SERVER_VARIABLES}  # the ini's admin login is used
        done = cli(
            "class-add-students", str(path), "--folder", str(self.folder), *args, env=teacher
        )
        assert done.returncode == 0, (done.stdout, done.stderr)
        for line in done.stdout.splitlines()[1:-1]:
            name, password = line.split()[:2]
            if not password.startswith("("):
                self.passwords[name] = password
        self.add_output += done.stdout
        return done

    def server_pids(self) -> list[int]:
        """The mlflow server (its command line names this class's folder) and its workers."""
        found = set(_pids_with(str(self.folder / "artifacts")))
        parents = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    parents[int(entry.name)] = int(stat[1])
        grew = True
        while grew:  # add children until no process is left out
            new = {pid for pid, parent in parents.items() if parent in found} - found
            found |= new
            grew = bool(new)
        return sorted(found)

    def server_rss_mb(self) -> float:
        return sum(memory_kb(pid) or 0 for pid in self.server_pids()) / 1024


def _pids_with(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    found.append(int(entry.name))
    return found


@pytest.fixture(scope="package")
def class_server(tmp_path_factory):
    """`churnlab class-server` on a free port, its students added by the tests."""
    needs("postgresql")
    folder = tmp_path_factory.mktemp("class") / "server"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log = open(folder.parent / "class-server.out", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [CHURNLAB, "class-server", "--folder", str(folder), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # PostgreSQL and MLflow's auth app start in 20-60 s; 240 s means it hangs
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (folder.parent / "class-server.out").read_text()
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "class server not healthy in 240 s"
            time.sleep(0.5)
        yield Class(url, folder, proc, {}, "")
    finally:
        end_group(proc, grace=60)
        log.close()
        for pid in _pids_with(str(folder)):  # whatever outlived the command
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        cluster = postgres.postgres_folder(folder)
        with contextlib.suppress(Exception):
            postgres.Postgres(cluster).stop()
        if cluster.is_relative_to(tempfile.gettempdir()):
            shutil.rmtree(cluster, ignore_errors=True)
