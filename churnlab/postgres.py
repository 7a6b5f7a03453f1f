"""A private PostgreSQL cluster on 127.0.0.1: the class server's databases, and the tests'."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from churnlab.backend import free_port
from churnlab.errors import ChurnlabError, InputError


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server binaries (Debian's newest, or on PATH), or None."""
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def postgres_folder(folder: Path) -> Path:
    """Where the class server's PostgreSQL cluster lives: ``<folder>/postgres``, or, when
    root runs it (PostgreSQL then runs as ``postgres``, who may not enter a private folder),
    a folder of its own in the temporary directory named after the server's folder."""
    folder = Path(folder).resolve()
    if os.geteuid() != 0:
        return folder / "postgres"
    import hashlib
    import tempfile

    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"churnlab-class-pg-{digest}"


class Postgres:
    """A private PostgreSQL cluster in ``folder`` on 127.0.0.1 (run as ``postgres`` by root).

    ``durable=False`` turns fsync off: for throw-away clusters (the tests), never a class's.
    The tests use this class too (one implementation of "a private cluster").
    """

    def __init__(self, folder: Path, *, durable: bool = True) -> None:
        self.bin = postgres_bin()
        if self.bin is None:
            raise InputError(
                "PostgreSQL is not installed (no initdb): install it (Debian: apt-get install "
                "postgresql) or pass --backend-store-uri"
            )
        self.folder = Path(folder)
        self.data = self.folder / "data"
        port_file = self.folder / "port"
        self.port = int(port_file.read_text()) if port_file.exists() else free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.durable = durable

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        prefix: list[str] = []
        if self.user:  # root may not run postgres
            search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
            prefix = [shutil.which("runuser", path=search) or "runuser", "-u", self.user, "--"]
        return subprocess.run(
            [*prefix, *cmd],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.folder,
            stdin=subprocess.DEVNULL,
        )

    def start(self) -> Postgres:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.user:
            shutil.chown(self.folder, self.user, self.user)
        self.folder.chmod(0o700)
        if not (self.data / "PG_VERSION").exists():
            done = self._run(
                str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"
            )
            if done.returncode:
                raise ChurnlabError(f"initdb failed: {done.stderr.strip()[-500:]}")
        (self.folder / "port").write_text(str(self.port))
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder}"
        if not self.durable:
            options += " -c fsync=off"
        done = self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "postgres.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        if done.returncode:
            log = self.folder / "postgres.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            reason = " | ".join([done.stderr.strip()[-300:], *tail]).strip(" |")
            raise ChurnlabError(f"PostgreSQL did not start: {reason} (log: {log})")
        return self

    def database(self, name: str) -> str:
        """Create database ``name`` unless it exists; return its SQLAlchemy URI."""
        done = self._run(
            str(self.bin / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            name,
        )
        if done.returncode and "already exists" not in done.stderr:
            raise ChurnlabError(f"createdb {name} failed: {done.stderr.strip()[-300:]}")
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
