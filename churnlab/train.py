"""Train a candidate: fit a scikit-learn Pipeline, log it with its evidence, register it.

A candidate is a new registered version of the model. Nothing here moves a stage: that is
the gate's and the registry's business.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnlab import data as data_mod
from churnlab import onnx_export, schema, store, tags
from churnlab.errors import InputError
from churnlab.metrics import CostMatrix, confusion, score

ESTIMATORS = ("logreg", "forest", "gbm")
MODEL_ARTIFACT = "model"


@dataclass
class TrainResult:
    """What one training run produced."""

    run_id: str
    model_name: str
    model_version: int
    estimator: str
    metrics: dict[str, float]
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)
    git_commit: str | None = None

    def summary(self) -> dict[str, Any]:
        """The one-line JSON the CLI prints."""
        return {
            "run_id": self.run_id,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "estimator": self.estimator,
            "metrics": self.metrics,
        }

    def line(self) -> str:
        """One line for a person: model, version, estimator and its main figures."""
        shown = ", ".join(
            f"{name} {self.metrics[name]:.4f}"
            for name in ("accuracy", "roc_auc", "f1")
            if name in self.metrics
        )
        return f"{self.model_name} v{self.model_version}: {self.estimator}, {shown}"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """A cell that ends with a training call shows this one line, not the dataclass."""
        printer.text(self.line())


def build_pipeline(estimator: str = "logreg", params: dict[str, Any] | None = None, seed: int = 42):
    """Preprocessing (one-hot categoricals, scaled numerics) plus the chosen classifier.

    ``estimator`` is one of ``ESTIMATORS``; ``params`` go to the classifier.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if estimator not in ESTIMATORS:
        raise InputError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
    params = dict(params or {})
    kind = {
        "logreg": LogisticRegression,
        "forest": RandomForestClassifier,
        "gbm": HistGradientBoostingClassifier,
    }[estimator]
    valid = sorted(kind().get_params())
    unknown = sorted(str(k) for k in params if k not in valid)
    if unknown:
        raise InputError(
            f"{estimator} ({kind.__name__}) has no hyperparameter {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(valid)}"
        )
    categories = [list(schema.feature(c).values) for c in schema.CATEGORICAL]
    pre = ColumnTransformer(
        [
            (
                "categorical",
                OneHotEncoder(categories=categories, handle_unknown="ignore", sparse_output=False),
                list(schema.CATEGORICAL),
            ),
            ("numeric", StandardScaler(), list(schema.NUMERIC)),
        ],
        remainder="drop",
    )
    if estimator == "logreg":
        clf = LogisticRegression(**{"C": 1.0, "max_iter": 1000, **params})
    elif estimator == "forest":
        clf = RandomForestClassifier(
            **{
                "n_estimators": 200,
                "min_samples_leaf": 5,
                "random_state": seed,
                "n_jobs": 1,
                **params,
            }
        )
    else:
        clf = HistGradientBoostingClassifier(
            **{"max_iter": 150, "learning_rate": 0.08, "random_state": seed, **params}
        )
    return Pipeline([("preprocess", pre), ("classifier", clf)])


def git_commit(root: Path | None = None) -> str | None:
    """The commit of the code (``+dirty`` when the tree has changes), or None outside git."""
    root = root or store.project_root()
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "churnlab", "serving"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha


def pip_requirements() -> list[str]:
    """The model's runtime requirements, pinned to what trained it (never the test tools)."""
    from importlib.metadata import version

    return [
        f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "scikit-learn", "numpy", "pandas", "skops")
    ]


