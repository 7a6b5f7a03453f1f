"""The moves of the aliases (stage, promote, approve, rollback, repair) and the status they leave.

Each move checks its rules (:mod:`churnlab.registry.rules`), sets the alias, mirrors the
legacy stages and appends its event to the history. On the embedded store moves take a file
lock; against a tracking server there is none, and concurrent moves converge instead.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from typing import Any

from churnlab import store, tags
from churnlab.errors import InputError, Refused
from churnlab.registry import history, rules
from churnlab.registry.boundary import Boundary
from churnlab.registry.records import (
    ALIASES,
    PRODUCTION,
    SERVER,
    STAGING,
    Approval,
    Event,
    Move,
    label,
    now,
    verdicts_of,
)
from churnlab.registry.versions import Versions

_VERBS = {"stage": "Staged", "promote": "Promoted", "rollback": "Rolled back"}


class Moves:
    """The moves of one registered model's aliases; ``approvals``: what the policy requires of
    a promotion (a model tag set by a teacher can only raise it)."""

    def __init__(self, mlflow: Boundary, versions: Versions, approvals: int = 0) -> None:
        self.mlflow = mlflow
        self.versions = versions
        self.model_name = mlflow.model_name
        self.approvals = int(approvals)

    # ------------------------------------------------------------------ the moves
    def stage(self, version: str | int, *, override: bool, reason: str) -> Move:
        """Move ``@staging`` to ``version``; needs a passed gate unless overridden."""
        number = int(self.versions.version(version).version)
        if self.versions.holders()[PRODUCTION] == number:
            raise Refused(f"refused: {self.model_name} v{number} already holds Production")
        self._require(number, ("gate",), "Staging", override, reason)
        return self._move(STAGING, number, "stage", reason.strip(), override)

    def promote(self, version: str | int, *, override: bool, reason: str) -> Move:
        """Move ``@production`` to ``version``; needs a passed gate and smoke check, and the
        approvals the policy requires, unless overridden with a reason."""
        number = int(self.versions.version(version).version)
        self._require(number, ("gate", "smoke"), "Production", override, reason)
        promoter, _ = self.mlflow.identity()
        found = self.versions.model().tags or {}
        needed = rules.required_approvals(self.approvals, found)
        approved = tuple(rules.approvers(history.approvals_in(found, number), promoter))
        rules.require_approvals(
            self.model_name, number, promoter, needed, approved, override=override
        )
        return self._move(PRODUCTION, number, "promote", reason.strip(), override, approved)

    def approve(self, version: str | int, *, reason: str) -> Approval:
        """Record the current user's approval of ``version`` for production (four eyes)."""
        mv = self.versions.version(version)
        number = int(mv.version)
        reason = reason.strip()
        if not reason:
            raise InputError(
                "an approval needs a written reason: --reason TEXT",
                in_python='an approval needs a written reason: reason="why"',
            )
        rules.check_reason(reason)
        who, source = self.mlflow.identity()
        author = (mv.tags or {}).get(tags.REGISTERED_BY)
        if author and author == who:
            raise Refused(
                f"refused: {who} may not approve {self.model_name} v{number}: {who} "
                "registered it; an approval must come from someone else (four eyes)"
            )
        approval = Approval(now(), who, number, reason, source)
        with self.mlflow.attempt(f"approve v{number} of {self.model_name}"):
            history.append(self.mlflow, approval)
        return approval

    def rollback(self, *, reason: str) -> Move:
        """Return ``@production`` to the version that held it before the current one."""
        current = self.versions.holders()[PRODUCTION]
        if current is None:
            raise Refused(f"refused: {self.model_name} has no production version to roll back")
        events = history.events_in(self.versions.model().tags or {})
        previous = rules.previous_production(events, current)
        if previous is None:
            raise Refused(
                f"refused: {self.model_name} v{current} is the first production version; "
                "there is nothing to roll back to"
            )
        self.versions.version(previous)
        return self._move(PRODUCTION, previous, "rollback", reason.strip() or "rollback", False)

    def repair(self, *, restore: bool) -> list[str]:
        """Re-mirror stages from aliases and record any move the history missed (or, with
        ``restore``, put each alias back where the history last put it); return the
        problems found. Approvals a production holder lacks are reported, not repaired."""
        self.mlflow.identity()
        with self._lock(), self.mlflow.attempt(f"repair the stages of {self.model_name}"):
            before = self.status()
            unapproved = before["stages"][PRODUCTION].get("approval_missing")
            problems = [p for p in before["problems"] if p != unapproved]
            if not problems:
                return []
            if restore:
                self._restore()
                return problems
            holders = self.versions.holders()
            both = holders[PRODUCTION]
            if both is not None and holders[STAGING] == both:
                # a promotion moved production but stopped before leaving staging
                self.mlflow.delete_alias(STAGING)
                history.append(
                    self.mlflow, self._event(STAGING, both, None, "unstage", "moved to Production")
                )
            self._mirror()
            events = history.events_in(self.versions.model().tags or {})
            holders = self.versions.holders()
            for alias in ALIASES:
                recorded = rules.recorded_holder(events, alias)
                if recorded != holders[alias]:
                    reason = "recorded a move made outside churnlab (or an interrupted one)"
                    history.append(
                        self.mlflow, self._event(alias, recorded, holders[alias], "repair", reason)
                    )
        return problems

    # ------------------------------------------------------------------ the status they leave
    def status(self) -> dict[str, Any]:
        """For staging and production: holder, mirrored stage, verdicts, approvals, and
        consistency (from one read of the registered model and one of its versions)."""
        model = self.versions.model()
        found = model.tags or {}
        events = history.events_in(found)
        approvals = history.approvals_in(found)
        needed = rules.required_approvals(self.approvals, found)
        holders = rules.holders(getattr(model, "aliases", None))
        stages = rules.stage_map(self.versions.versions())
        out: dict[str, Any] = {"model_name": self.model_name, "stages": {}, "consistent": True}
        problems = rules.problems(holders, stages, events)
        for alias, stage in ALIASES.items():
            holder = holders[alias]
            entry: dict[str, Any] = {
                "version": holder,
                "stage": stage,
                "stage_versions": stages[alias],
            }
            of_holder = [a for a in approvals if a.version == holder]
            if holder is not None:
                mv = self.versions.version(holder)
                entry.update(
                    verdicts_of(mv.tags or {}),
                    run_id=mv.run_id,
                    approvals=sorted({a.actor for a in of_holder}),
                )
            if alias == PRODUCTION:
                entry["approvals_required"] = needed
                if holder is not None and needed:
                    move = rules.last_move(events, alias)
                    put = move if rules.recorded_holder(events, alias) == holder else None
                    missing = rules.missing_approval(holder, put, needed, of_holder)
                    entry["approval_missing"] = missing
                    if missing:
                        problems.append(missing)
            out["stages"][alias] = entry
        out["consistent"] = not problems
        out["problems"] = problems
        return out

    # ------------------------------------------------------------------ how a move is made
    def _require(
        self, version: int, needs: tuple[str, ...], target: str, override: bool, reason: str
    ) -> None:
        verdicts = self.versions.verdicts(version)
        rules.require_evidence(
            self.model_name, version, target, verdicts, needs, override=override, reason=reason
        )

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialize moves between processes sharing the embedded store (a file lock).

        Against a tracking server there is no lock to take; moves converge instead (see
        :meth:`_mirror`), and events never overwrite each other.
        """
        if store.is_remote():
            yield
            return
        path = store.home() / "registry.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _mirror(self, attempts: int = 5) -> None:
        """Make each legacy stage hold exactly the version its alias names.

        Re-reads the aliases after each pass, so that two racing movers both end on the
        last alias written.
        """
        for _ in range(attempts):
            wanted = self.versions.holders()
            stages = rules.stage_map(self.versions.versions())
            for alias, stage in ALIASES.items():
                holder = wanted[alias]
                if holder is not None and stages[alias] != [holder]:
                    self.mlflow.transition(holder, stage, archive=True)
                    stages = rules.stage_map(self.versions.versions())
                for other in stages[alias]:
                    if other != holder:
                        self.mlflow.transition(other, "Archived", archive=False)
            if self.versions.holders() == wanted:
                return

    def _event(
        self, alias, before, after, action, reason="", override=False, approved_by=()
    ) -> Event:
        who, source = self.mlflow.identity()
        return Event(
            time=now(),
            actor=who,
            alias=alias,
            from_version=before,
            to_version=after,
            action=action,
            reason=reason,
            override=override,
            actor_source=source,
            approved_by=tuple(approved_by),
        )

    def _move(
        self,
        alias: str,
        version: int,
        action: str,
        reason: str,
        override: bool,
        approved_by: tuple[str, ...] = (),
    ) -> Move:
        stage = ALIASES[alias]
        rules.check_reason(reason)  # refused up front: the event must fit in its tag
        self.mlflow.identity()  # a wrong login fails here, before anything is written
        with self._lock(), self.mlflow.attempt(f"move @{alias} of {self.model_name}"):
            before = self.versions.holders()[alias]
            if before == version:
                if self.mlflow.identity()[1] == SERVER:  # a no-op still needs EDIT on the
                    # model: setting the alias again changes nothing, and a 403 refuses it
                    self.mlflow.set_alias(alias, version)
                event = self._event(alias, before, version, action, reason, override)
                return Move(event, f"{self.model_name} v{version} already holds {stage}")
            # the first write: a server that refuses it (403) leaves everything as it was
            self.mlflow.set_alias(alias, version)
            left_staging = alias == PRODUCTION and self.versions.holders()[STAGING] == version
            if left_staging:
                self.mlflow.delete_alias(STAGING)
            self._mirror()
            event = self._event(alias, before, version, action, reason, override, approved_by)
            history.append(self.mlflow, event)
            if left_staging:
                history.append(
                    self.mlflow,
                    self._event(STAGING, version, None, "unstage", f"moved to {stage}"),
                )
            self._converge(alias, version)
        archived = f" (archived v{before})" if before is not None else ""
        note = f" [override: {reason}]" if override else ""
        if approved_by:
            note += f" (approved by {', '.join(approved_by)})"
        message = f"{_VERBS[action]} {self.model_name} v{version} -> {stage}{archived}{note}"
        return Move(event, message, archived=before)

    def _converge(self, alias: str, version: int) -> None:
        """After a move without a lock: if another mover set the alias after us, make the
        history end on the version the alias names (our event may have landed after theirs).
        """
        holder = self.versions.holders()[alias]
        if holder == version:
            return
        self._mirror()
        history.append(
            self.mlflow,
            self._event(
                alias, version, holder, "repair", f"another move set {alias} at the same time"
            ),
        )

    def _restore(self) -> None:
        """Put each alias back where the history last put it, and record that."""
        events = history.events_in(self.versions.model().tags or {})
        for alias in ALIASES:
            holder = self.versions.holders()[alias]
            recorded = rules.recorded_holder(events, alias)
            if recorded == holder:
                continue
            if recorded is None:
                self.mlflow.delete_alias(alias)
            else:
                self.mlflow.set_alias(alias, recorded)
            self._mirror()
            history.append(
                self.mlflow,
                self._event(
                    alias,
                    holder,
                    recorded,
                    "repair",
                    f"restored {label(recorded)}: @{alias} had been set to {label(holder)} "
                    "outside churnlab",
                ),
            )
        self._mirror()
