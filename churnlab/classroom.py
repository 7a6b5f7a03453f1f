"""A class on one registry: an authenticated MLflow server, and a login and a model per student.

``churnlab class-server`` starts ``mlflow server --app-name basic-auth`` on PostgreSQL (a private
cluster in the server's folder, or a database you name) with served artifacts. The auth
app's settings live in ``<folder>/auth/basic_auth.ini`` (readable by the teacher only): the
admin password is generated there once and never appears on a command line or in a log.
Every user may read everything (``default_permission = READ``); each changes only what they
MANAGE.

``churnlab class-add-students students.csv`` creates, for each student in the CSV, a login
with a one-time password (printed once, to the teacher's terminal, nowhere else), the model
``churn-model-<user>`` and the experiment ``churnlab-<user>``, both of which the student
MANAGEs. An optional ``reviewer`` column gives that user EDIT on the student's model, so
they can approve its versions (four eyes).
"""

from __future__ import annotations

import configparser
import csv
import io
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from churnlab import store, tags
from churnlab.backend import end_group
from churnlab.errors import InputError, PermissionDenied, RegistryUnavailable
from churnlab.postgres import Postgres, postgres_folder

_ADMIN = "admin"
#: the permission every user has on what they do not own: read each other's work
_DEFAULT_PERMISSION = "READ"
_USERNAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
#: a student's model and experiment are named as a login's (``churn-model-<user>``,
#: ``churnlab-<user>``): one naming, :func:`churnlab.store.model_for`
model_for, experiment_for = store.model_for, store.experiment_for


# ---------------------------------------------------------------------------- the server folder
@dataclass(frozen=True)
class Layout:
    """Where a class server keeps its things, under one folder."""

    folder: Path

    @property
    def auth(self) -> Path:
        return self.folder / "auth"

    @property
    def ini(self) -> Path:
        return self.auth / "basic_auth.ini"

    @property
    def secret_key(self) -> Path:
        return self.auth / "flask-secret-key"

    @property
    def artifacts(self) -> Path:
        return self.folder / "artifacts"

    @property
    def log(self) -> Path:
        return self.folder / "mlflow-server.log"

    @property
    def url_file(self) -> Path:
        return self.folder / "server-url"


def _private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner may read (created that way, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _write_auth_config(layout: Layout, database_uri: str) -> None:
    """The auth app's ini: READ for all, the admin and a generated password (kept if set)."""
    admin_password = admin_credentials(layout)[1] if layout.ini.exists() else None
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": _DEFAULT_PERMISSION,
        "database_uri": database_uri,
        "admin_username": _ADMIN,
        # read once, when the auth database is created; it stays in this 0600 file so the
        # teacher's own commands (class-add-students) can log in as the admin
        "admin_password": admin_password or secrets.token_urlsafe(18),
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        # checking a password hash costs ~0.1-0.5 s of CPU and every request carries one:
        # remember a good login for a minute (a changed password reaches other workers
        # within that minute), which makes a class of thirty several times faster
        "auth_cache_ttl_seconds": "60",
    }
    buffer = io.StringIO()
    config.write(buffer)
    header = "# churnlab class server: readable by its owner only; holds the admin password\n"
    _private(layout.ini, header + buffer.getvalue())
    if not layout.secret_key.exists():
        _private(layout.secret_key, secrets.token_hex(32))


def admin_credentials(layout: Layout) -> tuple[str, str]:
    """The admin's name and password from the server's ini (never printed)."""
    config = configparser.ConfigParser()
    if not config.read(layout.ini):
        raise InputError(f"no class server in {layout.folder}: run `churnlab class-server` first")
    section = config["mlflow"]
    return section.get("admin_username", _ADMIN), section.get("admin_password", "")


