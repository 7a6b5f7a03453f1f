"""Where the registry lives: the embedded store under the project, or a tracking server.

With ``MLFLOW_TRACKING_URI`` unset and no ``churnlab login``, every entry point uses one
sqlite database and one artifact folder under ``<project>/.churnlab/`` (``CHURNLAB_HOME``
moves it). With it set, or after ``churnlab login URL`` (the project's config), the same
code talks to that server, authenticated by MLflow's own credentials
(``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``, or
``~/.mlflow/credentials``). After a login the model and the experiment are the user's own
(``churn-model-<user>``, ``churnlab-<user>``). Nothing here runs at import: entry points
call :func:`configure`.

What the server says about who is asking, and why it refused, is read here too: MLflow's
errors become churnlab's in one place, :func:`translate`, which the registry's boundary
(:mod:`churnlab.registry.boundary`) and the CLI both use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from churnlab import config
from churnlab.config import project_root
from churnlab.errors import ChurnlabError, PermissionDenied, RegistryUnavailable

DEFAULT_MODEL_NAME = "churn-model"
EXPERIMENT_NAME = "churnlab"
#: a logged-in user's own model and experiment are these prefixes plus the user name
_MODEL_PREFIX = "churn-model-"
_EXPERIMENT_PREFIX = "churnlab-"
_SECRET_VARIABLES = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD")

# Fail fast against an unreachable server instead of MLflow's minutes of retries: a server
# that stops answering costs at most two 5 s attempts per request, so every command ends
# within 15 s. A user who sets these variables keeps their own values.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
#: How long a write waits for its answer (s) before MLflow's client resends it: resent
#: after the reads' 5 s, a write that a busy server was still doing landed twice (a second
#: version, a stray run, or a tag the first attempt wrote: a unique-key error).
WRITE_TIMEOUT_S = 60
#: The variables that point churnlab at a tracking server or log in to it: cleared by
#: whatever must run on an embedded store only (the tests, nbval's session).
SERVER_VARIABLES: tuple[str, ...] = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)
_QUIET_DEFAULTS = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "GIT_PYTHON_REFRESH": "quiet",
    # "View run at <tracking URI>" lines: noise, and the URI may carry credentials
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def home() -> Path:
    """The embedded store's folder: ``$CHURNLAB_HOME`` or ``<project>/.churnlab``."""
    env = os.environ.get("CHURNLAB_HOME")
    return Path(env).expanduser().resolve() if env else project_root() / ".churnlab"


def _chosen_uri() -> str | None:
    """The server the user chose: ``MLFLOW_TRACKING_URI``, else the one ``churnlab login``
    wrote to the project's config; None for the embedded store."""
    return os.environ.get("MLFLOW_TRACKING_URI", "").strip() or config.get("tracking_uri")


def is_remote() -> bool:
    """True when the registry is a tracking server (``MLFLOW_TRACKING_URI``, or a login)."""
    return _chosen_uri() is not None


def tracking_uri() -> str:
    """The tracking and registry URI every entry point uses."""
    return _chosen_uri() or f"sqlite:///{home() / 'mlflow.db'}"


def login_server() -> str | None:
    """The server ``churnlab login`` chose, while it is the one in use (an
    ``MLFLOW_TRACKING_URI`` naming another server overrides the login), else None."""
    chosen = config.get("tracking_uri")
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if chosen is None or (env and env.rstrip("/") != chosen.rstrip("/")):
        return None
    return chosen


def logged_in_user() -> str | None:
    """The user of a ``churnlab login`` in use (its model and experiment are theirs), or None."""
    return login_name() if login_server() else None


def model_name() -> str:
    """The registered model every command and notebook uses when none is named.

    ``CHURNLAB_MODEL`` (what ``churnlab --model`` sets for a run's notebooks), else the
    logged-in user's own ``churn-model-<user>``, else ``churn-model``.
    """
    env = os.environ.get("CHURNLAB_MODEL", "").strip()
    if env:
        return env
    user = logged_in_user()
    return model_for(user) if user else DEFAULT_MODEL_NAME


