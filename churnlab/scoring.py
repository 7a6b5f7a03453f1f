"""Scoring a registered version: the one path from customer records to churn probabilities.

The serving backend, the staging smoke check and the verification all score through a
:class:`Scorer`, so they cannot disagree about how a record becomes a probability. A batch
comes either as records (dicts keyed by feature name: :meth:`Scorer.score_records`) or as
columns (feature name -> values, as the backend receives large batches:
:meth:`Scorer.score_columns`); both reach the model through the same two arrays.

A scorer runs one of two models of the same version, and says which in ``kind``:

* ``"onnx"`` — the float64 ONNX graph logged with the version (``onnx/model.onnx``), run by
  onnxruntime straight from the records, without pandas or scikit-learn. About 100 times
  faster per call. Chosen only when the gate's ``onnx_parity`` check passed on the version,
  i.e. the graph was shown to give the scikit-learn pipeline's probabilities.
* ``"sklearn"`` — the logged scikit-learn pipeline; the fallback for versions without an
  ONNX artifact or whose parity was not (yet) proven. ``reason`` says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Literal

import numpy as np

from churnlab import onnx_export, schema, tags
from churnlab.errors import ChurnlabError, InputError
from churnlab.metrics import THRESHOLD

#: the largest difference allowed between a served answer and the version's scikit-learn
#: pipeline in-process (the smoke check, verification and a following backend's readiness)
TOLERANCE = 1e-9

Kind = Literal["onnx", "sklearn"]
KINDS = ("auto", "onnx", "sklearn")
#: The gate records its ONNX parity check under this version tag (pass / fail / skip).


def records_to_frame(records: Sequence[dict[str, Any]]):
    """Customer records (dicts keyed by feature name) as a model input frame."""
    import pandas as pd

    frame = pd.DataFrame.from_records(list(records), columns=list(schema.FEATURE_NAMES))
    return frame.astype(schema.pandas_dtypes())


def columns_to_frame(columns: Mapping[str, Sequence[Any]]):
    """Columns (feature name -> values) as a model input frame; ``gender`` may be absent."""
    import pandas as pd

    size = _column_size(columns)
    frame = pd.DataFrame(
        {name: columns[name] if name in columns else [None] * size for name in schema.FEATURE_NAMES}
    )
    return frame.astype(schema.pandas_dtypes())


_CATEGORICAL = itemgetter(*schema.CATEGORICAL)
_NUMERIC = itemgetter(*schema.NUMERIC)


def records_to_inputs(records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The ONNX graph's two inputs from records: ``[N, 14]`` strings, ``[N, 4]`` doubles.

    Keys a record has beyond the features (``customerID``, ``gender``) are ignored; a
    missing feature or a non-numeric number raises :class:`InputError` naming it. A
    categorical value outside the vocabulary (even a number) scores as unknown, as in the
    pipeline's encoder.
    """
    try:
        categorical_rows = list(map(_CATEGORICAL, records))
        numeric_rows = list(map(_NUMERIC, records))
    except KeyError:
        needed = (*schema.CATEGORICAL, *schema.NUMERIC)
        row, name = next((i, n) for i, r in enumerate(records) for n in needed if n not in r)
        raise InputError(f"record {row} has no {name!r}") from None
    except TypeError:
        raise InputError("each record must be an object keyed by feature name") from None
    try:
        numeric = np.array(numeric_rows, dtype=np.float64)  # None becomes NaN
    except (TypeError, ValueError):
        numeric = None
    if numeric is None or not np.isfinite(numeric).all():
        bad = [n for n in schema.NUMERIC if not all(_is_number(r[n]) for r in records)]
        name = (bad or ["each numeric feature"])[0]
        raise InputError(f"{name} must be a finite number in every record")
    try:
        categorical = np.array(categorical_rows, dtype=object)
    except ValueError:
        categorical = None
    if categorical is None or categorical.shape != (len(records), len(schema.CATEGORICAL)):
        raise InputError("categorical features must be single values, not lists")
    return {onnx_export.CATEGORICAL_INPUT: categorical, onnx_export.NUMERIC_INPUT: numeric}


def _column_size(columns: Mapping[str, Sequence[Any]]) -> int:
    """The number of customers in ``columns``; :class:`InputError` when a model feature is
    missing or the columns differ in length."""
    needed = (*schema.CATEGORICAL, *schema.NUMERIC)
    missing = [name for name in needed if name not in columns]
    if missing:
        raise InputError(f"the columns have no {missing[0]!r}")
    text = [name for name in needed if isinstance(columns[name], str | bytes)]
    if text:
        raise InputError(f"{text[0]} must be a list of values, one per customer")
    sizes = {name: len(columns[name]) for name in needed}
    if len(set(sizes.values())) > 1:
        odd = ", ".join(f"{name} has {n}" for name, n in sizes.items())
        raise InputError(f"every column needs one value per customer: {odd}")
    return sizes[needed[0]]


