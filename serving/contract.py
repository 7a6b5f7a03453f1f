"""The input contract of ``POST /predict``, built from the one feature schema.

Nothing here is written by hand per column: each field of :data:`CustomerRecord` comes
from :mod:`churnlab.schema` (a ``Literal`` of the allowed values for a categorical, a
strict integer or a finite number within the schema's range for a numeric). Unknown or
missing fields, wrong types, values outside the vocabulary or range, NaN and infinity all
fail validation, and :func:`problems` turns pydantic's errors into lines that name the
record and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictStr,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from churnlab import schema

DEFAULT_MAX_RECORDS = 10_000
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024

#: One plausible customer (shown in the page's form and the OpenAPI example).
EXAMPLE_RECORD: dict[str, Any] = {
    "customerID": "7590-VHVEG",
    "gender": "Female",
    "SeniorCitizen": 0,
    "Partner": "Yes",
    "Dependents": "No",
    "tenure": 1,
    "PhoneService": "No",
    "MultipleLines": "No phone service",
    "InternetService": "DSL",
    "OnlineSecurity": "No",
    "OnlineBackup": "Yes",
    "DeviceProtection": "No",
    "TechSupport": "No",
    "StreamingTV": "No",
    "StreamingMovies": "No",
    "Contract": "Month-to-month",
    "PaperlessBilling": "Yes",
    "PaymentMethod": "Electronic check",
    "MonthlyCharges": 29.85,
    "TotalCharges": 29.85,
}


def _number_not_text(value: Any) -> Any:
    if isinstance(value, str | bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


def _field_type(feature: schema.Feature) -> Any:
    """The pydantic type of one schema column."""
    description = feature.description or None
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


@dataclass(frozen=True)
class Contract:
    """The request validator for a given batch limit."""

    max_records: int = DEFAULT_MAX_RECORDS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        records = Annotated[
            list[CustomerRecord],  # type: ignore[valid-type]
            Field(min_length=1, max_length=self.max_records),
        ]
        request = TypedDict("PredictRequest", {"records": records})  # type: ignore[operator]  # noqa: UP013
        request.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
        object.__setattr__(self, "_adapter", TypeAdapter(request))

    def validate_json(self, body: bytes) -> list[dict[str, Any]]:
        """The records of a JSON request body (parsed and validated in one pass).

        Raises :class:`pydantic.ValidationError`; see :func:`problems`.
        """
        return self._adapter.validate_json(body)["records"]  # type: ignore[attr-defined]

    def validate_python(self, payload: Any) -> list[dict[str, Any]]:
        """The records of an already parsed request."""
        return self._adapter.validate_python(payload)["records"]  # type: ignore[attr-defined]

    def json_schema(self) -> dict[str, Any]:
        """The request body's JSON schema, self-contained (no ``$ref``), for OpenAPI."""
        raw = self._adapter.json_schema()  # type: ignore[attr-defined]
        return _inline(raw, raw.get("$defs", {}))


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
        kind = err.get("type", "")
        message = err.get("msg", "invalid")
        if kind == "too_long" and loc == ("records",):
            ctx = err.get("ctx", {})
            message = (
                f"a request holds at most {ctx.get('max_length')} records, "
                f"got {ctx.get('actual_length')}"
            )
        elif kind == "too_short" and loc == ("records",):
            message = "the batch is empty: send at least one record"
        elif kind == "missing":
            message = "required field is missing"
        elif kind == "extra_forbidden":
            message = "unknown field (the schema's fields are listed at /metadata)"
        elif kind == "finite_number":
            message = f"must be a finite number, got {_shown(err.get('input'))}"
        elif kind != "json_invalid" and not isinstance(err.get("input"), dict | list):
            message = f"{message}, got {_shown(err.get('input'))}"
        out.append({"field": _where(loc), "problem": message, "type": kind})
    return out


def summary(found: list[dict[str, Any]], total: int) -> str:
    """One line naming the first problem and how many more there are."""
    first = found[0]
    more = f" (and {total - 1} more)" if total > 1 else ""
    return f"{first['field']}: {first['problem']}{more}"