def model_for(user: str) -> str:
    """A user's own model on a class server: ``churn-model-<user>``."""
    return f"{_MODEL_PREFIX}{user}"


def owner_of(model: str) -> str | None:
    """The user whose own model ``model`` is (``churn-model-<user>``), or None."""
    owner = model.removeprefix(_MODEL_PREFIX)
    return owner if owner and owner != model else None


def experiment_for(user: str) -> str:
    """A user's own experiment on a class server: ``churnlab-<user>``."""
    return f"{_EXPERIMENT_PREFIX}{user}"


def artifact_root() -> str | None:
    """Artifact location for the embedded store (None: the server decides)."""
    if is_remote() and not tracking_uri().startswith("sqlite:"):
        return None
    return (home() / "artifacts").as_uri()


def redact(text: str) -> str:
    """Remove credentials from a URI or message: user:password@, token=… and secret values."""
    text = re.sub(r"(?<=://)[^/@\s]+@", "***@", text)
    text = re.sub(r"(?i)((?:token|password|secret|key)=)[^&\s]+", r"\1***", text)
    secrets = [os.environ.get(name) for name in _SECRET_VARIABLES]
    secrets.append(config.stored_password())  # the login ``churnlab login`` stored
    for value in secrets:
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def display_uri() -> str:
    """The tracking URI as safe to print."""
    return redact(tracking_uri())


def quiet() -> None:
    """Silence MLflow's INFO lines, progress bars and deliberate deprecation notices."""
    for key, value in _QUIET_DEFAULTS.items():
        os.environ.setdefault(key, value)
    for name in ("mlflow", "alembic", "urllib3", "git", "skops", "numexpr"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"mlflow\..*")
    warnings.filterwarnings("ignore", message=r".*Hint: Inferred schema contains integer.*")
    # `import mlflow` pulls in tqdm.auto, which warns in a Jupyter kernel without ipywidgets
    warnings.filterwarnings("ignore", message=r"IProgress not found")


def environment_defaults() -> None:
    """The quiet logging and HTTP defaults of :func:`configure`, without importing MLflow.

    The environment is what processes started afterwards (kernels, backends) inherit.
    """
    quiet()
    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def patient_writes(timeout: float = WRITE_TIMEOUT_S) -> Iterator[None]:
    """Inside the block MLflow's client waits up to ``timeout`` seconds for an answer
    (longer if ``MLFLOW_HTTP_REQUEST_TIMEOUT`` says so) before it resends a request.

    For writes: a busy server is slow, not gone, and a write resent while the first attempt
    is still being done lands twice. The one retry stays, for a connection the server
    closed while idle (the request never reached it). Reads keep the fail-fast 5 s.
    """
    saved = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")
    try:
        waited = float(saved or 0)
    except ValueError:
        waited = 0.0
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(waited, timeout)))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_TIMEOUT", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = saved


def configure() -> str:
    """Point MLflow at the churnlab store, quietly; return the tracking URI.

    Called by every entry point (CLI, notebooks, server, tests). Creates the embedded
    store's folder when it is used.
    """
    environment_defaults()
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not is_remote():
        home().mkdir(parents=True, exist_ok=True)
    import mlflow

    # mlflow.set_*_uri also export MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI; left there, the
    # embedded store would look like a server the user chose (is_remote(): no file lock)
    # and a later CHURNLAB_HOME would be ignored. Keep the environment as the user set it.
    chosen = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in chosen.items():
        if value is None:
            os.environ.pop(key, None)
    return uri


def check_reachable(timeout: float = 5.0) -> None:
    """Raise :class:`RegistryUnavailable` when a tracking server does not answer."""
    uri = tracking_uri()
    scheme = urlsplit(uri).scheme
    if scheme not in ("http", "https"):
        return
    import requests

    parts = urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    health = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        requests.get(health, timeout=timeout)
    except requests.RequestException as exc:
        raise unreachable(type(exc).__name__) from None


