"""Check deployment files: every variable they set must be one the app reads.

A misspelled variable (``MLFLOW_TRACKING_TOKN``) is silently ignored by the server, which
then runs unauthenticated or against the wrong store. This reads the compose file and the
Dockerfile and names any variable that is not in :data:`serving.app.ENV_VARIABLES`.

    python -m serving.config_check serving/compose.yml serving/Dockerfile
"""

from __future__ import annotations

import difflib
import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

#: Set by the image for Python and pip themselves, not for the app.
RUNTIME_VARIABLES = frozenset(
    {
        "PATH",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "PIP_NO_CACHE_DIR",
        "PIP_DISABLE_PIP_VERSION_CHECK",
    }
)


def known_variables() -> frozenset[str]:
    """The variables a deployment may set: the app's, MLflow's auth ones, the runtime's."""
    from serving.app import ENV_VARIABLES

    return ENV_VARIABLES | RUNTIME_VARIABLES


def compose_variables(path: str | Path) -> dict[str, list[str]]:
    """Service name -> the environment variable names it sets (merge keys resolved)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    services = data.get("services") or {}
    if not isinstance(services, dict):
        raise ValueError(f"{path}: 'services' is not a mapping")
    out: dict[str, list[str]] = {}
    for name, service in services.items():
        env = (service or {}).get("environment") or {}
        if isinstance(env, dict):
            names = [str(k) for k in env]
        else:  # the list form: ["NAME=value", "NAME"]
            names = [str(item).split("=", 1)[0] for item in env]
        out[str(name)] = names
    return out


def dockerfile_variables(path: str | Path) -> list[str]:
    """The variable names the Dockerfile's ``ENV`` instructions set."""
    text = Path(path).read_text(encoding="utf-8")
    text = re.sub(r"\\\r?\n", " ", text)  # join continued lines
    names: list[str] = []
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) != 2 or parts[0].upper() != "ENV":
            continue
        words = shlex.split(parts[1])
        if words and "=" not in words[0]:  # legacy form: ENV NAME value
            names.append(words[0])
            continue
        names += [w.split("=", 1)[0] for w in words if "=" in w]
    return names


def unknown_variables(paths: Iterable[str | Path]) -> list[str]:
    """One line per variable a file sets that the app does not read (empty: all good)."""
    known = known_variables()
    problems = []
    for path in map(Path, paths):
        if path.name.startswith("Dockerfile") and not path.name.endswith(".dockerignore"):
            found = {"the image": dockerfile_variables(path)}
        else:
            found = {f"service {s}": names for s, names in compose_variables(path).items()}
        for where, names in found.items():
            for name in names:
                if name not in known:
                    close = difflib.get_close_matches(name, sorted(known), n=1)
                    hint = f" (did you mean {close[0]}?)" if close else ""
                    problems.append(
                        f"{path.name}: {where} sets {name}, which the app does not read{hint}"
                    )
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    paths = list(argv if argv is not None else sys.argv[1:]) or [
        here / "compose.yml",
        here / "Dockerfile",
    ]
    problems = unknown_variables(paths)
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"ok: every variable set in {len(paths)} file(s) is one the app reads")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
