"""The settings churnlab keeps on disk: the project's config file and MLflow's credentials.

The project's config, ``churnlab.toml`` at the project root (``CHURNLAB_CONFIG`` moves it;
git ignores it), holds what is set once for a checkout: the student's name
(``churnlab config student NAME``) and the class server a ``churnlab login`` chose. The
password is never in it: it goes where MLflow's own client reads it,
``~/.mlflow/credentials`` (section ``[mlflow]``, mode 0600), and MLflow's variables
(``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``) override that file, as they do
for MLflow. Nothing here imports MLflow or runs at import.
"""

from __future__ import annotations

import configparser
import json
import os
import tempfile
from pathlib import Path

from churnlab.errors import InputError

#: the file's name at the project root
FILE_NAME = "churnlab.toml"
#: what the project's config may hold, and what each setting is
SETTINGS: dict[str, str] = {
    "student": "your name: your own seeds and your name in the report (churnlab config student)",
    "tracking_uri": "the class server you logged in to (churnlab login; churnlab logout)",
}
#: MLflow's credentials file and the keys it reads there (mlflow.utils.credentials)
CREDENTIALS_SECTION = "mlflow"
USERNAME_KEY = "mlflow_tracking_username"
PASSWORD_KEY = "mlflow_tracking_password"


def project_root() -> Path:
    """The checkout this package belongs to (falls back to the working directory)."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd()


# ---------------------------------------------------------------------------- the project's config
def path() -> Path:
    """The project's config file: ``$CHURNLAB_CONFIG`` or ``<project>/churnlab.toml``."""
    env = os.environ.get("CHURNLAB_CONFIG", "").strip()
    return Path(env).expanduser() if env else project_root() / FILE_NAME


def read() -> dict[str, str]:
    """The settings in the project's config ({} when there is no file).

    A file that is not TOML, or holds a setting churnlab does not know, is refused in one
    line naming the file (nothing guesses what a broken file meant).
    """
    import tomllib

    found = path()
    try:
        text = found.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InputError(f"cannot read {found}: {exc.strerror or type(exc).__name__}") from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{found} is not valid TOML ({exc}): fix or delete it") from None
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise InputError(f"{found}: unknown setting(s) {unknown}; known: {sorted(SETTINGS)}")
    bad = [k for k, v in values.items() if not isinstance(v, str)]
    if bad:
        raise InputError(f"{found}: {bad[0]} must be text in quotes")
    return dict(values)


def get(key: str) -> str | None:
    """One setting of the project's config, or None (blank counts as unset)."""
    value = read().get(key, "").strip()
    return value or None


def update(**values: str | None) -> Path:
    """Set (or, with None, remove) settings; write the file whole, never half (renamed).

    Returns the file's path. A file left with no setting is removed.
    """
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise InputError(f"unknown setting(s) {unknown}; known: {sorted(SETTINGS)}")
    current = read()
    for key, value in values.items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
    target = path()
    if not current:
        target.unlink(missing_ok=True)
        return target
    lines = ["# churnlab's settings for this checkout (churnlab config, churnlab login)"]
    # a JSON string is a valid TOML basic string: quotes, backslashes and control
    # characters escaped, any other character (a Unicode name) kept as it is
    lines += [f"{key} = {json.dumps(current[key], ensure_ascii=False)}" for key in sorted(current)]
    _write(target, "\n".join(lines) + "\n", mode=0o644)
    return target


# ---------------------------------------------------------------------------- MLflow's credentials
def credentials_path() -> Path:
    """Where MLflow's client reads a login: ``~/.mlflow/credentials``."""
    return Path(os.path.expanduser("~")) / ".mlflow" / "credentials"


def _credentials() -> configparser.ConfigParser:
    # read as MLflow reads it: a plain ConfigParser, whose interpolation makes "%" special
    parser = configparser.ConfigParser()
    try:
        parser.read(credentials_path(), encoding="utf-8")
    except configparser.Error as exc:
        raise InputError(
            f"{credentials_path()} cannot be read as MLflow's credentials: {exc}"
        ) from None
    return parser


def stored_username() -> str | None:
    """The user name in MLflow's credentials file, or None."""
    parser = _credentials()
    value = parser.get(CREDENTIALS_SECTION, USERNAME_KEY, fallback="").strip()
    return value or None


def stored_password() -> str | None:
    """The password in MLflow's credentials file, or None (for redaction only: never shown)."""
    try:
        parser = _credentials()
    except InputError:  # an unreadable file holds nothing to redact
        return None
    value = parser.get(CREDENTIALS_SECTION, PASSWORD_KEY, fallback="")
    return value or None


def store_credentials(username: str, password: str) -> Path:
    """Write the login where MLflow's client reads it (0600), keeping any other setting."""
    parser = _credentials()
    if not parser.has_section(CREDENTIALS_SECTION):
        parser.add_section(CREDENTIALS_SECTION)
    # "%" is doubled so that MLflow's interpolating reader gives the password back as typed
    parser.set(CREDENTIALS_SECTION, USERNAME_KEY, username.replace("%", "%%"))
    parser.set(CREDENTIALS_SECTION, PASSWORD_KEY, password.replace("%", "%%"))
    return _write_credentials(parser)


def remove_credentials() -> bool:
    """Remove the login from MLflow's credentials file; True when there was one.

    The file goes when nothing else is left in it.
    """
    target = credentials_path()
    parser = _credentials()
    removed = False
    if parser.has_section(CREDENTIALS_SECTION):
        for key in (USERNAME_KEY, PASSWORD_KEY):
            removed = parser.remove_option(CREDENTIALS_SECTION, key) or removed
        if not parser.items(CREDENTIALS_SECTION):
            parser.remove_section(CREDENTIALS_SECTION)
    if not parser.sections():
        target.unlink(missing_ok=True)
    elif removed:
        _write_credentials(parser)
    return removed


def _write_credentials(parser: configparser.ConfigParser) -> Path:
    import io

    target = credentials_path()
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    buffer = io.StringIO()
    parser.write(buffer)
    _write(target, buffer.getvalue(), mode=0o600)
    return target


def _write(target: Path, text: str, *, mode: int) -> None:
    """Write ``text`` to ``target`` through a temporary file created with ``mode``, renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = [
    "FILE_NAME",
    "SETTINGS",
    "credentials_path",
    "get",
    "path",
    "project_root",
    "read",
    "remove_credentials",
    "store_credentials",
    "stored_password",
    "stored_username",
    "update",
]
