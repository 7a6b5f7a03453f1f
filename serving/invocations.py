"""MLflow's scoring protocol on the served version: POST /invocations, GET /ping, GET /version."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema

from churnlab import schema
from serving import _http, contract

#: The four JSON request formats of MLflow's scoring server (exactly one per request).
FORMATS: tuple[str, ...] = ("dataframe_split", "dataframe_records", "inputs", "instances")
#: MLflow's key for inference parameters; accepted and ignored (the model takes none).
PARAMS = "params"
JSON, CSV = "application/json", "text/csv"
#: What a body that names no format, or several, is told.
FORMAT_PROBLEM = (
    "the body must be a JSON object with exactly one of dataframe_split, dataframe_records, "
    "inputs or instances (and optionally params)"
)
#: The error code of every refusal, as MLflow's scoring server sends for input it cannot use.
ERROR_CODE = "BAD_REQUEST"


# ---------------------------------------------------------------------------- answers
class MlflowPredictions(BaseModel):
    """What ``mlflow models serve`` answers for this model (its pyfunc predicts with
    ``predict_proba``): ``[P(stays), P(churns)]`` per customer, in the order sent."""

    predictions: list[
        Annotated[list[Annotated[float, Field(ge=0, le=1)]], Field(min_length=2, max_length=2)]
    ] = Field(min_length=1)


class FieldProblem(BaseModel):
    """One reason a request was refused: the field (``dataframe_records[3].Contract``) and why."""

    field: str
    problem: str
    type: str


class MlflowError(BaseModel):
    """A refusal in MLflow's error shape; ``errors`` lists each problem, as ``/predict`` does."""

    error_code: Literal["BAD_REQUEST"]
    message: str = Field(min_length=1)
    errors: list[FieldProblem] | SkipJsonSchema[None] = None


class Refusal(Exception):
    """A request that cannot be scored: its status, one line, and each problem."""

    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors


def _problem(status: int, field: str, problem: str, kind: str) -> Refusal:
    found = [{"field": field, "problem": problem, "type": kind}]
    return Refusal(status, contract.summary(found, 1), found)


def _refused(exc: Refusal, started: float) -> JSONResponse:
    body: dict[str, Any] = {"error_code": ERROR_CODE, "message": exc.message}
    if exc.errors is not None:
        body["errors"] = exc.errors
    return _http.refusal(exc.status, body, started)


def _documented(description: str) -> dict[str, Any]:
    return {"description": description, "model": MlflowError}


# ---------------------------------------------------------------------------- routes
def ping() -> Response:
    """MLflow's health check: 200 with the body ``"\\n"``, exactly as ``mlflow models serve``."""
    return Response("\n", media_type=JSON)


def version() -> Response:
    """The MLflow version serving, as ``mlflow models serve`` answers it (the bare string)."""
    from mlflow.version import VERSION

    return Response(VERSION, media_type=JSON)


async def invocations(request: Request) -> Response:
    """Score customers sent in one of MLflow's formats, checked by the ``/predict`` contract.

    JSON: ``dataframe_split``, ``dataframe_records``, ``inputs`` or ``instances`` (records,
    or one list per column); or a CSV body (``text/csv``) with a header row.
    """
    started = time.perf_counter()
    served = request.app.state.served  # read once: a following backend may swap it
    checker: contract.Contract = request.app.state.contract
    try:
        media = _media_type(request.headers.get("content-type"))
        try:
            body = await _http.read_body(request, checker.max_body_bytes)
        except _http.TooLarge as exc:
            raise Refusal(413, str(exc)) from None
        content = await _http.scored(
            served.scorer, body, _score, served.scorer, checker, media, body
        )
    except Refusal as exc:
        return _refused(exc, started)
    return _http.Answer(content, started, (b"x-model-version", b"%d" % served.version))


def router() -> APIRouter:
    """The three routes, in a router of their own (one per app)."""
    routes = APIRouter(tags=["mlflow scoring protocol"])
    alive = {"description": 'serving: the body is "\\n"', "content": {JSON: {}}}
    routes.add_api_route("/ping", ping, response_class=Response, responses={200: alive})
    named = {"description": "the MLflow version, e.g. 3.17.2", "content": {JSON: {}}}
    routes.add_api_route("/version", version, response_class=Response, responses={200: named})
    routes.add_api_route(
        "/invocations",
        invocations,
        methods=["POST"],
        response_model=MlflowPredictions,
        response_description="[P(stays), P(churns)] per customer, in the order sent",
        responses={
            400: _documented("malformed JSON or CSV"),
            413: _documented("request body too large"),
            415: _documented("neither application/json nor text/csv"),
            422: _documented("customers that break the input contract"),
        },
    )
    return routes