def columns_to_inputs(columns: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
    """The ONNX graph's two inputs from columns (feature name -> values, one per customer).

    Columns beyond the model's features (``customerID``, ``gender``) are ignored; a missing
    feature, columns of different lengths or a non-numeric number raise :class:`InputError`
    naming it. A categorical value outside the vocabulary, whatever its type, scores as
    unknown (the serving contract refuses it before it gets here). Each array is filled
    column by column: numpy copies a list into an array column in one pass, much faster
    than building the array from rows.
    """
    size = _column_size(columns)
    categorical = np.empty((size, len(schema.CATEGORICAL)), dtype=object)
    numeric = np.empty((size, len(schema.NUMERIC)), dtype=np.float64)
    for j, name in enumerate(schema.CATEGORICAL):
        categorical[:, j] = columns[name]
    for j, name in enumerate(schema.NUMERIC):
        try:
            numeric[:, j] = columns[name]
        except (TypeError, ValueError):
            raise InputError(f"{name} must be a finite number for every customer") from None
        if not np.isfinite(numeric[:, j]).all():
            raise InputError(f"{name} must be a finite number for every customer")
    return {onnx_export.CATEGORICAL_INPUT: categorical, onnx_export.NUMERIC_INPUT: numeric}


def _is_number(value: Any) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


@dataclass
class Scorer:
    """A loaded model version that turns records into churn probabilities."""

    model_name: str
    version: int
    run_id: str
    model: Any
    kind: Kind = "sklearn"
    reason: str = ""

    @classmethod
    def from_registry(cls, registry, version: int, kind: str = "auto") -> Scorer:
        """Load ``version`` of ``registry``'s model from the registry's artifact store.

        ``kind="auto"`` serves the ONNX graph when the gate proved its parity, else the
        scikit-learn pipeline; ``"onnx"`` or ``"sklearn"`` ask for one (the gate's parity
        check uses both).
        """
        if kind not in KINDS:
            raise InputError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        mv = registry.version(version)
        number, found = int(mv.version), mv.tags or {}
        artifact = found.get(tags.ONNX_ARTIFACT)
        if kind == "auto":
            kind, reason = _choose(artifact, found.get(tags.ONNX_PARITY))
        elif kind == "onnx" and not artifact:
            raise InputError(f"{registry.model_name} v{number} has no ONNX artifact")
        else:
            reason = f"{kind} asked for"
        model: Any = None
        if kind == "onnx":
            try:
                model = onnx_export.OnnxModel(_download(registry, mv.run_id, artifact))
            except ChurnlabError as exc:
                if reason == "onnx asked for":
                    raise
                kind, reason = "sklearn", f"the ONNX artifact is unusable: {exc}"
        if model is None:
            model = registry.load_model(number)
        return cls(registry.model_name, number, mv.run_id, model, kind, reason)

    def predict_proba(self, frame) -> np.ndarray:
        """Churn probability per row of a model input frame."""
        return np.asarray(self.model.predict_proba(frame)[:, 1], dtype=np.float64)

    def churn_probability(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        """Churn probability per record (extra keys such as ``customerID`` are ignored)."""
        if not records:
            return np.zeros(0, dtype=np.float64)
        if self.kind == "onnx":
            return self.model.churn_probability(records_to_inputs(records))
        return self.predict_proba(records_to_frame(records))

    def churn_probability_of_columns(self, columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """Churn probability per customer of ``columns`` (feature name -> values)."""
        if self.kind == "onnx":
            inputs = columns_to_inputs(columns)
            if not len(inputs[onnx_export.NUMERIC_INPUT]):
                return np.zeros(0, dtype=np.float64)
            return self.model.churn_probability(inputs)
        if not _column_size(columns):
            return np.zeros(0, dtype=np.float64)
        return self.predict_proba(columns_to_frame(columns))

    def score_records(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """``[{"churn_probability": p, "churn": p >= 0.5}, ...]`` for each record."""
        return decisions(self.churn_probability(records))

    def score_columns(self, columns: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
        """What :meth:`score_records` gives, for customers sent as columns."""
        return decisions(self.churn_probability_of_columns(columns))


def decisions(probability: np.ndarray) -> list[dict[str, Any]]:
    """``[{"churn_probability": p, "churn": p >= 0.5}, ...]``: each customer's answer."""
    return [{"churn_probability": p, "churn": p >= THRESHOLD} for p in probability.tolist()]


def _choose(artifact: str | None, parity: str | None) -> tuple[Kind, str]:
    """Which model ``auto`` serves, and why."""
    if not artifact:
        return "sklearn", "the version has no ONNX artifact"
    if parity == "pass":
        return "onnx", "ONNX artifact whose parity the gate checked"
    if parity in ("fail", "skip"):
        return (
            "sklearn",
            f"the gate's ONNX parity check {'failed' if parity == 'fail' else 'was skipped'}",
        )
    return "sklearn", "ONNX parity not yet checked by the gate"


def _download(registry, run_id: str, artifact: str) -> bytes:
    """The bytes of one artifact of ``run_id``, from wherever the registry keeps artifacts."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = registry.download_artifact(run_id, artifact, tmp)
        except ChurnlabError:
            raise
        except Exception as exc:  # MlflowException or OSError: the artifact is not there
            raise InputError(
                f"cannot read {artifact} of run {run_id} ({type(exc).__name__})"
            ) from None
        return Path(path).read_bytes()
