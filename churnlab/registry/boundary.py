"""The registry's one door to MLflow: every call passes through it, failures are translated there.

Each method is one MLflow call, named by what it reads or writes; :meth:`Boundary._call`
translates a failure with :func:`churnlab.store.translate`, naming what the step was doing
(:meth:`Boundary.attempt`) and who the server logged in (:meth:`Boundary.identity`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from churnlab import store
from churnlab.registry.records import DECLARED, SERVER, actor


class Boundary:
    """One registered model's calls to MLflow through ``client`` (an ``MlflowClient``)."""

    def __init__(self, model_name: str, client: Any) -> None:
        self.model_name = model_name
        self.client = client
        self._login: str | None = None  # the server's login; "" when it names none
        self._doing: str | None = None  # what the calls are for (None: read the endpoint)

    # ------------------------------------------------------------------ who is acting
    def identity(self) -> tuple[str, str]:
        """``(actor, source)``: the server's login (source ``server``) when the server
        authenticates, else the declared :func:`actor` (source ``declared``)."""
        if self._login is None:  # ask the server once per registry object
            self._login = (store.authenticated_user() if store.is_remote() else None) or ""
        return (self._login, SERVER) if self._login else (actor(), DECLARED)

    @contextlib.contextmanager
    def attempt(self, what: str | None) -> Iterator[None]:
        """Name what the calls inside are for, so that a refusal says it."""
        before, self._doing = self._doing, what
        try:
            yield
        finally:
            self._doing = before

    def _call(self, fn, *args, **kwargs):
        """Call MLflow; a failure it can name becomes churnlab's error (others pass on)."""
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except (MlflowException, OSError) as exc:
            who = self._login or store.login_name() or actor()
            known = store.translate(exc, self.model_name, who=who, doing=self._doing)
            if known is not None:
                raise known from None
            raise

    def _write(self, fn, *args, **kwargs):
        """:meth:`_call` for a write, which waits for a busy server
        (:func:`store.patient_writes`) rather than being resent and done twice."""
        with store.patient_writes():
            return self._call(fn, *args, **kwargs)

    # ------------------------------------------------------------------ the registered model
    def registered_model(self):
        return self._call(self.client.get_registered_model, self.model_name)

    def create_registered_model(self, description: str) -> None:
        self._write(self.client.create_registered_model, self.model_name, description=description)

    def set_model_tag(self, key: str, value: str) -> None:
        self._write(self.client.set_registered_model_tag, self.model_name, key, value)

    def set_alias(self, alias: str, version: int) -> None:
        self._write(self.client.set_registered_model_alias, self.model_name, alias, str(version))

    def delete_alias(self, alias: str) -> None:
        self._write(self.client.delete_registered_model_alias, self.model_name, alias)

    # ------------------------------------------------------------------ its versions
    def model_version(self, number: int):
        return self._call(self.client.get_model_version, self.model_name, str(number))

    def search_versions(self) -> list:
        return self._call(self.client.search_model_versions, f"name='{self.model_name}'")

    def create_version(self, **details: Any):
        return self._write(self.client.create_model_version, self.model_name, **details)

    def set_version_tag(self, number: int, key: str, value: str) -> None:
        self._write(self.client.set_model_version_tag, self.model_name, str(number), key, value)

    def transition(self, number: int, stage: str, *, archive: bool) -> None:
        """Set the legacy stage (deprecated by MLflow: mirroring it is deliberate)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self._write(
                self.client.transition_model_version_stage,
                self.model_name,
                str(number),
                stage,
                archive_existing_versions=archive,
            )

    # ------------------------------------------------------------------ runs and artifacts
    def run(self, run_id: str):
        return self._call(self.client.get_run, run_id)

    def create_run(self, experiment_id: str, *, run_name: str, tags: dict[str, str]):
        return self._write(self.client.create_run, experiment_id, run_name=run_name, tags=tags)

    def latest_run(self, experiment: str, tag: str):
        """The newest run of ``experiment`` that carries ``tag``, or None (no such
        experiment, or no such run)."""
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

    def log_batch(self, run_id: str, **entries: Any) -> None:
        self._write(self.client.log_batch, run_id, **entries)

    def log_dict(self, run_id: str, document: dict[str, Any], path: str) -> None:
        self._write(self.client.log_dict, run_id, document, path)

    def end_run(self, run_id: str, status: str) -> None:
        self._write(self.client.set_terminated, run_id, status)

    def log_artifact(self, run_id: str, path: str, folder: str | None) -> None:
        self._write(self.client.log_artifact, run_id, path, folder)

    def delete_run(self, run_id: str) -> None:
        self._call(self.client.delete_run, run_id)

    def download(self, run_id: str, path: str, dst: str) -> str:
        import mlflow.artifacts

        return self._call(
            mlflow.artifacts.download_artifacts, run_id=run_id, artifact_path=path, dst_path=dst
        )

    def model_info(self, uri: str):
        import mlflow.models

        return self._call(mlflow.models.get_model_info, uri)

    def load_sklearn(self, uri: str):
        import mlflow.sklearn

        return self._call(mlflow.sklearn.load_model, uri)
