"""The input contract of ``POST /predict``, built from the one feature schema.

A request holds a batch of customers in one of two layouts:

* ``{"records": [{feature: value, ...}, ...]}`` - one object per customer;
* ``{"columns": {feature: [value, ...], ...}}`` - one list per feature, all the same length
  (a third of the bytes of the records layout and no per-customer objects: the layout for
  large batches).

Nothing here is written by hand per column: each field comes from :mod:`churnlab.schema`
(a ``Literal`` of the allowed values for a categorical, a strict integer or a finite number
within the schema's range for a numeric). Unknown or missing fields, wrong types, values
outside the vocabulary or range, NaN and infinity all fail validation.

Two validators implement the contract:

* the **contract of record**, pydantic (:class:`Contract` ``.validate_json``): it documents
  the request in OpenAPI, accepts everything the contract allows (such as ``3.0`` for an
  integer) and explains every refusal (:func:`problems` turns its errors into lines that
  name the customer and the field: ``records[3].Contract``, ``columns.tenure[17]``);
* a **fast path**, msgspec (``.decode_fast``): typed decoding that parses and validates in
  one pass, several times faster on a large request. It accepts a subset of what pydantic
  accepts, with the same values (``tests/backend/test_serving_fastpath.py`` checks this
  property); whatever it refuses goes to pydantic, which accepts it or says why not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter, methodcaller
from typing import Annotated, Any, Literal, NotRequired

import msgspec
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    StrictStr,
    Tag,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from churnlab import schema

DEFAULT_MAX_RECORDS = 10_000
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


def _number_not_text(value: Any) -> Any:
    if isinstance(value, str | bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


def _field_type(feature: schema.Feature, described: bool = True) -> Any:
    """The pydantic type of one value of a schema column."""
    description = (feature.description or None) if described else None
    if feature.is_categorical:
        return Annotated[Literal[feature.values], Field(description=description)]
    bounds = Field(ge=feature.minimum, le=feature.maximum, description=description)
    if feature.kind == "integer":
        # JSON Schema's integer: 3 and 3.0 alike (what float columns serialize to); never a
        # string, a boolean or a fraction
        return Annotated[int, bounds, BeforeValidator(_number_not_text)]
    # a strict number: ints and floats, never strings or booleans, never NaN or infinity
    return Annotated[float, Strict(), bounds, Field(allow_inf_nan=False)]


def _record_type() -> type:
    fields: dict[str, Any] = {schema.ID_COLUMN: NotRequired[StrictStr | None]}
    fields.update({f.name: _field_type(f) for f in schema.FEATURES})
    record = TypedDict("CustomerRecord", fields)  # type: ignore[operator]
    record.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    return record


#: One customer: the schema's columns, ``customerID`` optional; nothing else.
CustomerRecord = _record_type()

#: The two layouts of a request body, named by their one key.
LAYOUTS: tuple[str, ...] = ("records", "columns")
Layout = Literal["records", "columns"]
#: What a body that names both layouts, or neither, is told.
LAYOUT_PROBLEM = (
    "send exactly one of records (a list of customer objects) "
    "or columns (one list of values per feature)"
)
#: The column names a batch has: the optional customerID, then the schema's features.
COLUMN_NAMES: tuple[str, ...] = (schema.ID_COLUMN, *schema.FEATURE_NAMES)


def _columns_type(max_records: int) -> type:
    """One list per schema column (``customerID`` optional), each 1..max_records long."""

    def column(item: Any, description: str | None = None) -> Any:
        return Annotated[
            list[item], Field(min_length=1, max_length=max_records, description=description)
        ]

    fields: dict[str, Any] = {schema.ID_COLUMN: NotRequired[column(StrictStr | None)]}
    fields.update(
        {
            f.name: column(_field_type(f, described=False), f.description or None)
            for f in schema.FEATURES
        }
    )
    columns = TypedDict("CustomerColumns", fields)  # type: ignore[operator]
    columns.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    return columns


def _same_length(columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Every column holds one value per customer."""
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise PydanticCustomError(
            "column_lengths", "{message}", {"message": unequal_lengths(lengths)}
        )
    return columns