def signature(example: pd.DataFrame, proba: np.ndarray):
    """Model signature: inputs from the feature schema, outputs the churn probabilities."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    outputs = Schema([TensorSpec(np.dtype("float64"), (-1, 2))])
    return ModelSignature(inputs=schema.input_schema(), outputs=outputs)


@dataclass
class Fitted:
    """A fitted pipeline and how it scored on the evaluation snapshot."""

    pipeline: Any
    example: pd.DataFrame
    proba: np.ndarray
    metrics: dict[str, float]
    counts: dict[str, int]


def split_data(
    frame: pd.DataFrame | None, *, rows: int, seed: int, data_source: str | None
) -> tuple[dict[str, pd.DataFrame], int, str]:
    """The training, evaluation and reference snapshots; the row count and the data source.

    Without ``frame`` the seeded synthetic generator makes ``rows`` customers; a given
    frame is validated first.
    """
    if frame is None:
        frame = data_mod.generate(rows, seed)
        data_source = data_source or f"synthetic:seed={seed},rows={rows}"
    else:
        frame = data_mod.validate(frame, source=data_source or "data")
    return data_mod.split(frame, seed=seed), len(frame), data_source or "dataframe"


def fit(pipeline, parts: dict[str, pd.DataFrame], costs: CostMatrix) -> Fitted:
    """Fit on the training snapshot; score on the evaluation snapshot."""
    X_train, y_train = data_mod.features(parts["training"]), data_mod.labels(parts["training"])
    X_eval, y_eval = data_mod.features(parts["evaluation"]), data_mod.labels(parts["evaluation"])
    try:
        pipeline.fit(X_train, y_train)
    except (ValueError, TypeError) as exc:  # a hyperparameter scikit-learn refuses
        if type(exc).__name__ != "InvalidParameterError":
            raise
        raise InputError(str(exc).splitlines()[0]) from None
    proba = pipeline.predict_proba(X_eval)[:, 1]
    return Fitted(
        pipeline=pipeline,
        example=X_train.head(3),
        proba=proba,
        metrics=score(y_eval, proba, costs),
        counts=confusion(y_eval, proba >= 0.5),
    )


def log_snapshots(parts: dict[str, pd.DataFrame], snaps: dict[str, Any]) -> None:
    """Log each snapshot as an artifact and an MLflow dataset input, its digest as a tag."""
    import mlflow

    for kind, snap in snaps.items():
        mlflow.log_artifact(str(snap.path), artifact_path="data")
        with warnings.catch_warnings():  # a file URI fits two source types; either is right
            warnings.simplefilter("ignore", UserWarning)
            ds = mlflow.data.from_pandas(
                parts[kind],
                source=store.dataset_source(mlflow.get_artifact_uri(f"data/{snap.path.name}")),
                targets=schema.TARGET,
                name=f"{kind}-{snap.digest}",
                digest=snap.digest,
            )
        mlflow.log_input(ds, context=kind)
        mlflow.set_tag(tags.data_tag(kind), snap.digest)


def log_evidence(fitted: Fitted, y_eval: np.ndarray) -> None:
    """Log the ROC curve, the confusion matrix and its counts."""
    import matplotlib.pyplot as plt
    import mlflow

    from churnlab import plots

    fig = plots.roc_curve(y_eval, fitted.proba)
    mlflow.log_figure(fig, "plots/roc_curve.png")
    fig2 = plots.confusion_matrix(fitted.counts)
    mlflow.log_figure(fig2, "plots/confusion_matrix.png")
    plt.close(fig)
    plt.close(fig2)
    mlflow.log_dict(fitted.counts, "metrics/confusion.json")


def log_model(fitted: Fitted):
    """Log the pipeline (skops, with its signature) and its ONNX graph; return both results.

    Returns MLflow's ``ModelInfo`` and the version tags the ONNX export asks for.
    """
    import mlflow.sklearn

    pipeline, example = fitted.pipeline, fitted.example
    info = mlflow.sklearn.log_model(
        pipeline,
        name=MODEL_ARTIFACT,
        signature=signature(example, pipeline.predict_proba(example)),
        input_example=example,
        pip_requirements=pip_requirements(),
        pyfunc_predict_fn="predict_proba",
        skops_trusted_types=trusted_types(pipeline),
    )
    # the same pipeline as a float64 ONNX graph, the fast serving path (see onnx_export)
    return info, onnx_export.log_artifact(pipeline)


def train_candidate(
    frame: pd.DataFrame | None = None,
    *,
    model_name: str | None = None,
    estimator: str = "logreg",
    params: dict[str, Any] | None = None,
    seed: int = data_mod.DEFAULT_SEED,
    rows: int = data_mod.DEFAULT_ROWS,
    costs: CostMatrix | None = None,
    description: str = "",
    data_source: str | None = None,
) -> TrainResult:
    """Fit, evaluate, log and register one candidate version of ``model_name``.

    ``frame`` is a validated Telco-layout frame (``data.load_csv``); without it the seeded
    synthetic generator makes ``rows`` customers. The data are split into training,
    evaluation and drift-reference snapshots, each logged with its digest. ``model_name``
    None is the run's model (:func:`churnlab.store.model_name`). A registration that fails
    (a server that refuses it, say) deletes the run it would have described: no stray run.
    """
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    model_name = model_name or store.model_name()
    costs = costs or CostMatrix()
    pipeline = build_pipeline(estimator, params, seed)  # validates the estimator up front
    parts, total, source = split_data(frame, rows=rows, seed=seed, data_source=data_source)

    store.configure()
    store.check_reachable()
    experiment_id = store.ensure_experiment()
    snap_dir = store.home() / "snapshots" if not store.is_remote() else None

    fitted = fit(pipeline, parts, costs)
    commit = git_commit()
    run_id = None
    try:  # writes wait for a busy server: resent, a run or a version would land twice
        with store.patient_writes(), tempfile.TemporaryDirectory() as tmp:
            folder = Path(snap_dir) if snap_dir else Path(tmp)
            snaps = {k: data_mod.write_snapshot(part, k, folder) for k, part in parts.items()}
            with mlflow.start_run(experiment_id=experiment_id) as run:
                run_id = run.info.run_id
                mlflow.set_tags(
                    {
                        tags.ESTIMATOR: estimator,
                        tags.DATA_SOURCE: source,
                        MLFLOW_GIT_COMMIT: commit or "unknown",
                        tags.GIT_COMMIT: commit or "unknown",
                    }
                )
                mlflow.log_params(
                    {
                        "estimator": estimator,
                        "seed": seed,
                        "rows": total,
                        **{f"clf_{k}": v for k, v in (params or {}).items()},
                        **costs.as_params(),
                    }
                )
                mlflow.log_metrics(fitted.metrics)
                log_snapshots(parts, snaps)
                log_evidence(fitted, data_mod.labels(parts["evaluation"]))
                info, extra_tags = log_model(fitted)
        version = register(
            model_name, info, run_id, estimator, snaps, fitted.metrics, description, extra_tags
        )
    except BaseException:
        if run_id is not None:
            _discard(run_id)
        raise
    return TrainResult(
        run_id=run_id,
        model_name=model_name,
        model_version=version,
        estimator=estimator,
        metrics=fitted.metrics,
        snapshots={
            k: {"digest": s.digest, "rows": s.rows, "file": s.path.name} for k, s in snaps.items()
        },
        git_commit=commit,
    )


def _discard(run_id: str) -> None:
    """Delete the run of a candidate that could not be registered (best effort)."""
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient().delete_run(run_id)
    except Exception:  # noqa: BLE001 - the registration's own error is the one to report
        pass


def trusted_types(pipeline) -> list[str] | None:
    """The skops types our own pipelines need beyond skops' defaults (tree node storage).

    Only types on a reviewed allow-list are trusted; anything else fails the save loudly.
    """
    import skops.io

    allowed = {
        "sklearn.tree._tree.Tree",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.skops"
        skops.io.dump(pipeline, path)
        untrusted = set(skops.io.get_untrusted_types(file=path))
    extra = untrusted - allowed
    if extra:
        raise InputError(f"the pipeline holds types skops does not trust: {sorted(extra)}")
    return sorted(untrusted) or None


def register(name, info, run_id, estimator, snaps, metrics, description="", extra_tags=None) -> int:
    """Create a new version of registered model ``name`` from a logged model; return it."""
    from churnlab.registry import Registry

    version_tags = {
        tags.ESTIMATOR: estimator,
        **{tags.data_tag(k): s.digest for k, s in snaps.items()},
        **(extra_tags or {}),
    }
    text = description or f"{estimator} candidate; evaluation accuracy {metrics['accuracy']:.3f}"
    return Registry(name).register(
        info.model_uri,
        run_id,
        model_id=info.model_id,
        extra_tags=version_tags,
        description=text,
    )


def load_training_data(path: str | os.PathLike | None) -> tuple[pd.DataFrame | None, str | None]:
    """Load ``path`` as a Telco CSV (validated before anything touches the registry)."""
    if path is None:
        return None, None
    return data_mod.load_csv(path), Path(path).name


def result_json(result: TrainResult) -> str:
    """One JSON line with run id, version and metrics."""
    return json.dumps(result.summary(), sort_keys=True)


__all__ = ["ESTIMATORS", "TrainResult", "build_pipeline", "train_candidate"]
