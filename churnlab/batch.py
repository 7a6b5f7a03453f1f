"""Batch scoring: a file of customers in, their churn probabilities out, every row accounted for.

``churnlab score --stage production customers.csv -o scores.csv`` resolves the stage's alias
once, loads the served scorer once (:meth:`Scorer.from_registry`: the ONNX graph when the gate
proved its parity, else the pipeline) and scores the file in chunks. Each chunk is checked
against :mod:`churnlab.schema` as a whole (vocabularies, numbers, ranges): rows that pass are
scored, the others go to a rejects file with their row number and the reason. The scores,
the rejects and the metadata (what scored what) are written to temporary files in the
output's folder and renamed at the end, so an interrupted run leaves nothing half-written.
Each run is also recorded as an MLflow run in the ``churnlab-batch`` experiment, through the
registry, as the user the server logged in.

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
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from churnlab import schema
from churnlab.errors import InputError, Refused

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from churnlab.registry import Registry
    from churnlab.scoring import Scorer

#: rows read, checked and scored at a time
CHUNK_ROWS = 100_000
#: the MLflow experiment every batch run is recorded in
EXPERIMENT_NAME = "churnlab-batch"
#: file extension -> format, for inputs and outputs
FORMATS: dict[str, str] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: the key of the run's description in a Parquet output's key-value metadata
METADATA_KEY = "churnlab"
PROBABILITY, DECISION = "churn_probability", "churn"
#: the columns of a rejects file, before the rejected row's own columns
REJECT_COLUMNS: tuple[str, ...] = ("row", "reason")
#: columns a file must have: the model's features (gender and customerID are optional)
REQUIRED: tuple[str, ...] = tuple(f.name for f in schema.MODEL_FEATURES)


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


# ---------------------------------------------------------------------------- checking rows
@dataclass(frozen=True)
class CheckedChunk:
    """A chunk split in two: the accepted rows as model columns, the rejected ones with why."""

    columns: dict[str, np.ndarray]  # feature -> values of the accepted rows
    ids: np.ndarray | None  # customerID of the accepted rows, if the input has them
    rejects: pd.DataFrame  # row (1-based data row), reason, then the row's own columns

    @property
    def accepted(self) -> int:
        return len(next(iter(self.columns.values())))


def check_columns(names: list[str], source: str) -> None:
    """Refuse (``InputError``) a header without the model's features."""
    missing = [name for name in REQUIRED if name not in names]
    if len(missing) == len(REQUIRED):
        header = ",".join(names)
        raise InputError(
            f"{source}: none of the Telco churn columns in the header ({header[:60]!r}); "
            f"expected {', '.join(schema.CSV_COLUMNS[:3])}, ..., {schema.CSV_COLUMNS[-2]}"
        )
    if missing:
        raise InputError(f"{source}: missing columns {missing}; expected the Telco churn layout")


def check_chunk(chunk: pd.DataFrame, first_row: int = 1) -> CheckedChunk:
    """Check every row of ``chunk`` against the schema, all rows of a column at once.

    Categorical values must be in the feature's vocabulary (surrounding blanks are
    forgiven); numbers must parse, be finite, lie in the feature's range and be whole for
    integer features. A blank ``TotalCharges`` is 0, as in the published file (brand-new
    customers; see :func:`churnlab.data.validate`). ``first_row`` is the 1-based data row
    number of the chunk's first row. ``gender`` is checked when present.
    """
    import numpy as np
    import pandas as pd

    problems: dict[int, list[str]] = defaultdict(list)
    values: dict[str, np.ndarray] = {}
    for feat in schema.FEATURES:
        if feat.name not in chunk:
            continue  # only an optional column (check_columns ran on the header)
        check = _check_categorical if feat.is_categorical else _check_number
        values[feat.name], found = check(chunk[feat.name], feat)
        for position, message in found:
            problems[position].append(message)
    bad = np.array(sorted(problems), dtype=np.int64)
    keep = np.ones(len(chunk), dtype=bool)
    keep[bad] = False
    columns = {name: column[keep] for name, column in values.items() if name in REQUIRED}
    ids = None
    if schema.ID_COLUMN in chunk:
        ids = chunk[schema.ID_COLUMN].to_numpy(dtype=object)[keep]
    rejected = chunk.iloc[bad].reset_index(drop=True)
    rejects = pd.concat(
        [
            pd.DataFrame(
                {
                    "row": bad + first_row,
                    "reason": ["; ".join(problems[int(i)]) for i in bad],
                }
            ),
            rejected.astype(object),
        ],
        axis=1,
    )
    return CheckedChunk(columns=columns, ids=ids, rejects=rejects)


