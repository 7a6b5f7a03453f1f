"""The ``churnlab`` command line: the same steps the notebooks take, for CI and terminals.

Exit codes: 0 done, 1 refused (gate failed, promotion refused, a notebook that failed), 2 bad
input or usage, 3 registry unreachable or failing, 4 permission denied by the server (wrong
login, another user's model, a class with no model of yours).

This module assembles the parser and maps errors to exit codes; the commands live by area,
each module holding its ``cmd_*`` functions and their parsers (``add_commands``):
:mod:`~churnlab.cli.pipeline` (train to repair), :mod:`~churnlab.cli.class_server`,
:mod:`~churnlab.cli.notebooks` (workbook, report, config, handout, grade) and
:mod:`~churnlab.cli.backends` (ui, smoke, verify, serve, score); the class server's commands
include logging in and handing in.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from churnlab import store
from churnlab.cli import backends, class_server, notebooks, pipeline
from churnlab.errors import ChurnlabError

#: the areas, in the order ``churnlab --help`` lists their commands
_AREAS = (pipeline, class_server, notebooks, backends)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (``churnlab --help``)."""
    parser = argparse.ArgumentParser(prog="churnlab", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=None,
        help="registered model name (default: yours after churnlab login, else churn-model)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for area in _AREAS:
        area.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; print a one-line error and return its exit code on failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    store.quiet()
    try:
        if not getattr(args, "offline", False):  # handout and grade never use the registry
            store.check_reachable()  # before the heavy imports: a dead server fails in seconds
        return int(args.func(args) or 0)
    except ChurnlabError as exc:
        print(f"churnlab: {store.redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("churnlab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # MLflow or the network failing outside the registry's calls
        known = store.translate(
            exc, args.model or store.model_name()
        )  # the registry's translation, the same error
        if known is not None:
            print(f"churnlab: {store.redact(str(known))}", file=sys.stderr)
            return known.exit_code
        print(f"churnlab: {type(exc).__name__}: {store.redact(_first_line(exc))}", file=sys.stderr)
        return 3


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
