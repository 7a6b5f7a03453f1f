"""Customer rows checked against the schema a column at a time: accepted as inputs, or rejected.

Used by batch scoring (:mod:`churnlab.batch`) and the notebooks' retention list: every
categorical value must be in its feature's vocabulary, every number must parse, be finite,
lie in its range and be whole for integer features.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from churnlab import schema
from churnlab.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

#: columns a file must have: the model's features (gender and customerID are optional)
REQUIRED: tuple[str, ...] = tuple(f.name for f in schema.MODEL_FEATURES)


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
