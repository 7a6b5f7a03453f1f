"""The model registry's stages: who holds staging and production, the rules to move, history.

Aliases (``@staging``, ``@production``) are the source of truth. Every move also mirrors the
legacy stage (``Staging`` / ``Production``, archiving the previous holder) so that
``models:/churn-model@production`` and ``models:/churn-model/Production`` name the same
version. Every move appends an event to a history kept as tags on the registered model, so
a team sharing a tracking server shares the history too.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import re
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from churnlab import store
from churnlab.errors import InputError, Refused, RegistryUnavailable

STAGING, PRODUCTION = "staging", "production"
ALIASES: dict[str, str] = {STAGING: "Staging", PRODUCTION: "Production"}
EVENT_PREFIX = "churnlab.event."
GATE_TAG = "churnlab.gate.verdict"
SMOKE_TAG = "churnlab.smoke.verdict"
MAX_REASON = 2000  # characters; an event is stored in one registered-model tag


@dataclass(frozen=True)
class Event:
    """One move of an alias: who moved which alias from which version to which, and why."""

    time: str
    actor: str
    alias: str
    from_version: int | None
    to_version: int | None
    action: str  # stage | promote | rollback | repair | unstage
    reason: str = ""
    override: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Move:
    """The result of a stage, promote or rollback: the event and the line to print."""

    event: Event
    message: str
    archived: int | None = None


def actor() -> str:
    """Who is acting: ``CHURNLAB_ACTOR``, ``GITHUB_ACTOR``, ``USER``, or the login name."""
    for key in ("CHURNLAB_ACTOR", "GITHUB_ACTOR", "USER", "USERNAME"):
        if os.environ.get(key):
            return os.environ[key]
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def parse_version(text: str | int, model_name: str) -> int:
    """Turn ``6``, ``"6"``, ``"v6"`` or ``"models:/<name>/6"`` into 6; refuse anything else."""
    if isinstance(text, int) and not isinstance(text, bool):
        number = text
    else:
        raw = str(text).strip()
        m = re.fullmatch(r"(?:models:/)?(?:(?P<name>[^/@]+)/)?v?(?P<num>\d+)", raw)
        if not m:
            raise InputError(f"version must be a positive whole number like 3, got {raw!r}")
        if m.group("name") and m.group("name") != model_name:
            raise InputError(
                f"version {raw!r} belongs to model {m.group('name')!r}, not {model_name!r}"
            )
        number = int(m.group("num"))
    if number < 1:
        raise InputError(f"version must be a positive whole number like 3, got {text!r}")
    return number


def _normal_alias(alias: str) -> str:
    key = str(alias).strip().lower()
    if key not in ALIASES:
        raise InputError(f"stage must be one of {list(ALIASES)}, got {alias!r}")
    return key


class Registry:
    """The stages of one registered model (``churn-model`` by default)."""

    def __init__(self, model_name: str = store.DEFAULT_MODEL_NAME, client=None) -> None:
        from mlflow.tracking import MlflowClient

        if client is None:
            store.configure()
            store.check_reachable()  # a server that does not answer fails in seconds
        self.model_name = model_name
        self.client = client or MlflowClient()

    # ------------------------------------------------------------------ reading
    def _call(self, fn, *args, **kwargs):
        """Call the client, turning network failures into one clear error."""
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            code = getattr(exc, "error_code", "")
            if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                raise
            text = str(exc)
            if "Max retries exceeded" in text or "Connection" in text or "timed out" in text:
                raise RegistryUnavailable(
                    f"cannot reach the MLflow tracking server at {store.display_uri()}"
                ) from None
            raise
        except OSError as exc:
            raise RegistryUnavailable(
                f"cannot reach the MLflow tracking server at {store.display_uri()} "
                f"({type(exc).__name__})"
            ) from None

    def model(self):
        """The registered model; a clear error when nothing was trained yet."""
        from mlflow.exceptions import MlflowException

        try:
            return self._call(self.client.get_registered_model, self.model_name)
        except MlflowException:
            raise InputError(
                f"no registered model {self.model_name!r} at {store.display_uri()}; "
                "run `churnlab train` first"
            ) from None

    def version(self, version: str | int):
        """The model version ``version``; refuse unknown, non-numeric or foreign versions."""
        from mlflow.exceptions import MlflowException

        number = parse_version(version, self.model_name)
        self.model()
        try:
            return self._call(self.client.get_model_version, self.model_name, str(number))
        except MlflowException:
            latest = self.latest_version()
            hint = f" (latest is {latest})" if latest else ""
            raise InputError(f"{self.model_name} has no version {number}{hint}") from None

    def latest_version(self) -> int | None:
        """The highest registered version number, or None."""
        versions = self._call(self.client.search_model_versions, f"name='{self.model_name}'")
        return max((int(v.version) for v in versions), default=None)

    def versions(self) -> list:
        """All versions of the model, oldest first."""
        found = self._call(self.client.search_model_versions, f"name='{self.model_name}'")
        return sorted(found, key=lambda v: int(v.version))

    def holder(self, alias: str) -> int | None:
        """The version the alias names, or None."""
        from mlflow.exceptions import MlflowException

        alias = _normal_alias(alias)
        try:
            mv = self._call(self.client.get_model_version_by_alias, self.model_name, alias)
        except MlflowException:
            return None
        return int(mv.version)

    def stage_holders(self, alias: str) -> list[int]:
        """Versions whose legacy stage is the alias's stage (normally zero or one)."""
        stage = ALIASES[_normal_alias(alias)]
        return [int(v.version) for v in self.versions() if v.current_stage == stage]

    def verdicts(self, version: int) -> dict[str, str]:
        """The gate and smoke verdicts recorded on a version."""
        tags = self.version(version).tags or {}
        return {"gate": tags.get(GATE_TAG, "pending"), "smoke": tags.get(SMOKE_TAG, "none")}

    def history(self) -> list[Event]:
        """Every recorded move, oldest first."""
        tags = self.model().tags or {}
        events = []
        for key in sorted(k for k in tags if k.startswith(EVENT_PREFIX)):
            try:
                events.append(Event(**json.loads(tags[key])))
            except (TypeError, ValueError):
                continue  # a tag we did not write
        return events

    def status(self) -> dict[str, Any]:
        """For staging and production: holder, mirrored stage, verdicts, and consistency."""
        events = self.history()
        out: dict[str, Any] = {"model_name": self.model_name, "stages": {}, "consistent": True}
        problems = []
        for alias, stage in ALIASES.items():
            holder = self.holder(alias)
            mirrored = self.stage_holders(alias)
            entry: dict[str, Any] = {"version": holder, "stage": stage, "stage_versions": mirrored}
            if holder is not None:
                mv = self.version(holder)
                tags = mv.tags or {}
                entry.update(
                    gate=tags.get(GATE_TAG, "pending"),
                    smoke=tags.get(SMOKE_TAG, "none"),
                    run_id=mv.run_id,
                )
            expected = [holder] if holder is not None else []
            if mirrored != expected:
                problems.append(
                    f"alias {alias} names {_v(holder)} but stage {stage} holds "
                    f"{', '.join(_v(v) for v in mirrored) or 'nothing'}"
                )
            last = [e for e in events if e.alias == alias]
            if (last[-1].to_version if last else None) != holder:
                problems.append(
                    f"history's last {alias} event names "
                    f"{_v(last[-1].to_version) if last else 'nothing'} but the alias names {_v(holder)}"
                )
            out["stages"][alias] = entry
        both = out["stages"][STAGING]["version"]
        if both is not None and both == out["stages"][PRODUCTION]["version"]:
            problems.insert(0, f"aliases staging and production both name {_v(both)}")
        out["consistent"] = not problems
        out["problems"] = problems
        return out

    def model_uri(self, version: int) -> str:
        """``models:/<name>/<version>``."""
        return f"models:/{self.model_name}/{int(version)}"

    def load_model(self, version: str | int):
        """The version's scikit-learn pipeline, loaded from the registry's artifact store."""
        import mlflow.sklearn

        number = int(self.version(version).version)
        return self._call(mlflow.sklearn.load_model, self.model_uri(number))

    def snapshot(self, version: str | int, kind: str = "evaluation"):
        """The data snapshot (training, evaluation, reference) a version was built from.

        Read from the version's run artifacts, so it works against a remote server too;
        its digest is checked against the one recorded on the version.
        """
        import tempfile
        from pathlib import Path

        import mlflow.artifacts

        from churnlab import data

        mv = self.version(version)
        digest = (mv.tags or {}).get(f"churnlab.data.{kind}")
        if not digest:
            raise InputError(f"{self.model_name} v{mv.version} records no {kind} snapshot")
        name = f"data/{kind}-{digest}.csv"
        with tempfile.TemporaryDirectory() as tmp:
            path = self._call(
                mlflow.artifacts.download_artifacts,
                run_id=mv.run_id,
                artifact_path=name,
                dst_path=tmp,
            )
            frame = data.load_csv(Path(path))
        if data.digest_of(frame) != digest:
            raise InputError(f"{name} of v{mv.version} does not match its recorded digest")
        return frame

    # ------------------------------------------------------------------ moving
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialize moves between processes sharing the embedded store (a file lock).

        Against a tracking server there is no lock to take; moves converge instead (see
        :meth:`mirror`), and events never overwrite each other.
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

    def _transition(self, version: int, stage: str, archive: bool) -> None:
        with warnings.catch_warnings():  # mirroring the legacy stage is deliberate
            warnings.simplefilter("ignore", FutureWarning)
            self._call(
                self.client.transition_model_version_stage,
                self.model_name,
                str(version),
                stage,
                archive_existing_versions=archive,
            )

    def mirror(self, attempts: int = 5) -> None:
        """Make each legacy stage hold exactly the version its alias names.

        Re-reads the aliases after each pass, so that two racing movers both end on the
        last alias written.
        """
        for _ in range(attempts):
            wanted = {alias: self.holder(alias) for alias in ALIASES}
            for alias, stage in ALIASES.items():
                holder = wanted[alias]
                current = self.stage_holders(alias)
                if holder is not None and current != [holder]:
                    self._transition(holder, stage, archive=True)
                for other in self.stage_holders(alias):
                    if other != holder:
                        self._transition(other, "Archived", archive=False)
            if {alias: self.holder(alias) for alias in ALIASES} == wanted:
                return

    def _record(self, event: Event) -> None:
        key = f"{EVENT_PREFIX}{time.time_ns():020d}.{uuid.uuid4().hex[:8]}"
        self._call(
            self.client.set_registered_model_tag,
            self.model_name,
            key,
            json.dumps(event.to_dict(), sort_keys=True),
        )

    def _event(self, alias, before, after, action, reason="", override=False) -> Event:
        return Event(
            time=datetime.now(UTC).isoformat(timespec="seconds"),
            actor=actor(),
            alias=alias,
            from_version=before,
            to_version=after,
            action=action,
            reason=reason,
            override=override,
        )

    def _move(self, alias: str, version: int, action: str, reason: str, override: bool) -> Move:
        stage = ALIASES[alias]
        if len(reason) > MAX_REASON:  # refused up front: the event must fit in its tag
            raise InputError(f"--reason is {len(reason)} characters; at most {MAX_REASON}")
        with self._lock():
            before = self.holder(alias)
            if before == version:
                event = self._event(alias, before, version, action, reason, override)
                return Move(event, f"{self.model_name} v{version} already holds {stage}")
            self._call(self.client.set_registered_model_alias, self.model_name, alias, str(version))
            left_staging = alias == PRODUCTION and self.holder(STAGING) == version
            if left_staging:
                self._call(self.client.delete_registered_model_alias, self.model_name, STAGING)
            self.mirror()
            event = self._event(alias, before, version, action, reason, override)
            self._record(event)
            if left_staging:
                self._record(self._event(STAGING, version, None, "unstage", f"moved to {stage}"))
            self._converge(alias, version)
        verb = {"stage": "Staged", "promote": "Promoted", "rollback": "Rolled back"}[action]
        archived = f" (archived v{before})" if before is not None else ""
        note = f" [override: {reason}]" if override else ""
        message = f"{verb} {self.model_name} v{version} -> {stage}{archived}{note}"
        return Move(event, message, archived=before)

    def _converge(self, alias: str, version: int) -> None:
        """After a move without a lock: if another mover set the alias after us, make the
        history end on the version the alias names (our event may have landed after theirs).
        """
        holder = self.holder(alias)
        if holder == version:
            return
        self.mirror()
        self._record(
            self._event(
                alias, version, holder, "repair", f"another move set {alias} at the same time"
            )
        )

    def _require(
        self, version: int, needs: tuple[str, ...], target: str, override: bool, reason: str
    ):
        if override and not reason.strip():
            raise InputError("an override needs a written reason: --override --reason TEXT")
        verdicts = self.verdicts(version)
        missing = [f"{n} is {verdicts[n]}" for n in needs if verdicts[n] != "passed"]
        if missing and not override:
            raise Refused(
                f"refused: {self.model_name} v{version} -> {target}: "
                f"{' and '.join(missing)} (needs passed); use --override --reason TEXT to force"
            )

    def stage(self, version: str | int, *, override: bool = False, reason: str = "") -> Move:
        """Move ``@staging`` to ``version``; needs a passed gate unless overridden."""
        number = int(self.version(version).version)
        if self.holder(PRODUCTION) == number:
            raise Refused(f"refused: {self.model_name} v{number} already holds Production")
        self._require(number, ("gate",), "Staging", override, reason)
        return self._move(STAGING, number, "stage", reason.strip(), override)

    def promote(self, version: str | int, *, override: bool = False, reason: str = "") -> Move:
        """Move ``@production`` to ``version``; needs a passed gate and smoke check unless
        overridden with a reason."""
        number = int(self.version(version).version)
        self._require(number, ("gate", "smoke"), "Production", override, reason)
        return self._move(PRODUCTION, number, "promote", reason.strip(), override)

    def previous_production(self) -> int | None:
        """The version production held before its current holder (rollbacks undo a step)."""
        stack: list[int] = []
        for e in self.history():
            if e.alias != PRODUCTION or e.to_version is None:
                continue
            if e.action == "rollback":
                if stack:
                    stack.pop()
                if not stack or stack[-1] != e.to_version:
                    stack.append(e.to_version)
            elif not stack or stack[-1] != e.to_version:
                stack.append(e.to_version)
        current = self.holder(PRODUCTION)
        while stack and stack[-1] == current:
            stack.pop()
        return stack[-1] if stack else None

    def rollback(self, *, reason: str = "") -> Move:
        """Return ``@production`` to the version that held it before the current one."""
        current = self.holder(PRODUCTION)
        if current is None:
            raise Refused(f"refused: {self.model_name} has no production version to roll back")
        previous = self.previous_production()
        if previous is None:
            raise Refused(
                f"refused: {self.model_name} v{current} is the first production version; "
                "there is nothing to roll back to"
            )
        self.version(previous)
        return self._move(PRODUCTION, previous, "rollback", reason.strip() or "rollback", False)

    def repair(self) -> list[str]:
        """Re-mirror stages from aliases and record any move the history missed."""
        fixed = []
        with self._lock():
            before = self.status()
            if not before["consistent"]:
                both = self.holder(PRODUCTION)
                if both is not None and self.holder(STAGING) == both:
                    # a promotion moved production but stopped before leaving staging
                    self._call(self.client.delete_registered_model_alias, self.model_name, STAGING)
                    self._record(self._event(STAGING, both, None, "unstage", "moved to Production"))
                self.mirror()
                events = self.history()
                for alias in ALIASES:
                    holder = self.holder(alias)
                    last = [e for e in events if e.alias == alias]
                    recorded = last[-1].to_version if last else None
                    if recorded != holder:
                        self._record(
                            self._event(alias, recorded, holder, "repair", "history caught up")
                        )
                fixed = before["problems"]
        return fixed


def _v(version: int | None) -> str:
    return "nothing" if version is None else f"v{version}"