def include(app: FastAPI) -> None:
    """Add the routes to ``app``; the request body they document follows its contract.

    The contract (and so the batch limit) exists once the app has started, so the request
    body of ``POST /invocations`` is added to the OpenAPI schema once it is built
    (FastAPI's documented way to extend the schema: replace ``app.openapi``).
    """
    app.include_router(router())
    build = app.openapi

    def openapi() -> dict[str, Any]:
        spec = build()
        checker = getattr(app.state, "contract", None)
        operation = spec.get("paths", {}).get("/invocations", {}).get("post")
        if checker is not None and operation is not None and "requestBody" not in operation:
            operation.update(request_body(checker))
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


# ---------------------------------------------------------------------------- reading a request
def _media_type(value: str | None) -> str:
    """``application/json`` or ``text/csv``, by MLflow's rules: only a UTF-8 charset."""
    if value == JSON:  # what nearly every client sends: no parsing needed
        return JSON
    if not value:
        raise _problem(415, "Content-Type", f"is missing: send {JSON} or {CSV}", "content_type")
    media, *params = (part.strip() for part in value.split(";"))
    media = media.lower()
    if media not in (JSON, CSV):
        problem = f"must be {JSON} or {CSV}, got {media!r}"
        raise _problem(415, "Content-Type", problem, "content_type")
    for param in params:
        key, _, val = param.partition("=")
        key, val = key.strip().lower(), val.strip().strip('"').lower()
        if key != "charset":
            raise _problem(415, "Content-Type", f"unknown parameter {key!r}", "content_type")
        if val not in ("utf-8", "utf8"):
            raise _problem(415, "Content-Type", f"only UTF-8 is read, got {val!r}", "content_type")
    return media


#: Names a contract problem's field (``records[3].Contract``) as the request sent it;
#: called with the field and the problem's type.
Naming = Callable[[str, str], str]
_RECORD = re.compile(r"records\[(\d+)\](.*)")
_CELL = re.compile(r"columns\.([^.\[]+)\[(\d+)\](.*)")
_COLUMN = re.compile(r"columns\.([^.\[]+)")


def _records_naming(key: str) -> Naming:
    """``records[3].Contract`` -> ``<key>[3].Contract``."""
    return lambda field, kind: (
        key + field[len("records") :] if field.startswith("records") else field
    )


def _record_naming(key: str) -> Naming:
    """One record sent as an object: ``records[0].Contract`` -> ``<key>.Contract``."""

    def name(field: str, kind: str) -> str:
        found = _RECORD.fullmatch(field)
        return key + found.group(2) if found else key if field == "records" else field

    return name


def _columns_naming(key: str) -> Naming:
    """``columns.Contract[3]`` -> ``<key>.Contract[3]``."""
    return lambda field, kind: (
        key + field[len("columns") :] if field.startswith("columns") else field
    )


def _table_naming(rows: str, header: str) -> Naming:
    """A table of rows (``dataframe_split``, CSV) checked as columns: ``columns.Contract[3]``
    -> ``<rows>[3].Contract``, ``columns.tenure`` (missing, unknown) -> ``<header>.tenure``."""

    def name(field: str, kind: str) -> str:
        if kind in ("too_short", "too_long") and _COLUMN.fullmatch(field):
            return rows  # the batch size, said once per column
        found = _CELL.fullmatch(field)
        if found:
            return f"{rows}[{found.group(2)}].{found.group(1)}{found.group(3)}"
        if field.startswith("columns"):
            return header + field[len("columns") :]
        return field

    return name


def _payload(media: str, body: bytes | bytearray) -> tuple[dict[str, Any] | _Rows, Naming]:
    """The body as a ``/predict`` request (records or columns; :class:`_Rows` for a table
    sent as rows) and how to name its fields."""
    if media == CSV:
        return _from_csv(body)
    try:
        data = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:  # bad UTF-8 included
        raise _problem(400, "body", f"Invalid JSON: {exc}", "json_invalid") from None
    if not isinstance(data, dict):
        raise _problem(422, "body", FORMAT_PROBLEM, "request_layout")
    keys = [k for k in data if k in FORMATS]
    unknown = [k for k in data if k not in FORMATS and k != PARAMS]
    if len(keys) != 1:
        sent = f" (got {', '.join(map(repr, keys)) or 'none of them'})"
        raise _problem(422, "body", FORMAT_PROBLEM + sent, "request_layout")
    if unknown:
        raise _problem(422, unknown[0], "unknown field", "extra_forbidden")
    if PARAMS in data and not isinstance(data[PARAMS], dict):
        raise _problem(422, PARAMS, "must be an object (ignored: the model takes none)", "params")
    key = keys[0]
    value = data[key]
    if key == "dataframe_split":
        return _from_split(value)
    if key == "dataframe_records" or not isinstance(value, dict):
        return {"records": value}, _records_naming(key)
    if any(isinstance(v, list) for v in value.values()):  # one list per column
        return {"columns": value}, _columns_naming(key)
    return {"records": [value]}, _record_naming(key)  # one customer as an object