def unequal_lengths(lengths: Mapping[str, int]) -> str:
    """One line naming the columns whose length differs from the others'."""
    counts: dict[int, int] = {}
    for n in lengths.values():
        counts[n] = counts.get(n, 0) + 1
    usual = max(counts, key=lambda n: (counts[n], -n))
    odd = [f"{name} has {n}" for name, n in lengths.items() if n != usual]
    shown = ", ".join(odd[:5]) + (f" and {len(odd) - 5} more differ" if len(odd) > 5 else "")
    return (
        "every column needs one value per customer: "
        f"{counts[usual]} columns have {usual} values, but {shown}"
    )


def _layout(body: Any) -> str | None:
    """Which layout a request body uses; ``None`` when it names both or neither."""
    if not isinstance(body, dict):
        return "records"  # which then says that the body should be an object
    has_records, has_columns = "records" in body, "columns" in body
    if has_records == has_columns:
        return None
    return "records" if has_records else "columns"


def _request_type(max_records: int) -> Any:
    """The pydantic type of a request body: records or columns, exactly one."""
    records = Annotated[
        list[CustomerRecord],  # type: ignore[valid-type]
        Field(min_length=1, max_length=max_records),
    ]
    by_records = TypedDict("RecordsRequest", {"records": records})  # type: ignore[operator]  # noqa: UP013
    by_records.__pydantic_config__ = ConfigDict(  # type: ignore[attr-defined]
        extra="forbid",
        json_schema_extra={"description": "One object per customer."},
    )
    columns = Annotated[_columns_type(max_records), AfterValidator(_same_length)]
    by_columns = TypedDict("ColumnsRequest", {"columns": columns})  # type: ignore[operator]  # noqa: UP013
    by_columns.__pydantic_config__ = ConfigDict(  # type: ignore[attr-defined]
        extra="forbid",
        json_schema_extra={
            "description": "One list per feature, all the same length: value i of every "
            "list is customer i. A third of the bytes of records: the layout for large batches."
        },
    )
    return Annotated[
        Annotated[by_records, Tag("records")] | Annotated[by_columns, Tag("columns")],
        Discriminator(
            _layout, custom_error_type="request_layout", custom_error_message=LAYOUT_PROBLEM
        ),
    ]


# ---------------------------------------------------------------------------- the fast path
def _fast_type(feature: schema.Feature) -> Any:
    """The msgspec type of one value of a schema column (the pydantic type's strict subset)."""
    if feature.is_categorical:
        return Literal[feature.values]
    if feature.kind == "integer":
        bounds = msgspec.Meta(ge=math.ceil(feature.minimum), le=math.floor(feature.maximum))
        return Annotated[int, bounds]  # JSON integers only: 3.0 is left to pydantic
    return Annotated[float, msgspec.Meta(ge=feature.minimum, le=feature.maximum)]


def _fast_request_type(max_records: int) -> type:
    """A msgspec Struct of a request body: records or columns, both optional (checked after)."""
    limits = msgspec.Meta(min_length=1, max_length=max_records)
    unset = msgspec.UnsetType
    # gc=False: the decoded structs hold no cycles, and untracked objects keep a large
    # batch from triggering the cyclic garbage collector
    record = msgspec.defstruct(
        "FastRecord",
        [(f.name, _fast_type(f)) for f in schema.FEATURES] + [(schema.ID_COLUMN, str | None, None)],
        forbid_unknown_fields=True,
        gc=False,
    )
    columns = msgspec.defstruct(
        "FastColumns",
        [(f.name, Annotated[list[_fast_type(f)], limits]) for f in schema.FEATURES]
        + [(schema.ID_COLUMN, Annotated[list[str | None], limits] | unset, msgspec.UNSET)],
        forbid_unknown_fields=True,
        gc=False,
    )
    return msgspec.defstruct(
        "FastRequest",
        [
            ("records", Annotated[list[record], limits] | unset, msgspec.UNSET),
            ("columns", columns | unset, msgspec.UNSET),
        ],
        forbid_unknown_fields=True,
        gc=False,
    )


