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

from churnlab import store, tags
from churnlab.errors import InputError, Refused, RegistryUnavailable

STAGING, PRODUCTION = "staging", "production"
ALIASES: dict[str, str] = {STAGING: "Staging", PRODUCTION: "Production"}
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


def parse_stage(text: str) -> str:
    """Turn ``staging`` / ``Production`` / `` production `` into the alias; refuse others."""
    key = str(text).strip().lower()
    if key not in ALIASES:
        raise InputError(f"stage must be one of {list(ALIASES)}, got {text!r}")
    return key


@dataclass(frozen=True)
class Evidence:
    """What a version carries: its run, verdicts, checks, data digests and metrics."""

    model_name: str
    version: int
    run_id: str
    description: str
    tags: dict[str, str]
    metrics: dict[str, float]

    @property
    def estimator(self) -> str | None:
        return self.tags.get(tags.ESTIMATOR)

    @property
    def gate(self) -> str:
        """The gate's verdict: pending, passed or failed."""
        return self.tags.get(tags.GATE_VERDICT, "pending")

    @property
    def smoke(self) -> str:
        """The smoke check's verdict: none, pending, passed or failed."""
        return self.tags.get(tags.SMOKE_VERDICT, "none")

    @property
    def gate_checks(self) -> dict[str, str]:
        """Each gate check's status, by check name."""
        found = tags.under(self.tags, tags.GATE_PREFIX)
        return {k: v for k, v in found.items() if k != "verdict"}

    @property
    def smoke_checks(self) -> dict[str, str]:
        """Each smoke check's status and each recorded figure, by name."""
        found = tags.under(self.tags, tags.SMOKE_PREFIX)
        return {k: v for k, v in found.items() if k != "verdict"}

    @property
    def data(self) -> dict[str, str]:
        """The digest of each data snapshot, by kind."""
        return tags.under(self.tags, tags.DATA_PREFIX)


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

        alias = parse_stage(alias)
        try:
            mv = self._call(self.client.get_model_version_by_alias, self.model_name, alias)
        except MlflowException:
            return None
        return int(mv.version)

    def stage_holders(self, alias: str) -> list[int]:
        """Versions whose legacy stage is the alias's stage (normally zero or one)."""
        stage = ALIASES[parse_stage(alias)]
        return [int(v.version) for v in self.versions() if v.current_stage == stage]

    def verdicts(self, version: int) -> dict[str, str]:
        """The gate and smoke verdicts recorded on a version."""
        found = self.version(version).tags or {}
        return {
            "gate": found.get(tags.GATE_VERDICT, "pending"),
            "smoke": found.get(tags.SMOKE_VERDICT, "none"),
        }

    def metrics(self, version: str | int) -> dict[str, float]:
        """The evaluation metrics logged on the version's run, sorted by name."""
        mv = self.version(version)
        run = self._call(self.client.get_run, mv.run_id)
        return dict(sorted(run.data.metrics.items()))

    def evidence(self, version: str | int, *, with_metrics: bool = True) -> Evidence:
        """Everything recorded on a version (one read of the version, one of its run)."""
        mv = self.version(version)
        metrics: dict[str, float] = {}
        if with_metrics:
            run = self._call(self.client.get_run, mv.run_id)
            metrics = dict(sorted(run.data.metrics.items()))
        return Evidence(
            model_name=self.model_name,
            version=int(mv.version),
            run_id=mv.run_id,
            description=mv.description or "",
            tags=dict(mv.tags or {}),
            metrics=metrics,
        )

    def model_info(self, version: str | int):
        """MLflow's ``ModelInfo`` of the version's logged model (signature, flavors)."""
        import mlflow.models

        number = int(self.version(version).version)
        return self._call(mlflow.models.get_model_info, self.model_uri(number))

    def download_artifact(self, run_id: str, path: str, dst: str) -> str:
        """Download one artifact of ``run_id`` into the folder ``dst``; return its local path."""
        import mlflow.artifacts

        return self._call(
            mlflow.artifacts.download_artifacts, run_id=run_id, artifact_path=path, dst_path=dst
        )

    def history(self) -> list[Event]:
        """Every recorded move, oldest first."""
        found = self.model().tags or {}
        events = []
        for key in sorted(k for k in found if k.startswith(tags.EVENT_PREFIX)):
            try:
                events.append(Event(**json.loads(found[key])))
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
                found = mv.tags or {}
                entry.update(
                    gate=found.get(tags.GATE_VERDICT, "pending"),
                    smoke=found.get(tags.SMOKE_VERDICT, "none"),
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

        from churnlab import data

        mv = self.version(version)
        digest = (mv.tags or {}).get(tags.data_tag(kind))
        if not digest:
            raise InputError(f"{self.model_name} v{mv.version} records no {kind} snapshot")
        name = f"data/{kind}-{digest}.csv"
        with tempfile.TemporaryDirectory() as tmp:
            frame = data.load_csv(Path(self.download_artifact(mv.run_id, name, tmp)))
        if data.digest_of(frame) != digest:
            raise InputError(f"{name} of v{mv.version} does not match its recorded digest")
        return frame

    # ------------------------------------------------------------------ recording evidence
    def register(
        self,
        source: str,
        run_id: str,
        *,
        model_id: str | None,
        extra_tags: dict[str, str],
        description: str,
    ) -> int:
        """Create a new version from a logged model (creating the registered model first)."""
        from mlflow.exceptions import MlflowException

        try:
            self._call(
                self.client.create_registered_model,
                self.model_name,
                description="Customer-churn classifier managed by churnlab.",
            )
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        mv = self._call(
            self.client.create_model_version,
            self.model_name,
            source=source,
            run_id=run_id,
            tags={**tags.INITIAL_VERDICTS, **extra_tags},
            description=description,
            await_creation_for=60,
            model_id=model_id,
        )
        return int(mv.version)

    def set_version_tags(self, version: str | int, values: dict[str, str]) -> None:
        """Set tags on a version, in the order given."""
        number = str(int(self.version(version).version))
        for key, value in values.items():
            self._call(self.client.set_model_version_tag, self.model_name, number, key, value)

    def record(self, kind: str, result) -> None:
        """Record a gate or smoke ``result`` on its version; the verdict tag is written last.

        The verdict first goes to ``pending``, then each check's status and each figure
        become tags and the whole result a JSON artifact (``<kind>/v<N>.json``) on the
        version's run: a version is never marked passed before its evidence is written.
        """
        if kind not in tags.VERDICT_TAGS:
            raise InputError(f"kind must be one of {list(tags.VERDICT_TAGS)}, got {kind!r}")
        verdict_tag, prefix = tags.VERDICT_TAGS[kind]
        mv = self.version(result.version)
        evidence = {verdict_tag: "pending"}
        evidence.update({prefix + c.name: c.status for c in result.checks})
        evidence.update(
            {prefix + k: str(v) for k, v in result.figures().items() if v is not None}
        )
        self.set_version_tags(mv.version, evidence)
        self._call(
            self.client.log_dict, mv.run_id, result.to_dict(), f"{kind}/v{int(mv.version)}.json"
        )
        self.set_version_tags(mv.version, {verdict_tag: result.verdict})

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
        key = f"{tags.EVENT_PREFIX}{time.time_ns():020d}.{uuid.uuid4().hex[:8]}"
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
