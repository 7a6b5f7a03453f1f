"""The serving backend: a FastAPI app that serves the version a registry stage holds.

At start-up it resolves the stage's alias (``@staging`` or ``@production``), loads that
version from the registry and serves it. By default it serves that version until
restarted: a later promotion never changes a running server. A *following* backend
(``--follow``, ``MODEL_FOLLOW=true``) watches its alias (:mod:`churnlab.follow`): it polls
it and, with ``CHURNLAB_WEBHOOK_SECRET`` set, acts on MLflow's signed alias webhooks at
``POST /webhooks/mlflow``; each version the alias names is loaded and proven ready in the
background, then swapped in by replacing ``app.state.served`` (every handler reads it once
per request, so requests in flight finish on the version they started with). Run it with
``churnlab serve --stage production --port 8001 [--follow]`` (:func:`serve`) or
``uvicorn serving.app:app`` (configured by the variables in :data:`ENV_VARIABLES`).

Endpoints: ``GET /health``, ``POST /predict``, ``GET /metadata``, ``POST /webhooks/mlflow``,
``GET /`` (a page for people) and the OpenAPI docs at ``/docs``. No endpoint changes the
registry.

``POST /predict`` takes customers as records or as columns (see :mod:`serving.contract`)
and says how long the server spent on the request in ``Server-Timing: app;dur=<ms>``
(from the handler's start, reading the body included, to the response built). Response
bodies are the pydantic models below; ``/predict`` decodes its raw body with msgspec and
renders its answer itself, so its models only document it (``openapi_extra`` describes its
request).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema

from churnlab import schema, store
from churnlab.backend import DEFAULT_PORTS, port_free
from churnlab.errors import ChurnlabError, InputError, Refused, RegistryUnavailable
from churnlab.follow import (
    DEFAULT_POLL_S,
    Follower,
    WebhookRefused,
    prove_ready,
    validate_poll_interval,
    verify_delivery,
    warm_up,
)
from churnlab.registry import ALIASES, Registry
from serving import contract, invocations

#: The variables the app itself reads.
APP_VARIABLES: tuple[str, ...] = (
    "MODEL_NAME",  # registered model (default churn-model)
    "MODEL_STAGE",  # staging | production (Staging / Production accepted)
    "MLFLOW_TRACKING_URI",  # a tracking server; unset: the embedded churnlab store
    "CHURNLAB_HOME",  # where the embedded store lives when MLFLOW_TRACKING_URI is unset
    "CHURNLAB_MODEL",  # the model when MODEL_NAME is unset (a churnlab run's; else a login's own)
    "SERVING_MAX_RECORDS",  # records per request (default 10000)
    "SERVING_MAX_BODY_BYTES",  # bytes per request body (default 8 MiB)
    "MODEL_FOLLOW",  # true: follow the alias (swap in each version it names); default false
    "MODEL_POLL_INTERVAL",  # seconds between two reads of the alias when following (default 5)
    "CHURNLAB_WEBHOOK_SECRET",  # the MLflow webhook's secret; unset: webhooks are refused
)
#: MLflow's own variables for reaching an authenticated tracking server.
MLFLOW_AUTH_VARIABLES: tuple[str, ...] = (
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
)
#: Every variable a deployment may set for this app (compose files are checked against it).
ENV_VARIABLES: frozenset[str] = frozenset(APP_VARIABLES + MLFLOW_AUTH_VARIABLES)

STAGES: tuple[str, ...] = tuple(ALIASES)
STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Bodies up to this size (a few dozen customers) are scored on the event loop when the
#: ONNX graph serves: scoring them costs less than handing them to a worker thread.
#: Larger bodies, and every body a scikit-learn pipeline scores, go to a worker thread so
#: that they never block the loop.
INLINE_BODY_BYTES = 16 * 1024
#: The largest webhook delivery read (MLflow's alias payloads are ~200 bytes).
MAX_WEBHOOK_BYTES = 64 * 1024
#: Where following backends log their switches and refused webhooks.
log = logging.getLogger("churnlab.follow")
#: The page may load only what this server serves (no CDN, no inline script).
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Settings:
    """What to serve, the request limits and whether to follow the alias; read from the
    environment by default. The webhook secret never appears in a repr or a message."""

    model_name: str = "churn-model"
    stage: str = "staging"
    max_records: int = contract.DEFAULT_MAX_RECORDS
    max_body_bytes: int = contract.DEFAULT_MAX_BODY_BYTES
    follow: bool = False
    poll_interval_s: float = DEFAULT_POLL_S
    webhook_secret: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        stage = str(self.stage).strip().lower()
        if stage not in STAGES:
            raise InputError(f"MODEL_STAGE must be staging or production, got {self.stage!r}")
        object.__setattr__(self, "stage", stage)
        if not str(self.model_name).strip():
            raise InputError("MODEL_NAME must not be empty")
        for name, value in (
            ("SERVING_MAX_RECORDS", self.max_records),
            ("SERVING_MAX_BODY_BYTES", self.max_body_bytes),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive whole number, got {value!r}")
        interval = validate_poll_interval(self.poll_interval_s, "--poll-interval")
        object.__setattr__(self, "poll_interval_s", interval)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``MODEL_NAME``, ``MODEL_STAGE``, ``SERVING_MAX_*``,
        ``MODEL_FOLLOW``, ``MODEL_POLL_INTERVAL`` and ``CHURNLAB_WEBHOOK_SECRET``."""
        env = os.environ if environ is None else environ
        interval = env.get("MODEL_POLL_INTERVAL", "").strip()
        values: dict[str, Any] = {
            "model_name": env.get("MODEL_NAME", "").strip() or cls.model_name,
            "stage": env.get("MODEL_STAGE", "").strip() or cls.stage,
            "max_records": _whole(env, "SERVING_MAX_RECORDS", cls.max_records),
            "max_body_bytes": _whole(env, "SERVING_MAX_BODY_BYTES", cls.max_body_bytes),
            "follow": _flag(env, "MODEL_FOLLOW"),
            "poll_interval_s": (
                validate_poll_interval(interval, "MODEL_POLL_INTERVAL")
                if interval
                else cls.poll_interval_s
            ),
            "webhook_secret": env.get("CHURNLAB_WEBHOOK_SECRET", "").strip() or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise InputError(f"{name} must be true or false, got {env.get(name)!r}")


def _whole(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"{name} must be a positive whole number, got {raw!r}") from None


@dataclass
class Served:
    """The version this server serves: loaded at start-up, replaced whole when a following
    backend swaps in the version its alias names."""

    settings: Settings
    scorer: Any
    run_id: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return int(self.scorer.version)

    def health(self) -> dict[str, Any]:
        """What ``GET /health`` answers."""
        return {
            "status": "ok",
            "stage": self.settings.stage,
            "model_name": self.settings.model_name,
            "model_version": self.version,
            "run_id": self.run_id,
            "scorer": getattr(self.scorer, "kind", type(self.scorer).__name__),
        }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def load(settings: Settings) -> Served:
    """Resolve the stage's alias and load that version from the registry.

    Raises :class:`Refused` when the stage holds no version, :class:`InputError` when
    the model is unknown and :class:`RegistryUnavailable` when the registry cannot be
    reached or the version cannot be loaded.
    """
    store.configure()
    store.check_reachable()
    name, stage = settings.model_name, settings.stage
    try:
        from churnlab.scoring import Scorer

        registry = Registry(name)
        registry.model()
        version = registry.holder(stage)
        if version is None:
            how = "churnlab stage VERSION" if stage == "staging" else "churnlab promote VERSION"
            raise Refused(f"{name} has no version in {stage}: nothing to serve (run `{how}`)")
        return served_version(settings, registry, Scorer.from_registry(registry, version))
    except ChurnlabError:
        raise
    except Exception as exc:  # an MLflow failure: say which model, briefly
        raise RegistryUnavailable(
            f"cannot load {name}@{stage} from {store.display_uri()}: "
            f"{type(exc).__name__}: {store.redact(_first_line(exc))}"
        ) from None


def served_version(settings: Settings, registry: Registry, scorer: Any) -> Served:
    """What serving ``scorer``'s version takes: the scorer and the version's evidence."""
    name, stage, version = settings.model_name, settings.stage, int(scorer.version)
    evidence = registry.evidence(version)
    metadata = {
        "model_name": name,
        "model_version": version,
        "stage": stage,
        "run_id": evidence.run_id,
        "description": evidence.description,
        "estimator": evidence.estimator,
        "scorer": {
            "kind": getattr(scorer, "kind", "sklearn"),
            "reason": getattr(scorer, "reason", ""),
        },
        "schema": schema.describe(),
        "metrics": evidence.metrics,
        "gate": {"verdict": evidence.gate, "checks": evidence.gate_checks},
        "smoke": {"verdict": evidence.smoke, **evidence.smoke_checks},
        "data": evidence.data,
        "limits": {"max_records": settings.max_records, "max_body_bytes": settings.max_body_bytes},
        "example": dict(schema.EXAMPLE_RECORD),
    }
    return Served(settings, scorer, evidence.run_id, metadata)


# ---------------------------------------------------------------------------- the app
#: A stage a server serves.
Stage = Literal[STAGES]  # type: ignore[valid-type]


class Health(BaseModel):
    """What ``GET /health`` answers: the stage, model and version this server serves."""

    status: Literal["ok"]
    stage: Stage
    model_name: str
    model_version: int = Field(ge=1)
    run_id: str
    scorer: str = Field(description="what scores: onnx (the proven graph) or sklearn")
    # a following backend adds these (a backend that does not follow never sends them)
    following: bool | None = Field(None, description="present (true) on following backends")
    alias_version: int | None = Field(
        None, description="the version the alias names now (null: the alias was deleted)"
    )
    pending: int | None = Field(None, description="a version being loaded and proven ready")
    reason: str | None = Field(
        None, description="why the served version is not the alias's (null: it is)"
    )
    poll_interval_s: float | None = None
    webhooks: bool | None = Field(None, description="signed MLflow webhooks are acted on")
    last_check: str | None = Field(None, description="when the alias was last read (UTC)")


class SwitchInfo(BaseModel):
    """One swap of a following backend: when, from which version to which, and why."""

    model_config = ConfigDict(populate_by_name=True)

    time: str
    from_: int = Field(alias="from")
    to: int
    trigger: Literal["poll", "webhook"]
    ready_s: float = Field(description="seconds to load and prove the new version ready")


class WebhookAnswer(BaseModel):
    """What ``POST /webhooks/mlflow`` answers to a verified delivery."""

    status: Literal["accepted", "ignored"]
    detail: str
    delivery_id: str


class ScorerInfo(BaseModel):
    """Which scorer serves and why."""

    kind: str
    reason: str


class FeatureInfo(BaseModel):
    """One input column of the feature schema, as ``churnlab.schema.describe`` lists it."""

    name: str
    type: Literal["string", "long", "double"]
    used_by_model: bool
    values: list[str] | SkipJsonSchema[None] = None
    minimum: int | float | SkipJsonSchema[None] = None
    maximum: int | float | SkipJsonSchema[None] = None
    description: str | SkipJsonSchema[None] = None


class GateEvidence(BaseModel):
    """The gate's verdict and each check's status, by check name."""

    verdict: str
    checks: dict[str, str]


class SmokeEvidence(BaseModel):
    """The smoke check's verdict, then each check's status and each figure, by name."""

    model_config = ConfigDict(extra="allow")

    verdict: str


class Limits(BaseModel):
    """The request limits this server applies."""

    max_records: int
    max_body_bytes: int


class Metadata(BaseModel):
    """What ``GET /metadata`` answers: the served version's evidence and the input schema."""

    model_name: str
    model_version: int = Field(ge=1)
    stage: Stage
    run_id: str
    description: str
    estimator: str | None
    scorer: ScorerInfo
    schema_: list[FeatureInfo] = Field(alias="schema")
    metrics: dict[str, float]
    gate: GateEvidence
    smoke: SmokeEvidence
    data: dict[str, str]
    limits: Limits
    example: dict[str, Any]
    switches: list[SwitchInfo] | None = Field(
        None, description="following backends: every swap since start-up, oldest first"
    )


class Prediction(BaseModel):
    """One customer's churn probability and decision."""

    churn_probability: float = Field(ge=0, le=1)
    churn: bool


class Predictions(BaseModel):
    """The answer of ``POST /predict``: one prediction per customer, in the order sent."""

    model_name: str
    model_version: int = Field(ge=1)
    stage: Stage
    predictions: list[Prediction] = Field(min_length=1)


class Problem(BaseModel):
    """One reason a request was refused: the field (``records[3].Contract``) and why."""

    field: str
    problem: str
    type: str


class ErrorAnswer(BaseModel):
    """Every refusal: one line, and each problem when the body broke the contract."""

    detail: str = Field(min_length=1)
    errors: list[Problem] | SkipJsonSchema[None] = None


def _refusal(description: str) -> dict[str, Any]:
    return {"description": description, "model": ErrorAnswer}


def _timing(started: float) -> dict[str, str]:
    """The ``Server-Timing`` header: milliseconds since ``started`` (``perf_counter``)."""
    return {"Server-Timing": f"app;dur={(time.perf_counter() - started) * 1000:.3f}"}


def _error(
    status: int,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    started: float | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail}
    if errors is not None:
        body["errors"] = errors
    headers = _timing(started) if started is not None else None
    return JSONResponse(body, status_code=status, headers=headers)


def _json_type(value: str | None) -> str | None:
    """``None`` when ``value`` is a JSON content type, else why it is not."""
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


class ServingApp(FastAPI):
    """FastAPI with a start-up that loads the served version, failing in one clear line."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        try:
            if self.state.served is None:
                settings = self.state.settings or Settings.from_env()
                self.state.served = load(settings)
            self.state.contract = contract.Contract(
                self.state.served.settings.max_records, self.state.served.settings.max_body_bytes
            )
            _document(self, self.state.contract)
            if self.state.served.settings.follow:
                self.state.follower = start_following(self)
            # everything loaded so far (MLflow, onnxruntime; scikit-learn when following)
            # lives as long as the process:
            # take it out of the cyclic collector's sight, or now and then a full collection
            # walks all of it and stalls a request. (No gc.collect() first: it would slow
            # start-up and free next to nothing.)
            gc.freeze()
        except ChurnlabError as exc:
            await send(
                {"type": "lifespan.startup.failed", "message": f"serving: {store.redact(str(exc))}"}
            )
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown: stop watching the alias
        if self.state.follower is not None:
            self.state.follower.stop()
        await send({"type": "lifespan.shutdown.complete"})


def start_following(app: FastAPI) -> Follower[Served]:
    """Watch the served stage's alias; swap in each version it names once proven ready.

    The swap is one assignment, ``app.state.served = new``: every handler reads
    ``app.state.served`` once per request, so a request in flight finishes on the version
    it started with and every answer names the version that produced it.
    """
    served: Served = app.state.served
    settings = served.settings
    registry = Registry(settings.model_name)
    warm_up()  # before /health answers: the first switch must not pay for the imports
    if not log.handlers:  # switches and refused webhooks go to the server's output
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("serving: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)

    def prepare(version: int) -> Served:
        return served_version(settings, registry, prove_ready(registry, version))

    def swap(new: Served) -> None:
        app.state.served = new

    follower = Follower(
        registry,
        settings.stage,
        served.version,
        prepare=prepare,
        swap=swap,
        poll_interval_s=settings.poll_interval_s,
        webhooks=bool(settings.webhook_secret),
    ).start()
    log.info(
        "following @%s of %s: polling every %g s%s",
        settings.stage,
        settings.model_name,
        settings.poll_interval_s,
        ", acting on signed MLflow webhooks" if settings.webhook_secret else "",
    )
    return follower


def _document(app: FastAPI, checker: contract.Contract) -> None:
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


def create_app(settings: Settings | None = None, served: Served | None = None) -> ServingApp:
    """The FastAPI app; ``served`` skips loading (``churnlab serve`` loads first)."""
    app = ServingApp(
        title="churnlab serving",
        summary="Churn probabilities from the model version a registry stage holds.",
        version="1",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.served = served
    app.state.contract = None
    app.state.follower = None

    @app.get("/health", tags=["serving"], response_model=Health, response_model_exclude_unset=True)
    def health(request: Request) -> dict[str, Any]:
        """The stage, model and version this server serves; a following backend adds the
        version its alias names and why the two differ."""
        answer = request.app.state.served.health()
        follower = request.app.state.follower
        return answer if follower is None else {**answer, **follower.status()}

    @app.get(
        "/metadata",
        tags=["serving"],
        response_model=Metadata,
        response_model_exclude_unset=True,
    )
    def metadata(request: Request) -> dict[str, Any]:
        """Feature schema, the version's metrics, gate and smoke results, data digests;
        a following backend adds its switches."""
        metadata = request.app.state.served.metadata
        follower = request.app.state.follower
        return metadata if follower is None else {**metadata, "switches": follower.switches()}

    @app.post(
        "/webhooks/mlflow",
        tags=["following"],
        status_code=202,
        response_model=WebhookAnswer,
        responses={
            200: {
                "description": "verified, about another model, alias or event",
                "model": WebhookAnswer,
            },
            400: _refusal("a malformed delivery"),
            401: _refusal("unsigned, wrongly signed or stale"),
            403: _refusal("webhooks are off (no CHURNLAB_WEBHOOK_SECRET)"),
            404: _refusal("this backend does not follow its alias"),
            413: _refusal("delivery too large"),
        },
    )
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
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_WEBHOOK_BYTES:
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

    @app.post(
        "/predict",
        tags=["serving"],
        response_model=Predictions,
        response_description="one prediction per record, in order",
        responses={
            400: _refusal("malformed JSON"),
            413: _refusal("request body too large"),
            415: _refusal("not JSON"),
            422: _refusal("customers that break the input contract"),
        },
    )
    async def predict(request: Request) -> Response:
        """Churn probability and decision for each customer, sent as records or as columns.

        The answer lists the customers in the order they were sent, in both layouts.
        """
        from starlette.concurrency import run_in_threadpool

        started = time.perf_counter()
        served: Served = request.app.state.served
        checker: contract.Contract = request.app.state.contract
        wrong = _json_type(request.headers.get("content-type"))
        if wrong:
            return _error(415, wrong, started=started)
        limit = checker.max_body_bytes
        declared = request.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            return _error(
                413,
                f"the request body is {int(declared)} bytes; the limit is {limit} bytes",
                started=started,
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _error(
                    413, f"the request body exceeds the limit of {limit} bytes", started=started
                )
        try:
            if len(body) <= INLINE_BODY_BYTES and getattr(served.scorer, "kind", "") == "onnx":
                content = _predict(served, checker, body)
            else:
                content = await run_in_threadpool(_predict, served, checker, body)
        except ValidationError as exc:
            found = contract.problems(exc)
            status = 400 if found and found[0]["type"] == "json_invalid" else 422
            return _error(
                status, contract.summary(found, exc.error_count()), found, started=started
            )
        return Response(content, media_type="application/json", headers=_timing(started))

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        """A small page to check health and score one customer by hand."""
        return FileResponse(
            STATIC_DIR / "index.html",
            headers={"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff"},
        )

    invocations.include(app)  # MLflow's scoring protocol: /invocations, /ping, /version
    from fastapi.staticfiles import StaticFiles

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


_ENCODER = msgspec.json.Encoder()


def _predict(served: Served, checker: contract.Contract, body: bytes | bytearray) -> bytes:
    """The JSON answer to a request body: validate once, score through the version's Scorer.

    Raises :class:`pydantic.ValidationError` for a body that breaks the contract.
    """
    batch = checker.parse(body)
    return render(served, served.scorer.score_columns(batch.columns))


def render(served: Served, predictions: list[dict[str, Any]]) -> bytes:
    """The body of a ``200`` answer (msgspec's encoder: floats round-trip exactly)."""
    return _ENCODER.encode(
        {
            "model_name": served.settings.model_name,
            "model_version": served.version,
            "stage": served.settings.stage,
            "predictions": predictions,
        }
    )


def serve(
    *,
    model_name: str | None = None,
    stage: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    max_records: int | None = None,
    max_body_bytes: int | None = None,
    follow_alias: bool | None = None,
    poll_interval_s: float | None = None,
    log_level: str = "warning",
    access_log: bool = False,
) -> None:
    """Load the stage's version, then serve it with uvicorn until interrupted.

    What ``churnlab serve`` runs. Arguments left None come from the environment
    (:meth:`Settings.from_env`); the port defaults to the stage's usual one. Everything
    that can fail (settings, port, registry, model) fails before uvicorn starts.
    """
    settings = Settings.from_env(
        model_name=model_name,
        stage=stage,
        max_records=max_records,
        max_body_bytes=max_body_bytes,
        follow=follow_alias or None,  # --follow absent: MODEL_FOLLOW decides
        poll_interval_s=poll_interval_s,
    )
    port = port if port is not None else DEFAULT_PORTS[settings.stage]
    if not 0 < port < 65536:
        raise InputError(f"--port must be between 1 and 65535, got {port}")
    if not port_free(port, host):
        raise InputError(f"port {port} on {host} is in use; choose another with --port")
    served = load(settings)
    import uvicorn

    following = f"; following @{settings.stage}" if settings.follow else ""
    print(
        f"Serving {settings.model_name} v{served.version} ({settings.stage}{following}) "
        f"on http://{host}:{port}  (page /, API docs /docs)",
        flush=True,
    )
    uvicorn.run(
        create_app(served=served),
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
    )


#: The app ``uvicorn serving.app:app`` runs (settings from the environment at start-up).
app = create_app()