def _check_categorical(
    column: pd.Series, feat: schema.Feature
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """The column as vocabulary strings, and (position, reason) for each value outside it."""
    import numpy as np

    out = column.to_numpy(dtype=object, na_value=None).copy()
    ok = column.isin(feat.values).to_numpy()
    if ok.all():
        return out, []
    odd = np.flatnonzero(~ok)
    stripped = column.iloc[odd].map(lambda v: v.strip() if isinstance(v, str) else v)
    fixed = stripped.isin(feat.values).to_numpy()
    out[odd[fixed]] = stripped.to_numpy(dtype=object)[fixed]
    found = []
    for position, value in zip(odd[~fixed], stripped.to_numpy(dtype=object)[~fixed], strict=True):
        if _is_blank(value):
            found.append((int(position), f"{feat.name} is missing"))
        else:
            found.append(
                (int(position), f"{feat.name}: {value!r} is not one of {list(feat.values)}")
            )
    return out, found


def _check_number(
    column: pd.Series, feat: schema.Feature
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """The column as float64, and (position, reason) for each value that is not a number in
    the feature's range (whole for integer features)."""
    import numpy as np
    import pandas as pd

    raw = column.iat  # the value as given, looked up only for the rows with a problem
    parsed = column
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        parsed = pd.to_numeric(column, errors="coerce")
    numbers = np.array(parsed.to_numpy(dtype=np.float64, na_value=np.nan))  # a writable copy
    blank = np.zeros(len(column), dtype=bool)
    unparsed = np.isnan(numbers)
    if unparsed.any():  # only these few values are looked at one by one
        odd = np.flatnonzero(unparsed)
        empty = np.array([_is_blank(raw[i]) for i in odd], dtype=bool)
        blank[odd[empty]] = True
        unparsed[odd[empty]] = False
        if feat.name == "TotalCharges":  # blank for brand-new customers in the published file
            numbers[blank] = 0.0
            blank[:] = False
    with np.errstate(invalid="ignore"):
        infinite = np.isinf(numbers)
        outside = (numbers < feat.minimum) | (numbers > feat.maximum)
        fraction = (numbers != np.round(numbers)) & np.isfinite(numbers)
    bounds = f"[{feat.minimum:g}, {feat.maximum:g}]"
    found: list[tuple[int, str]] = []
    for position in np.flatnonzero(blank):
        found.append((int(position), f"{feat.name} is missing"))
    for position in np.flatnonzero(unparsed):
        found.append((int(position), f"{feat.name}: {_text(raw[position])!r} is not a number"))
    for position in np.flatnonzero(infinite & ~unparsed):
        found.append((int(position), f"{feat.name}: {_text(raw[position])!r} is not finite"))
    for position in np.flatnonzero(outside & ~infinite):
        found.append((int(position), f"{feat.name}: {numbers[position]:g} is outside {bounds}"))
    if feat.kind == "integer":
        for position in np.flatnonzero(fraction & ~outside):
            found.append(
                (int(position), f"{feat.name}: {numbers[position]:g} is not a whole number")
            )
    return numbers, found


def _is_blank(value: Any) -> bool:
    """No value: None, NaN, or a string of blanks."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, float) and value != value)


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else str(value)


# ---------------------------------------------------------------------------- files
def file_format(path: Path, what: str) -> str:
    """``"csv"`` or ``"parquet"`` from the extension; ``InputError`` for anything else."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InputError(
            f"{what} {path.name}: unknown extension {path.suffix!r}; use one of {sorted(FORMATS)}"
        )
    return kind


def default_rejects(output: Path) -> Path:
    """Where the rejected rows go by default: ``scores.csv`` -> ``scores.rejects.csv``."""
    return output.with_name(f"{output.stem}.rejects.csv")


def sidecar(output: Path) -> Path:
    """The metadata file beside a CSV output: ``scores.csv`` -> ``scores.csv.json``."""
    return output.with_name(output.name + ".json")


def digest_and_rows(path: Path, kind: str) -> tuple[str, int]:
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


def read_chunks(path: Path, kind: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
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
        self.kind = file_format(output, "output")
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
            self._scores.write(",".join([*header, PROBABILITY, DECISION]) + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            fields = [(schema.ID_COLUMN, pa.string())] if self.with_ids else []
            fields += [(PROBABILITY, pa.float64()), (DECISION, pa.bool_())]
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
            self._temp(sidecar(self.output)).write_text(text + "\n", encoding="utf-8")
        else:
            self._parquet.add_key_value_metadata({METADATA_KEY: text})
            self._parquet.close()
        order = [self.rejects, sidecar(self.output), self.output]
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
    out[DECISION] = probability >= THRESHOLD
    return pd.DataFrame(out)


def _paths(input_path, output_path, rejects_path) -> tuple[Path, str, Path, Path]:
    source = Path(input_path)
    if not source.is_file():
        raise InputError(f"{source}: no such file")
    kind = file_format(source, "input")
    output = Path(output_path)
    file_format(output, "output")
    rejects = Path(rejects_path) if rejects_path else default_rejects(output)
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
    reason (``rejects_path``, default :func:`default_rejects`) and the metadata (a CSV's
    sidecar :func:`sidecar`, a Parquet file's key-value metadata ``churnlab``); records the
    run in the ``churnlab-batch`` experiment as the logged-in user. ``progress`` shows a bar
    on stderr when it is a terminal. Raises :class:`Refused` when the stage holds no version
    and :class:`InputError` for a file that cannot be scored (missing columns, unreadable).
    """
    from churnlab.registry import Registry, parse_stage

    if chunk_rows < 1:
        raise InputError(f"chunk_rows must be a positive number of rows, got {chunk_rows}")
    stage = parse_stage(stage)
    source, kind, output, rejects = _paths(input_path, output_path, rejects_path)
    started = time.perf_counter()
    chunks = read_chunks(source, kind, chunk_rows)
    first_chunk = next(chunks, None)
    if first_chunk is None or not len(first_chunk.columns):
        raise InputError(f"{source.name}: the file is empty")
    check_columns([str(c) for c in first_chunk.columns], source.name)
    if not len(first_chunk):
        raise InputError(f"{source.name}: no rows to score")

    registry = registry or Registry()
    scorer = served_scorer(registry, stage)
    sha256, total = digest_and_rows(source, kind)
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
                metadata=str(sidecar(output) if writer.kind == "csv" else output),
                accepted=accepted,
                rejected=rejected,
                seconds=time.perf_counter() - started,
                batch_run_id=run.run_id,
            )
            recorded = metadata(result)
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


def metadata(result: BatchResult) -> dict[str, Any]:
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


def read_metadata(output: str | os.PathLike) -> dict[str, Any]:
    """The metadata a batch run recorded with ``output`` (sidecar JSON or Parquet metadata)."""
    path = Path(output)
    if file_format(path, "output") == "csv":
        return json.loads(sidecar(path).read_text(encoding="utf-8"))
    import pyarrow.parquet as pq

    found = pq.read_metadata(path).metadata or {}
    return json.loads(found[METADATA_KEY.encode()])


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
