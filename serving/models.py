"""The documented shape of every answer of churnlab's own routes (pydantic models).

They are the OpenAPI schema that ``/docs`` shows and schemathesis fuzzes against.
``/health`` and ``/metadata`` are rendered by them (:mod:`serving.api`, once per change);
``/predict`` renders its own answer (msgspec) and declares :class:`Predictions` for the
docs, as the webhook declares :class:`WebhookAnswer`. (MLflow's protocol has its models in
:mod:`serving.invocations`.)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from churnlab.registry import ALIASES

#: The stages a backend serves.
STAGES: tuple[str, ...] = tuple(ALIASES)
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


def refusal(description: str) -> dict[str, Any]:
    """A refusal's entry in a route's ``responses``: its description and :class:`ErrorAnswer`."""
    return {"description": description, "model": ErrorAnswer}
