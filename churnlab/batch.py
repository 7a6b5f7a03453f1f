"""Batch scoring: a file of customers in, their churn probabilities out, every row accounted for.

``churnlab score --stage production customers.csv -o scores.csv`` resolves the stage's alias
once, loads the served scorer once (:meth:`Scorer.from_registry`: the ONNX graph when the gate
proved its parity, else the pipeline) and scores the file in chunks. Each chunk is checked
against :mod:`churnlab.schema` as a whole (:mod:`churnlab.rows`: vocabularies, numbers,
ranges): rows that pass are scored, the others go to a rejects file with their row number
and the reason. The scores, the rejects and the metadata (what scored what) are written to
temporary files in the output's folder and renamed at the end, so an interrupted run leaves
nothing half-written. Each run is also recorded as an MLflow run in the ``churnlab-batch``
experiment, through the registry, as the user the server logged in.

CSV or Parquet, in and out, chosen by the file's extension.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from churnlab import schema
from churnlab.errors import InputError, Refused
from churnlab.rows import CheckedChunk, check_chunk, check_columns

if TYPE_CHECKING:
    import pandas as pd

    from churnlab.registry import Registry
    from churnlab.scoring import Scorer

#: rows read, checked and scored at a time
CHUNK_ROWS = 100_000
#: the MLflow experiment every batch run is recorded in
EXPERIMENT_NAME = "churnlab-batch"
#: the column of the churn probability in the scores
PROBABILITY = "churn_probability"
#: the column of the decision (probability at or above the threshold) in the scores
_DECISION = "churn"
#: file extension -> format, for inputs and outputs
_FORMATS: dict[str, str] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: the key of the run's description in a Parquet output's key-value metadata
_METADATA_KEY = "churnlab"


@dataclass(frozen=True)
class BatchResult:
    """What one batch run scored, with what, and where it wrote."""

    model_name: str
    version: int
    run_id: str  # the model version's training run
    stage: str
    scorer: str  # "onnx" or "sklearn"
    input: str
    input_sha256: str
    output: str
    rejects: str
    metadata: str  # the sidecar JSON of a CSV output, or the Parquet file itself
    accepted: int
    rejected: int
    seconds: float
    batch_run_id: str  # the MLflow run in the churnlab-batch experiment

    @property
    def rows_per_minute(self) -> float:
        rows = self.accepted + self.rejected
        return rows * 60.0 / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: how many customers scored, with which version, and how many rejected."""
        return (
            f"Scored {self.accepted:,} customers with {self.model_name} v{self.version} "
            f"({self.scorer}, @{self.stage}) -> {self.output}; "
            f"{self.rejected:,} rejected -> {self.rejects} "
            f"({self.seconds:.1f} s, {self.rows_per_minute:,.0f} rows/min)"
        )


# ---------------------------------------------------------------------------- files
def _file_format(path: Path, what: str) -> str:
    """``"csv"`` or ``"parquet"`` from the extension; ``InputError`` for anything else."""
    kind = _FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InputError(
            f"{what} {path.name}: unknown extension {path.suffix!r}; use one of {sorted(_FORMATS)}"
        )
    return kind


def _default_rejects(output: Path) -> Path:
    """Where the rejected rows go by default: ``scores.csv`` -> ``scores.rejects.csv``."""
    return output.with_name(f"{output.stem}.rejects.csv")


def _sidecar(output: Path) -> Path:
    """The metadata file beside a CSV output: ``scores.csv`` -> ``scores.csv.json``."""
    return output.with_name(output.name + ".json")


def _digest_and_rows(path: Path, kind: str) -> tuple[str, int]:
    """SHA-256 of the file's bytes, and its number of data rows (for a CSV: lines - 1)."""
    digest, lines, last = hashlib.sha256(), 0, b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(8 << 20):
            digest.update(block)
            lines += block.count(b"\n")
            last = block[-1:]
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except Exception as exc:  # ArrowInvalid and friends: not a Parquet file
            raise InputError(f"{path.name}: not a readable Parquet file ({_first(exc)})") from None
    else:
        rows = max(lines + (last != b"\n") - 1, 0)
    return digest.hexdigest(), rows