def _check_database(uri: str, what: str) -> None:
    """Connect to ``uri`` once, so that a database the server could not use fails now, in one
    line (``mlflow server`` itself would retry for minutes with tracebacks in its log).

    A URI that names no usable database is :class:`InputError` (exit 2); a database that
    does not answer or refuses the login is :class:`RegistryUnavailable` (exit 3).
    """
    from sqlalchemy import create_engine

    shown = store.redact(uri)
    options = {"connect_args": {"connect_timeout": 5}} if uri.startswith("postgres") else {}
    try:
        engine = create_engine(uri, **options)
    except Exception as exc:  # a malformed URI, an unknown dialect, a missing driver
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"the {what} {shown} is not a database URI: {reason}") from None
    try:
        with engine.connect():
            pass
    except Exception as exc:
        cause = getattr(exc, "orig", None) or exc
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise RegistryUnavailable(
            f"the class server cannot use its {what} {shown}: {store.redact(reason)}"
        ) from None
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------- the server
class ClassServer:
    """``mlflow server --app-name basic-auth`` with served artifacts, configured for a class."""

    def __init__(
        self,
        folder: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 5000,
        backend_store_uri: str | None = None,
        auth_database_uri: str | None = None,
        allowed_hosts: str | None = None,
        workers: int = 2,
    ) -> None:
        self.layout = Layout(Path(folder).resolve())
        self.host, self.port, self.workers = host, port, workers
        self.backend_store_uri = backend_store_uri
        self.auth_database_uri = auth_database_uri
        self.allowed_hosts = allowed_hosts
        self.postgres: Postgres | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def command(self, backend: str) -> list[str]:
        """The server's command line: no password, no secret on it."""
        cmd = [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--app-name",
            "basic-auth",
            "--backend-store-uri",
            backend,
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.layout.artifacts),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        if self.allowed_hosts:
            cmd += ["--allowed-hosts", self.allowed_hosts]
        return cmd

    def start(self, timeout: float = 180.0) -> ClassServer:
        """Start PostgreSQL (unless both databases were given) and the server; wait for
        /health. Each database is tried first: one that cannot be used fails in one line."""
        layout = self.layout
        layout.folder.mkdir(parents=True, exist_ok=True)
        backend, auth_db = self.backend_store_uri, self.auth_database_uri
        if not (backend and auth_db):
            if backend:  # the registry in your database, the logins beside the ini
                auth_db = auth_db or f"sqlite:///{layout.auth / 'basic_auth.db'}"
            else:
                self.postgres = Postgres(postgres_folder(layout.folder)).start()
                backend = self.postgres.database("mlflow")
                auth_db = auth_db or self.postgres.database("mlflow_auth")
        _write_auth_config(layout, auth_db)
        _check_database(backend, "registry database (--backend-store-uri)")
        _check_database(auth_db, "auth database (--auth-database-uri)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
        env.pop("MLFLOW_AUTH_ADMIN_PASSWORD", None)  # the ini decides, not a stray variable
        env.update(
            MLFLOW_AUTH_CONFIG_PATH=str(layout.ini),
            MLFLOW_FLASK_SERVER_SECRET_KEY=layout.secret_key.read_text().strip(),
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # no background job workers
            PYTHONUNBUFFERED="1",
        )
        with open(layout.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(backend),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=layout.folder,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                tail = layout.log.read_text(errors="replace").strip().splitlines()[-3:]
                raise RegistryUnavailable(
                    f"the class server exited at start: {store.redact(' | '.join(tail))[-600:]} "
                    f"(log: {layout.log})"
                )
            if self.healthy():
                layout.url_file.write_text(self.url)
                return self
            time.sleep(0.3)
        self.stop()
        raise RegistryUnavailable(f"the class server did not answer in {timeout:.0f} s")

    def healthy(self) -> bool:
        import requests

        try:
            return requests.get(f"{self.url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        """Stop the server's process group, then PostgreSQL."""
        if self.proc is not None:
            end_group(self.proc, grace=15)
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None


def serve(
    folder: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    backend_store_uri: str | None = None,
    auth_database_uri: str | None = None,
    allowed_hosts: str | None = None,
) -> int:
    """``churnlab class-server``: run the class server until Ctrl-C or SIGTERM."""
    server = ClassServer(
        folder,
        host=host,
        port=port,
        backend_store_uri=backend_store_uri,
        auth_database_uri=auth_database_uri,
        allowed_hosts=allowed_hosts,
    )

    def _stop(signum, frame):  # SIGTERM ends the server like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        server.start()
        print(
            f"class server at {server.url} (basic auth, everyone reads, each changes their own)\n"
            f"  admin login: {_ADMIN}, password in {server.layout.ini} (yours only)\n"
            f"  add students: churnlab class-add-students students.csv --folder {folder}\n"
            "  Ctrl-C stops it",
            flush=True,
        )
        assert server.proc is not None
        code = server.proc.wait()
        print(f"the class server stopped (exit {code}); log: {server.layout.log}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


# ---------------------------------------------------------------------------- students
@dataclass(frozen=True)
class Student:
    """One student set up on the server; ``password`` is None when the login already existed."""

    username: str
    model: str
    experiment: str
    password: str | None
    reviewer: str | None = None


def read_students(path: Path) -> list[tuple[str, str | None]]:
    """``(username, reviewer)`` per line of a CSV with a ``username`` (and optional
    ``reviewer``) column; names are lower-case letters, digits, ``.``, ``_``, ``-``."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "username" not in (rows[0].keys() if rows else ()):
        raise InputError(f"{path}: expected a CSV with a `username` column")
    out: list[tuple[str, str | None]] = []
    seen = set()
    for line, row in enumerate(rows, start=2):
        name = (row.get("username") or "").strip()
        reviewer = (row.get("reviewer") or "").strip() or None
        for value in filter(None, (name, reviewer)):
            if not _USERNAME.fullmatch(value) or value == _ADMIN:
                raise InputError(
                    f"{path}, line {line}: user name {value!r} must be lower-case letters, "
                    "digits, '.', '_' or '-' (and not admin)"
                )
        if name in seen:
            raise InputError(f"{path}, line {line}: {name!r} is listed twice")
        seen.add(name)
        out.append((name, reviewer))
    return out


class _Admin:
    """The admin's REST calls to the server (MLflow's auth API and registry API)."""

    def __init__(self, url: str, user: str, password: str) -> None:
        import requests

        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.auth = (user, password)

    def call(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs):
        import requests

        try:
            response = self.session.request(method, self.url + path, timeout=30, **kwargs)
        except requests.RequestException as exc:
            raise RegistryUnavailable(
                f"cannot reach the class server at {store.redact(self.url)} ({type(exc).__name__})"
            ) from None
        if response.status_code == 401:
            raise PermissionDenied(
                f"login refused by {store.redact(self.url)}: wrong admin password"
            )
        if response.status_code == 403:
            raise PermissionDenied(f"permission denied: the admin login may not call {path}")
        return response

    def exists(self, response, code: str) -> bool:
        try:
            return response.json().get("error_code") == code
        except ValueError:
            return False

    def create_user(self, name: str, password: str) -> bool:
        """True when created; False when the user exists already."""
        response = self.call(
            "POST", "/api/2.0/mlflow/users/create", json={"username": name, "password": password}
        )
        if response.status_code == 200:
            return True
        if self.call("GET", "/api/2.0/mlflow/users/get", params={"username": name}).ok:
            return False
        raise InputError(f"cannot create user {name!r}: {response.text[:200]}")

    def create_model(self, name: str) -> None:
        response = self.call(
            "POST",
            "/api/2.0/mlflow/registered-models/create",
            json={"name": name, "description": "Customer-churn classifier managed by churnlab."},
        )
        if response.status_code != 200 and not self.exists(response, "RESOURCE_ALREADY_EXISTS"):
            raise InputError(f"cannot create model {name!r}: {response.text[:200]}")

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self.call(
            "POST",
            "/api/2.0/mlflow/registered-models/set-tag",
            json={"name": name, "key": key, "value": value},
        ).raise_for_status()

    def experiment_id(self, name: str) -> str:
        response = self.call("POST", "/api/2.0/mlflow/experiments/create", json={"name": name})
        if response.status_code == 200:
            return response.json()["experiment_id"]
        found = self.call(
            "GET", "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name}
        )
        found.raise_for_status()
        return found.json()["experiment"]["experiment_id"]

    def grant(self, user: str, resource_type: str, resource_id: str, permission: str) -> None:
        response = self.call(
            "POST",
            "/api/3.0/mlflow/users/permissions/grant",
            json={
                "username": user,
                "resource_type": resource_type,
                "resource_id": resource_id,
                "permission": permission,
            },
        )
        if response.status_code != 200 and not self.exists(response, "RESOURCE_ALREADY_EXISTS"):
            raise InputError(
                f"cannot give {user} {permission} on {resource_type} {resource_id}: "
                f"{response.text[:200]}"
            )


def add_students(
    csv_path: Path,
    *,
    url: str | None = None,
    folder: Path = Path("class-server"),
    approvals: int = 0,
    echo: Callable[[str], None] | None = None,
) -> list[Student]:
    """Create each student's login, model and experiment on the class server.

    Logs in as the admin (``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` when set, else the
    server folder's ini). A student who exists keeps their password (None in the result).
    ``approvals`` > 0 makes each student's promotions need that many approvals. ``echo``
    gets the credentials table line by line, each line as soon as its login exists, so a
    failure halfway loses no password.
    """
    if approvals < 0:
        raise InputError(f"--approvals must be 0 or more, got {approvals}")
    students = read_students(Path(csv_path))
    layout = Layout(Path(folder).resolve())
    url = url or os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not url and layout.url_file.exists():
        url = layout.url_file.read_text().strip()
    if not url:
        raise InputError("which class server? pass --url or set MLFLOW_TRACKING_URI")
    user = store.login_name()
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    if not (user and password):
        user, password = admin_credentials(layout)
    admin = _Admin(url, user, password)
    echo = echo or (lambda line: None)
    echo(_HEADER)
    done = []
    for name, reviewer in students:
        one_time = secrets.token_urlsafe(12)  # 16 characters; MLflow asks for 12 or more
        created = admin.create_user(name, one_time)
        student = Student(
            name, model_for(name), experiment_for(name), one_time if created else None, reviewer
        )
        echo(_credentials_line(student))
        admin.create_model(student.model)
        admin.grant(name, "registered_model", student.model, "MANAGE")
        admin.grant(name, "experiment", admin.experiment_id(student.experiment), "MANAGE")
        if approvals:
            admin.set_model_tag(student.model, tags.REQUIRED_APPROVALS, str(approvals))
        done.append(student)
    for student in done:  # every login exists now, reviewers included
        if student.reviewer:
            admin.grant(student.reviewer, "registered_model", student.model, "EDIT")
    echo(_FOOTER)
    return done


_HEADER = f"{'user':16} {'one-time password':18} {'model':28} experiment"
_FOOTER = (
    "each student: churnlab login <this server's URL> (their user name and this password), "
    "then make workbook; you: churnlab grade --server --html class.html (logged in as admin)"
)


def _credentials_line(student: Student) -> str:
    """One student's line for the teacher's terminal (the password shown this once)."""
    shown = student.password or "(exists: unchanged)"
    return f"{student.username:16} {shown:18} {student.model:28} {student.experiment}"