def _from_split(split: Any) -> tuple[_Rows, Naming]:
    """``{"columns": [...], "data": [[...], ...], "index": optional}`` as its rows, checked."""
    key = "dataframe_split"
    if not isinstance(split, dict):
        problem = "must be an object with columns, data and optionally index"
        raise _problem(422, key, problem, "dataframe_split")
    for name in split:
        if name not in ("columns", "data", "index"):
            raise _problem(422, f"{key}.{name}", "unknown field", "extra_forbidden")
    for name in ("columns", "data"):
        if name not in split:
            raise _problem(422, f"{key}.{name}", "required field is missing", "missing")
    names, rows = split["columns"], split["data"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _problem(422, f"{key}.columns", "must be a list of column names", "dataframe_split")
    if not isinstance(rows, list):
        raise _problem(422, f"{key}.data", "must be a list of rows", "dataframe_split")
    _check_table(rows, names, f"{key}.data", f"{key}.columns")
    index = split.get("index")
    if "index" in split and (not isinstance(index, list) or len(index) != len(rows)):
        problem = (
            f"has {len(index)} labels for {len(rows)} rows"
            if isinstance(index, list)
            else "must be a list of row labels"
        )
        raise _problem(422, f"{key}.index", problem, "dataframe_split")
    return _Rows(names, rows), _table_naming(f"{key}.data", f"{key}.columns")


class _Rows(NamedTuple):
    """A table sent as rows (``dataframe_split``), checked to have one value per column
    in every row and each column named once."""

    names: list[str]
    rows: list[list[Any]]

    def columns(self) -> dict[str, Any]:
        """The customers as a columns request: what the contract of record judges, so a
        problem is named by its column and row (see :func:`_table_naming`)."""
        return _columns(self.names, self.rows)

    def quick(self) -> dict[str, Any]:
        """What the contract's fast path reads: a few customers as records, which it
        validates and scores in one step (for one customer, about 9 µs less than columns
        turned back into records: see ``Batch.churn_probability``); more as columns. A
        customer's values and types are the same either way, so the fast path accepts the
        one exactly when it accepts the other."""
        if 0 < len(self.rows) <= contract.FEW_RECORDS:
            return {"records": [dict(zip(self.names, row, strict=True)) for row in self.rows]}
        return self.columns()


def _check_table(rows: list[Any], names: list[str], where: str, header: str) -> None:
    """Each row a list with one value per column; each column named once."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise _problem(422, header, f"{name!r} appears more than once", "dataframe_split")
        seen.add(name)
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise _problem(422, f"{where}[{i}]", "must be a list of values", "dataframe_split")
        if len(row) != len(names):
            problem = f"has {len(row)} values for {len(names)} columns"
            raise _problem(422, f"{where}[{i}]", problem, "dataframe_split")


def _columns(names: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    if not rows:
        return {"columns": {name: [] for name in names}}
    return {
        "columns": {
            name: list(values) for name, values in zip(names, zip(*rows, strict=True), strict=True)
        }
    }


_KINDS = {f.name: f.kind for f in schema.FEATURES}


def _from_csv(body: bytes | bytearray) -> tuple[dict[str, Any], Naming]:
    """A CSV with a header row as columns. CSV has no types: a numeric feature's text is
    read as a number when it is one, an empty cell as null; the contract judges the rest."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _problem(400, "body", f"the CSV is not UTF-8: {exc.reason}", "csv_invalid") from None
    try:
        table = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    except csv.Error as exc:
        raise _problem(400, "body", f"malformed CSV: {exc}", "csv_invalid") from None
    if not table:
        raise _problem(
            400, "body", "the CSV is empty: send a header row, then customers", "csv_invalid"
        )
    names, rows = table[0], table[1:]
    if names and names[0] == "":  # pandas' to_csv() writes the index as a first, unnamed column
        names, rows = names[1:], [row[1:] for row in rows]
    _check_table(rows, names, "csv", "csv.columns")
    columns = _columns(names, rows)["columns"]
    for name, values in columns.items():
        kind = _KINDS.get(name, "categorical")
        columns[name] = [_cell(value, kind) for value in values]
    return {"columns": columns}, _table_naming("csv", "csv.columns")


def _cell(text: str, kind: str) -> Any:
    if text == "":
        return None
    if kind == "categorical":
        return text
    for read in (int, float) if kind == "integer" else (float,):
        try:
            return read(text)
        except ValueError:
            continue
    return text  # not a number: the contract names it


# ---------------------------------------------------------------------------- scoring
def _score(scorer: Any, checker: contract.Contract, media: str, body: bytes | bytearray) -> bytes:
    """The answer to a request: convert, validate with the contract, score, render.

    The contract's fast path reads the body first (a table sent as rows: see
    :meth:`_Rows.quick`); what it refuses, the contract of record judges and names.
    """
    payload, naming = _payload(media, body)
    encode = _http.ENCODER.encode
    rows = payload if isinstance(payload, _Rows) else None
    try:
        batch = checker.decode_fast(
            encode(rows.quick() if rows is not None else payload)
        ) or checker.validate_python(rows.columns() if rows is not None else payload)
    except ValidationError as exc:
        raise _contract_refusal(exc, naming) from None
    churn = batch.churn_probability(scorer)
    return encode({"predictions": [[1.0 - p, p] for p in churn.tolist()]})


def _contract_refusal(exc: ValidationError, naming: Naming) -> Refusal:
    """The contract's problems named as the request sent them (each field once)."""
    found, seen = [], set()
    for problem in contract.problems(exc):
        problem = {**problem, "field": naming(problem["field"], problem["type"])}
        if (problem["field"], problem["problem"]) not in seen:
            seen.add((problem["field"], problem["problem"]))
            found.append(problem)
    total = exc.error_count() - (min(exc.error_count(), 20) - len(found))
    return Refusal(422, contract.summary(found, total), found)


# ---------------------------------------------------------------------------- OpenAPI
def request_body(checker: contract.Contract) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of ``POST /invocations`` under ``checker``'s limits."""
    records = columns = None
    for layout in checker.json_schema()["oneOf"]:
        records = layout["properties"].get("records", records)
        columns = layout["properties"].get("columns", columns)
    assert records is not None and columns is not None
    record = records["items"]
    cell = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]}
    split = {
        "type": "object",
        "description": "pandas' split orient: column names, then one list of values per row.",
        "properties": {
            "columns": {
                "type": "array",
                "items": {"type": "string", "enum": list(contract.COLUMN_NAMES)},
                "uniqueItems": True,
            },
            "data": {
                "type": "array",
                "items": {"type": "array", "items": cell},
                "minItems": 1,
                "maxItems": checker.max_records,
            },
            "index": {"type": "array", "description": "row labels (ignored)"},
        },
        "required": ["columns", "data"],
        "additionalProperties": False,
    }
    either = {"anyOf": [records, columns, record]}
    shapes = {
        "dataframe_split": split,
        "dataframe_records": records,
        "inputs": either,
        "instances": either,
    }
    params = {"type": "object", "description": "accepted and ignored: the model takes none"}
    example = {k: v for k, v in schema.EXAMPLE_RECORD.items() if k != schema.ID_COLUMN}
    names = list(example)
    return {
        "requestBody": {
            "required": True,
            "content": {
                JSON: {
                    "schema": {
                        "anyOf": [
                            {
                                "type": "object",
                                "title": key,
                                "properties": {key: shape, PARAMS: params},
                                "required": [key],
                                "additionalProperties": False,
                            }
                            for key, shape in shapes.items()
                        ]
                    },
                    "examples": {
                        "dataframe_split": {
                            "summary": "column names, then rows (what MLflow's client sends)",
                            "value": {
                                "dataframe_split": {
                                    "columns": names,
                                    "data": [[example[n] for n in names]],
                                }
                            },
                        },
                        "dataframe_records": {
                            "summary": "one object per customer",
                            "value": {"dataframe_records": [example]},
                        },
                        "inputs": {
                            "summary": "one list per column",
                            "value": {"inputs": {n: [example[n]] for n in names}},
                        },
                        "instances": {
                            "summary": "one object per customer",
                            "value": {"instances": [example]},
                        },
                    },
                },
                CSV: {
                    "schema": {"type": "string", "description": "a header row, then customers"},
                    "example": ",".join(names)
                    + "\n"
                    + ",".join(str(example[n]) for n in names)
                    + "\n",
                },
            },
        }
    }
