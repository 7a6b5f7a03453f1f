"""The runs churnlab records beside the registry (a batch's, a hand-in), as the logged-in user."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churnlab import store
from churnlab.registry.boundary import Boundary


@dataclass(frozen=True)
class RecordedRun:
    """An MLflow run open for the block of :func:`recorded_run`."""

    run_id: str
    mlflow: Boundary

    def log(self, metrics: dict[str, float], document: dict[str, Any], path: str) -> None:
        """Log figures as metrics, and ``document`` as the JSON artifact ``path``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        self.mlflow.log_batch(self.run_id, metrics=entries)
        self.mlflow.log_dict(self.run_id, document, path)


@contextlib.contextmanager
def recorded_run(
    mlflow: Boundary, experiment: str, *, name: str, source: str, params: dict[str, Any]
) -> Iterator[RecordedRun]:
    """A run in ``experiment`` for the block, with ``params``, recorded as the user the server
    logged in (else the declared actor); FINISHED when the block ends, FAILED when it raises,
    KILLED when it is interrupted."""
    from mlflow.entities import Param
    from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME, MLFLOW_USER

    experiment_id = store.ensure_experiment(experiment)
    who, _ = mlflow.identity()
    run = mlflow.create_run(
        experiment_id, run_name=name, tags={MLFLOW_USER: who, MLFLOW_SOURCE_NAME: source}
    )
    run_id = run.info.run_id
    mlflow.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    try:
        yield RecordedRun(run_id, mlflow)
    except BaseException as exc:
        _end(mlflow, run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    _end(mlflow, run_id, "FINISHED")


def logged_run(
    mlflow: Boundary,
    experiment: str,
    *,
    name: str,
    run_tags: dict[str, str],
    artifacts: dict[str, Path],
) -> str:
    """A finished run in ``experiment`` holding ``run_tags`` and ``artifacts`` (``{"folder/
    name": local file}``), recorded as the logged-in user; its id. A run that fails half-way
    is deleted: none is left half-written."""
    import shutil
    import tempfile

    from mlflow.utils.mlflow_tags import MLFLOW_USER

    experiment_id = store.ensure_experiment(experiment)
    who, _ = mlflow.identity()
    run = mlflow.create_run(experiment_id, run_name=name, tags={MLFLOW_USER: who, **run_tags})
    run_id = run.info.run_id
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for target, source in artifacts.items():
                folder, _, file_name = target.rpartition("/")
                staged = Path(tmp) / (folder or "_") / file_name
                staged.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, staged)
                mlflow.log_artifact(run_id, str(staged), folder or None)
        mlflow.end_run(run_id, "FINISHED")
    except BaseException:
        with contextlib.suppress(Exception):
            mlflow.delete_run(run_id)
        raise
    return run_id


def _end(mlflow: Boundary, run_id: str, status: str) -> None:
    with contextlib.suppress(Exception):  # never hide the error that ended the run
        mlflow.end_run(run_id, status)
