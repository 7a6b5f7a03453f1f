"""Logging in to a class server once: ``churnlab login``, ``whoami`` and ``logout``.

``churnlab login URL`` asks for the user name and password (or reads
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, for scripts) and checks them
against the server's basic-auth app before anything is stored. Then the password goes where
MLflow's own client reads it (``~/.mlflow/credentials``, 0600) and the server's address into
the project's config (:mod:`churnlab.config`), so every command, notebook, ``make lab`` and
``make workbook`` use the server, the model ``churn-model-<user>`` and the experiment
``churnlab-<user>`` with no flag and no variable. A student must have a model of their own
in the class (``churnlab class-add-students``); the class's admin (the teacher) need not.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from churnlab import config, store
from churnlab.errors import InputError, PermissionDenied, RegistryUnavailable

#: the auth app's endpoints a login reads: who am I, and the student's own model
_CURRENT_USER = "/api/2.0/mlflow/users/current"
_MODEL = "/api/2.0/mlflow/registered-models/get"
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Identity:
    """Who commands act as, where, on which model and experiment.

    ``source``: ``login`` (``churnlab login``), ``environment`` (``MLFLOW_TRACKING_URI``)
    or ``embedded`` (the embedded store, nobody logged in).
    """

    server: str | None
    user: str | None
    admin: bool
    model: str
    experiment: str
    source: str

    def lines(self) -> list[str]:
        """What ``churnlab whoami`` prints, one fact a line."""
        if self.server is None:
            return [
                f"server      none: the embedded registry at {store.display_uri()}",
                "user        not logged in (churnlab login URL)",
                f"model       {self.model}",
                f"experiment  {self.experiment}",
            ]
        how = "churnlab login" if self.source == "login" else "MLFLOW_TRACKING_URI"
        who = self.user or "nobody (the server asks for no login)"
        if self.user and self.admin:
            who += " (the server's admin)"
        return [
            f"server      {store.redact(self.server)} ({how})",
            f"user        {who}",
            f"model       {self.model}",
            f"experiment  {self.experiment}",
        ]


def _server_url(url: str) -> str:
    """The server's address as stored: http(s), no credentials in it, no trailing slash."""
    text = str(url or "").strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"URL must be a tracking server's http(s) address, got {url!r}")
    if "@" in parts.netloc:
        raise InputError("URL must not carry a user name or password: churnlab login asks for them")
    return text.rstrip("/")


def _ask(prompt: str, secret: bool) -> str:
    return getpass.getpass(prompt) if secret else input(prompt)


def check_login(url: str, username: str, password: str) -> dict[str, Any]:
    """Ask the server who ``username`` is with this password; return its user record.

    A wrong password is :class:`PermissionDenied` (exit 4), a server that does not answer
    :class:`RegistryUnavailable` (exit 3), one without logins an :class:`InputError`.
    """
    import requests

    try:
        answer = requests.get(url + _CURRENT_USER, auth=(username, password), timeout=TIMEOUT_S)
    except requests.RequestException as exc:
        raise RegistryUnavailable(
            f"cannot reach the MLflow tracking server at {url} ({type(exc).__name__})"
        ) from None
    if answer.status_code == 401 or store.login_gone(answer.text):
        raise PermissionDenied(
            f"login refused by {url}: wrong user name or password for {username}; "
            "nothing was stored"
        )
    if answer.status_code == 404:
        raise InputError(
            f"{url} does not check logins (no basic-auth app): there is nothing to log in "
            "to; set MLFLOW_TRACKING_URI to use it"
        )
    if answer.status_code >= 500:
        raise RegistryUnavailable(
            f"the MLflow tracking server at {url} failed with HTTP {answer.status_code}: it "
            "is up, but its auth app or a database behind it is not working"
        )
    try:
        user = answer.json()["user"]
        name = str(user["username"])
    except (ValueError, KeyError, TypeError):
        raise InputError(
            f"{url} answered {_CURRENT_USER} with no user: not an MLflow server"
        ) from None
    return {"username": name, "is_admin": bool(user.get("is_admin"))}


def _has_model(url: str, username: str, password: str, model: str) -> bool:
    import requests

    answer = requests.get(
        url + _MODEL, params={"name": model}, auth=(username, password), timeout=TIMEOUT_S
    )
    return answer.status_code == 200


def login(
    url: str,
    *,
    username: str | None = None,
    ask: Callable[[str, bool], str] = _ask,
    echo: Callable[[str], None] = print,
) -> Identity:
    """Check a login against the server at ``url``, then store it; return who it is.

    The user name comes from ``username``, ``MLFLOW_TRACKING_USERNAME`` or a prompt; the
    password from ``MLFLOW_TRACKING_PASSWORD`` or a hidden prompt. Nothing is stored
    unless the server accepts the login and, for a student, holds their model.
    """
    server = _server_url(url)
    user = (username or os.environ.get("MLFLOW_TRACKING_USERNAME", "")).strip()
    if not user:
        user = ask("user name: ", False).strip()
    if not user:
        raise InputError("a login needs a user name")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    if not password:
        password = ask(f"password for {user}: ", True)
    if not password:
        raise InputError(f"a login needs {user}'s password")
    found = check_login(server, user, password)
    model = store.model_for(found["username"])
    if not found["is_admin"] and not _has_model(server, user, password, model):
        raise PermissionDenied(
            f"{user} may log in to {server}, but the class has no model {model}: ask your "
            "teacher to add you (churnlab class-add-students); nothing was stored"
        )
    written = config.store_credentials(found["username"], password)
    config.update(tracking_uri=server)
    echo(f"logged in to {server} as {found['username']}; the password is in {written} (0600)")
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env and env.rstrip("/") != server:
        echo(
            f"note: MLFLOW_TRACKING_URI={store.redact(env)} is set and overrides this login "
            "until you unset it"
        )
    return whoami(check=False)


def whoami(*, check: bool = True) -> Identity:
    """Who commands act as now. With ``check``, the server confirms the login (a refused
    login is :class:`PermissionDenied`, a server that does not answer
    :class:`RegistryUnavailable`)."""
    admin = False
    user = store.login_name()
    if not store.is_remote():
        return Identity(None, None, False, store.model_name(), store.experiment_name(), "embedded")
    server = store.tracking_uri()
    source = "login" if store.login_server() else "environment"
    if check and user:
        store.check_reachable()
        found = store.current_user()
        if found is not None:
            user, admin = found["username"], bool(found.get("is_admin"))
    return Identity(server, user, admin, store.model_name(), store.experiment_name(), source)


def logout(*, echo: Callable[[str], None] = print) -> bool:
    """Forget the login: the password from MLflow's credentials file, the server from the
    project's config. True when there was one."""
    server = config.get("tracking_uri")
    removed = config.remove_credentials()
    config.update(tracking_uri=None)
    if server is None and not removed:
        echo("not logged in: nothing to forget")
        return False
    where = f" of {server}" if server else ""
    echo(
        f"logged out{where}: removed the login from {config.credentials_path()}; commands "
        "use the embedded registry again"
    )
    if os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        echo("note: MLFLOW_TRACKING_URI is still set in this shell and still names a server")
    return True


__all__ = ["Identity", "check_login", "login", "logout", "whoami"]