# ---------------------------------------------------------------------------- batches
_COLUMNS = frozenset(COLUMN_NAMES)
#: A batch this small is scored from its records: the graph's arrays are quicker to build
#: from a few records than from columns (for one customer, ~30 µs less from record
#: objects, ~15 µs from columns); larger batches are quicker as columns.
FEW_RECORDS = 16


class _RecordColumns(Mapping[str, list[Any]]):
    """Validated records read column by column; a column is built when first asked for.

    ``read(name)`` reads one field of a record; ``as_dict`` turns a record into a dict
    (``None``: the records are dicts already).
    """

    def __init__(self, records: Sequence[Any], read: Any, as_dict: Any = None) -> None:
        self._records, self._read, self._as_dict = records, read, as_dict
        self._built: dict[str, list[Any]] = {}

    def __contains__(self, name: object) -> bool:
        return name in _COLUMNS

    def records(self) -> list[dict[str, Any]]:
        """The records as dicts keyed by column name."""
        if self._as_dict is None:
            return list(self._records)
        return list(map(self._as_dict, self._records))

    def __getitem__(self, name: str) -> list[Any]:
        column = self._built.get(name)
        if column is None:
            if name not in COLUMN_NAMES:
                raise KeyError(name)
            column = self._built[name] = list(map(self._read(name), self._records))
        return column

    def __iter__(self):
        return iter(COLUMN_NAMES)

    def __len__(self) -> int:
        return len(COLUMN_NAMES)


def _from_dict(name: str) -> Any:
    return methodcaller("get", name)  # customerID may be absent: None


@dataclass(frozen=True)
class Batch:
    """A validated request: its customers as columns (feature name -> values), in order.

    ``layout`` is how the request sent them; ``columns`` has every schema feature and
    ``customerID`` when the request gave one (``None`` for a customer without).
    """

    layout: Layout
    size: int
    columns: Mapping[str, Sequence[Any]]

    def records(self) -> list[dict[str, Any]]:
        """The customers as records (dicts keyed by column name), in order."""
        if isinstance(self.columns, _RecordColumns):
            return self.columns.records()
        names = list(self.columns)
        return [
            dict(zip(names, row, strict=True)) for row in zip(*self.columns.values(), strict=True)
        ]

    def churn_probability(self, scorer: Any) -> Any:
        """Each customer's churn probability by ``scorer`` (a :class:`churnlab.scoring.Scorer`).

        A few customers scored by the ONNX graph go to it as records (see
        :data:`FEW_RECORDS`), larger batches as columns. Both reach the graph as the same
        two arrays, so the probabilities are the same.
        """
        if self.size <= FEW_RECORDS and getattr(scorer, "kind", "") == "onnx":
            return scorer.churn_probability(self.records())
        return scorer.churn_probability_of_columns(self.columns)


