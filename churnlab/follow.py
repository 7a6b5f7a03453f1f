"""Following an alias: watch it, prove each version it names ready, verify MLflow's webhooks.

A following backend (``churnlab serve --stage production --follow``) keeps serving while
its alias moves. This module holds the parts that do not depend on the web framework:

* :func:`verify_delivery` checks one MLflow webhook delivery exactly as MLflow 3.17 signs
  it (``mlflow/webhooks/delivery.py``): headers ``X-MLflow-Delivery-Id``,
  ``X-MLflow-Timestamp`` (Unix seconds) and ``X-MLflow-Signature`` = ``v1,`` + base64 of
  HMAC-SHA256(secret, ``"<delivery id>.<timestamp>.<body>"``). Unsigned, wrongly signed,
  stale or malformed deliveries raise :class:`WebhookRefused` with the HTTP status to answer.
* :func:`prove_ready` loads a version and proves it fit to serve: its signature is the
  serving contract, its ONNX graph is served only with a passed parity verdict (else the
  pipeline), and its answers on a sample of its evaluation snapshot equal its
  scikit-learn pipeline's to :data:`TOLERANCE`. Anything else raises :class:`NotReady`.
* :class:`Follower` watches the alias from a background thread: it polls every
  ``poll_interval_s`` seconds and wakes at once when told (a verified webhook). When the
  alias names another version it has it prepared and proven, then hands it to ``swap``;
  a version that fails is never handed over, and :meth:`Follower.status` says why the
  served version differs from the alias.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

from churnlab import data, schema, store
from churnlab.errors import ChurnlabError, InputError, RegistryUnavailable
from churnlab.registry import Registry
from churnlab.scoring import TOLERANCE, Scorer

log = logging.getLogger("churnlab.follow")

#: seconds between two reads of the alias unless told otherwise
DEFAULT_POLL_S = 5.0
MIN_POLL_S, MAX_POLL_S = 0.1, 3600.0
#: a delivery whose timestamp is further than this from now (either way) is stale
#: (the Standard Webhooks convention MLflow follows: five minutes)
MAX_AGE_S = 300
#: evaluation rows a version must score as its pipeline does before it serves
SAMPLE_ROWS = 200
#: the MLflow webhook events a following backend acts on
ALIAS_EVENTS = ("model_version_alias.created", "model_version_alias.deleted")
#: switches kept for ``/metadata`` (the oldest are dropped)
MAX_SWITCHES = 100

Trigger = Literal["poll", "webhook"]
_UNSET: Any = object()  # "leave as it is" for Follower._set
Prepared = TypeVar("Prepared")


# ---------------------------------------------------------------------------- webhooks
class WebhookRefused(ChurnlabError):
    """A webhook delivery that must not be acted on; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Delivery:
    """A verified webhook delivery: its id, its signed time and the event it carries."""

    delivery_id: str
    timestamp: int
    entity: str
    action: str
    data: dict[str, Any]

    @property
    def event(self) -> str:
        """``entity.action``, e.g. ``model_version_alias.created``."""
        return f"{self.entity}.{self.action}"

    def ignored_because(self, model_name: str, alias: str) -> str | None:
        """Why a backend serving ``model_name@alias`` ignores this delivery (None: it acts)."""
        if self.event not in ALIAS_EVENTS:
            return f"event {self.event} is not an alias move"
        if self.data.get("name") != model_name or self.data.get("alias") != alias:
            return f"the event concerns {self.data.get('name')}@{self.data.get('alias')}"
        return None


