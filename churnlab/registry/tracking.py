"""The runs churnlab records beside the registry (a batch's), as the logged-in user."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
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


def _end(mlflow: Boundary, run_id: str, status: str) -> None:
    with contextlib.suppress(Exception):  # never hide the error that ended the run
        mlflow.end_run(run_id, status)
