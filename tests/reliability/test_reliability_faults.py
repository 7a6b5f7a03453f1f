"""Registry faults: a tracking server that dies or hangs, interrupted and racing promotions.

Runs against a real ``mlflow server`` on 127.0.0.1 (its own sqlite store, served artifacts
in a temporary folder) and, where the embedded store behaves differently (it has a file
lock, the server has none), against the embedded sqlite store too.
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
import time

import pytest
from support import cli, main, remote_env, sqlite_server, start_cli

from churnlab import cli as churnlab_cli
from churnlab.registry import PRODUCTION, STAGING, Registry

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("faults-server")]

#: every command must give up on an unreachable registry within this many seconds
FAIL_WITHIN_S = 15.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with sqlite_server(tmp_path_factory.mktemp("faults-server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def source(server):
    """One trained candidate on the server whose model new test versions can point at."""
    from churnlab import train

    with remote_env(server.url):
        result = train.train_candidate(estimator="logreg", rows=1200, model_name="faults-source")
        return f"models:/faults-source/{result.model_version}"


@pytest.fixture
def on_server(server, source, monkeypatch):
    """This test talks to the server (in-process and in the CLIs it starts)."""
    if not server.healthy():
        server.stop()
        server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    from churnlab import store

    store.configure()
    return server


def versions_of(name: str, source: str, count: int = 3) -> Registry:
    """Register ``count`` versions of model ``name``, copies of the version ``source``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for _ in range(count):  # (MLflow prints a line per copy)
            client.copy_model_version(source, name)
    return Registry(name)


