"""The staging smoke check against a real backend process and a real registry."""

from __future__ import annotations

import json

import pytest
from support import main, running_backend

from churnlab import gate
from churnlab.backend import BackendFailed
from churnlab.checks import COLUMNS
from churnlab.errors import InputError, Refused
from churnlab.smoke import SmokeResult, smoke_check
from churnlab.tags import SMOKE_PREFIX
from churnlab.tags import SMOKE_VERDICT as SMOKE_TAG

pytestmark = pytest.mark.slow


def _artifact(registry, version: int) -> dict:
    import mlflow.artifacts

    run_id = registry.version(version).run_id
    return json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/smoke/v{version}.json"))


def test_passed_smoke_check_is_recorded_and_unlocks_promotion(registry):
    """The real flow: gate passes, stage, smoke check passes, promote without override."""
    lenient = gate.Policy.load(latency_p95_ms=1e6)  # this shared machine is not a benchmark
    assert gate.run_gate(1, registry=registry, policy=lenient).passed
    registry.stage(1)
    with pytest.raises(Refused, match="smoke is none"):
        registry.promote(1)

    result = smoke_check(registry=registry, latency_requests=30)

    assert isinstance(result, SmokeResult)
    assert result.passed and result.verdict == "passed", result.summary()
    assert (result.model_name, result.version, result.stage) == ("churn-model", 1, "staging")
    names = [c.name for c in result.checks]
    assert names == ["startup", "health", "predictions", "latency", "bad_input", "memory"]
    assert all(c.status == "pass" for c in result.checks)
    checks = {c.name: c for c in result.checks}
    assert checks["predictions"].value <= 1e-9
    assert "750 rows of the evaluation snapshot" in checks["predictions"].detail
    assert checks["bad_input"].value == "9/9"
    assert result.health["model_version"] == 1 and result.health["stage"] == "staging"
    assert 0 < result.p50_ms <= result.p95_ms
    assert result.peak_rss_mb > 50 and result.startup_s > 0

    tags = registry.version(1).tags
    assert tags[SMOKE_TAG] == "passed"
    assert float(tags[SMOKE_PREFIX + "p50_ms"]) == result.p50_ms
    assert float(tags[SMOKE_PREFIX + "p95_ms"]) == result.p95_ms
    assert float(tags[SMOKE_PREFIX + "peak_rss_mb"]) == result.peak_rss_mb
    assert tags[SMOKE_PREFIX + "predictions"] == "pass"
    assert _artifact(registry, 1) == json.loads(json.dumps(result.to_dict()))

    table = result.table()
    assert list(table.columns) == list(COLUMNS)
    assert len(table) == len(result.checks)
    assert result.summary().startswith("Smoke check passed: churn-model v1 (staging): p50 ")

    move = registry.promote(1)
    assert registry.holder("production") == 1 and "Promoted churn-model v1" in move.message


def test_failed_smoke_check_from_the_cli_is_recorded_and_blocks_promotion(registry):
    registry.stage(1, override=True, reason="smoke test")
    done = main("smoke", "--stage", "staging", "--requests", "20", "--max-p95-ms", "0.001")
    assert done.returncode == 1, done.stderr
    assert "Smoke check failed: churn-model v1 (staging): latency:" in done.stdout
    assert "  fail  latency" in done.stdout and "  pass  predictions" in done.stdout
    assert registry.version(1).tags[SMOKE_TAG] == "failed"
    assert _artifact(registry, 1)["verdict"] == "failed"
    with pytest.raises(Refused, match="smoke is failed"):
        registry.promote(1)


def test_smoke_check_refuses_an_empty_stage(registry):
    with pytest.raises(Refused, match="churn-model has no version in staging"):
        smoke_check(registry=registry)
    done = main("smoke", "--stage", "production")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "churnlab: refused: churn-model has no version in production; "
        "stage one before the smoke check"
    )


def test_smoke_check_refuses_a_version_the_stage_does_not_hold(registry):
    registry.stage(1, override=True, reason="smoke test")
    with pytest.raises(Refused, match=r"v2 does not hold staging \(v1 does\)"):
        smoke_check(2, registry=registry)
    assert registry.version(2).tags[SMOKE_TAG] == "none"  # nothing recorded


def test_smoke_check_rejects_bad_arguments(registry):
    registry.stage(1, override=True, reason="smoke test")
    done = main("smoke", "--stage", "qa")
    assert done.returncode == 2
    assert (
        done.stderr.strip() == "churnlab: stage must be one of ['staging', 'production'], got 'qa'"
    )
    with pytest.raises(InputError, match="churn-model has no version 9"):
        smoke_check(9, registry=registry)
    with pytest.raises(InputError, match="latency_requests must be at least 1"):
        smoke_check(registry=registry, latency_requests=0)


def test_running_backend_reports_why_the_process_died(registry):
    """An empty stage: uvicorn exits at start-up with one clear line, which is reported."""
    with pytest.raises(BackendFailed) as caught, running_backend("production"):
        pass  # pragma: no cover - never reached
    message = str(caught.value)
    assert message.startswith("the production backend exited with code ")
    assert message.endswith(
        "serving: churn-model has no version in production: nothing to serve "
        "(run `churnlab promote VERSION`)"
    )
    assert "Traceback" not in caught.value.output
    assert [ln for ln in caught.value.output.splitlines() if "no version" in ln] == [
        "ERROR:    serving: churn-model has no version in production: nothing to serve "
        "(run `churnlab promote VERSION`)"
    ]
