"""The registry's rules as pure functions: what a move requires, what the history and status say.

Each takes what was read (events, approvals, aliases, verdicts) and answers or refuses; none
reads or writes the registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from churnlab import tags
from churnlab.errors import InputError, Refused
from churnlab.registry.records import (
    ALIASES,
    MAX_REASON,
    PRODUCTION,
    STAGING,
    Approval,
    Event,
    label,
)


# ---------------------------------------------------------------- what the registry holds
def holders(aliases: dict[str, Any] | None) -> dict[str, int | None]:
    """Each alias's version, from the registered model's ``aliases`` (None: unset)."""
    found = aliases or {}
    return {alias: int(found[alias]) if alias in found else None for alias in ALIASES}


def stage_map(versions: Iterable[Any]) -> dict[str, list[int]]:
    """For each alias, the versions whose legacy stage is its stage (normally zero or one)."""
    versions = list(versions)
    return {
        alias: [int(v.version) for v in versions if v.current_stage == stage]
        for alias, stage in ALIASES.items()
    }


# ---------------------------------------------------------------- what the history says
def last_move(events: Sequence[Event], alias: str) -> Event | None:
    """The history's last move of ``alias``, or None."""
    return next((e for e in reversed(events) if e.alias == alias), None)


def recorded_holder(events: Sequence[Event], alias: str) -> int | None:
    """The version the history last put in ``alias`` (None: it never did, or it emptied it)."""
    move = last_move(events, alias)
    return move.to_version if move is not None else None


def previous_production(events: Sequence[Event], current: int | None) -> int | None:
    """The version production held before ``current`` (rollbacks undo a step)."""
    stack: list[int] = []
    for e in events:
        if e.alias != PRODUCTION or e.to_version is None:
            continue
        if e.action == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != e.to_version:
                stack.append(e.to_version)
        elif not stack or stack[-1] != e.to_version:
            stack.append(e.to_version)
    while stack and stack[-1] == current:
        stack.pop()
    return stack[-1] if stack else None


# ---------------------------------------------------------------- four eyes
def required_approvals(policy: int, model_tags: dict[str, str]) -> int:
    """Approvals a promotion needs: the policy's, or the model's floor if higher."""
    floor = model_tags.get(tags.REQUIRED_APPROVALS, "0")
    try:
        return max(policy, int(floor))
    except ValueError:
        return policy


def approvers(approvals: Iterable[Approval], promoter: str | None) -> list[str]:
    """Distinct people among ``approvals``, the promoter left out (four eyes)."""
    names = {a.actor for a in approvals}
    names.discard(promoter)
    return sorted(names)


def missing_approval(
    holder: int, move: Event | None, needed: int, approvals: Iterable[Approval]
) -> str | None:
    """What production's holder lacks under four eyes, or None. ``move`` is the recorded move
    that put it there (None: a move nobody recorded, which has no known promoter); a
    recorded override or rollback needs no approval."""
    if move is not None and (move.override or move.action == "rollback"):
        return None
    promoter = move.actor if move is not None and move.action == "promote" else None
    have = approvers(approvals, promoter)
    if len(have) >= needed:
        return None
    by = f" by {promoter}" if promoter else ""
    return (
        f"production v{holder} was moved there{by} with {len(have)} of the {needed} "
        f"approval(s) the policy requires: approve it (`churnlab approve {holder} "
        "--reason TEXT`, by someone else) or roll back"
    )


# ---------------------------------------------------------------- what a move requires
def check_reason(reason: str) -> None:
    """Refuse a reason too long for the one tag its event or approval is stored in."""
    if len(reason) > MAX_REASON:
        raise InputError(
            f"--reason is {len(reason)} characters; at most {MAX_REASON}",
            in_python=f"reason is {len(reason)} characters; at most {MAX_REASON}",
        )


def require_evidence(
    model_name: str,
    version: int,
    target: str,
    verdicts: dict[str, str],
    needs: tuple[str, ...],
    *,
    override: bool,
    reason: str,
) -> None:
    """Refuse a move to ``target`` unless each verdict in ``needs`` passed, or an override
    says why."""
    if override and not reason.strip():
        raise InputError(
            "an override needs a written reason: --override --reason TEXT",
            in_python='an override needs a written reason: override=True, reason="why"',
        )
    missing = [f"{n} is {verdicts[n]}" for n in needs if verdicts[n] != "passed"]
    if missing and not override:
        refused = (
            f"refused: {model_name} v{version} -> {target}: {' and '.join(missing)} (needs passed)"
        )
        raise Refused(
            f"{refused}; use --override --reason TEXT to force",
            in_python=f'{refused}; pass override=True, reason="why" to force',
        )


def require_approvals(
    model_name: str,
    version: int,
    promoter: str,
    needed: int,
    approved: Sequence[str],
    *,
    override: bool,
) -> None:
    """Refuse a promotion with fewer approvals by others than ``needed``, unless overridden."""
    if len(approved) < needed and not override:
        others = f" ({', '.join(approved)})" if approved else ""
        refused = (
            f"refused: {model_name} v{version} -> Production: needs {needed} "
            f"approval(s) of v{version} by someone other than {promoter}, has "
            f"{len(approved)}{others}"
        )
        raise Refused(
            f"{refused}; a reviewer runs `churnlab approve {version} --reason TEXT`, or use "
            "--override --reason TEXT",
            in_python=f"{refused}; a reviewer approves it (registry.approve({version}, "
            'reason="why")), or pass override=True, reason="why"',
        )


# ---------------------------------------------------------------- what status reports
def problems(
    holders: dict[str, int | None], stages: dict[str, list[int]], events: Sequence[Event]
) -> list[str]:
    """Where aliases, legacy stages and the history disagree (approvals aside): both aliases
    on one version, a stage that does not hold its alias's version, an alias no recorded
    event put where it is."""
    found = []
    both = holders[STAGING]
    if both is not None and both == holders[PRODUCTION]:
        found.append(f"aliases staging and production both name {label(both)}")
    for alias, stage in ALIASES.items():
        holder, mirrored = holders[alias], stages[alias]
        if mirrored != ([holder] if holder is not None else []):
            found.append(
                f"alias {alias} names {label(holder)} but stage {stage} holds "
                f"{', '.join(label(v) for v in mirrored) or 'nothing'}"
            )
        recorded = recorded_holder(events, alias)
        if recorded != holder:
            found.append(
                f"alias {alias} names {label(holder)} but no recorded event put it there "
                f"(the history's last {alias} move names {label(recorded)}): moved outside "
                "churnlab, or a move was interrupted"
            )
    return found
