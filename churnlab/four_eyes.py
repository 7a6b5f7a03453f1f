"""Four eyes, as 04 shows it: a promotion refused without another person's approval, the
author's own approval refused, and a reviewer's approval recorded (where names are declared;
where a server checks logins, only another login can give it)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from churnlab import store
from churnlab.errors import InputError
from churnlab.workbook import refusal

if TYPE_CHECKING:
    from churnlab.registry import Approval, Registry

#: the person who approves in the walkthrough where names are declared, not logins
REVIEWER = "reviewer"


@contextlib.contextmanager
def acting_as(name: str) -> Iterator[str]:
    """Act as another declared person inside the block (``CHURNLAB_ACTOR``), then restore
    whoever acted before. On a server that authenticates the login decides, not this."""
    person = str(name).strip()
    if not person:
        raise InputError(f"name must be a person's name, got {name!r}")
    before = os.environ.get("CHURNLAB_ACTOR")
    os.environ["CHURNLAB_ACTOR"] = person
    try:
        yield person
    finally:
        if before is None:
            os.environ.pop("CHURNLAB_ACTOR", None)
        else:
            os.environ["CHURNLAB_ACTOR"] = before


def approve_as(registry: Registry, person: str, version: int, reason: str) -> Approval:
    """``person`` approves ``version`` for production (:meth:`Registry.approve`)."""
    with acting_as(person):
        return registry.approve(version, reason=reason)


@dataclass(frozen=True)
class FourEyes:
    """04's four-eyes walkthrough on one version: the two refusals, the reviewer's approval
    (None where logins decide and no reviewer is at hand) and the status after it."""

    version: int
    refused_promotion: str | None
    refused_self_approval: str | None
    approval: Approval | None
    note: str
    status: dict[str, Any]

    def lines(self) -> list[str]:
        """What the notebook prints: the refusals, the approval (or why there is none), and
        what the status says now."""
        out = [self.refused_promotion or "", self.refused_self_approval or ""]
        if self.approval is not None:
            a = self.approval
            out.append(f"approved v{a.version} for production by {a.actor}: {a.reason}")
        out.append(self.note)
        staged = self.status["stages"]["staging"]
        who = ", ".join(staged.get("approvals") or []) or "nobody yet"
        needed = self.status["stages"]["production"]["approvals_required"]
        out.append(
            f"status: staging v{staged['version']} approved by {who}; production needs "
            f"{needed} approval(s)"
        )
        return [line for line in out if line]


def demonstrate(registry: Registry, version: int, approvals: int = 1) -> FourEyes:
    """Read ``registry``'s model under a policy of ``approvals`` approvals and walk through
    four eyes on ``version``: its promotion is refused, its author's own approval too, and
    a reviewer approves it. Where names are declared (no login) the reviewer is a second
    declared name; where the server checks logins only another login can approve, so
    nothing is approved and the note says who can. Nothing is promoted."""
    from churnlab.registry import Registry

    strict = Registry(registry.model_name, production_approvals=approvals)
    refused = refusal(lambda: strict.promote(version))
    own = refusal(lambda: strict.approve(version, reason="I trained it and it is good"))
    if strict.checks_logins():
        approval = None
        note = (
            f"on {store.display_uri()} the server's login decides who acts: only another "
            f"login with EDIT on {registry.model_name} (your reviewer, or the teacher) can "
            f"approve, with `churnlab approve {version} --reason TEXT`; none is given here"
        )
    else:
        approval = approve_as(strict, REVIEWER, version, reason="gate and smoke evidence read")
        note = "the approval is recorded beside the moves, with who gave it and why"
    return FourEyes(version, refused, own, approval, note, strict.status())


__all__ = ["REVIEWER", "FourEyes", "acting_as", "approve_as", "demonstrate"]
