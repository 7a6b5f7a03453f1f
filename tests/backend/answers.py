"""The requests whose answers must never change by accident, and how an answer is written down.

``REQUESTS`` covers every route of the backend: good and bad bodies in both ``/predict``
layouts and in every ``/invocations`` format, each content-type refusal, the limits, the
webhook's refusals, MLflow's ``/ping`` and ``/version``, the page and its files, the
OpenAPI schema, unknown paths and wrong methods. :func:`written` turns one answer into
text: the status, every header in the order sent, the body byte for byte, with only what
differs from run to run masked (the run id, ``Server-Timing``'s milliseconds, uvicorn's
``date``, a following backend's ``last_check``).

``tests/backend/test_answers.py`` compares the in-process app's answers with the ones
recorded in ``tests/backend/answers/``; the same list, sent over HTTP to two builds side
by side, is how a change to serving's request handling is shown to change no answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from churnlab import schema

GOOD = {name: schema.EXAMPLE_RECORD[name] for name in schema.FEATURE_NAMES}
WITH_ID = dict(schema.EXAMPLE_RECORD)
OTHER = {
    **GOOD,
    "SeniorCitizen": 1,
    "tenure": 45,
    "Contract": "Two year",
    "PaymentMethod": "Credit card (automatic)",
    "MonthlyCharges": 104.8,
    "TotalCharges": 4716.0,
}
NAMES = list(schema.FEATURE_NAMES)
JSON = {"Content-Type": "application/json"}
CSV = {"Content-Type": "text/csv"}


@dataclass(frozen=True)
class Ask:
    """One request: a name for the record, the method, the path, headers and body."""

    name: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def _json(value) -> bytes:
    return json.dumps(value).encode()


def _columns(*records: dict) -> dict:
    return {name: [r[name] for r in records] for name in records[0]}


def _csv(*records: dict, index: bool = False, bom: bool = False) -> bytes:
    names = list(records[0])
    lines = [("," if index else "") + ",".join(names)]
    for i, r in enumerate(records):
        lines.append((f"{i}," if index else "") + ",".join(str(r[n]) for n in names))
    text = "\n".join(lines) + "\n"
    return (("\ufeff" if bom else "") + text).encode()


def _predict() -> list[Ask]:
    post = "/predict"
    bad = {**GOOD, "Contract": "monthly", "tenure": -1, "MonthlyCharges": "high"}
    many_problems = {"records": [{**GOOD, "Contract": "x"} for _ in range(25)]}
    asks = [
        Ask("predict records one", "POST", post, JSON, _json({"records": [GOOD]})),
        Ask("predict records with id", "POST", post, JSON, _json({"records": [WITH_ID, OTHER]})),
        Ask("predict columns", "POST", post, JSON, _json({"columns": _columns(GOOD, OTHER)})),
        Ask("predict columns with id", "POST", post, JSON, _json({"columns": _columns(WITH_ID)})),
        Ask(
            "predict 3.0 for an integer",
            "POST",
            post,
            JSON,
            _json({"records": [{**GOOD, "tenure": 3.0}]}),
        ),
        Ask(
            "predict +json type",
            "POST",
            post,
            {"Content-Type": "application/vnd.churn+json"},
            _json({"records": [GOOD]}),
        ),
        Ask(
            "predict charset utf-8",
            "POST",
            post,
            {"Content-Type": "application/json; charset=UTF-8"},
            _json({"records": [GOOD]}),
        ),
        Ask("predict no content type", "POST", post, {}, _json({"records": [GOOD]})),
        Ask(
            "predict text/plain",
            "POST",
            post,
            {"Content-Type": "text/plain"},
            _json({"records": [GOOD]}),
        ),
        Ask(
            "predict latin-1",
            "POST",
            post,
            {"Content-Type": "application/json; charset=latin-1"},
            _json({"records": [GOOD]}),
        ),
        Ask("predict malformed json", "POST", post, JSON, b'{"records": [}'),
        Ask("predict empty body", "POST", post, JSON, b""),
        Ask("predict not utf-8", "POST", post, JSON, b'{"records": [{"gender": "\xff"}]}'),
        Ask("predict a list", "POST", post, JSON, _json([GOOD])),
        Ask(
            "predict both layouts",
            "POST",
            post,
            JSON,
            _json({"records": [GOOD], "columns": _columns(GOOD)}),
        ),
        Ask("predict neither layout", "POST", post, JSON, _json({"customers": [GOOD]})),
        Ask("predict empty batch", "POST", post, JSON, _json({"records": []})),
        Ask("predict unknown field", "POST", post, JSON, _json({"records": [{**GOOD, "age": 40}]})),
        Ask(
            "predict missing field",
            "POST",
            post,
            JSON,
            _json({"records": [{k: v for k, v in GOOD.items() if k != "tenure"}]}),
        ),
        Ask("predict bad values", "POST", post, JSON, _json({"records": [GOOD, bad]})),
        Ask(
            "predict NaN",
            "POST",
            post,
            JSON,
            _json({"records": [GOOD]}).replace(b"29.85,", b"NaN,", 1),
        ),
        Ask(
            "predict Infinity",
            "POST",
            post,
            JSON,
            _json({"records": [GOOD]}).replace(b"29.85,", b"Infinity,", 1),
        ),
        Ask(
            "predict boolean for a number",
            "POST",
            post,
            JSON,
            _json({"records": [{**GOOD, "SeniorCitizen": True}]}),
        ),
        Ask(
            "predict fractional integer",
            "POST",
            post,
            JSON,
            _json({"records": [{**GOOD, "tenure": 1.5}]}),
        ),
        Ask(
            "predict columns unequal",
            "POST",
            post,
            JSON,
            _json({"columns": {**_columns(GOOD, OTHER), "tenure": [1]}}),
        ),
        Ask(
            "predict columns bad cell",
            "POST",
            post,
            JSON,
            _json({"columns": {**_columns(GOOD, OTHER), "Contract": ["Two year", "monthly"]}}),
        ),
        Ask("predict columns not lists", "POST", post, JSON, _json({"columns": GOOD})),
        Ask("predict many problems", "POST", post, JSON, _json(many_problems)),
        Ask("predict too many records", "POST", post, JSON, _json({"records": [GOOD] * 10_001})),
        Ask("predict declared too large", "POST", post, {**JSON, "Content-Length": "9000000"}, b""),
        Ask("predict too large", "POST", post, JSON, b" " * (8 * 1024 * 1024 + 1)),
        Ask(
            "predict unicode value",
            "POST",
            post,
            JSON,
            _json({"records": [{**GOOD, "Contract": "Zwei Jahre \u00fc \u4e00"}]}),
        ),
        Ask("predict GET", "GET", post),
        Ask("predict trailing slash", "POST", post + "/", JSON, _json({"records": [GOOD]})),
    ]
    return asks


def _invocations() -> list[Ask]:
    post = "/invocations"
    split = {"columns": NAMES, "data": [[GOOD[n] for n in NAMES], [OTHER[n] for n in NAMES]]}
    bad = {**GOOD, "Contract": "monthly"}
    return [
        Ask("invocations dataframe_split", "POST", post, JSON, _json({"dataframe_split": split})),
        Ask(
            "invocations split with index",
            "POST",
            post,
            JSON,
            _json({"dataframe_split": {**split, "index": [7, 9]}}),
        ),
        Ask(
            "invocations dataframe_records",
            "POST",
            post,
            JSON,
            _json({"dataframe_records": [GOOD, OTHER]}),
        ),
        Ask("invocations inputs records", "POST", post, JSON, _json({"inputs": [GOOD]})),
        Ask(
            "invocations inputs columns",
            "POST",
            post,
            JSON,
            _json({"inputs": _columns(GOOD, OTHER)}),
        ),
        Ask("invocations inputs one object", "POST", post, JSON, _json({"inputs": GOOD})),
        Ask("invocations instances", "POST", post, JSON, _json({"instances": [OTHER]})),
        Ask(
            "invocations params",
            "POST",
            post,
            JSON,
            _json({"dataframe_records": [GOOD], "params": {"x": 1}}),
        ),
        Ask(
            "invocations charset",
            "POST",
            post,
            {"Content-Type": "application/json; charset=utf-8"},
            _json({"instances": [GOOD]}),
        ),
        Ask("invocations csv", "POST", post, CSV, _csv(GOOD, OTHER)),
        Ask("invocations csv with index", "POST", post, CSV, _csv(GOOD, OTHER, index=True)),
        Ask("invocations csv with bom", "POST", post, CSV, _csv(GOOD, bom=True)),
        Ask("invocations csv empty", "POST", post, CSV, b""),
        Ask("invocations csv not utf-8", "POST", post, CSV, b"gender\n\xff\n"),
        Ask("invocations csv short row", "POST", post, CSV, _csv(GOOD) + b"Female,0\n"),
        Ask("invocations csv bad value", "POST", post, CSV, _csv(bad)),
        Ask("invocations csv text number", "POST", post, CSV, _csv({**GOOD, "tenure": "ten"})),
        Ask("invocations parquet", "POST", post, {"Content-Type": "application/parquet"}, b"PAR1"),
        Ask("invocations no content type", "POST", post, {}, _json({"inputs": [GOOD]})),
        Ask(
            "invocations latin-1",
            "POST",
            post,
            {"Content-Type": "application/json; charset=latin-1"},
            _json({"inputs": [GOOD]}),
        ),
        Ask(
            "invocations unknown parameter",
            "POST",
            post,
            {"Content-Type": "application/json; q=1"},
            _json({"inputs": [GOOD]}),
        ),
        Ask("invocations malformed json", "POST", post, JSON, b"{"),
        Ask("invocations a list", "POST", post, JSON, _json([GOOD])),
        Ask(
            "invocations two formats",
            "POST",
            post,
            JSON,
            _json({"inputs": [GOOD], "instances": [GOOD]}),
        ),
        Ask("invocations no format", "POST", post, JSON, _json({"params": {}})),
        Ask("invocations unknown key", "POST", post, JSON, _json({"inputs": [GOOD], "extra": 1})),
        Ask(
            "invocations params not object",
            "POST",
            post,
            JSON,
            _json({"inputs": [GOOD], "params": [1]}),
        ),
        Ask("invocations split not object", "POST", post, JSON, _json({"dataframe_split": [1]})),
        Ask(
            "invocations split unknown",
            "POST",
            post,
            JSON,
            _json({"dataframe_split": {**split, "dtypes": {}}}),
        ),
        Ask(
            "invocations split missing data",
            "POST",
            post,
            JSON,
            _json({"dataframe_split": {"columns": NAMES}}),
        ),
        Ask(
            "invocations split columns",
            "POST",
            post,
            JSON,
            _json({"dataframe_split": {"columns": "x", "data": []}}),
        ),
        Ask(
            "invocations split data",
            "POST",
            post,
            JSON,
            _json({"dataframe_split": {"columns": NAMES, "data": 1}}),
        ),
        Ask(
            "invocations split duplicate",
            "POST",
            post,
            JSON,
            _json(
                {
                    "dataframe_split": {
                        "columns": NAMES + ["tenure"],
                        "data": [[GOOD[n] for n in NAMES] + [1]],
                    }
                }
            ),
        ),
        Ask(
            "invocations split row",
            "POST",
            post,
            JSON,
            _json({"dataframe_split": {"columns": NAMES, "data": [[1, 2]]}}),
        ),
        Ask(
            "invocations split row not list",
            "POST",
            post,
            JSON,
            _json({"dataframe_split": {"columns": NAMES, "data": [1]}}),
        ),
        Ask(
            "invocations split index",
            "POST",
            post,
            JSON,
            _json({"dataframe_split": {**split, "index": [1]}}),
        ),
        Ask(
            "invocations split missing column",
            "POST",
            post,
            JSON,
            _json(
                {"dataframe_split": {"columns": NAMES[1:], "data": [[GOOD[n] for n in NAMES[1:]]]}}
            ),
        ),
        Ask(
            "invocations split empty",
            "POST",
            post,
            JSON,
            _json({"dataframe_split": {"columns": NAMES, "data": []}}),
        ),
        Ask(
            "invocations records bad", "POST", post, JSON, _json({"dataframe_records": [GOOD, bad]})
        ),
        Ask("invocations inputs object bad", "POST", post, JSON, _json({"inputs": bad})),
        Ask(
            "invocations inputs columns bad",
            "POST",
            post,
            JSON,
            _json({"inputs": _columns(GOOD, bad)}),
        ),
        Ask(
            "invocations split bad",
            "POST",
            post,
            JSON,
            _json({"dataframe_split": {"columns": NAMES, "data": [[bad[n] for n in NAMES]]}}),
        ),
        Ask(
            "invocations declared too large",
            "POST",
            post,
            {**JSON, "Content-Length": "9000000"},
            b"",
        ),
        Ask("invocations too large", "POST", post, JSON, b" " * (8 * 1024 * 1024 + 1)),
        Ask("invocations GET", "GET", post),
        Ask("ping", "GET", "/ping"),
        Ask("version", "GET", "/version"),
        Ask("ping POST", "POST", "/ping"),
    ]


def _webhook() -> list[Ask]:
    body = _json({"entity": "model_version_alias", "action": "created", "data": {}})
    return [
        Ask("webhook unsigned", "POST", "/webhooks/mlflow", JSON, body),
        Ask(
            "webhook signed wrongly",
            "POST",
            "/webhooks/mlflow",
            {
                **JSON,
                "X-MLflow-Signature": "v1,AAAA",
                "X-MLflow-Delivery-Id": "d1",
                "X-MLflow-Timestamp": "1",
            },
            body,
        ),
        Ask(
            "webhook malformed",
            "POST",
            "/webhooks/mlflow",
            {**JSON, "X-MLflow-Signature": "v1,AAAA"},
            body,
        ),
        Ask("webhook too large", "POST", "/webhooks/mlflow", JSON, b" " * (64 * 1024 + 1)),
        Ask("webhook GET", "GET", "/webhooks/mlflow"),
    ]


def _reads() -> list[Ask]:
    return [
        Ask("health", "GET", "/health"),
        Ask("health HEAD", "HEAD", "/health"),
        Ask("health POST", "POST", "/health"),
        Ask("health trailing slash", "GET", "/health/"),
        Ask("health with query", "GET", "/health?x=1"),
        Ask("metadata", "GET", "/metadata"),
        Ask("page", "GET", "/"),
        Ask("page script", "GET", "/static/app.js"),
        Ask("page style", "GET", "/static/style.css"),
        Ask("page missing file", "GET", "/static/none.js"),
        Ask("docs", "GET", "/docs"),
        Ask("docs oauth2", "GET", "/docs/oauth2-redirect"),
        Ask("redoc", "GET", "/redoc"),
        Ask("openapi", "GET", "/openapi.json"),
        Ask("unknown path", "GET", "/nowhere"),
        Ask("unknown POST", "POST", "/nowhere", JSON, b"{}"),
        Ask("predict OPTIONS", "OPTIONS", "/predict"),
    ]


REQUESTS: tuple[Ask, ...] = (*_reads(), *_predict(), *_invocations(), *_webhook())

_DURATION = re.compile(rb"app;dur=[0-9.]+")
_LAST_CHECK = re.compile(rb'"last_check":"[^"]*"')
#: uvicorn's clock, and a static file's modification time (in its etag too)
_UNWRITTEN = frozenset({"date", "etag", "last-modified"})


def written(
    ask: Ask, status: int, headers: list[tuple[str, str]], body: bytes, run_id: str = ""
) -> str:
    """One answer as text: what differs between runs masked, everything else verbatim.

    The ``date`` header (uvicorn's clock) and a static file's ``etag`` and
    ``last-modified`` (its modification time) are left out; the body's bytes are written
    with Python's bytes escapes, so that a changed space, escape or digit shows.
    """
    lines = [f"### {ask.name}: {ask.method} {ask.path}", f"status {status}"]
    for name, value in headers:
        if name.lower() in _UNWRITTEN:
            continue
        shown = _DURATION.sub(b"app;dur=<ms>", value.encode("latin-1")).decode("latin-1")
        lines.append(f"{name.lower()}: {shown}")
    masked = _LAST_CHECK.sub(b'"last_check":"<time>"', body)
    if run_id:
        masked = masked.replace(run_id.encode(), b"<run id>")
    lines.append(f"body {len(body)} bytes:")
    lines.append(repr(masked)[2:-1])
    return "\n".join(lines) + "\n"