@dataclass(frozen=True)
class Contract:
    """The request validators for a given batch limit."""

    max_records: int = DEFAULT_MAX_RECORDS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        object.__setattr__(self, "_adapter", TypeAdapter(_request_type(self.max_records)))
        decoder = msgspec.json.Decoder(_fast_request_type(self.max_records))
        object.__setattr__(self, "_fast", decoder)

    def parse(self, body: bytes | bytearray) -> Batch:
        """The batch of a JSON request body: the fast path, else the contract of record.

        Raises :class:`pydantic.ValidationError` (see :func:`problems`).
        """
        batch = self.decode_fast(body)
        return batch if batch is not None else self.validate_json(body)

    def decode_fast(self, body: bytes | bytearray) -> Batch | None:
        """The batch when msgspec decodes and validates ``body``; ``None`` when it refuses."""
        try:
            request = self._fast.decode(body)  # type: ignore[attr-defined]
        except (ValueError, RecursionError):  # msgspec's errors and bad UTF-8 are ValueErrors
            return None
        records, columns = request.records, request.columns
        if columns is msgspec.UNSET and records is not msgspec.UNSET:
            read = _RecordColumns(records, attrgetter, msgspec.structs.asdict)
            return Batch("records", len(records), read)
        if records is not msgspec.UNSET or columns is msgspec.UNSET:
            return None  # both or neither: pydantic says so
        values = {name: getattr(columns, name) for name in schema.FEATURE_NAMES}
        if columns.customerID is not msgspec.UNSET:
            values[schema.ID_COLUMN] = columns.customerID
        sizes = {len(v) for v in values.values()}
        return Batch("columns", sizes.pop(), values) if len(sizes) == 1 else None

    def validate_json(self, body: bytes | bytearray | str) -> Batch:
        """The batch of a JSON request body, by the contract of record (pydantic).

        Raises :class:`pydantic.ValidationError`; see :func:`problems`.
        """
        return _batch(self._adapter.validate_json(body))  # type: ignore[attr-defined]

    def validate_python(self, payload: Any) -> Batch:
        """The batch of an already parsed request."""
        return _batch(self._adapter.validate_python(payload))  # type: ignore[attr-defined]

    def json_schema(self) -> dict[str, Any]:
        """The request body's JSON schema, self-contained (no ``$ref``), for OpenAPI."""
        raw = self._adapter.json_schema()  # type: ignore[attr-defined]
        return _inline(raw, raw.get("$defs", {}))


def _batch(request: dict[str, Any]) -> Batch:
    if "records" in request:
        records = request["records"]
        return Batch("records", len(records), _RecordColumns(records, _from_dict))
    columns = dict(request["columns"])
    return Batch("columns", len(columns[schema.FEATURE_NAMES[0]]), columns)


def to_columns(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Records (dicts) as a columns request body: the same customers, the other layout."""
    names = [n for n in COLUMN_NAMES if any(n in r for r in records)]
    return {name: [r.get(name) for r in records] for name in names}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.rsplit("/", 1)[-1]], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def problems(exc: ValidationError, limit: int = 20) -> list[dict[str, Any]]:
    """Each validation problem as ``{"field": "records[3].Contract", "problem": "..."}``."""
    out = []
    for err in exc.errors(include_url=False)[:limit]:
        loc = tuple(err.get("loc", ()))
        if loc and loc[0] in LAYOUTS:  # the union's tag: the layout the body chose
            loc = loc[1:]
        kind = err.get("type", "")
        message = err.get("msg", "invalid")
        ctx = err.get("ctx", {})
        in_columns = len(loc) == 2 and loc[0] == "columns"
        if kind == "too_long" and loc == ("records",):
            message = (
                f"a request holds at most {ctx.get('max_length')} records, "
                f"got {ctx.get('actual_length')}"
            )
        elif kind == "too_long" and in_columns:
            message = (
                f"a request holds at most {ctx.get('max_length')} customers, "
                f"got {ctx.get('actual_length')} values"
            )
        elif kind == "too_short" and (loc == ("records",) or in_columns):
            message = "the batch is empty: send at least one customer"
        elif kind == "missing":
            message = "required field is missing"
        elif kind == "extra_forbidden":
            message = "unknown field (the schema's fields are listed at /metadata)"
        elif kind == "finite_number":
            message = f"must be a finite number, got {_shown(err.get('input'))}"
        elif kind not in ("json_invalid", "column_lengths", "request_layout") and not isinstance(
            err.get("input"), dict | list
        ):
            message = f"{message}, got {_shown(err.get('input'))}"
        out.append({"field": _where(loc), "problem": message, "type": kind})
    return out


def summary(found: list[dict[str, Any]], total: int) -> str:
    """One line naming the first problem and how many more there are."""
    first = found[0]
    more = f" (and {total - 1} more)" if total > 1 else ""
    return f"{first['field']}: {first['problem']}{more}"