def dataset_source(artifact_uri: str) -> str:
    """A dataset source MLflow can resolve for a logged artifact, safe to store.

    A server that proxies artifacts hands out ``mlflow-artifacts:/…`` URIs, which
    ``mlflow.data`` cannot resolve; they become the server's download URL, without the
    credentials a tracking URI may carry.
    """
    parts = urlsplit(artifact_uri)
    if parts.scheme != "mlflow-artifacts":
        return artifact_uri
    server = urlsplit(tracking_uri())
    netloc = (parts.netloc or server.netloc).rsplit("@", 1)[-1]
    scheme = server.scheme if server.scheme in ("http", "https") else "http"
    prefix = server.path.rstrip("/") if not parts.netloc else ""
    path = f"{prefix}/api/2.0/mlflow-artifacts/artifacts/{parts.path.lstrip('/')}"
    return urlunsplit((scheme, netloc, path, "", ""))


def experiment_name() -> str:
    """The experiment runs are logged to: ``$CHURNLAB_EXPERIMENT``, else the logged-in
    user's own ``churnlab-<user>``, else ``churnlab``.

    On a class server each student logs to their own, which they MANAGE: the others may
    read its runs but not change them.
    """
    env = os.environ.get("CHURNLAB_EXPERIMENT", "").strip()
    if env:
        return env
    user = logged_in_user()
    return experiment_for(user) if user else EXPERIMENT_NAME


def ensure_experiment(name: str | None = None) -> str:
    """Return the id of the churnlab experiment, creating it with the right artifact root."""
    from mlflow.tracking import MlflowClient

    name = name or experiment_name()
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root())
    except Exception:  # another process created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# ---------------------------------------------------------------------------- who is asking
#: the auth app's "who am I" endpoint (``mlflow server --app-name basic-auth``)
_CURRENT_USER_ENDPOINT = "/api/2.0/mlflow/users/current"


def login_name() -> str | None:
    """The user name MLflow sends to a server: ``MLFLOW_TRACKING_USERNAME``, else the one in
    MLflow's credentials file (``churnlab login`` writes it there), or None."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME", "").strip() or config.stored_username()


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind an MLflow or requests error (401, 403, 503, ...), or None.

    MLflow reports a 5xx it gave up retrying only in its message ("too many 503 error
    responses", "failed with error code 500"): those are read from the text.
    """
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status
    getter = getattr(exc, "get_http_status_code", None)
    if callable(getter) and getattr(exc, "error_code", None):
        try:
            code = int(getter())
        except (TypeError, ValueError):
            code = None
        if code in (401, 403):
            return code
    found = re.search(r"too many (\d{3}) error responses|error code (\d{3})", str(exc))
    return int(found.group(1) or found.group(2)) if found else None


#: what the auth app answers, in a worker that still remembers the login, for a user the
#: admin has deleted since
_USER_GONE = re.compile(r"User with username=\S+ not found")


def login_gone(exc_or_text: BaseException | str) -> bool:
    """True when the server says the logged-in user no longer exists (deleted by the admin)."""
    return bool(_USER_GONE.search(str(exc_or_text)))


