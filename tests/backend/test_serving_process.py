"""The serving backend as real processes: `uvicorn serving.app:app` and `churnlab serve`.

Start-up resolves the stage once; an empty stage, an unknown model or an unreachable
registry ends the process promptly with one clear line; body limits hold over a real
socket; and the same backend serves from a real `mlflow server` on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from support import copy_db as _copy_db
from support import running_backend, sqlite_server

from churnlab import data, schema
from churnlab.backend import Backend, BackendFailed, free_port
from churnlab.schema import EXAMPLE_RECORD
from churnlab.scoring import Scorer

pytestmark = pytest.mark.slow

CHURNLAB = str(Path(sys.executable).with_name("churnlab"))
SECRET = "s3cret-token-value"


@pytest.fixture
def staged(registry):
    registry.stage(1, override=True, reason="serving tests")
    return registry


def _records(registry, version: int, rows: int = 40):
    frame = registry.snapshot(version, "evaluation").head(rows)
    records = frame[[schema.ID_COLUMN, *schema.FEATURE_NAMES]].to_dict(orient="records")
    return frame, records


def _uvicorn(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "serving.app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_uvicorn_serves_the_stage_and_a_promotion_does_not_change_it(staged):
    frame, records = _records(staged, 1)
    with running_backend("Staging") as backend:  # the legacy spelling is accepted
        health = backend.health()
        assert (health["stage"], health["model_version"]) == ("staging", 1)
        first = backend.predict(records)
        expected = Scorer.from_registry(staged, 1).predict_proba(data.features(frame))
        got = [p["churn_probability"] for p in first["predictions"]]
        assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1e-9

        _check_body_limits(backend.port)  # the default 8 MiB limit, over a real socket

        staged.stage(2, override=True, reason="a newer candidate")
        assert staged.holder("staging") == 2
        assert backend.health()["model_version"] == 1  # the running server is unchanged
        assert backend.predict(records) == first
    with running_backend("staging") as restarted:  # a restart picks up the move
        assert restarted.health()["model_version"] == 2
        assert restarted.health()["run_id"] == staged.version(2).run_id


def test_free_ports_handed_out_together_differ():
    """The kernel can give one free port twice in a row; two backends started together
    (verify's staging and production) must not share one."""
    ports = [free_port() for _ in range(64)]
    assert len(set(ports)) == len(ports)


def test_a_server_that_takes_the_port_first_is_not_taken_for_the_backend(staged):
    """Another server binds the backend's port after start()'s check: its /health is not
    this backend's, and waiting says so instead of reporting the backend ready."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Other(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"stage": "staging", "model_name": "someone-else"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    backend = Backend("staging", model_name=staged.model_name).start()
    other = ThreadingHTTPServer(("127.0.0.1", backend.port), Other)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with pytest.raises(BackendFailed, match="answers as another server") as failed:
            backend.wait_ready(timeout=60)
        assert "(someone-else staging), not this" in str(failed.value)
        assert backend.process.poll() is not None, "the backend process is stopped"
    finally:
        other.shutdown()
        other.server_close()
        backend.stop()


def test_churnlab_serve_runs_production_on_the_given_port(staged):
    staged.promote(1, override=True, reason="serving tests")
    port = free_port()
    process = subprocess.Popen(
        [CHURNLAB, "serve", "--stage", "production", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        health = None
        # start-up takes 5-20 s; 120 s means it hangs
        deadline = time.monotonic() + 120
        while health is None and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read()
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except requests.RequestException:
                time.sleep(0.1)
        assert health is not None
        assert (health["stage"], health["model_version"]) == ("production", 1)
        answer = requests.post(
            f"http://127.0.0.1:{port}/predict", json={"records": [EXAMPLE_RECORD]}, timeout=30
        ).json()
        assert answer["stage"] == "production" and len(answer["predictions"]) == 1
    finally:
        process.terminate()
        # it stops about 1 s after SIGTERM
        out, err = process.communicate(timeout=30)
    assert f"Serving churn-model v1 (production) on http://127.0.0.1:{port}" in out
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "env", "code", "says"),
    [
        (["serve", "--stage", "production"], {}, 1, "churn-model has no version in production"),
        (["serve", "--stage", "prod"], {}, 2, "MODEL_STAGE must be staging or production"),
        (["serve"], {"SERVING_MAX_RECORDS": "lots"}, 2, "SERVING_MAX_RECORDS must be"),
    ],
    ids=["empty stage", "bad stage", "bad limit"],
)
def test_churnlab_serve_refuses_in_one_line(staged, args, env, code, says):
    args = [*args, "--port", str(free_port())]
    # it refuses in 2-5 s; 120 s means it hangs
    done = subprocess.run(
        [CHURNLAB, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )
    assert done.returncode == code, done.stderr
    assert _lines(done.stderr) == [_lines(done.stderr)[0]], done.stderr
    assert done.stderr.startswith("churnlab: ") and says in done.stderr


def test_churnlab_serve_refuses_a_port_in_use(staged):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # it refuses in 2-5 s; 120 s means it hangs
        done = subprocess.run(
            [CHURNLAB, "serve", "--port", str(port)], capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use" in done.stderr


def _unreachable_env() -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "MLFLOW_TRACKING_TOKEN": SECRET,
    }


def test_churnlab_serve_exits_3_when_the_registry_is_unreachable():
    done = subprocess.run(
        [CHURNLAB, "serve", "--port", str(free_port())],
        capture_output=True,
        text=True,
        # it gives up in 2-5 s; 120 s means it hangs
        timeout=120,
        env=_unreachable_env(),
    )
    assert done.returncode == 3, done.stderr
    assert len(_lines(done.stderr)) == 1
    assert "cannot reach the MLflow tracking server" in done.stderr
    assert SECRET not in done.stderr + done.stdout


@pytest.mark.parametrize("case", ["unreachable", "bad stage"])
def test_uvicorn_start_up_failure_is_one_clear_line(case):
    """(An empty stage: tests/deploy/test_staging_smoke.py, through running_backend.)"""
    env = {**_unreachable_env(), "MODEL_STAGE": "staging"}
    says = "serving: cannot reach the MLflow tracking server"
    if case == "bad stage":
        env["MODEL_STAGE"] = "qa"
        says = "serving: MODEL_STAGE must be staging or production, got 'qa'"
    # it gives up in 2-5 s; 120 s means it hangs
    done = subprocess.run(
        _uvicorn(free_port()), capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    assert [line for line in _lines(output) if says in line], output
    assert SECRET not in output


def _raw_post(port: int, head: str, body_parts) -> tuple[int, dict]:
    """Send a request over a plain socket; read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        for part in body_parts:
            sock.sendall(part)
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        return reply.status, json.loads(reply.read())


def _check_body_limits(port: int, limit: int = 8 * 1024 * 1024) -> None:
    """Bodies over the limit get 413 (declared or streamed), never a reset; serving goes on."""
    piece = json.dumps(EXAMPLE_RECORD).encode()
    count = limit // len(piece) + 10
    body = b'{"records": [' + b",".join([piece] * count) + b"]}"
    assert len(body) > limit
    # declared too large: answered 413 while the client is still sending, no reset
    head = (
        "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    status, answer = _raw_post(port, head, [body])
    assert status == 413 and f"limit is {limit} bytes" in answer["detail"]
    # chunked, no length: cut off while streaming
    head = (
        "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    step = 64 * 1024
    chunks = [
        b"%x\r\n%s\r\n" % (len(body[i : i + step]), body[i : i + step])
        for i in range(0, len(body), step)
    ]
    status, answer = _raw_post(port, head, [*chunks, b"0\r\n\r\n"])
    assert status == 413 and "exceeds the limit" in answer["detail"]
    # the server still answers
    reply = requests.get(f"http://127.0.0.1:{port}/health", timeout=10)
    assert reply.status_code == 200


def test_serves_from_a_real_mlflow_server(template_home, tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI points at `mlflow server` on 127.0.0.1: stage, serve, predict."""
    from churnlab import store
    from churnlab.registry import Registry

    server_home = tmp_path / "server"
    _copy_db(template_home, server_home)  # the server's store: the trained template's
    with sqlite_server(server_home) as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        store.configure()
        remote = Registry()
        remote.stage(2, override=True, reason="served from a tracking server")
        frame, records = _records(remote, 2, rows=25)
        with running_backend("staging", env={"MLFLOW_TRACKING_URI": server.url}) as backend:
            health = backend.health()
            assert (health["stage"], health["model_version"]) == ("staging", 2)
            assert health["run_id"] == remote.version(2).run_id
            got = [p["churn_probability"] for p in backend.predict(records)["predictions"]]
        expected = Scorer.from_registry(remote, 2).predict_proba(data.features(frame))
        assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1e-9
