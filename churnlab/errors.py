"""The errors a user can cause, each mapped to one exit code of the CLI."""

from __future__ import annotations


class ChurnlabError(Exception):
    """Base class: a clear one-line message meant for the person at the keyboard.

    ``in_python`` words the same line for someone calling churnlab from Python (a notebook):
    ``override=True, reason="..."`` where the command line says ``--override --reason TEXT``.
    """

    exit_code = 2

    def __init__(self, message: str = "", *, in_python: str | None = None) -> None:
        super().__init__(message)
        self.in_python = in_python or message


class InputError(ChurnlabError):
    """Bad input or usage: a malformed CSV, an unknown version, a bad option (exit 2)."""

    exit_code = 2


class Refused(ChurnlabError):
    """A rule said no: a failed gate, a promotion without its evidence (exit 1)."""

    exit_code = 1


class OutOfOrder(ChurnlabError):
    """A step needs one that has not run yet: a notebook run before the one it builds on
    (exit 1). The message names what to run first."""

    exit_code = 1


class RegistryUnavailable(ChurnlabError):
    """The tracking server could not be reached or failed (a 5xx: on a class server, its auth
    app without its database), or a database the class server needs cannot be used (exit 3)."""

    exit_code = 3


class PermissionDenied(ChurnlabError):
    """The server refused who is asking: a wrong, changed or deleted login (401) or a missing
    permission (403) (exit 4). Nothing was written: the refused request is the first write of
    its step."""

    exit_code = 4


def exit_code_of(name: str) -> int | None:
    """The exit code of the churnlab error class called ``name`` (as a notebook's failing
    cell names it), or None for any other exception."""
    found = [ChurnlabError]
    while found:
        kind = found.pop()
        if kind.__name__ == name:
            return kind.exit_code
        found.extend(kind.__subclasses__())
    return None
