"""A backend's settings: model, stage, request limits and following, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from churnlab.errors import InputError
from churnlab.follow import DEFAULT_POLL_S, validate_poll_interval
from serving import contract
from serving.models import STAGES

#: The variables the app itself reads.
APP_VARIABLES: tuple[str, ...] = (
    "MODEL_NAME",  # registered model (default: CHURNLAB_MODEL, else churn-model)
    "CHURNLAB_MODEL",  # the model when MODEL_NAME is unset (what a churnlab run names)
    "MODEL_STAGE",  # staging | production (Staging / Production accepted)
    "MLFLOW_TRACKING_URI",  # a tracking server; unset: the embedded churnlab store
    "CHURNLAB_HOME",  # where the embedded store lives when MLFLOW_TRACKING_URI is unset
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
        """Settings from ``MODEL_NAME`` (else ``CHURNLAB_MODEL``), ``MODEL_STAGE``, ``SERVING_MAX_*``,
        ``MODEL_FOLLOW``, ``MODEL_POLL_INTERVAL`` and ``CHURNLAB_WEBHOOK_SECRET``."""
        env = os.environ if environ is None else environ
        interval = env.get("MODEL_POLL_INTERVAL", "").strip()
        values: dict[str, Any] = {
            "model_name": (
                env.get("MODEL_NAME", "").strip()
                or env.get("CHURNLAB_MODEL", "").strip()
                or cls.model_name
            ),
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