def run_main(*args: str) -> tuple[int, str]:
    """The real CLI entry point in this process (fast), with its output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = churnlab_cli.main(list(args))
    return code, out.getvalue()


def stage_holders(registry: Registry, stage: str) -> list[int]:
    return [int(v.version) for v in registry.versions() if v.current_stage == stage]


# ------------------------------------------------------------- interrupted promotions


@pytest.fixture(params=["embedded", "server"])
def backend(request, isolated_home):
    """A registry with three unpromoted versions, on the embedded store or the server."""
    name = f"interrupt-{request.param}-{time.time_ns()}"
    if request.param == "server":
        request.getfixturevalue("on_server")
        return versions_of(name, request.getfixturevalue("source"))
    request.getfixturevalue("registry")  # trained v1 and v2 in this test's embedded store
    return versions_of(name, "models:/churn-model/1")


def test_alias_moved_without_its_stage_is_reported_and_repaired(backend):
    reg = backend
    reg.promote(1, override=True, reason="first release")
    # a promotion interrupted right after moving the alias: no stage mirror, no event
    reg.client.set_registered_model_alias(reg.model_name, PRODUCTION, "2")

    code, out = run_main("--model", reg.model_name, "status")
    assert code == 1, out
    assert "inconsistent: alias production names v2 but stage Production holds v1" in out
    assert "churnlab repair" in out

    code, out = run_main("--model", reg.model_name, "repair")
    assert code == 0 and "repaired:" in out, out
    code, out = run_main("--model", reg.model_name, "status")
    assert code == 0 and "inconsistent" not in out, out
    assert reg.holder(PRODUCTION) == 2
    assert stage_holders(reg, "Production") == [2]
    last = [e for e in reg.history() if e.alias == PRODUCTION][-1]
    assert (last.from_version, last.to_version, last.action) == (1, 2, "repair")
    assert run_main("--model", reg.model_name, "repair")[1].startswith("nothing to repair")


def test_promotion_stopped_before_leaving_staging_is_reported_and_repaired(backend):
    reg = backend
    reg.promote(1, override=True, reason="first release")
    reg.stage(2, override=True, reason="candidate")
    # promote 2 interrupted after moving production, before staging let go of v2
    reg.client.set_registered_model_alias(reg.model_name, PRODUCTION, "2")

    code, out = run_main("--model", reg.model_name, "status")
    assert code == 1, out
    assert "aliases staging and production both name v2" in out

    code, out = run_main("--model", reg.model_name, "repair")
    assert code == 0, out
    assert reg.holder(STAGING) is None and reg.holder(PRODUCTION) == 2
    assert stage_holders(reg, "Staging") == [] and stage_holders(reg, "Production") == [2]
    assert reg.status()["consistent"], reg.status()["problems"]
    actions = [(e.alias, e.action, e.to_version) for e in reg.history()]
    assert (STAGING, "unstage", None) in actions and (PRODUCTION, "repair", 2) in actions


def test_real_promote_killed_after_moving_the_alias_is_repaired(on_server, source):
    """Kill a real `churnlab promote` process while the server holds its next request."""
    reg = versions_of(f"killed-{time.time_ns()}", source)
    reg.promote(1, override=True, reason="first release")
    env = {"MLFLOW_TRACKING_URI": on_server.url}
    offset = on_server.log_size()
    proc = start_cli(
        "--model", reg.model_name, "promote", "2", "--override", "--reason", "x", env=env
    )
    try:
        deadline = time.monotonic() + 60  # the promoter reaches its alias request in 2-10 s
        while time.monotonic() < deadline and proc.poll() is None:
            if "POST /api/2.0/mlflow/registered-models/alias " in on_server.logged_since(offset):
                break
            time.sleep(0.002)  # (a poll's cost: the kill must land between two requests)
        on_server.freeze()  # the promoter now waits on the server ...
        proc.kill()  # ... and dies there, between moving the alias and finishing the move
        proc.wait(timeout=30)  # SIGKILL: reaped at once
    finally:
        on_server.thaw()
        proc.kill()
        proc.communicate(timeout=30)  # SIGKILL: reaped at once
    assert reg.holder(PRODUCTION) == 2
    status = reg.status()
    if status["consistent"]:  # the kill came after the last write: nothing to repair
        pytest.fail("the promote process finished before it was killed; nothing was tested")
    code, out = run_main("--model", reg.model_name, "status")
    assert code == 1 and "inconsistent" in out, out
    assert run_main("--model", reg.model_name, "repair")[0] == 0
    assert reg.status()["consistent"]
    assert stage_holders(reg, "Production") == [2]


# ------------------------------------------------------------- racing promotions


def assert_one_holder_and_both_events(reg: Registry, reasons: set[str]) -> None:
    status = reg.status()
    assert status["consistent"], status["problems"]
    holder = reg.holder(PRODUCTION)
    assert holder in (2, 3)
    assert stage_holders(reg, "Production") == [holder]
    events = [e for e in reg.history() if e.alias == PRODUCTION and e.action == "promote"]
    assert {e.reason for e in events} >= reasons, events
    print(f"\nracing promoters: holder v{holder}, {len(reg.history())} events in the history")


@pytest.mark.parametrize("where", ["embedded", "server"])
def test_two_processes_promoting_at_once_leave_one_holder_and_both_events(where, request):
    name = f"race-{where}-{time.time_ns()}"
    if where == "server":
        server = request.getfixturevalue("on_server")
        reg = versions_of(name, request.getfixturevalue("source"))
        env = {"MLFLOW_TRACKING_URI": server.url}
    else:
        request.getfixturevalue("registry")
        reg = versions_of(name, "models:/churn-model/1")
        env = {}
    reg.promote(1, override=True, reason="first release")
    procs = [
        start_cli("--model", name, "promote", v, "--override", "--reason", f"race-{v}", env=env)
        for v in ("2", "3")
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)  # it fails within FAIL_WITHIN_S; 120 s is a hang
        assert proc.returncode == 0, err
    assert_one_holder_and_both_events(reg, {"race-2", "race-3"})


def test_promotion_overtaken_mid_move_on_a_server_converges(on_server, source):
    """The worst interleaving, made certain: another promoter runs to completion between
    this promoter moving the alias and recording its event (a server has no lock)."""
    from mlflow.tracking import MlflowClient

    reg = versions_of(f"overtaken-{time.time_ns()}", source)
    reg.promote(1, override=True, reason="first release")
    env = {"MLFLOW_TRACKING_URI": on_server.url}

    class Overtaken:
        def __init__(self) -> None:
            self.real = MlflowClient()
            self.done = False

        def __getattr__(self, name):
            return getattr(self.real, name)

        def set_registered_model_alias(self, name, alias, version):
            self.real.set_registered_model_alias(name, alias, version)
            if not self.done:
                self.done = True
                other = cli(
                    "--model", name, "promote", "3", "--override", "--reason", "race-3", env=env
                )
                assert other.returncode == 0, other.stderr

    slow = Registry(reg.model_name, client=Overtaken())
    slow.promote(2, override=True, reason="race-2")
    assert reg.holder(PRODUCTION) == 3
    assert_one_holder_and_both_events(reg, {"race-2", "race-3"})


# ------------------------------------------------------------- the server stops


def assert_clear_failure(done, took: float, what: str) -> None:
    lines = done.stderr.strip().splitlines()
    print(f"  {what:40} exit {done.returncode} after {took:5.1f} s: {done.stderr.strip()}")
    assert done.returncode == 3, (what, done.stdout, done.stderr)
    assert len(lines) == 1, (what, done.stderr)
    assert "cannot reach the MLflow tracking server" in lines[0]
    assert "Traceback" not in done.stderr
    assert took <= FAIL_WITHIN_S, (what, took)


def label(args: list[str]) -> str:
    words = args[2:] if args[0] == "--model" else args
    return " ".join(w for w in words if w not in ("--override", "--reason", "x"))


def commands(model: str) -> list[list[str]]:
    return [
        ["train", "--rows", "600"],
        ["--model", model, "gate", "1"],
        ["--model", model, "stage", "2", "--override", "--reason", "x"],
        ["--model", model, "promote", "2", "--override", "--reason", "x"],
        ["--model", model, "rollback"],
        ["--model", model, "status"],
        ["--model", model, "history"],
    ]


def test_commands_against_a_hung_server_fail_fast(on_server, source):
    """A server that accepts connections but never answers (SIGSTOP): no command hangs."""
    reg = versions_of(f"hung-{time.time_ns()}", source)
    env = {"MLFLOW_TRACKING_URI": on_server.url}
    print()
    on_server.freeze()
    try:
        for args in commands(reg.model_name)[0:4:3]:  # train; promote (the same probe as the rest)
            start = time.monotonic()
            # a hung command is what this test catches: it fails in ~5 s, 120 s is a hang
            done = cli(*args, env=env, timeout=120)
            assert_clear_failure(done, time.monotonic() - start, label(args))
    finally:
        on_server.thaw()
    assert on_server.healthy(timeout=10)  # thawed: it answers at once


def test_server_killed_in_the_middle_of_a_command(on_server, source):
    """Kill the server while `churnlab train` runs, then try every command against it."""
    reg = versions_of(f"killed-{time.time_ns()}", source)
    before = len(reg.versions())
    env = {"MLFLOW_TRACKING_URI": on_server.url}
    print()
    offset = on_server.log_size()
    proc = start_cli("--model", reg.model_name, "train", "--rows", "3000", env=env)
    try:
        deadline = time.monotonic() + 120  # train reaches /runs/create in 2-10 s
        while time.monotonic() < deadline and proc.poll() is None:
            if "/runs/create " in on_server.logged_since(offset):
                break
            time.sleep(0.02)  # (a poll's cost: the kill must land mid-train)
        assert proc.poll() is None, "train ended before the server was stopped"
        on_server.kill()
        killed = time.monotonic()
        out, err = proc.communicate(timeout=120)  # it fails within FAIL_WITHIN_S; 120 s is a hang
    finally:
        proc.kill()
    done = type("Done", (), {"returncode": proc.returncode, "stdout": out, "stderr": err})
    assert_clear_failure(done, time.monotonic() - killed, "train (server killed mid-run)")

    for args in commands(reg.model_name):  # the entry point in this process: a dead server
        start = time.monotonic()  # refuses connections, so nothing here can hang
        done = main(*args, env=env)
        assert_clear_failure(done, time.monotonic() - start, label(args))

    # the interrupted train registered nothing (read the server's own sqlite store)
    with sqlite3.connect(on_server.folder / "mlflow.db") as db:
        (after,) = db.execute(
            "SELECT count(*) FROM model_versions WHERE name = ?", (reg.model_name,)
        ).fetchone()
    assert after == before
