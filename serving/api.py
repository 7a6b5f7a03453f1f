"""churnlab's own routes: /health, /metadata, /predict, /webhooks/mlflow and the page.

Every handler reads ``app.state.served`` once (a following backend may swap it between
two requests). ``/predict`` reads its raw body, decodes it with msgspec
(:mod:`serving.contract`) and renders its answer itself; ``/health`` and ``/metadata``
are rendered by their documented models (:mod:`serving.models`) once per change of what
they show (a swap, a following backend's new status), not once per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, TypeAdapter, ValidationError

from churnlab import schema
from churnlab.follow import Follower, WebhookRefused, verify_delivery
from churnlab.scoring import decisions
from serving import _http, contract
from serving.models import Health, Metadata, Predictions, WebhookAnswer, refusal
from serving.served import Served, log
from serving.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: The largest webhook delivery read (MLflow's alias payloads are ~200 bytes).
MAX_WEBHOOK_BYTES = 64 * 1024
#: The page may load only what this server serves (no CDN, no inline script).
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class _Rendered:
    """One answer rendered by its documented model (as FastAPI renders a response model:
    validated, then dumped by alias without unset fields), again only when the version
    served or what else it shows has changed."""

    def __init__(self, model: type[BaseModel]) -> None:
        self._adapter: TypeAdapter[Any] = TypeAdapter(model)
        self._served: Served | None = None
        self._shown: Any = None
        self._body = b""

    def __call__(self, served: Served, shown: Any, content: Callable[[], dict[str, Any]]) -> bytes:
        if served is not self._served or shown != self._shown:
            value = self._adapter.validate_python(content(), from_attributes=True)
            self._body = self._adapter.dump_json(value, by_alias=True, exclude_unset=True)
            self._served, self._shown = served, shown
        return self._body


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


# ---------------------------------------------------------------------------- reading
async def health(request: Request) -> Response:
    """The stage, model and version this server serves; a following backend adds the
    version its alias names and why the two differ."""
    state = request.app.state
    served: Served = state.served
    follower: Follower | None = state.follower
    if follower is None:
        return _json(state.health_answer(served, None, served.health))
    status = follower.status()
    return _json(state.health_answer(served, status, lambda: {**served.health(), **status}))


async def metadata(request: Request) -> Response:
    """Feature schema, the version's metrics, gate and smoke results, data digests;
    a following backend adds its switches."""
    state = request.app.state
    served: Served = state.served
    follower: Follower | None = state.follower
    if follower is None:
        return _json(state.metadata_answer(served, None, lambda: served.metadata))
    return _json(
        state.metadata_answer(
            served,
            follower.swaps,
            lambda: {**served.metadata, "switches": follower.switches()},
        )
    )


def page() -> Response:
    """A small page to check health and score one customer by hand."""
    return FileResponse(
        STATIC_DIR / "index.html",
        headers={"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff"},
    )


# ---------------------------------------------------------------------------- following
async def mlflow_webhook(request: Request) -> Response:
    """An MLflow ``model_version_alias.created`` / ``.deleted`` delivery, signed with
    the shared secret: the backend reads its alias at once instead of at the next poll.

    Nothing in the delivery is trusted beyond "look now": the version served is
    always the one the registry's alias names, proven ready first.
    """
    follower: Follower | None = request.app.state.follower
    settings: Settings = request.app.state.served.settings
    client = request.client.host if request.client else "?"
    if follower is None:
        return _error(404, "this backend does not follow its alias (start it with --follow)")
    if not settings.webhook_secret:
        log.warning("webhook from %s refused: CHURNLAB_WEBHOOK_SECRET is not set", client)
        return _error(403, "webhooks are off: CHURNLAB_WEBHOOK_SECRET is not set")
    try:
        body = await _http.read_body(request, MAX_WEBHOOK_BYTES, declared=False)
    except _http.TooLarge:
        return _error(413, f"a delivery is at most {MAX_WEBHOOK_BYTES} bytes")
    try:
        delivery = verify_delivery(settings.webhook_secret, request.headers, bytes(body))
    except WebhookRefused as exc:
        log.warning("webhook from %s refused (%s): %s", client, exc.status, exc)
        return _error(exc.status, str(exc))
    ignored = delivery.ignored_because(settings.model_name, settings.stage)
    if ignored:
        answer = {"status": "ignored", "detail": ignored, "delivery_id": delivery.delivery_id}
        return JSONResponse(answer, status_code=200)
    follower.wake("webhook")
    log.info(
        "webhook %s (%s): reading @%s now", delivery.event, delivery.delivery_id, settings.stage
    )
    answer = {
        "status": "accepted",
        "detail": f"{delivery.event}: reading @{settings.stage} now",
        "delivery_id": delivery.delivery_id,
    }
    return JSONResponse(answer, status_code=202)


# ---------------------------------------------------------------------------- scoring
async def predict(request: Request) -> Response:
    """Churn probability and decision for each customer, sent as records or as columns.

    The answer lists the customers in the order they were sent, in both layouts.
    """
    started = time.perf_counter()
    served: Served = request.app.state.served
    checker: contract.Contract = request.app.state.contract
    wrong = _json_type(request.headers.get("content-type"))
    if wrong:
        return _error(415, wrong, started=started)
    try:
        body = await _http.read_body(request, checker.max_body_bytes)
        content = await _http.scored(served.scorer, body, answer, served, checker, body)
    except _http.TooLarge as exc:
        return _error(413, str(exc), started=started)
    except ValidationError as exc:
        found = contract.problems(exc)
        status = 400 if found and found[0]["type"] == "json_invalid" else 422
        return _error(status, contract.summary(found, exc.error_count()), found, started=started)
    return _http.Answer(content, started)


def answer(served: Served, checker: contract.Contract, body: bytes | bytearray) -> bytes:
    """The JSON answer to a request body: validate once, score through the version's Scorer.

    Raises :class:`pydantic.ValidationError` for a body that breaks the contract.
    """
    batch = checker.parse(body)
    return render(served, decisions(batch.churn_probability(served.scorer)))


def render(served: Served, predictions: list[dict[str, Any]]) -> bytes:
    """The body of a ``200`` answer (msgspec's encoder: floats round-trip exactly)."""
    return _http.ENCODER.encode(
        {
            "model_name": served.settings.model_name,
            "model_version": served.version,
            "stage": served.settings.stage,
            "predictions": predictions,
        }
    )


def _json_type(value: str | None) -> str | None:
    """``None`` when ``value`` is a JSON content type, else why it is not."""
    if value == "application/json":
        return None
    if not value:
        return "the request has no Content-Type; send Content-Type: application/json"
    media, _, params = value.partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        return f"Content-Type must be application/json, got {media!r}"
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and val.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return f"the body must be UTF-8 JSON, got charset {val.strip()!r}"
    return None


def _error(
    status: int,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    started: float | None = None,
) -> Response:
    body: dict[str, Any] = {"detail": detail}
    if errors is not None:
        body["errors"] = errors
    return _http.refusal(status, body, started)


# ---------------------------------------------------------------------------- the routes
def include(app: FastAPI) -> None:
    """Add the routes to ``app`` itself (not through a router: :func:`document` finds
    ``/predict`` among ``app.routes``), with what the OpenAPI documentation says of them."""
    app.state.health_answer = _Rendered(Health)
    app.state.metadata_answer = _Rendered(Metadata)
    app.add_api_route("/health", health, tags=["serving"], response_model=Health)
    app.add_api_route("/metadata", metadata, tags=["serving"], response_model=Metadata)
    app.add_api_route(
        "/webhooks/mlflow",
        mlflow_webhook,
        methods=["POST"],
        tags=["following"],
        status_code=202,
        response_model=WebhookAnswer,
        responses={
            200: {
                "description": "verified, about another model, alias or event",
                "model": WebhookAnswer,
            },
            400: refusal("a malformed delivery"),
            401: refusal("unsigned, wrongly signed or stale"),
            403: refusal("webhooks are off (no CHURNLAB_WEBHOOK_SECRET)"),
            404: refusal("this backend does not follow its alias"),
            413: refusal("delivery too large"),
        },
    )
    app.add_api_route(
        "/predict",
        predict,
        methods=["POST"],
        tags=["serving"],
        response_model=Predictions,
        response_description="one prediction per record, in order",
        responses={
            400: refusal("malformed JSON"),
            413: refusal("request body too large"),
            415: refusal("not JSON"),
            422: refusal("customers that break the input contract"),
        },
    )
    app.add_api_route("/", page, include_in_schema=False)


def document(app: FastAPI, checker: contract.Contract) -> None:
    """Describe the request body of ``POST /predict`` in the OpenAPI schema."""
    for route in app.routes:
        if getattr(route, "path", None) == "/predict":
            route.openapi_extra = {
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": checker.json_schema(),
                            "examples": {
                                "records": {
                                    "summary": "one object per customer",
                                    "value": {"records": [schema.EXAMPLE_RECORD]},
                                },
                                "columns": {
                                    "summary": "one list per feature (large batches)",
                                    "value": {
                                        "columns": contract.to_columns([schema.EXAMPLE_RECORD])
                                    },
                                },
                            },
                        }
                    },
                }
            }
    app.openapi_schema = None