def _read_chunks(path: Path, kind: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The file in chunks of ``chunk_rows`` rows; CSV values as read (strings), column names
    stripped of blanks. ``InputError`` when the file cannot be read."""
    import pandas as pd

    name = path.name
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            chunks: Any = (
                batch.to_pandas()
                for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows)
            )
        else:
            chunks = pd.read_csv(
                path,
                dtype=object,
                keep_default_na=False,
                encoding="utf-8-sig",
                chunksize=chunk_rows,
            )
        for chunk in chunks:
            yield chunk.rename(columns=lambda c: str(c).strip())
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{name}: the file is empty") from None
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        label = "CSV" if kind == "csv" else "Parquet"
        raise InputError(f"{name}: not a readable {label} file ({_first(exc)})") from None


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class _Writer:
    """Scores and rejects written chunk by chunk to temporary files in their folders.

    :meth:`commit` renames them to their places (rejects and metadata first, the scores
    last); :meth:`discard` removes them. Nothing is ever written at the final paths before
    the run is complete.
    """

    def __init__(self, output: Path, rejects: Path, with_ids: bool) -> None:
        self.output, self.rejects, self.with_ids = output, rejects, with_ids
        self.kind = _file_format(output, "output")
        self.temps: dict[Path, Path] = {}
        self._scores: Any = None
        self._rejects: Any = None
        self._parquet: Any = None

    def _temp(self, final: Path) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would outlive the rename
        os.close(fd)
        self.temps[final] = Path(name)
        return Path(name)

    def open(self) -> None:
        self._rejects = open(self._temp(self.rejects), "w", encoding="utf-8", newline="")
        if self.kind == "csv":
            self._scores = open(self._temp(self.output), "w", encoding="utf-8", newline="")
            header = [schema.ID_COLUMN] if self.with_ids else []
            self._scores.write(",".join([*header, PROBABILITY, _DECISION]) + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            fields = [(schema.ID_COLUMN, pa.string())] if self.with_ids else []
            fields += [(PROBABILITY, pa.float64()), (_DECISION, pa.bool_())]
            self._schema = pa.schema(fields)
            self._parquet = pq.ParquetWriter(self._temp(self.output), self._schema)

    def write(self, scores: pd.DataFrame, rejects: pd.DataFrame, first: bool) -> None:
        if len(rejects) or first:
            rejects.to_csv(self._rejects, header=first, index=False)
        if self.kind == "csv":
            scores.to_csv(self._scores, header=False, index=False)
        else:
            import pyarrow as pa

            if self.with_ids:
                scores = scores.assign(**{schema.ID_COLUMN: scores[schema.ID_COLUMN].astype(str)})
            table = pa.Table.from_pandas(scores, schema=self._schema, preserve_index=False)
            self._parquet.write_table(table)

    def commit(self, metadata: dict[str, Any]) -> None:
        """Close the files, add the metadata and rename everything into place."""
        text = json.dumps(metadata, sort_keys=True, indent=2)
        self._rejects.close()
        if self.kind == "csv":
            self._scores.close()
            self._temp(_sidecar(self.output)).write_text(text + "\n", encoding="utf-8")
        else:
            self._parquet.add_key_value_metadata({_METADATA_KEY: text})
            self._parquet.close()
        order = [self.rejects, _sidecar(self.output), self.output]
        for final in [f for f in order if f in self.temps]:
            os.replace(self.temps.pop(final), final)

    def discard(self) -> None:
        """Close and remove every temporary file (an interrupted or failed run)."""
        for handle in (self._rejects, self._scores, self._parquet):
            with contextlib.suppress(Exception):
                if handle is not None:
                    handle.close()
        for temp in self.temps.values():
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        self.temps.clear()


# ---------------------------------------------------------------------------- scoring
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def served_scorer(registry: Registry, stage: str) -> Scorer:
    """The scorer of the version ``stage`` holds, resolved once (what a backend would serve).

    Refused when the stage holds nothing; a clear error when nothing was trained.
    """
    from churnlab.scoring import Scorer

    registry.model()  # a clear error when nothing was trained
    version = registry.holder(stage)
    if version is None:
        how = "churnlab stage VERSION" if stage == "staging" else "churnlab promote VERSION"
        raise Refused(
            f"{registry.model_name} has no version in {stage}: nothing to score with (run `{how}`)"
        )
    return Scorer.from_registry(registry, version)


def score_chunk(scorer: Scorer, checked: CheckedChunk) -> pd.DataFrame:
    """The scores of a checked chunk's accepted rows: customerID (if any), probability, churn."""
    import numpy as np
    import pandas as pd

    from churnlab.metrics import THRESHOLD

    if checked.accepted:
        probability = scorer.churn_probability_of_columns(checked.columns)
    else:
        probability = np.zeros(0, dtype=np.float64)
    out: dict[str, Any] = {} if checked.ids is None else {schema.ID_COLUMN: checked.ids}
    out[PROBABILITY] = probability
    out[_DECISION] = probability >= THRESHOLD
    return pd.DataFrame(out)


def _paths(input_path, output_path, rejects_path) -> tuple[Path, str, Path, Path]:
    source = Path(input_path)
    if not source.is_file():
        raise InputError(f"{source}: no such file")
    kind = _file_format(source, "input")
    output = Path(output_path)
    _file_format(output, "output")
    rejects = Path(rejects_path) if rejects_path else _default_rejects(output)
    if rejects.suffix.lower() != ".csv":
        raise InputError(f"rejects {rejects.name}: the rejects file is a CSV (name it *.csv)")
    for target in (output, rejects):
        if not target.parent.is_dir():
            raise InputError(f"{target}: no such folder {target.parent}")
    resolved = {source.resolve(), output.resolve(), rejects.resolve()}
    if len(resolved) < 3:
        raise InputError("the input, the output and the rejects file must be three different files")
    return source, kind, output, rejects


def score_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    stage: str = "production",
    registry: Registry | None = None,
    rejects_path: str | os.PathLike | None = None,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = False,
) -> BatchResult:
    """Score every customer of ``input_path`` with the version ``stage`` holds.

    Writes ``output_path`` (one row per accepted input row: customerID if the input has
    it, churn_probability, churn), the rejected rows with their 1-based row number and the
    reason (``rejects_path``, default ``<name>.rejects.csv`` beside the output) and the
    metadata (a CSV's sidecar ``<output>.json``, a Parquet file's key-value metadata
    ``churnlab``); records the run in the ``churnlab-batch`` experiment as the logged-in
    user. ``progress`` shows a bar on stderr when it is a terminal. Raises
    :class:`Refused` when the stage holds no version and :class:`InputError` for a file
    that cannot be scored (missing columns, unreadable).
    """
    from churnlab.registry import Registry, parse_stage

    if chunk_rows < 1:
        raise InputError(f"chunk_rows must be a positive number of rows, got {chunk_rows}")
    stage = parse_stage(stage)
    source, kind, output, rejects = _paths(input_path, output_path, rejects_path)
    started = time.perf_counter()
    chunks = _read_chunks(source, kind, chunk_rows)
    first_chunk = next(chunks, None)
    if first_chunk is None or not len(first_chunk.columns):
        raise InputError(f"{source.name}: the file is empty")
    check_columns([str(c) for c in first_chunk.columns], source.name)
    if not len(first_chunk):
        raise InputError(f"{source.name}: no rows to score")

    registry = registry or Registry()
    scorer = served_scorer(registry, stage)
    sha256, total = _digest_and_rows(source, kind)
    params = {
        "model_name": scorer.model_name,
        "model_version": scorer.version,
        "model_uri": registry.model_uri(scorer.version),
        "model_run_id": scorer.run_id,
        "stage": stage,
        "scorer": scorer.kind,
        "input": source.name,
        "input_sha256": sha256,
        "output": output.name,
        "chunk_rows": chunk_rows,
    }
    name = f"score {registry.model_name} v{scorer.version} @{stage}"
    with registry.recorded_run(
        EXPERIMENT_NAME, name=name, source="churnlab score", params=params
    ) as run:
        writer = _Writer(output, rejects, with_ids=schema.ID_COLUMN in first_chunk)
        accepted = rejected = 0
        try:
            writer.open()
            with _bar(total, progress) as bar:
                for number, chunk in enumerate(_chain(first_chunk, chunks)):
                    checked = check_chunk(chunk, first_row=accepted + rejected + 1)
                    scores = score_chunk(scorer, checked)
                    writer.write(scores, checked.rejects, first=number == 0)
                    accepted += checked.accepted
                    rejected += len(checked.rejects)
                    bar.update(len(chunk))
            result = BatchResult(
                model_name=registry.model_name,
                version=scorer.version,
                run_id=scorer.run_id,
                stage=stage,
                scorer=scorer.kind,
                input=str(source),
                input_sha256=sha256,
                output=str(output),
                rejects=str(rejects),
                metadata=str(_sidecar(output) if writer.kind == "csv" else output),
                accepted=accepted,
                rejected=rejected,
                seconds=time.perf_counter() - started,
                batch_run_id=run.run_id,
            )
            recorded = _metadata(result)
            writer.commit(recorded)
        except BaseException:
            writer.discard()
            raise
        figures = {
            "rows_accepted": result.accepted,
            "rows_rejected": result.rejected,
            "seconds": result.seconds,
            "rows_per_minute": result.rows_per_minute,
        }
        run.log(figures, recorded, "batch/metadata.json")
    return result


