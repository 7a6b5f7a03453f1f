"""The model registry's stages: who holds staging and production, the rules to move, history.

Aliases (``@staging``, ``@production``) are the source of truth. Every move also mirrors the
legacy stage (``Staging`` / ``Production``, archiving the previous holder) so that
``models:/churn-model@production`` and ``models:/churn-model/Production`` name the same
version. Every move appends an event to a history kept as tags on the registered model, so
a team sharing a tracking server shares the history too.

On a server that authenticates (``mlflow server --app-name basic-auth``) the actor of every
event is the user the server logged in, never a declared name; a refusal by the server
(401/403) is one line naming who tried what (:class:`~churnlab.errors.PermissionDenied`).
With ``production_approvals`` set, a promotion needs that many approvals of the exact
version by people other than the promoter (four eyes).
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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from churnlab import store, tags
from churnlab.errors import InputError, PermissionDenied, Refused, RegistryUnavailable

STAGING, PRODUCTION = "staging", "production"
ALIASES: dict[str, str] = {STAGING: "Staging", PRODUCTION: "Production"}
MAX_REASON = 2000  # characters; an event is stored in one registered-model tag
#: how an actor was established: the server's login, or a name the user declared
SERVER, DECLARED = "server", "declared"


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
    actor_source: str = DECLARED  # server: the login the server checked; declared: a name
    approved_by: tuple[str, ...] = ()  # who approved the version a promotion moved to

    def to_dict(self) -> dict[str, Any]:
        """The stored form; ``actor_source`` and ``approved_by`` only when they say something,
        so a declared event keeps the shape every earlier churnlab reads."""
        out = asdict(self)
        if self.actor_source == DECLARED:
            del out["actor_source"]
        if self.approved_by:
            out["approved_by"] = list(self.approved_by)
        else:
            del out["approved_by"]
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Event:
        values = dict(values)
        values["approved_by"] = tuple(values.get("approved_by") or ())
        return cls(**values)


@dataclass(frozen=True)
class Approval:
    """One person's approval of one exact version for production (four eyes)."""

    time: str
    actor: str
    version: int
    reason: str
    actor_source: str = DECLARED

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
    """What a version carries: its run, verdicts, checks, data digests and metrics.

    ``metrics``, ``params`` and ``run_tags`` come from the version's run (empty when read
    without it).
    """

    model_name: str
    version: int
    run_id: str
    description: str
    tags: dict[str, str]
    metrics: dict[str, float]
    params: dict[str, str] = field(default_factory=dict)
    run_tags: dict[str, str] = field(default_factory=dict)

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
    """The stages of one registered model (``churn-model`` by default).

    ``production_approvals``: approvals a promotion needs (the policy's setting; a model
    tag ``churnlab.policy.production_approvals`` set by a teacher can only raise it).
    """

    def __init__(
        self,
        model_name: str | None = None,
        client=None,
        *,
        production_approvals: int = 0,
    ) -> None:
        from mlflow.tracking import MlflowClient

        if client is None:
            store.configure()
            store.check_reachable()  # a server that does not answer fails in seconds
        self.model_name = model_name or store.model_name()
        self.client = client or MlflowClient()
        self.production_approvals = int(production_approvals)
        self._login: str | None = None  # the server's login; "" when it names none
        self._doing: str | None = None  # what the calls are for (None: read the endpoint)

    # ------------------------------------------------------------------ who is acting
    def identity(self) -> tuple[str, str]:
        """``(actor, source)``: the server's login (source ``server``) when the server
        authenticates, else the declared :func:`actor` (source ``declared``)."""
        if self._login is None:  # ask the server once per registry object
            self._login = (store.authenticated_user() if store.is_remote() else None) or ""
        return (self._login, SERVER) if self._login else (actor(), DECLARED)

    def checks_logins(self) -> bool:
        """True when the server names who acts (its login), so no one can act as another."""
        return self.identity()[1] == SERVER

    @contextlib.contextmanager
    def _attempt(self, what: str | None) -> Iterator[None]:
        """Name what the calls inside are for, so that a refusal says it."""
        before, self._doing = self._doing, what
        try:
            yield
        finally:
            self._doing = before

    def _denied(self, exc: BaseException) -> PermissionDenied:
        """The one line for a 403: what the step was doing (:meth:`_attempt`), or else what
        the refused endpoint does (:data:`churnlab.store.ENDPOINT_VERBS`)."""
        who = self._login or store.login_name() or actor()
        if self._doing is None:
            return store.refusal(exc, self.model_name, who)
        return PermissionDenied(f"permission denied: {who} may not {self._doing}")

    # ------------------------------------------------------------------ reading
    def _call(self, fn, *args, **kwargs):
        """Call the client, turning network failures and refusals into one clear error."""
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except (MlflowException, OSError) as exc:
            known = store.failure(exc)  # a refused or deleted login, a failing server
            if known is not None:
                raise known from None
            if store.http_status(exc) == 403:
                raise self._denied(exc) from None
            if isinstance(exc, OSError):  # requests' errors (artifact uploads) included
                raise RegistryUnavailable(
                    f"cannot reach the MLflow tracking server at {store.display_uri()} "
                    f"({type(exc).__name__})"
                ) from None
            code = getattr(exc, "error_code", "")
            if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                raise
            text = str(exc)
            if "Max retries exceeded" in text or "Connection" in text or "timed out" in text:
                raise RegistryUnavailable(
                    f"cannot reach the MLflow tracking server at {store.display_uri()}"
                ) from None
            raise

    def _write(self, fn, *args, **kwargs):
        """:meth:`_call` for a write, which waits for a busy server
        (:func:`store.patient_writes`) rather than being resent and done twice."""
        with store.patient_writes():
            return self._call(fn, *args, **kwargs)

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
        try:
            return self._call(self.client.get_model_version, self.model_name, str(number))
        except MlflowException:
            self.model()  # no model at all: say so
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
        params: dict[str, str] = {}
        run_tags: dict[str, str] = {}
        if with_metrics:
            run = self._call(self.client.get_run, mv.run_id)
            metrics = dict(sorted(run.data.metrics.items()))
            params, run_tags = dict(run.data.params), dict(run.data.tags)
        return Evidence(
            model_name=self.model_name,
            version=int(mv.version),
            run_id=mv.run_id,
            description=mv.description or "",
            tags=dict(mv.tags or {}),
            metrics=metrics,
            params=params,
            run_tags=run_tags,
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

    def recorded(self, kind: str, version: str | int) -> dict[str, Any] | None:
        """The ``kind`` result (gate or smoke) last recorded on ``version``, as written to its
        run (``<kind>/v<N>.json``), or None when none was recorded."""
        import tempfile
        from pathlib import Path

        from mlflow.exceptions import MlflowException

        if kind not in tags.VERDICT_TAGS:
            raise InputError(f"kind must be one of {list(tags.VERDICT_TAGS)}, got {kind!r}")
        mv = self.version(version)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.download_artifact(mv.run_id, f"{kind}/v{mv.version}.json", tmp)
            except (MlflowException, OSError):
                return None
            try:
                found = json.loads(Path(path).read_text(encoding="utf-8"))
            except ValueError:
                return None
        return found if isinstance(found, dict) else None

    def _tagged(self, prefix: str, found: dict[str, str] | None = None) -> list[tuple[str, dict]]:
        """The JSON records under ``prefix`` on the registered model, by time (their key)."""
        found = (self.model().tags or {}) if found is None else found
        out = []
        for key in sorted(k for k in found if k.startswith(prefix)):
            try:
                value = json.loads(found[key])
            except ValueError:
                continue  # a tag we did not write
            if isinstance(value, dict):
                out.append((key[len(prefix) :], value))
        return out

    def history(self) -> list[Event]:
        """Every recorded move, oldest first (old events read as declared)."""
        events = []
        for _, value in self._tagged(tags.EVENT_PREFIX):
            try:
                events.append(Event.from_dict(value))
            except TypeError:
                continue  # a tag we did not write
        return events

    def approvals(self, version: int | None = None) -> list[Approval]:
        """Every recorded approval (of ``version`` only, when given), oldest first."""
        found = []
        for _, value in self._tagged(tags.APPROVAL_PREFIX):
            try:
                approval = Approval(**value)
            except TypeError:
                continue
            if version is None or approval.version == int(version):
                found.append(approval)
        return found

    def timeline(self) -> list[dict[str, Any]]:
        """Moves and approvals as plain dicts, in the order they were recorded."""
        found = self.model().tags or {}
        merged = [
            (key, Event.from_dict(value).to_dict())
            for key, value in self._tagged(tags.EVENT_PREFIX, found)
            if _is_record(Event.from_dict, value)
        ]
        merged += [
            (key, {"action": "approve", "alias": PRODUCTION, **Approval(**value).to_dict()})
            for key, value in self._tagged(tags.APPROVAL_PREFIX, found)
            if _is_record(lambda v: Approval(**v), value)
        ]
        return [record for _, record in sorted(merged, key=lambda kv: kv[0])]

    def required_approvals(self) -> int:
        """Approvals a promotion needs: the policy's, or the model's floor if higher."""
        floor = (self.model().tags or {}).get(tags.REQUIRED_APPROVALS, "0")
        try:
            return max(self.production_approvals, int(floor))
        except ValueError:
            return self.production_approvals

    def missing_approvals(self, version: str | int) -> int:
        """How many more approvals of ``version`` a promotion by the current user needs."""
        promoter, _ = self.identity()
        have = len(self.approvers(int(self.version(version).version), promoter))
        return max(0, self.required_approvals() - have)

    def approvers(self, version: int, promoter: str | None) -> list[str]:
        """Distinct people who approved ``version``, the promoter left out (four eyes)."""
        names = {a.actor for a in self.approvals(version)}
        names.discard(promoter)
        return sorted(names)

    def status(self) -> dict[str, Any]:
        """For staging and production: holder, mirrored stage, verdicts, approvals, and
        consistency: every alias must be where a recorded event put it, and production's
        holder must carry the approvals the policy requires."""
        events = self.history()
        needed = self.required_approvals()
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
                    approvals=sorted({a.actor for a in self.approvals(holder)}),
                )
            if alias == PRODUCTION:
                entry["approvals_required"] = needed
            expected = [holder] if holder is not None else []
            if mirrored != expected:
                problems.append(
                    f"alias {alias} names {_v(holder)} but stage {stage} holds "
                    f"{', '.join(_v(v) for v in mirrored) or 'nothing'}"
                )
            last = [e for e in events if e.alias == alias]
            recorded = last[-1].to_version if last else None
            if recorded != holder:
                problems.append(
                    f"alias {alias} names {_v(holder)} but no recorded event put it there "
                    f"(the history's last {alias} move names {_v(recorded)}): moved outside "
                    "churnlab, or a move was interrupted"
                )
            if alias == PRODUCTION and holder is not None and needed:
                moves = last if recorded == holder else []
                missing = self._missing_approval(holder, moves, needed)
                entry["approval_missing"] = missing
                if missing:
                    problems.append(missing)
            out["stages"][alias] = entry
        both = out["stages"][STAGING]["version"]
        if both is not None and both == out["stages"][PRODUCTION]["version"]:
            problems.insert(0, f"aliases staging and production both name {_v(both)}")
        out["consistent"] = not problems
        out["problems"] = problems
        return out

    def _missing_approval(self, holder: int, moves: list[Event], needed: int) -> str | None:
        """What production's holder lacks under four eyes, or None. A recorded override or
        rollback needs no approval; a move nobody recorded has no known promoter."""
        move = moves[-1] if moves else None
        if move is not None and (move.override or move.action == "rollback"):
            return None
        promoter = move.actor if move is not None and move.action == "promote" else None
        have = self.approvers(holder, promoter)
        if len(have) >= needed:
            return None
        by = f" by {promoter}" if promoter else ""
        return (
            f"production v{holder} was moved there{by} with {len(have)} of the {needed} "
            f"approval(s) the policy requires: approve it (`churnlab approve {holder} "
            "--reason TEXT`, by someone else) or roll back"
        )

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

        who, _ = self.identity()
        with self._attempt(f"register a version of {self.model_name}"):
            try:
                self._write(
                    self.client.create_registered_model,
                    self.model_name,
                    description="Customer-churn classifier managed by churnlab.",
                )
            except MlflowException as exc:
                if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise
            mv = self._write(
                self.client.create_model_version,
                self.model_name,
                source=source,
                run_id=run_id,
                tags={**tags.INITIAL_VERDICTS, tags.REGISTERED_BY: who, **extra_tags},
                description=description,
                await_creation_for=60,
                model_id=model_id,
            )
        return int(mv.version)

    def log_run(self, name: str, run_tags: dict[str, str], artifacts: dict[str, Any]) -> str:
        """Log a run of its own (not a version's) to the run's experiment: ``run_tags`` and
        ``artifacts`` (``{"folder/name": local path}``); return its id. A run that fails
        half-way is deleted, so none is left half-written."""
        import shutil
        import tempfile
        from pathlib import Path

        experiment = store.ensure_experiment()
        with self._attempt(f"log a run to experiment {store.experiment_name()}"):
            run = self._write(
                self.client.create_run, experiment, run_name=name, tags=dict(run_tags)
            )
            run_id = run.info.run_id
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    for target, source in artifacts.items():
                        folder, _, file_name = target.rpartition("/")
                        staged = Path(tmp) / (folder or "_") / file_name
                        staged.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(source, staged)
                        self._write(self.client.log_artifact, run_id, str(staged), folder or None)
                self._write(self.client.set_terminated, run_id)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.client.delete_run(run_id)
                raise
        return run_id

    def latest_run(self, experiment: str, tag: str):
        """The newest run of ``experiment`` that carries ``tag`` (MLflow's ``Run``: a hand-in
        is the run of a ``churnlab handin``), or None when there is no such experiment or run."""
        found = self._call(self.client.get_experiment_by_name, experiment)
        if found is None:
            return None
        runs = self._call(
            self.client.search_runs,
            [found.experiment_id],
            filter_string=f"tags.`{tag}` LIKE '%'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def set_version_tags(self, version: str | int, values: dict[str, str]) -> None:
        """Set tags on a version, in the order given."""
        self._set_tags(int(self.version(version).version), values)

    def _set_tags(self, number: int, values: dict[str, str]) -> None:
        """Set tags on version ``number``, already read from the registry."""
        with self._attempt(f"record evidence on {self.model_name} v{number}"):
            for key, value in values.items():
                self._write(
                    self.client.set_model_version_tag, self.model_name, str(number), key, value
                )

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
        number = int(mv.version)
        evidence = {verdict_tag: "pending"}
        evidence.update({prefix + c.name: c.status for c in result.checks})
        evidence.update({prefix + k: str(v) for k, v in result.figures().items() if v is not None})
        self._set_tags(number, evidence)
        with self._attempt(f"record evidence on the run of {self.model_name} v{number}"):
            self._write(self.client.log_dict, mv.run_id, result.to_dict(), f"{kind}/v{number}.json")
        self._set_tags(number, {verdict_tag: result.verdict})

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
            self._write(
                self.client.transition_model_version_stage,
                self.model_name,
                str(version),
                stage,
                archive_existing_versions=archive,
            )

    def _holders(self) -> dict[str, int | None]:
        """Each alias's version, from one read of the registered model."""
        found = getattr(self.model(), "aliases", None) or {}
        return {alias: int(found[alias]) if alias in found else None for alias in ALIASES}

    def _stage_map(self) -> dict[str, list[int]]:
        """For each alias, the versions whose legacy stage is its stage (one search)."""
        versions = self.versions()
        return {
            alias: [int(v.version) for v in versions if v.current_stage == stage]
            for alias, stage in ALIASES.items()
        }

    def mirror(self, attempts: int = 5) -> None:
        """Make each legacy stage hold exactly the version its alias names.

        Re-reads the aliases after each pass, so that two racing movers both end on the
        last alias written.
        """
        for _ in range(attempts):
            wanted = self._holders()
            stages = self._stage_map()
            for alias, stage in ALIASES.items():
                holder = wanted[alias]
                if holder is not None and stages[alias] != [holder]:
                    self._transition(holder, stage, archive=True)
                    stages = self._stage_map()
                for other in stages[alias]:
                    if other != holder:
                        self._transition(other, "Archived", archive=False)
            if self._holders() == wanted:
                return

    def _record(self, event: Event | Approval, prefix: str = tags.EVENT_PREFIX) -> None:
        key = f"{prefix}{time.time_ns():020d}.{uuid.uuid4().hex[:8]}"
        self._write(
            self.client.set_registered_model_tag,
            self.model_name,
            key,
            json.dumps(event.to_dict(), sort_keys=True),
        )

    def _event(
        self, alias, before, after, action, reason="", override=False, approved_by=()
    ) -> Event:
        who, source = self.identity()
        return Event(
            time=_now(),
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
        if len(reason) > MAX_REASON:  # refused up front: the event must fit in its tag
            raise InputError(
                f"--reason is {len(reason)} characters; at most {MAX_REASON}",
                in_python=f"reason is {len(reason)} characters; at most {MAX_REASON}",
            )
        self.identity()  # a wrong login fails here, before anything is written
        with self._lock(), self._attempt(f"move @{alias} of {self.model_name}"):
            before = self.holder(alias)
            if before == version:
                if self.identity()[1] == SERVER:  # a no-op still needs EDIT on the model:
                    # setting the alias again changes nothing, and a 403 refuses it
                    self._write(
                        self.client.set_registered_model_alias, self.model_name, alias, str(version)
                    )
                event = self._event(alias, before, version, action, reason, override)
                return Move(event, f"{self.model_name} v{version} already holds {stage}")
            # the first write: a server that refuses it (403) leaves everything as it was
            self._write(
                self.client.set_registered_model_alias, self.model_name, alias, str(version)
            )
            left_staging = alias == PRODUCTION and self.holder(STAGING) == version
            if left_staging:
                self._write(self.client.delete_registered_model_alias, self.model_name, STAGING)
            self.mirror()
            event = self._event(alias, before, version, action, reason, override, approved_by)
            self._record(event)
            if left_staging:
                self._record(self._event(STAGING, version, None, "unstage", f"moved to {stage}"))
            self._converge(alias, version)
        verb = {"stage": "Staged", "promote": "Promoted", "rollback": "Rolled back"}[action]
        archived = f" (archived v{before})" if before is not None else ""
        note = f" [override: {reason}]" if override else ""
        if approved_by:
            note += f" (approved by {', '.join(approved_by)})"
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
            raise InputError(
                "an override needs a written reason: --override --reason TEXT",
                in_python='an override needs a written reason: override=True, reason="why"',
            )
        verdicts = self.verdicts(version)
        missing = [f"{n} is {verdicts[n]}" for n in needs if verdicts[n] != "passed"]
        if missing and not override:
            refused = (
                f"refused: {self.model_name} v{version} -> {target}: "
                f"{' and '.join(missing)} (needs passed)"
            )
            raise Refused(
                f"{refused}; use --override --reason TEXT to force",
                in_python=f'{refused}; pass override=True, reason="why" to force',
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
        promoter, _ = self.identity()
        needed = self.required_approvals()
        approved = tuple(self.approvers(number, promoter))
        if len(approved) < needed and not override:
            others = f" ({', '.join(approved)})" if approved else ""
            refused = (
                f"refused: {self.model_name} v{number} -> Production: needs {needed} "
                f"approval(s) of v{number} by someone other than {promoter}, has "
                f"{len(approved)}{others}"
            )
            raise Refused(
                f"{refused}; a reviewer runs `churnlab approve {number} --reason TEXT`, or use "
                "--override --reason TEXT",
                in_python=f"{refused}; a reviewer approves it (registry.approve({number}, "
                'reason="why")), or pass override=True, reason="why"',
            )
        return self._move(PRODUCTION, number, "promote", reason.strip(), override, approved)

    def approve(self, version: str | int, *, reason: str) -> Approval:
        """Record the current user's approval of ``version`` for production.

        Refused to whoever registered the version (and it never counts for whoever
        promotes it): four eyes. Needs write access to the model on an authenticated
        server (a 403 is :class:`PermissionDenied`).
        """
        mv = self.version(version)
        number = int(mv.version)
        reason = reason.strip()
        if not reason:
            raise InputError(
                "an approval needs a written reason: --reason TEXT",
                in_python='an approval needs a written reason: reason="why"',
            )
        if len(reason) > MAX_REASON:
            raise InputError(
                f"--reason is {len(reason)} characters; at most {MAX_REASON}",
                in_python=f"reason is {len(reason)} characters; at most {MAX_REASON}",
            )
        who, source = self.identity()
        author = (mv.tags or {}).get(tags.REGISTERED_BY)
        if author and author == who:
            raise Refused(
                f"refused: {who} may not approve {self.model_name} v{number}: {who} "
                "registered it; an approval must come from someone else (four eyes)"
            )
        approval = Approval(_now(), who, number, reason, source)
        with self._attempt(f"approve v{number} of {self.model_name}"):
            self._record(approval, tags.APPROVAL_PREFIX)
        return approval

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

    def repair(self, *, restore: bool = False) -> list[str]:
        """Re-mirror stages from aliases and record any move the history missed.

        With ``restore``, an alias that no recorded event put where it is goes back to the
        last recorded holder instead (undoing a move made outside churnlab), and that is
        recorded. Approvals a production holder lacks are reported, not repaired.
        """
        self.identity()
        with self._lock(), self._attempt(f"repair the stages of {self.model_name}"):
            before = self.status()
            unapproved = before["stages"][PRODUCTION].get("approval_missing")
            problems = [p for p in before["problems"] if p != unapproved]
            if not problems:
                return []
            if restore:
                self._restore()
                return problems
            both = self.holder(PRODUCTION)
            if both is not None and self.holder(STAGING) == both:
                # a promotion moved production but stopped before leaving staging
                self._write(self.client.delete_registered_model_alias, self.model_name, STAGING)
                self._record(self._event(STAGING, both, None, "unstage", "moved to Production"))
            self.mirror()
            events = self.history()
            for alias in ALIASES:
                holder = self.holder(alias)
                last = [e for e in events if e.alias == alias]
                recorded = last[-1].to_version if last else None
                if recorded != holder:
                    reason = "recorded a move made outside churnlab (or an interrupted one)"
                    self._record(self._event(alias, recorded, holder, "repair", reason))
        return problems

    def _restore(self) -> None:
        """Put each alias back where the history last put it, and record that."""
        events = self.history()
        for alias in ALIASES:
            holder = self.holder(alias)
            last = [e for e in events if e.alias == alias]
            recorded = last[-1].to_version if last else None
            if recorded == holder:
                continue
            if recorded is None:
                self._write(self.client.delete_registered_model_alias, self.model_name, alias)
            else:
                self._write(
                    self.client.set_registered_model_alias, self.model_name, alias, str(recorded)
                )
            self.mirror()
            self._record(
                self._event(
                    alias,
                    holder,
                    recorded,
                    "repair",
                    f"restored {_v(recorded)}: @{alias} had been set to {_v(holder)} "
                    "outside churnlab",
                )
            )
        self.mirror()


def _v(version: int | None) -> str:
    return "nothing" if version is None else f"v{version}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _is_record(make, value: dict) -> bool:
    try:
        make(value)
    except TypeError:
        return False
    return True
