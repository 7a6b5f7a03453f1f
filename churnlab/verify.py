"""Side-by-side verification: do the staging and production backends serve their aliases?

:func:`verify_side_by_side` runs the staging and production backends at the same time
(real uvicorn processes, or ones already running with ``attach=True``) and checks, for
each: ``/health`` names the version the alias names in the registry, and its predictions
on a fixed sample equal those of that version loaded in-process. A newer registered
version that was never promoted must be served by neither.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from churnlab.backend import Backend, BackendFailed
from churnlab.checks import Check, Result
from churnlab.errors import InputError, Refused
from churnlab.registry import Registry, parse_stage
from churnlab.scoring import TOLERANCE

STAGES = ("staging", "production")
SAMPLE_SEED = 20240917  # the fixed sample both backends score
#: the columns of a verification table, one row per stage
ROW_COLUMNS: tuple[str, ...] = (
    "stage",
    "alias_version",
    "served_version",
    "run_id",
    "predictions_match",
    "max_abs_diff",
    "status",
)


@dataclass
class VerifyResult(Result):
    """One row per stage (alias vs served version, predictions), plus unpromoted versions.

    Each row is also a check named after its stage (served version ``==`` alias version,
    the row's status as detail), and ``unpromoted`` checks that no backend serves a version
    that was never promoted. ``version`` is None: the result is about a model's stages.
    """

    version: int | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    health: dict[str, dict[str, Any]] = field(default_factory=dict)
    unpromoted: list[int] = field(default_factory=list)
    unpromoted_served: list[int] = field(default_factory=list)
    sample_rows: int = 0

    title: ClassVar[str] = "Verification"
    needs_checks: ClassVar[bool] = True

    @property
    def ok(self) -> bool:
        """Every stage serves its alias's version, and no unpromoted version is served."""
        return self.passed

    def add(self, row: dict[str, Any], health: dict[str, Any]) -> None:
        """Add one stage's row, its ``/health`` answer and the check it makes."""
        self.rows.append(row)
        self.health[row["stage"]] = health
        self.checks.append(
            Check.of(
                row["stage"],
                row["status"] == "ok",
                row["served_version"],
                row["alias_version"],
                "==",
                row["status"],
            )
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "ok": self.ok,
            "rows": [dict(r) for r in self.rows],
            "health": {k: dict(v) for k, v in self.health.items()},
            "unpromoted": list(self.unpromoted),
            "unpromoted_served": list(self.unpromoted_served),
            "sample_rows": self.sample_rows,
        }

    def table(self, columns: tuple[str, ...] = ROW_COLUMNS):
        """The rows as a DataFrame (for notebooks and reports)."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(columns))

    def summary(self) -> str:
        """One line: verified, or what disagrees."""
        served = ", ".join(
            f"{r['stage']} serves {_v(r['served_version'])} (@{r['stage']} = {_v(r['alias_version'])})"
            for r in self.rows
        )
        newer = ""
        if self.unpromoted:
            listed = ", ".join(f"v{v}" for v in self.unpromoted)
            newer = f"; unpromoted {listed} served by " + (
                "neither" if not self.unpromoted_served else "a backend!"
            )
        if self.ok:
            return f"Verified {self.model_name}: {served}{newer}"
        wrong = "; ".join(f"{r['stage']}: {r['status']}" for r in self.rows if r["status"] != "ok")
        if self.unpromoted_served:
            wrong = "; ".join(
                filter(None, [wrong, f"unpromoted {_vs(self.unpromoted_served)} is served"])
            )
        return f"Verification failed for {self.model_name}: {wrong}"

    def lines(self) -> list[str]:
        """The table as text lines for a terminal."""
        out = [
            f"  {'stage':11} {'alias':>6} {'served':>7}  {'predictions':12} {'run id':34} status"
        ]
        for r in self.rows:
            match = {True: "match", False: "DIFFER", None: "-"}[r["predictions_match"]]
            out.append(
                f"  {r['stage']:11} {_v(r['alias_version']):>6} {_v(r['served_version']):>7}  "
                f"{match:12} {r['run_id'] or '-':34} {r['status']}"
            )
        if self.unpromoted:
            out.append(
                f"  unpromoted: {_vs(self.unpromoted)} — served by "
                + (_vs(self.unpromoted_served) if self.unpromoted_served else "neither backend")
            )
        return out


def _v(version: int | None) -> str:
    return "-" if version is None else f"v{version}"


def _vs(versions: Sequence[int]) -> str:
    return ", ".join(f"v{v}" for v in versions)


def sample(rows: int = 50):
    """The fixed sample both backends score: ``rows`` seeded synthetic customers."""
    from churnlab import data

    return data.generate(rows, seed=SAMPLE_SEED)


def _expected(registry: Registry, version: int, frame):
    """``version``'s churn probabilities for ``frame`` from its scikit-learn pipeline, or
    the exception that prevented them (raised when a backend's answers are compared)."""
    from churnlab import data
    from churnlab.scoring import Scorer

    try:
        return Scorer.from_registry(registry, version, kind="sklearn").predict_proba(
            data.features(frame)
        )
    except Exception as exc:  # noqa: BLE001 - raised where the comparison needs it
        return exc


def _row(stage: str, alias_version: int, status: str = "ok") -> dict[str, Any]:
    """A stage's row before its backend was asked anything."""
    return {
        "stage": stage,
        "alias_version": alias_version,
        "served_version": None,
        "run_id": None,
        "predictions_match": None,
        "max_abs_diff": None,
        "status": status,
    }


def _verify_stage(
    backend: Backend, registry: Registry, stage: str, alias_version: int, frame, expected
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One stage's row and ``/health`` answer: served version and predictions vs the alias."""
    import numpy as np

    from churnlab import schema

    mv = registry.version(alias_version)
    row = _row(stage, alias_version)
    try:
        health = backend.health()
    except Exception as exc:
        row["status"] = f"no answer from {backend.url}/health ({type(exc).__name__})"
        return row, {}
    row["served_version"] = health.get("model_version")
    row["run_id"] = health.get("run_id")
    problems = []
    if health.get("stage") != stage:
        problems.append(f"/health names stage {health.get('stage')!r}")
    if health.get("model_name") != registry.model_name:
        problems.append(f"/health names model {health.get('model_name')!r}")
    if row["served_version"] != alias_version:
        problems.append(f"serves {_v(row['served_version'])}, the alias names v{alias_version}")
    elif row["run_id"] != mv.run_id:
        problems.append("run id differs from the registered version's")
    records = frame[[schema.ID_COLUMN, *schema.FEATURE_NAMES]].to_dict(orient="records")
    if isinstance(expected, Exception):
        raise expected
    try:
        answer = backend.predict(records)
        served = np.asarray([p["churn_probability"] for p in answer["predictions"]])
    except Exception as exc:
        problems.append(f"/predict failed ({type(exc).__name__})")
    else:
        if served.shape != expected.shape:
            problems.append(f"{len(served)} predictions for {len(expected)} records")
            row["predictions_match"] = False
        else:
            diff = float(np.max(np.abs(served - expected)))
            row["max_abs_diff"] = diff
            row["predictions_match"] = diff <= TOLERANCE
            if not row["predictions_match"]:
                problems.append(
                    f"predictions differ from v{alias_version} in-process (max {diff:.3g})"
                )
    if problems:
        row["status"] = "; ".join(problems)
    return row, health


def verify_side_by_side(
    *,
    registry: Registry | None = None,
    staging_port: int | None = None,
    production_port: int | None = None,
    sample_rows: int = 50,
    stages: Sequence[str] = STAGES,
    attach: bool = False,
) -> VerifyResult:
    """Run (or, with ``attach``, reach) both backends at once and check each against its alias.

    Ports None pick free ones. Refused when a stage to verify holds no version; pass
    ``stages=("staging",)`` to verify one stage only. With ``attach=True`` the backends
    must already listen on ``127.0.0.1:<port>`` (e.g. the compose deployment).
    """
    if sample_rows < 1:
        raise InputError(f"sample_rows must be at least 1, got {sample_rows}")
    stages = tuple(dict.fromkeys(parse_stage(s) for s in stages))
    if not stages:
        raise InputError("name at least one stage to verify")
    registry = registry or Registry()
    ports = {"staging": staging_port, "production": production_port}
    if attach and any(ports[s] is None for s in stages):
        raise InputError("attach needs the port of each backend: --staging-port, --production-port")
    holders = {s: registry.holder(s) for s in stages}
    empty = [s for s in stages if holders[s] is None]
    if empty:
        raise Refused(
            f"refused: {registry.model_name} has no version in {' and '.join(empty)}; "
            "nothing to verify there (verify the other stage alone with --stage)"
        )
    frame = sample(sample_rows)
    result = VerifyResult(registry.model_name, sample_rows=sample_rows)

    backends = {s: Backend(s, port=ports[s], model_name=registry.model_name) for s in stages}
    with contextlib.ExitStack() as stack:
        started: dict[str, str | None] = {}
        if not attach:
            for backend in backends.values():  # start both, then wait for both
                stack.callback(backend.stop)
                backend.start()
        # what each backend must answer, computed here while they start
        expected = {s: _expected(registry, holders[s], frame) for s in stages}
        if not attach:
            for s, backend in backends.items():
                try:
                    backend.wait_ready()
                    started[s] = None
                except BackendFailed as exc:
                    started[s] = str(exc)
        for s, backend in backends.items():
            failed = started.get(s)
            if failed:
                result.add(_row(s, holders[s], failed), {})
            else:
                result.add(*_verify_stage(backend, registry, s, holders[s], frame, expected[s]))

    newest = max(holders.values())
    served = {r["served_version"] for r in result.rows}
    result.unpromoted = [int(v.version) for v in registry.versions() if int(v.version) > newest]
    result.unpromoted_served = [v for v in result.unpromoted if v in served]
    result.checks.append(
        Check.of(
            "unpromoted",
            not result.unpromoted_served,
            result.unpromoted_served,
            [],
            "==",
            "versions newer than every stage's holder that a backend serves",
        )
    )
    return result