def signature(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    """MLflow's signature of a delivery: ``v1,`` + base64(HMAC-SHA256 of ``id.timestamp.body``)."""
    from mlflow.webhooks.constants import WEBHOOK_SIGNATURE_VERSION

    mac = hmac.new(
        secret.encode("utf-8"), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256
    )
    return f"{WEBHOOK_SIGNATURE_VERSION},{base64.b64encode(mac.digest()).decode('ascii')}"


def verify_delivery(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    max_age_s: float = MAX_AGE_S,
) -> Delivery:
    """Check a delivery's signature and age; return what it carries.

    Raises :class:`WebhookRefused`: 401 when it is unsigned, wrongly signed or stale,
    400 when its headers or body are malformed. The secret is never part of a message.
    """
    from mlflow.webhooks.constants import (
        WEBHOOK_DELIVERY_ID_HEADER,
        WEBHOOK_SIGNATURE_HEADER,
        WEBHOOK_TIMESTAMP_HEADER,
    )

    found = {key.lower(): value for key, value in headers.items()}
    sent = found.get(WEBHOOK_SIGNATURE_HEADER.lower(), "").strip()
    delivery_id = found.get(WEBHOOK_DELIVERY_ID_HEADER.lower(), "").strip()
    stamp = found.get(WEBHOOK_TIMESTAMP_HEADER.lower(), "").strip()
    if not sent:
        raise WebhookRefused(401, f"the delivery is not signed (no {WEBHOOK_SIGNATURE_HEADER})")
    if not delivery_id or not stamp:
        missing = WEBHOOK_DELIVERY_ID_HEADER if not delivery_id else WEBHOOK_TIMESTAMP_HEADER
        raise WebhookRefused(400, f"the delivery has no {missing} header")
    if not stamp.isdigit():
        raise WebhookRefused(400, f"{WEBHOOK_TIMESTAMP_HEADER} must be Unix seconds")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRefused(400, "the delivery's body is not UTF-8") from None
    expected = signature(secret, delivery_id, stamp, text)
    # Standard Webhooks allows several space-separated signatures; MLflow sends one
    if not any(hmac.compare_digest(expected, candidate) for candidate in sent.split()):
        raise WebhookRefused(401, "the delivery's signature does not match the shared secret")
    age = (time.time() if now is None else now) - int(stamp)
    if abs(age) > max_age_s:
        when = f"{age:.0f} s old" if age > 0 else f"{-age:.0f} s in the future"
        raise WebhookRefused(
            401, f"the delivery is stale: its timestamp is {when} (limit {max_age_s:.0f} s)"
        )
    try:
        payload = json.loads(text)
        entity, action = str(payload["entity"]), str(payload["action"])
        fields = payload.get("data") or {}
        if not isinstance(fields, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise WebhookRefused(400, "the delivery's body is not an MLflow webhook payload") from None
    return Delivery(delivery_id, int(stamp), entity, action, fields)


# ---------------------------------------------------------------------------- readiness
class NotReady(ChurnlabError):
    """A version that must not be served: the message says which check it failed (exit 1)."""

    exit_code = 1


def prove_ready(registry: Registry, version: int, *, rows: int = SAMPLE_ROWS) -> Scorer:
    """Load ``version`` and prove it fit to serve; return its scorer.

    The checks: the logged signature is the serving contract (``churnlab/schema.py``);
    the scorer is the one ``Scorer.from_registry`` chooses, which serves the ONNX graph
    only when the gate's parity verdict passed, else the pipeline; on the first ``rows``
    customers of the version's evaluation snapshot, the scorer (fed columns, as the
    backend feeds it) and the scikit-learn pipeline agree to :data:`TOLERANCE`. Raises :class:`NotReady` naming
    the first check that failed, :class:`RegistryUnavailable` when the registry cannot be
    reached (worth trying again).
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    try:
        # the reads are independent and mostly wait on the registry: overlap them
        with ThreadPoolExecutor(3, thread_name_prefix="ready") as pool:
            info = pool.submit(registry.model_info, version)
            snapshot = pool.submit(registry.snapshot, version, "evaluation")
            scorer = Scorer.from_registry(registry, version)  # ONNX only with parity passed
            if scorer.kind == "sklearn":
                pipeline = scorer.model
            else:
                pipeline = registry.load_model(version)
            signature = info.result().signature
            frame = snapshot.result().head(rows)
        if (signature.inputs if signature is not None else None) != schema.input_schema():
            raise NotReady(f"v{version}'s signature is not the serving contract")
        expected = np.asarray(pipeline.predict_proba(data.features(frame))[:, 1], dtype=float)
        columns = {name: frame[name].tolist() for name in schema.FEATURE_NAMES}
        got = scorer.churn_probability_of_columns(columns)
    except (NotReady, RegistryUnavailable):
        raise
    except Exception as exc:  # a version that cannot load or score is not ready
        raise NotReady(
            f"v{version} could not be loaded and scored: {type(exc).__name__}: "
            f"{store.redact(_first_line(exc))}"
        ) from None
    if got.shape != expected.shape or not np.isfinite(got).all():
        raise NotReady(f"v{version}'s {scorer.kind} scorer gave unusable answers")
    diff = float(np.max(np.abs(got - expected))) if len(got) else 0.0
    if diff > TOLERANCE:
        raise NotReady(
            f"v{version}'s {scorer.kind} scorer differs from its pipeline by {diff:.3g} "
            f"on {len(got)} evaluation customers (bound {TOLERANCE:g})"
        )
    return scorer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def warm_up() -> None:
    """Import what :func:`prove_ready` needs beyond serving (MLflow's scikit-learn flavor,
    skops, the estimators churnlab trains): seconds of CPU that the first switch, made
    under load, would otherwise pay."""
    import mlflow.sklearn  # noqa: F401
    import sklearn.compose  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.pipeline  # noqa: F401
    import sklearn.preprocessing  # noqa: F401

    try:
        import skops.io  # noqa: F401
    except ImportError:  # pragma: no cover - a pickled model needs no skops
        pass


# ---------------------------------------------------------------------------- the watcher
@dataclass(frozen=True)
class Switch:
    """One swap: when, from which version to which, what noticed the move, how long the
    new version took to load and prove ready."""

    time: str
    from_version: int
    to_version: int
    trigger: Trigger
    ready_s: float

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["from"], out["to"] = out.pop("from_version"), out.pop("to_version")
        return out


def validate_poll_interval(seconds: float, name: str = "--poll-interval") -> float:
    """``seconds`` as a float within [MIN_POLL_S, MAX_POLL_S]; :class:`InputError` otherwise."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = float("nan")
    if not MIN_POLL_S <= value <= MAX_POLL_S:  # NaN fails too
        raise InputError(
            f"{name} must be between {MIN_POLL_S:g} and {MAX_POLL_S:g} seconds, got {seconds!r}"
        )
    return value


class Follower(Generic[Prepared]):
    """Watches one alias from a background thread and swaps in each version it names.

    ``prepare(version)`` loads a version and proves it ready (raising :class:`NotReady`
    when it is not); ``swap(prepared)`` makes it the served one. Both run on the watcher's
    thread, never on the caller's.
    """

    def __init__(
        self,
        registry: Registry,
        stage: str,
        served_version: int,
        *,
        prepare: Callable[[int], Prepared],
        swap: Callable[[Prepared], None],
        poll_interval_s: float = DEFAULT_POLL_S,
        webhooks: bool = False,
    ) -> None:
        self.registry = registry
        self.stage = stage
        self.poll_interval_s = validate_poll_interval(poll_interval_s)
        self.webhooks = webhooks
        self._prepare, self._swap = prepare, swap
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._woken_by: Trigger = "poll"
        self._thread: threading.Thread | None = None
        self._served = served_version
        self._alias: int | None = served_version
        self._pending: int | None = None
        self._reason: str | None = None
        self._failed: dict[int, str] = {}
        self._switches: list[Switch] = []
        self._swaps = 0
        self._last_check: str | None = None

    # ------------------------------------------------------------------ control
    def start(self) -> Follower[Prepared]:
        """Start watching (a daemon thread)."""
        self._thread = threading.Thread(target=self._run, name=f"follow-{self.stage}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop watching; waits for a load in progress up to ``timeout`` seconds."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self, trigger: Trigger = "webhook") -> None:
        """Read the alias now instead of at the next poll (a verified webhook arrived)."""
        self._woken_by = trigger
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            woken = self._wake.wait(self.poll_interval_s)
            if self._stopping.is_set():
                return
            trigger: Trigger = self._woken_by if woken else "poll"
            self._wake.clear()
            self._woken_by = "poll"
            try:
                self.check(trigger)
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any failure
                self._set(reason=f"checking @{self.stage} failed: {type(exc).__name__}")
                log.warning("checking @%s failed: %s", self.stage, exc)

    # ------------------------------------------------------------------ the work
    def check(self, trigger: Trigger = "poll") -> None:
        """Read the alias; when it names another version, prepare, prove and swap it in."""
        while not self._stopping.is_set():
            try:
                alias = self.registry.holder(self.stage)
            except ChurnlabError as exc:
                self._set(reason=f"cannot read @{self.stage}: {exc}", checked=True)
                return
            self._set(alias=alias, checked=True)
            self._failed = {v: why for v, why in self._failed.items() if v == alias}
            if alias is None:
                self._set(
                    pending=None,
                    reason=f"the {self.stage} alias names no version (deleted): serving "
                    f"v{self._served} until it names one again",
                )
                return
            if alias == self._served:
                self._set(pending=None, reason=None)
                return
            if alias in self._failed:
                self._set(pending=None, reason=self._failed[alias])
                return
            self._set(pending=alias, reason=f"loading v{alias} and proving it ready")
            started = time.monotonic()
            try:
                prepared = self._prepare(alias)
            except NotReady as exc:
                why = f"v{alias} failed readiness, still serving v{self._served}: {exc}"
                self._failed[alias] = why
                self._set(pending=None, reason=why)
                log.warning("%s", why)
                return
            except ChurnlabError as exc:  # the registry went away: try again at the next poll
                self._set(pending=None, reason=f"cannot load v{alias} now: {exc}")
                log.warning("cannot load v%s now: %s", alias, exc)
                return
            if self.registry.holder(self.stage) != alias:  # it moved again meanwhile
                continue
            self._swap(prepared)
            switch = Switch(
                time=datetime.now(UTC).isoformat(timespec="milliseconds"),
                from_version=self._served,
                to_version=alias,
                trigger=trigger,
                ready_s=round(time.monotonic() - started, 3),
            )
            with self._lock:
                self._switches = [*self._switches, switch][-MAX_SWITCHES:]
                self._swaps += 1
                self._served, self._pending, self._reason = alias, None, None
            log.info(
                "now serving v%s (was v%s; %s; ready in %.2f s)",
                alias,
                switch.from_version,
                trigger,
                switch.ready_s,
            )
            return

    def _set(
        self, *, alias: Any = _UNSET, pending: Any = _UNSET, reason: Any = _UNSET, checked=False
    ) -> None:
        with self._lock:
            if alias is not _UNSET:
                self._alias = alias
            if pending is not _UNSET:
                self._pending = pending
            if reason is not _UNSET:
                self._reason = reason
            if checked:
                self._last_check = datetime.now(UTC).isoformat(timespec="milliseconds")

    # ------------------------------------------------------------------ reading
    def status(self) -> dict[str, Any]:
        """What ``/health`` adds: the alias's version, a version being loaded, and why the
        served version differs from the alias (None when it does not)."""
        with self._lock:
            return {
                "following": True,
                "alias_version": self._alias,
                "pending": self._pending,
                "reason": self._reason,
                "poll_interval_s": self.poll_interval_s,
                "webhooks": self.webhooks,
                "last_check": self._last_check,
            }

    @property
    def swaps(self) -> int:
        """How many versions have been swapped in so far: :meth:`switches` changes only
        when this does."""
        return self._swaps

    def switches(self) -> list[dict[str, Any]]:
        """Every swap so far, oldest first (time, from, to, trigger, ready_s)."""
        with self._lock:
            return [s.to_dict() for s in self._switches]
