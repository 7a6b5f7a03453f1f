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

:class:`Registry` is the one public name: a front whose every method is one line into the
module that does the job. From the bottom up: :mod:`~churnlab.registry.records` (events,
approvals, evidence, parsers), :mod:`~churnlab.registry.rules` (pure rules),
:mod:`~churnlab.registry.boundary` (the one door to MLflow, where its errors are
translated), :mod:`~churnlab.registry.history` (moves and approvals kept as tags),
:mod:`~churnlab.registry.versions` (a version and its evidence),
:mod:`~churnlab.registry.tracking` (a batch's run) and :mod:`~churnlab.registry.moves`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from churnlab import store
from churnlab.registry import rules
from churnlab.registry.boundary import Boundary
from churnlab.registry.history import approvals_in, events_in, timeline_in
from churnlab.registry.moves import Moves
from churnlab.registry.records import (
    ALIASES,
    DECLARED,
    MAX_REASON,
    PRODUCTION,
    SERVER,
    STAGING,
    Approval,
    Event,
    Evidence,
    Move,
    actor,
    parse_stage,
    parse_version,
)
from churnlab.registry.tracking import RecordedRun, logged_run, recorded_run
from churnlab.registry.versions import Versions, model_uri

__all__ = [
    "ALIASES",
    "DECLARED",
    "MAX_REASON",
    "PRODUCTION",
    "SERVER",
    "STAGING",
    "Approval",
    "Event",
    "Evidence",
    "Move",
    "RecordedRun",
    "Registry",
    "actor",
    "parse_stage",
    "parse_version",
]


class Registry:
    """The stages of one registered model (by default the run's: :func:`store.model_name`).

    ``production_approvals``: approvals a promotion needs (the policy's setting; a model
    tag ``churnlab.policy.production_approvals`` set by a teacher can only raise it).
    ``client``: the ``MlflowClient`` to use (default: one on the churnlab store, checked to
    answer first).
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
        model_name = model_name or store.model_name()  # the run's, or a login's own
        self.model_name = model_name
        self.client = client or MlflowClient()
        self._mlflow = Boundary(model_name, self.client)
        self._versions = Versions(self._mlflow)
        self._moves = Moves(self._mlflow, self._versions, production_approvals)

    @property
    def production_approvals(self) -> int:
        return self._moves.approvals

    # ------------------------------------------------------------------ reading
    def model(self):
        """The registered model; a clear error when nothing was trained yet."""
        return self._versions.model()

    def exists(self) -> bool:
        """True when the registered model exists (something was registered)."""
        return self._versions.exists()

    def identity(self) -> tuple[str, str]:
        """``(actor, source)``: the server's login (source ``server``) when it authenticates,
        else the declared name (source ``declared``)."""
        return self._mlflow.identity()

    def checks_logins(self) -> bool:
        """True when the server names who acts (its login), so nobody can act as another."""
        return self.identity()[1] == SERVER

    def version(self, version: str | int):
        """The model version ``version``; refuse unknown, non-numeric or foreign versions."""
        return self._versions.version(version)

    def latest_version(self) -> int | None:
        """The highest registered version number, or None."""
        return self._versions.latest_version()

    def versions(self) -> list:
        """All versions of the model, oldest first."""
        return self._versions.versions()

    def holder(self, alias: str) -> int | None:
        """The version the alias names, or None."""
        return self._versions.holders()[parse_stage(alias)]

    def verdicts(self, version: int) -> dict[str, str]:
        """The gate and smoke verdicts recorded on a version."""
        return self._versions.verdicts(version)

    def evidence(self, version: str | int, *, with_metrics: bool = True) -> Evidence:
        """Everything recorded on a version (one read of the version, one of its run)."""
        return self._versions.evidence(version, with_metrics=with_metrics)

    def model_info(self, version: str | int):
        """MLflow's ``ModelInfo`` of the version's logged model (signature, flavors)."""
        return self._versions.model_info(version)

    def recorded(self, kind: str, version: str | int) -> dict[str, Any] | None:
        """The gate or smoke result last recorded on ``version`` (as ``record`` wrote it to
        its run), or None."""
        return self._versions.recorded(kind, version)

    def download_artifact(self, run_id: str, path: str, dst: str) -> str:
        """Download one artifact of ``run_id`` into the folder ``dst``; return its local path."""
        return self._mlflow.download(run_id, path, dst)

    def latest_run(self, experiment: str, tag: str):
        """The newest run of ``experiment`` that carries ``tag`` (MLflow's ``Run``: a hand-in
        is the run of a ``churnlab handin``), or None when there is no such experiment or run."""
        return self._mlflow.latest_run(experiment, tag)

    def model_uri(self, version: int) -> str:
        """``models:/<name>/<version>``."""
        return model_uri(self.model_name, version)

    def load_model(self, version: str | int):
        """The version's scikit-learn pipeline, loaded from the registry's artifact store."""
        return self._versions.load_model(version)

    def snapshot(self, version: str | int, kind: str = "evaluation"):
        """The data snapshot (training, evaluation, reference) a version was built from, read
        from its run's artifacts and checked against the digest recorded on the version."""
        return self._versions.snapshot(version, kind)

    # ------------------------------------------------------------------ history and approvals
    def history(self) -> list[Event]:
        """Every recorded move, oldest first (old events read as declared)."""
        return events_in(self.model().tags or {})

    def approvals(self, version: int | None = None) -> list[Approval]:
        """Every recorded approval (of ``version`` only, when given), oldest first."""
        return approvals_in(self.model().tags or {}, version)

    def approvers(self, version: int, promoter: str | None) -> list[str]:
        """Distinct people who approved ``version``, the promoter left out (four eyes)."""
        return rules.approvers(self.approvals(version), promoter)

    def missing_approvals(self, version: str | int) -> int:
        """How many more approvals of ``version`` a promotion by the current user needs."""
        number = int(self.version(version).version)
        found = self.model().tags or {}
        needed = rules.required_approvals(self.production_approvals, found)
        promoter, _ = self.identity()
        return max(0, needed - len(rules.approvers(approvals_in(found, number), promoter)))

    def timeline(self) -> list[dict[str, Any]]:
        """Moves and approvals as plain dicts, in the order they were recorded."""
        return timeline_in(self.model().tags or {})

    def status(self) -> dict[str, Any]:
        """For staging and production: holder, mirrored stage, verdicts, approvals, and
        consistency: every alias must be where a recorded event put it, and production's
        holder must carry the approvals the policy requires."""
        return self._moves.status()

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
        return self._versions.register(
            source, run_id, model_id=model_id, extra_tags=extra_tags, description=description
        )

    def set_version_tags(self, version: str | int, values: dict[str, str]) -> None:
        """Set tags on a version, in the order given."""
        self._versions.set_version_tags(version, values)

    def record(self, kind: str, result) -> None:
        """Record a gate or smoke ``result`` on its version; the verdict tag is written last
        (``pending`` first), the whole result as the run's artifact ``<kind>/v<N>.json``."""
        self._versions.record(kind, result)

    def recorded_run(
        self, experiment: str, *, name: str, source: str, params: dict[str, Any]
    ) -> AbstractContextManager[RecordedRun]:
        """An MLflow run in ``experiment`` for a ``with`` block (a batch's), recorded as the
        logged-in user; its status says how the block ended."""
        return recorded_run(self._mlflow, experiment, name=name, source=source, params=params)

    def log_run(self, name: str, run_tags: dict[str, str], artifacts: dict[str, Any]) -> str:
        """A finished run of its own in the run's experiment (a hand-in): ``run_tags`` and
        ``artifacts`` (``{"folder/name": local file}``), recorded as the logged-in user;
        deleted if it fails half-way. Returns its id."""
        return logged_run(
            self._mlflow,
            store.experiment_name(),
            name=name,
            run_tags=run_tags,
            artifacts=artifacts,
        )

    # ------------------------------------------------------------------ moving
    def stage(self, version: str | int, *, override: bool = False, reason: str = "") -> Move:
        """Move ``@staging`` to ``version``; needs a passed gate unless overridden."""
        return self._moves.stage(version, override=override, reason=reason)

    def promote(self, version: str | int, *, override: bool = False, reason: str = "") -> Move:
        """Move ``@production`` to ``version``; needs a passed gate and smoke check unless
        overridden with a reason."""
        return self._moves.promote(version, override=override, reason=reason)

    def approve(self, version: str | int, *, reason: str) -> Approval:
        """Record the current user's approval of ``version`` for production.

        Refused to whoever registered the version (and it never counts for whoever
        promotes it): four eyes. Needs write access to the model on an authenticated
        server (a 403 is :class:`PermissionDenied`).
        """
        return self._moves.approve(version, reason=reason)

    def rollback(self, *, reason: str = "") -> Move:
        """Return ``@production`` to the version that held it before the current one."""
        return self._moves.rollback(reason=reason)

    def repair(self, *, restore: bool = False) -> list[str]:
        """Re-mirror stages from aliases and record any move the history missed.

        With ``restore``, an alias that no recorded event put where it is goes back to the
        last recorded holder instead (undoing a move made outside churnlab), and that is
        recorded. Approvals a production holder lacks are reported, not repaired.
        """
        return self._moves.repair(restore=restore)
