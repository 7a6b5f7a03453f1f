"""A shared registry, as a class or a team would run one: `mlflow server` on PostgreSQL.

A private PostgreSQL cluster (Debian's binaries, run as the ``postgres`` user) backs a real
``mlflow server`` that serves the artifacts; two people (``alice`` and ``bob``) run the
whole CLI flow against it, then promote at the same moment.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from support import MlflowServer, main, needs, remote_env, start_cli

from churnlab.postgres import Postgres

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("shared-server")]

MODEL = "shared-churn"
#: the gate's latency check samples less: this test is about the registry, not speed
FAST_GATE = ("--set", "latency_samples=20")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """PostgreSQL + `mlflow server --backend-store-uri postgresql://…` with served artifacts."""
    needs("postgresql")
    # its own folder right under /tmp: the postgres user cannot enter pytest's (0700)
    cluster = Postgres(Path(tempfile.mkdtemp(prefix="churnlab-pg-")), durable=False)
    server = None
    try:
        cluster.start()
        uri = cluster.database("mlflow")
        server = MlflowServer(uri, tmp_path_factory.mktemp("shared-server")).start()
        yield {"server": server, "cluster": cluster, "db": uri}
    finally:
        if server is not None:
            server.stop()
        cluster.stop()
        shutil.rmtree(cluster.folder, ignore_errors=True)


def as_user(shared, who: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": shared["server"].url, "CHURNLAB_ACTOR": who}


def ok(done, *codes: int) -> str:
    codes = codes or (0,)
    assert done.returncode in codes, (done.args, done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done.stdout


def churnlab(shared, who: str, *args: str, codes: tuple[int, ...] = (0,)):
    """``churnlab --model shared-churn ARGS`` as ``who``, through the CLI's entry point in this
    process (the two racing promoters below are real processes)."""
    done = main("--model", MODEL, *args, env=as_user(shared, who))
    ok(done, *codes)
    return done


def registry_rows(shared) -> list[tuple[str, int, str]]:
    """The model versions as PostgreSQL itself holds them (name, version, stage)."""
    import psycopg2

    dsn = shared["db"].replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT name, version, current_stage FROM model_versions WHERE name = %s "
            "ORDER BY version",
            (MODEL,),
        )
        return [(n, int(v), s) for n, v, s in cur.fetchall()]


def test_full_flow_on_a_shared_server(shared):
    # two people train a candidate each on the shared registry
    a = json.loads(churnlab(shared, "alice", "train", "--rows", "2000").stdout)  # gate: >= 500
    b = json.loads(churnlab(shared, "bob", "train", "--rows", "800", "--seed", "7").stdout)
    assert (a["model_version"], b["model_version"]) == (1, 2)

    gate = churnlab(shared, "alice", "gate", "1", "--json", *FAST_GATE, codes=(0, 1))
    verdict = json.loads(gate.stdout)
    assert verdict["verdict"] == ("passed" if gate.returncode == 0 else "failed")
    if gate.returncode == 0:
        churnlab(shared, "alice", "stage", "1")
    else:  # a gate that fails on this machine refuses the plain move; the override is recorded
        churnlab(shared, "alice", "stage", "1", codes=(1,))
        churnlab(shared, "alice", "stage", "1", "--override", "--reason", "gate failed here")

    smoke = churnlab(shared, "alice", "smoke", "--requests", "20", codes=(0, 1))
    print(f"\nshared server: gate exit {gate.returncode}, smoke exit {smoke.returncode}")
    if gate.returncode == smoke.returncode == 0:
        churnlab(shared, "alice", "promote", "1")
    else:
        churnlab(shared, "alice", "promote", "1", "--override", "--reason", "first release")

    churnlab(shared, "bob", "stage", "2", "--override", "--reason", "try the challenger")
    churnlab(shared, "bob", "promote", "2", "--override", "--reason", "hotfix release")
    out = churnlab(shared, "alice", "rollback", "--reason", "hotfix misbehaves").stdout
    assert "v1 -> Production" in out

    status = json.loads(churnlab(shared, "bob", "status", "--json").stdout)
    assert status["consistent"], status["problems"]
    assert status["stages"]["production"]["version"] == 1
    assert status["stages"]["staging"]["version"] is None

    events = json.loads(churnlab(shared, "bob", "history", "--json").stdout)
    moves = [(e["actor"], e["action"], e["alias"], e["to_version"]) for e in events]
    assert moves == [
        ("alice", "stage", "staging", 1),
        ("alice", "promote", "production", 1),
        ("alice", "unstage", "staging", None),
        ("bob", "stage", "staging", 2),
        ("bob", "promote", "production", 2),
        ("bob", "unstage", "staging", None),
        ("alice", "rollback", "production", 1),
    ]
    overrides = {e["reason"] for e in events if e["override"]}
    assert {"try the challenger", "hotfix release"} <= overrides

    # the registry really lives in PostgreSQL, the artifacts behind the server
    rows = registry_rows(shared)
    assert [(v, s) for _, v, s in rows] == [(1, "Production"), (2, "Archived")]
    artifacts = shared["server"].folder / "artifacts"
    assert any(p.name == "MLmodel" for p in artifacts.rglob("MLmodel"))


def test_two_people_promoting_at_once_on_a_shared_server(shared):
    import contextlib
    import io

    from mlflow.tracking import MlflowClient

    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with remote_env(shared["server"].url), quiet[0], quiet[1]:
        MlflowClient().copy_model_version(f"models:/{MODEL}/2", MODEL)  # v3, same pipeline
    env = {who: as_user(shared, who) for who in ("alice", "bob")}
    before = len(json.loads(churnlab(shared, "bob", "history", "--json").stdout))
    procs = [
        start_cli(
            "--model", MODEL, "promote", v, "--override", "--reason", f"race {who}", env=env[who]
        )
        for who, v in (("alice", "2"), ("bob", "3"))
    ]
    for proc in procs:
        # a promotion takes 2-10 s; 300 s means it hangs
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "Traceback" not in err

    status = json.loads(churnlab(shared, "alice", "status", "--json").stdout)
    assert status["consistent"], status["problems"]
    holder = status["stages"]["production"]["version"]
    assert holder in (2, 3)
    assert [v for _, v, s in registry_rows(shared) if s == "Production"] == [holder]
    events = json.loads(churnlab(shared, "alice", "history", "--json").stdout)[before:]
    reasons = {e["reason"] for e in events if e["action"] == "promote"}
    print(f"\nshared server race: holder v{holder}, {len(events)} new events: {sorted(reasons)}")
    assert reasons == {"race alice", "race bob"}
    assert events[-1]["to_version"] == holder
