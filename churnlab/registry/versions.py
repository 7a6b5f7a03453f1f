"""A registered model's versions and their evidence: read, registered, and recorded on.

The one reader and writer of what a version carries (verdicts, checks, data digests, its
run's metrics and artifacts), so every step records its evidence the same way.
"""

from __future__ import annotations

from typing import Any

from churnlab import store, tags
from churnlab.errors import InputError
from churnlab.registry import rules
from churnlab.registry.boundary import Boundary
from churnlab.registry.records import Evidence, parse_version, verdicts_of


def model_uri(model_name: str, version: int) -> str:
    """``models:/<name>/<version>``."""
    return f"models:/{model_name}/{int(version)}"


class Versions:
    """The versions of one registered model, read and written through its :class:`Boundary`."""

    def __init__(self, mlflow: Boundary) -> None:
        self.mlflow = mlflow
        self.model_name = mlflow.model_name

    # ------------------------------------------------------------------ reading
    def model(self):
        """The registered model; a clear error when nothing was trained yet."""
        from mlflow.exceptions import MlflowException

        try:
            return self.mlflow.registered_model()
        except MlflowException:
            raise InputError(
                f"no registered model {self.model_name!r} at {store.display_uri()}; "
                "run `churnlab train` first"
            ) from None

    def exists(self) -> bool:
        """True when the registered model exists (something was registered)."""
        from mlflow.exceptions import MlflowException

        try:
            self.mlflow.registered_model()
        except MlflowException:
            return False
        return True

    def version(self, version: str | int):
        """The model version ``version``; refuse unknown, non-numeric or foreign versions."""
        from mlflow.exceptions import MlflowException

        number = parse_version(version, self.model_name)
        try:
            return self.mlflow.model_version(number)
        except MlflowException:
            self.model()  # no model at all: say so
            latest = self.latest_version()
            hint = f" (latest is {latest})" if latest else ""
            raise InputError(f"{self.model_name} has no version {number}{hint}") from None

    def latest_version(self) -> int | None:
        """The highest registered version number, or None."""
        return max((int(v.version) for v in self.mlflow.search_versions()), default=None)

    def versions(self) -> list:
        """All versions of the model, oldest first."""
        return sorted(self.mlflow.search_versions(), key=lambda v: int(v.version))

    def holders(self) -> dict[str, int | None]:
        """Each alias's version, from one read of the registered model (None: unset, or no
        model yet)."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.mlflow.registered_model()
        except MlflowException:
            return rules.holders(None)
        return rules.holders(getattr(found, "aliases", None))

    def verdicts(self, version: str | int) -> dict[str, str]:
        """The gate and smoke verdicts recorded on a version."""
        return verdicts_of(self.version(version).tags or {})

    def evidence(self, version: str | int, *, with_metrics: bool = True) -> Evidence:
        """Everything recorded on a version (one read of the version, one of its run)."""
        mv = self.version(version)
        metrics: dict[str, float] = {}
        params: dict[str, str] = {}
        run_tags: dict[str, str] = {}
        if with_metrics:
            run = self.mlflow.run(mv.run_id)
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

    def recorded(self, kind: str, version: str | int) -> dict[str, Any] | None:
        """The ``kind`` result (gate or smoke) last recorded on ``version``, as written to its
        run (``<kind>/v<N>.json``), or None when none was recorded."""
        import json
        import tempfile
        from pathlib import Path

        from mlflow.exceptions import MlflowException

        if kind not in tags.VERDICT_TAGS:
            raise InputError(f"kind must be one of {list(tags.VERDICT_TAGS)}, got {kind!r}")
        mv = self.version(version)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.mlflow.download(mv.run_id, f"{kind}/v{mv.version}.json", tmp)
                found = json.loads(Path(path).read_text(encoding="utf-8"))
            except (MlflowException, OSError, ValueError):
                return None
        return found if isinstance(found, dict) else None

    def model_info(self, version: str | int):
        """MLflow's ``ModelInfo`` of the version's logged model (signature, flavors)."""
        number = int(self.version(version).version)
        return self.mlflow.model_info(model_uri(self.model_name, number))

    def load_model(self, version: str | int):
        """The version's scikit-learn pipeline, loaded from the registry's artifact store."""
        number = int(self.version(version).version)
        return self.mlflow.load_sklearn(model_uri(self.model_name, number))

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
            frame = data.load_csv(Path(self.mlflow.download(mv.run_id, name, tmp)))
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

        who, _ = self.mlflow.identity()
        with self.mlflow.attempt(f"register a version of {self.model_name}"):
            try:
                self.mlflow.create_registered_model(
                    "Customer-churn classifier managed by churnlab."
                )
            except MlflowException as exc:
                if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise
            mv = self.mlflow.create_version(
                source=source,
                run_id=run_id,
                tags={**tags.INITIAL_VERDICTS, tags.REGISTERED_BY: who, **extra_tags},
                description=description,
                await_creation_for=60,
                model_id=model_id,
            )
        return int(mv.version)

    def set_version_tags(self, version: str | int, values: dict[str, str]) -> None:
        """Set tags on a version, in the order given."""
        self._set_tags(int(self.version(version).version), values)

    def _set_tags(self, number: int, values: dict[str, str]) -> None:
        """Set tags on version ``number``, already read from the registry."""
        with self.mlflow.attempt(f"record evidence on {self.model_name} v{number}"):
            for key, value in values.items():
                self.mlflow.set_version_tag(number, key, value)

    def record(self, kind: str, result: Any) -> None:
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
        with self.mlflow.attempt(f"record evidence on the run of {self.model_name} v{number}"):
            self.mlflow.log_dict(mv.run_id, result.to_dict(), f"{kind}/v{number}.json")
        self._set_tags(number, {verdict_tag: result.verdict})
