"""What a backend serves: the stage's version with its evidence, loaded once or swapped in."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import State

from churnlab import schema, store
from churnlab.errors import ChurnlabError, Refused, RegistryUnavailable
from churnlab.follow import Follower, prove_ready, warm_up
from churnlab.registry import Registry
from serving.settings import Settings

#: Where following backends log their switches and refused webhooks.
log = logging.getLogger("churnlab.follow")


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


def start_following(state: State) -> Follower[Served]:
    """Watch the served stage's alias; swap in each version it names once proven ready.

    The swap is one assignment, ``state.served = new`` (``state`` is the app's): every
    handler reads ``state.served`` once per request, so a request in flight finishes on
    the version it started with and every answer names the version that produced it.
    """
    served: Served = state.served
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
        state.served = new

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