def _login_refused() -> PermissionDenied:
    """The one line for a 401: who tried to log in where (never the password).

    A wrong password, an unknown user, and a login the admin changed or deleted since (the
    "expired session" of a server that has no sessions) all look the same to the server.
    """
    who = login_name()
    if who:
        return PermissionDenied(
            f"login refused by {display_uri()}: wrong user name or password for {who}, or the "
            "admin changed or removed that login (MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD)"
        )
    return PermissionDenied(
        f"login refused by {display_uri()}: the server asks for a login; set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    )


def _server_failed(status: int) -> RegistryUnavailable:
    """The one line for a 5xx: the server is up but failed (on a class server, typically its
    auth app, which cannot reach its database)."""
    who = f" (login {login_name()})" if login_name() else ""
    return RegistryUnavailable(
        f"the MLflow tracking server at {display_uri()} failed with HTTP {status}{who}: it is "
        "up, but its auth app or a database behind it is not working; tell whoever runs the "
        "server (its log says why)"
    )


def failure(exc: BaseException) -> ChurnlabError | None:
    """The churnlab error for a login refused, a deleted login or a failing server, or None."""
    status = http_status(exc)
    if status == 401 or login_gone(exc):
        return _login_refused()
    if status is not None and status >= 500:
        return _server_failed(status)
    return None


def unreachable(reason: str | None = None) -> RegistryUnavailable:
    """The one line for a server that does not answer (``reason``: what failed, if known)."""
    why = f" ({reason})" if reason else ""
    return RegistryUnavailable(f"cannot reach the MLflow tracking server at {display_uri()}{why}")


# ---------------------------------------------------------------------------- refusals
#: What each MLflow REST endpoint does, in words: the first prefix that matches the path
#: after ``/api/<version>/mlflow/`` names what a refused (403) request tried to do.
ENDPOINT_VERBS: tuple[tuple[str, str], ...] = (
    ("registered-models/alias", "move an alias of {model}"),
    ("registered-models/create", "create {model}"),
    ("registered-models/set-tag", "write the history of {model}"),
    ("registered-models/delete-tag", "write the history of {model}"),
    ("registered-models/delete", "delete {model}"),
    ("registered-models/rename", "rename {model}"),
    ("registered-models/update", "change {model}"),
    ("registered-models/permissions", "change who may use {model}"),
    ("registered-models", "read {model}"),
    ("model-versions/create", "register a version of {model}"),
    ("model-versions/transition-stage", "move a stage of {model}"),
    ("model-versions/set-tag", "record evidence on a version of {model}"),
    ("model-versions/delete-tag", "record evidence on a version of {model}"),
    ("model-versions/delete", "delete a version of {model}"),
    ("model-versions/update", "change a version of {model}"),
    ("model-versions", "read {model}"),
    ("experiments/create", "create experiment {experiment}"),
    ("experiments/get", "read experiment {experiment}"),
    ("experiments/search", "read experiment {experiment}"),
    ("experiments", "change experiment {experiment}"),
    ("runs/create", "start a run in experiment {experiment}"),
    ("runs/get", "read a run of experiment {experiment}"),
    ("runs/search", "read a run of experiment {experiment}"),
    ("runs", "log to a run of experiment {experiment}"),
    ("logged-models", "log a model to experiment {experiment}"),
    ("artifacts", "read the artifacts of experiment {experiment}"),
    ("users", "manage logins"),
    ("permissions", "manage permissions"),
)
_ENDPOINT = re.compile(r"/(?:ajax-)?api/\d\.\d/(?:mlflow-artifacts|mlflow)/([\w\-/.%]*)")


def _endpoint_verb(endpoint: str, model: str, method: str | None = None) -> str:
    """What a request to ``endpoint`` does, in words (``move an alias of churn-model-bob``)."""
    found = _ENDPOINT.search(endpoint)
    path = found.group(1) if found else endpoint.lstrip("/")
    if "mlflow-artifacts" in endpoint and (method or "PUT").upper() != "GET":
        verb = "upload artifacts to experiment {experiment}"
    else:
        verb = next((v for prefix, v in ENDPOINT_VERBS if path.startswith(prefix)), None)
        verb = verb or f"call {endpoint} on {{model}}"
    return verb.format(model=model, experiment=experiment_name())


def refusal(exc: BaseException, model: str, who: str | None = None) -> PermissionDenied:
    """The one line for a 403: who may not do what (from :data:`ENDPOINT_VERBS`) to which
    model or experiment."""
    who = who or login_name() or "you"
    response = getattr(exc, "response", None)
    request = getattr(response, "request", None)
    url = getattr(request, "url", None) or getattr(response, "url", None) or str(exc)
    found = _ENDPOINT.search(str(url))
    if found is None:
        return PermissionDenied(f"permission denied: {who} may not change {model}")
    verb = _endpoint_verb(found.group(0), model, getattr(request, "method", None))
    return PermissionDenied(f"permission denied: {who} may not {verb}")


# ---------------------------------------------------------------------------- the one translation
#: what MLflow's REST client says when it gave up on a server that does not answer
_UNREACHABLE_WORDS = ("Max retries exceeded", "Connection", "timed out")
#: MLflow's error codes for something that does not exist: a question's answer, no failure
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def translate(
    exc: BaseException, model: str, *, who: str | None = None, doing: str | None = None
) -> ChurnlabError | None:
    """The churnlab error for a failure of MLflow or of the network under it, or None.

    The one translation of MLflow's errors: the registry's calls, batch scoring and the CLI
    all give the same error, with the same exit code, for the same failure. A refused,
    changed or deleted login (401) and a refusal (403: ``who`` may not ``doing``, or what
    the refused endpoint does, :data:`ENDPOINT_VERBS`) are :class:`PermissionDenied`; a
    failing server (5xx) and one that does not answer are :class:`RegistryUnavailable`.
    None for anything else (an object that does not exist, a bug): the caller decides.
    """
    known = failure(exc)
    if known is not None:
        return known
    if http_status(exc) == 403:
        if doing is None:
            return refusal(exc, model, who)
        return PermissionDenied(
            f"permission denied: {who or login_name() or 'you'} may not {doing}"
        )
    if _no_answer(exc):  # requests' errors (artifact uploads), sockets
        return unreachable(type(exc).__name__)
    if getattr(exc, "error_code", None) in _NOT_FOUND:
        return None
    if any(words in str(exc) for words in _UNREACHABLE_WORDS):
        return unreachable()
    return None


def _no_answer(exc: BaseException) -> bool:
    """True for a network error that got no answer from the server (a refused connection, a
    timeout), never for a file the disk refused or a response the server gave."""
    import requests

    if isinstance(exc, requests.RequestException):
        return getattr(exc, "response", None) is None
    return isinstance(exc, ConnectionError | TimeoutError)


# ---------------------------------------------------------------------------- who logged in
def authenticated_user(timeout: float = 5.0) -> str | None:
    """The user the tracking server authenticated, or None when it does not say.

    Asks the basic-auth app's ``GET /api/2.0/mlflow/users/current`` with MLflow's own
    credentials (username/password or token). A server without the auth app (404), an
    embedded store or DagsHub gives None: the actor is then only declared. A 401 (or a
    login the admin deleted) is :class:`PermissionDenied`; a 5xx, an auth app that cannot
    reach its database, is :class:`RegistryUnavailable`.
    """
    found = current_user(timeout)
    return found["username"] if found else None


def current_user(timeout: float = 5.0) -> dict[str, Any] | None:
    """The server's record of the logged-in user, ``{"username", "is_admin"}``, or None
    when it does not say (as :func:`authenticated_user`)."""
    uri = tracking_uri()
    if urlsplit(uri).scheme not in ("http", "https") or not login_name():
        return None
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(
            get_default_host_creds(uri),
            _CURRENT_USER_ENDPOINT,
            "GET",
            max_retries=0,
            timeout=timeout,
        )
    except Exception as exc:  # network trouble: let the next real request report it
        known = failure(exc)
        if known is not None:
            raise known from None
        return None
    if response.status_code == 401 or login_gone(response.text):
        raise _login_refused()
    if response.status_code >= 500:
        raise _server_failed(response.status_code)
    if response.status_code != 200:
        return None
    try:
        user = response.json()["user"]
        name = user["username"]
    except (ValueError, KeyError, TypeError):
        return None
    return {"username": str(name), "is_admin": bool(user.get("is_admin"))} if name else None
