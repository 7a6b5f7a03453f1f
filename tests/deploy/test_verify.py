"""Side-by-side verification: staging and production backends vs their aliases."""

from __future__ import annotations

import json

import pytest
from support import main, running_backend

from churnlab.backend import free_port
from churnlab.errors import Refused
from churnlab.verify import VerifyResult, verify_side_by_side

pytestmark = pytest.mark.slow


def _register_copy(registry, of: int) -> int:
    """Register a new version from an existing version's logged model (no training)."""
    mv = registry.version(of)
    new = registry.client.create_model_version(
        registry.model_name,
        source=mv.source,
        run_id=mv.run_id,
        tags=dict(mv.tags),
        model_id=getattr(mv, "model_id", None),
    )
    return int(new.version)


@pytest.fixture
def both_stages(registry):
    """production = v1, staging = v2, and v3 registered but never promoted."""
    registry.promote(1, override=True, reason="verify tests")
    registry.stage(2, override=True, reason="verify tests")
    assert _register_copy(registry, 2) == 3
    return registry


def test_both_backends_serve_their_aliases(both_stages):
    """`churnlab verify` on given ports: both backends at once, each checked against its alias."""
    ports = free_port(), free_port()
    done = main(
        "verify",
        "--staging-port",
        str(ports[0]),
        "--production-port",
        str(ports[1]),
        "--sample-rows",
        "20",
        "--json",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] is True
    rows = {r["stage"]: r for r in result["rows"]}
    assert list(rows) == ["staging", "production"]
    assert (rows["staging"]["alias_version"], rows["staging"]["served_version"]) == (2, 2)
    assert (rows["production"]["alias_version"], rows["production"]["served_version"]) == (1, 1)
    assert rows["staging"]["run_id"] == both_stages.version(2).run_id
    assert rows["production"]["run_id"] == both_stages.version(1).run_id
    for row in rows.values():
        assert row["predictions_match"] is True and row["status"] == "ok"
        assert row["max_abs_diff"] <= 1e-9
    assert result["health"]["staging"]["stage"] == "staging"
    assert result["health"]["production"]["stage"] == "production"
    assert result["health"]["production"]["model_version"] == 1
    assert result["unpromoted"] == [3] and result["unpromoted_served"] == []
    assert result["sample_rows"] == 20


def test_a_stale_backend_is_caught(both_stages):
    """A backend started before a promotion keeps the old version: verify says so, exit 1."""
    with running_backend("production") as backend:
        both_stages.promote(2, override=True, reason="newer")
        done = main(
            "verify", "--attach", "--stage", "production", "--production-port", str(backend.port)
        )
        result = verify_side_by_side(
            registry=both_stages,
            production_port=backend.port,
            stages=("production",),
            attach=True,
            sample_rows=10,
        )
    assert done.returncode == 1, done.stderr
    header, line = done.stdout.splitlines()[:2]
    assert header.split()[:4] == ["stage", "alias", "served", "predictions"]
    assert line.split()[:3] == ["production", "v2", "v1"]
    assert done.stdout.splitlines()[-1].startswith(
        "Verification failed for churn-model: production: serves v1, the alias names v2"
    )
    assert not result.ok
    (row,) = result.rows
    assert (row["alias_version"], row["served_version"]) == (2, 1)
    assert result.summary().startswith("Verification failed for churn-model: production: serves v1")


def test_an_empty_stage_is_refused_unless_only_the_other_is_asked(registry):
    registry.stage(1, override=True, reason="verify tests")
    with pytest.raises(Refused, match="churn-model has no version in production"):
        verify_side_by_side(registry=registry)
    done = main("verify", "--staging-port", str(free_port()), "--production-port", "1")
    assert done.returncode == 1
    assert done.stderr.startswith("churnlab: refused: churn-model has no version in production")
    assert len(done.stderr.strip().splitlines()) == 1

    result = verify_side_by_side(registry=registry, stages=("staging",), sample_rows=5)
    assert isinstance(result, VerifyResult)
    assert result.ok and [r["stage"] for r in result.rows] == ["staging"]
    assert result.unpromoted == [2] and result.health["staging"]["model_version"] == 1
    assert result.summary() == (
        "Verified churn-model: staging serves v1 (@staging = v1); unpromoted v2 served by neither"
    )
    table = result.table()
    assert list(table["stage"]) == ["staging"] and bool(table["predictions_match"][0]) is True
    assert {"alias_version", "served_version", "run_id", "status"} <= set(table.columns)


def test_attach_to_nothing_is_a_clear_failure(both_stages):
    port = free_port()
    result = verify_side_by_side(
        registry=both_stages, stages=("staging",), staging_port=port, attach=True
    )
    assert not result.ok
    assert result.rows[0]["status"].startswith(f"no answer from http://127.0.0.1:{port}/health")


def test_a_port_in_use_is_named(both_stages):
    import socket

    from churnlab.errors import InputError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InputError, match=f"port {port} on 127.0.0.1 is in use"):
            verify_side_by_side(registry=both_stages, staging_port=port)