def _metadata(result: BatchResult) -> dict[str, Any]:
    """What the output records about how it was made (no paths beyond file names)."""
    from churnlab.metrics import THRESHOLD

    return {
        "model_name": result.model_name,
        "version": result.version,
        "run_id": result.run_id,
        "stage": result.stage,
        "scorer": result.scorer,
        "threshold": THRESHOLD,
        "input": Path(result.input).name,
        "input_sha256": result.input_sha256,
        "rows": {
            "accepted": result.accepted,
            "rejected": result.rejected,
            "total": result.accepted + result.rejected,
        },
        "rejects": Path(result.rejects).name,
        "batch_run_id": result.batch_run_id,
        "experiment": EXPERIMENT_NAME,
        "scored_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _chain(first: pd.DataFrame, rest: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    yield first
    yield from rest


@contextlib.contextmanager
def _bar(total: int, progress: bool) -> Iterator[Any]:
    """A tqdm bar on stderr, shown only when asked for and stderr is a terminal."""
    from tqdm import tqdm

    shown = progress and sys.stderr.isatty()
    with tqdm(
        total=total or None,
        unit=" rows",
        unit_scale=True,
        file=sys.stderr,
        disable=not shown,
        dynamic_ncols=True,
        desc="scoring",
    ) as bar:
        yield bar
