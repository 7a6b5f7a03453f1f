"""Serving benchmark: the churnlab backend against `mlflow models serve`, same version, one run.

Both servers serve the version ``@staging`` holds in a fresh embedded registry (trained,
gated and staged by the real CLI). Every measurement alternates between the two, so a
change in machine load hits both. Single-row latency also alternates with a floor: a bare
ASGI app on the same stack (uvicorn, httptools, uvloop) answering a constant JSON body,
which is what any Python backend on that stack costs; churnlab's ratio to it is what its
own code adds. Then churnlab alone: 10,000 customers sent as records and as columns, the
server's own time read from its ``Server-Timing`` header. Prints one table and writes
reports/bench/serving.json.

    python -m benchmarks.serving [--estimator logreg] [--duration 5] [--quick]

``--quick`` measures start-up and single-row latency only (about 5 minutes). Needs
Debian's ``wrk`` for the throughput figures (``apt-get install -y wrk``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BIN,
    HOST,
    ROOT,
    Server,
    machine,
    machine_line,
    median,
    percentile,
    post,
    running,
    table,
    wait_until_serving,
    write_json,
)
from churnlab.backend import free_port

MODEL = "churn-model"
STAGE = "staging"
LUA = Path(__file__).resolve().parent / "post.lua"
CONCURRENCY = (1, 8, 32)
BATCHES = (1000, 10000)
LARGE = 10000  # the batch whose server time has a target
SERVER_REPEATS = 10  # requests per layout whose Server-Timing is the median
#: The names of the single-row latency targets that are not a peer's own route.
FLOOR, CHURNLAB, INVOCATIONS = "floor", "churnlab", "churnlab /invocations"
#: Single-row latency, as issue 21 measured it: per run, this many alternating rounds of
#: WARM_UP untimed then TIMED timed requests to each target, from one httpx client.
ROUNDS, WARM_UP, TIMED = 6, 30, 200
#: What the floor answers: a churnlab answer for one customer, as a constant.
FLOOR_ANSWER = (
    b'{"model_name":"churn-model","model_version":1,"stage":"staging",'
    b'"predictions":[{"churn_probability":0.6430181658202966,"churn":true}]}'
)
_FLOOR_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(FLOOR_ANSWER)).encode()),
]


async def floor(scope, receive, send) -> None:
    """The floor: a bare ASGI app that reads the request and answers :data:`FLOOR_ANSWER`.

    ``uvicorn benchmarks.serving:floor`` serves it on the stack churnlab runs on.
    """
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _FLOOR_HEADERS})
    await send({"type": "http.response.body", "body": FLOOR_ANSWER})


class Peer:
    """How to start one server and talk to it."""

    def __init__(self, name: str, path: str, command: list[str], env: dict[str, str]) -> None:
        self.name, self.path, self.command, self.env = name, path, command, env

    def body(self, records: list[dict[str, Any]]) -> bytes:
        raise NotImplementedError

    def probabilities(self, payload: bytes) -> list[float]:
        raise NotImplementedError

    def server(self) -> Server:
        port = free_port()
        command = [part.replace("{port}", str(port)) for part in self.command]
        return Server(self.name, command, port, self.env)


class Churnlab(Peer):
    def body(self, records):
        return json.dumps({"records": records}).encode()

    def columns_body(self, records):
        """The same customers as a columns request (one list per feature)."""
        from serving.contract import to_columns

        return json.dumps({"columns": to_columns(records)}).encode()

    def probabilities(self, payload):
        return [p["churn_probability"] for p in json.loads(payload)["predictions"]]


class MlflowServe(Peer):
    def __init__(self, *args, columns: list[str]) -> None:
        super().__init__(*args)
        self.columns = columns

    def body(self, records):
        data = [[r[c] for c in self.columns] for r in records]
        return json.dumps({"dataframe_split": {"columns": self.columns, "data": data}}).encode()

    def probabilities(self, payload):
        return [row[1] for row in json.loads(payload)["predictions"]]


def floor_command(port: int) -> list[str]:
    """``uvicorn`` serving :func:`floor` on ``port``, on the stack churnlab runs on."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.serving:floor",
        "--host",
        HOST,
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def run(command: list[str], env: dict[str, str], timeout: float = 600) -> str:
    """Run a CLI step of the setup; stop the benchmark with its output when it fails."""
    done = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        sys.exit(f"setup step failed: {' '.join(command)}\n{done.stdout}{done.stderr}")
    return done.stdout


def setup(home: Path, estimator: str) -> tuple[dict[str, str], int]:
    """A fresh registry with one trained, gated, staged version; the environment to use it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["CHURNLAB_HOME"] = str(home)
    # as in an activated environment (mlflow models serve runs `uvicorn` from PATH)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    churnlab = str(BIN / "churnlab")
    line = run([churnlab, "train", "--estimator", estimator], env)
    version = int(json.loads(line.strip().splitlines()[-1])["model_version"])
    gate = subprocess.run(
        [churnlab, "gate", str(version)], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if "onnx_parity" not in gate.stdout:
        sys.exit(f"the gate did not run:\n{gate.stdout}{gate.stderr}")
    if gate.returncode == 0:
        run([churnlab, "stage", str(version)], env)
    else:  # e.g. the in-process latency budget on a busy machine; the version is the same
        why = "benchmark: " + gate.stdout.strip().splitlines()[-1]
        run([churnlab, "stage", str(version), "--override", "--reason", why], env)
    return env, version


def workload(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` synthetic customers as request records (the 19 features)."""
    from churnlab import data, schema

    frame = data.generate(count, seed)[list(schema.FEATURE_NAMES)]
    return json.loads(frame.to_json(orient="records"))


def sequential(conn: http.client.HTTPConnection, path: str, body: bytes, n: int) -> list[float]:
    """Milliseconds of ``n`` requests, one after the other on one connection.

    One untimed request first, so that a connection the server closed while another was
    being measured is reopened outside the timing.
    """
    post(conn, path, body)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, _ = post(conn, path, body)
        times.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            raise RuntimeError(f"{path} answered {status}")
    return times


def single_row(targets: dict[str, tuple[str, bytes]], runs: int) -> list[dict[str, Any]]:
    """Single-row latency of each target (name -> (URL, body)), ``runs`` times.

    A run is :data:`ROUNDS` rounds; in each, every target in turn (the order reversed on
    odd rounds) gets :data:`WARM_UP` untimed then :data:`TIMED` timed requests, one after
    the other, from one httpx client. Each run gives every target's p50 and p99 (ms).
    """
    import httpx

    headers = {"Content-Type": "application/json"}
    names = list(targets)
    out = []
    with httpx.Client(timeout=60) as client:
        for _ in range(runs):
            times: dict[str, list[float]] = {name: [] for name in names}
            for round_ in range(ROUNDS):
                for name in alternate(names, round_):
                    url, body = targets[name]
                    for i in range(WARM_UP + TIMED):
                        t0 = time.perf_counter()
                        answer = client.post(url, content=body, headers=headers)
                        elapsed = (time.perf_counter() - t0) * 1000
                        if answer.status_code != 200:
                            raise RuntimeError(f"{name} answered {answer.status_code}")
                        if i >= WARM_UP:
                            times[name].append(elapsed)
            out.append(
                {
                    name: {
                        "p50_ms": round(percentile(times[name], 50), 3),
                        "p99_ms": round(percentile(times[name], 99), 3),
                    }
                    for name in names
                }
            )
    return out


def timed_post(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[float, float]:
    """One POST: the client's milliseconds and the server's (its ``Server-Timing: app``)."""
    t0 = time.perf_counter()
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    client_ms = (time.perf_counter() - t0) * 1000
    if response.status != 200:
        raise RuntimeError(f"{path} answered {response.status}")
    timing = re.search(r"\bapp;dur=([\d.]+)", response.getheader("server-timing") or "")
    if timing is None:
        raise RuntimeError(f"{path} sent no Server-Timing: app;dur=<ms>")
    return client_ms, float(timing.group(1))


def server_times(conn: http.client.HTTPConnection, path: str, bodies: dict[str, bytes]):
    """Client and server milliseconds of each body, in turns, ``SERVER_REPEATS`` times each."""
    client: dict[str, list[float]] = {name: [] for name in bodies}
    server: dict[str, list[float]] = {name: [] for name in bodies}
    names = list(bodies)
    post(conn, path, bodies[names[0]])  # reopens a connection the server closed while idle
    for round_ in range(SERVER_REPEATS + 1):
        for name in alternate(names, round_):
            client_ms, server_ms = timed_post(conn, path, bodies[name])
            if round_ > 0:  # the first round warms up
                client[name].append(client_ms)
                server[name].append(server_ms)
    return client, server


def wrk(port: int, path: str, body: bytes, connections: int, seconds: int) -> dict[str, Any]:
    """Requests per second from ``wrk`` and its error counts."""
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as handle:
        handle.write(body)
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "10s",
                "-s",
                str(LUA),
                f"http://{HOST}:{port}",
                "--",
                path,
                handle.name,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        ).stdout
    finally:
        os.unlink(handle.name)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(x) for x in sockets.groups()) if sockets else 0
    )
    if rps is None:
        raise RuntimeError(f"wrk printed no figures:\n{out}")
    return {"rps": float(rps.group(1)), "requests": int(total.group(1)), "errors": errors}


def server_breakdown(env: dict[str, str]) -> dict[str, Any]:
    """benchmarks.breakdown in a subprocess: the app's own time on 10,000 rows, by step."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.breakdown", "--stage", STAGE, "--rows", "10000"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmarks.breakdown failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def alternate(items: list, round_: int) -> list:
    """The peers in one order on even rounds, reversed on odd ones."""
    return items if round_ % 2 == 0 else items[::-1]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from churnlab import schema

    info = machine()
    home = Path(tempfile.mkdtemp(prefix="churnlab-bench-"))
    logs = home / "logs"
    logs.mkdir()
    try:
        print(f"setting up a registry in {home} ({args.estimator}) ...", flush=True)
        env, version = setup(home, args.estimator)
        env_ours = {**env, "MODEL_NAME": MODEL, "MODEL_STAGE": STAGE}
        ours = Churnlab(
            CHURNLAB,
            "/predict",
            [str(BIN / "churnlab"), "serve", "--stage", STAGE, "--host", HOST, "--port", "{port}"],
            env_ours,
        )
        theirs = MlflowServe(
            "mlflow models serve",
            "/invocations",
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{MODEL}@{STAGE}",
                "--env-manager",
                "local",
                "--host",
                HOST,
                "--port",
                "{port}",
            ],
            # the same registry, named the way MLflow's own tools expect
            {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"},
            columns=list(schema.FEATURE_NAMES),
        )
        peers = [ours, theirs]
        one = workload(1, 7)
        batches = {n: workload(n, 2024) for n in BATCHES}
        results: dict[str, dict[str, Any]] = {p.name: {} for p in peers}

        # -- start-up: process start to first successful prediction (one warm-up start each)
        print("start-up ...", flush=True)
        startups: dict[str, list[float]] = {p.name: [] for p in peers}
        cpu: dict[str, list[float]] = {p.name: [] for p in peers}
        for round_ in range(args.startup_runs + 1):
            for peer in alternate(peers, round_):
                server = peer.server()
                with running([server]):
                    server.start(logs / f"startup-{peer.name.split()[0]}-{round_}.log")
                    seconds = wait_until_serving(server, peer.path, peer.body(one))
                    cpu_seconds = server.cpu_seconds()
                if round_ > 0:  # the first round warms the file cache
                    startups[peer.name].append(seconds)
                    cpu[peer.name].append(cpu_seconds)
        for peer in peers:
            results[peer.name]["startup_s"] = round(median(startups[peer.name]), 3)
            results[peer.name]["startup_runs_s"] = [round(s, 3) for s in startups[peer.name]]
            results[peer.name]["startup_cpu_s"] = round(median(cpu[peer.name]), 3)

        # -- steady state: both servers (and the floor) up, measured in turns
        servers = {p.name: p.server() for p in peers}
        port = free_port()
        floor_server = Server(FLOOR, floor_command(port), port, env)
        with running([*servers.values(), floor_server]):
            for peer in peers:
                servers[peer.name].start(logs / f"{peer.name.split()[0]}.log")
            floor_server.start(logs / "floor.log")
            for peer in peers:
                wait_until_serving(servers[peer.name], peer.path, peer.body(one))
            wait_until_serving(floor_server, ours.path, ours.body(one))
            conns = {
                p.name: http.client.HTTPConnection(HOST, servers[p.name].port, timeout=60)
                for p in peers
            }
            bodies = {p.name: p.body(one) for p in peers}
            for peer in peers:  # warm-up
                sequential(conns[peer.name], peer.path, bodies[peer.name], 200)

            # same answers: both serve the same version
            answers = {}
            for peer in peers:
                status, payload = post(conns[peer.name], peer.path, peer.body(batches[1000]))
                answers[peer.name] = peer.probabilities(payload)
            diff = max(
                abs(a - b) for a, b in zip(answers[ours.name], answers[theirs.name], strict=True)
            )

            print(
                f"single-row latency: {args.latency_runs} run(s) of {ROUNDS} rounds of "
                f"{WARM_UP} + {TIMED} requests per target ...",
                flush=True,
            )
            url = f"http://{HOST}:{{}}{{}}".format
            routes = {
                FLOOR: (url(floor_server.port, ours.path), bodies[ours.name]),
                ours.name: (url(servers[ours.name].port, ours.path), bodies[ours.name]),
                INVOCATIONS: (url(servers[ours.name].port, "/invocations"), bodies[theirs.name]),
                theirs.name: (url(servers[theirs.name].port, theirs.path), bodies[theirs.name]),
            }
            latency = single_row(routes, args.latency_runs)
            for q in ("p50", "p99"):
                for peer in peers:
                    results[peer.name][f"latency_{q}_ms"] = median(
                        [run[peer.name][f"{q}_ms"] for run in latency]
                    )
                results[ours.name][f"invocations_{q}_ms"] = median(
                    [run[INVOCATIONS][f"{q}_ms"] for run in latency]
                )

            if not args.quick:
                print("batches ...", flush=True)
                for n in BATCHES:
                    reps = 20 if n <= 1000 else 10
                    payloads = {p.name: p.body(batches[n]) for p in peers}
                    times: dict[str, list[float]] = {p.name: [] for p in peers}
                    for round_ in range(reps + 1):
                        for peer in alternate(peers, round_):
                            t = sequential(conns[peer.name], peer.path, payloads[peer.name], 1)[0]
                            if round_ > 0:
                                times[peer.name].append(t)
                    for peer in peers:
                        results[peer.name][f"batch_{n}_ms"] = round(median(times[peer.name]), 2)

                print(f"churnlab: {LARGE:,} rows as records and as columns ...", flush=True)
                large = {
                    "records": ours.body(batches[LARGE]),
                    "columns": ours.columns_body(batches[LARGE]),
                }
                client, server = server_times(conns[ours.name], ours.path, large)
                mine = results[ours.name]
                mine[f"batch_{LARGE}_columns_ms"] = round(median(client["columns"]), 2)
                for layout in large:
                    mine[f"server_{LARGE}_{layout}_ms"] = round(median(server[layout]), 2)
                    mine[f"server_{LARGE}_{layout}_runs_ms"] = [round(s, 2) for s in server[layout]]
                    mine[f"body_{LARGE}_{layout}_bytes"] = len(large[layout])
            for conn in conns.values():
                conn.close()

            if not args.quick:
                print(f"throughput with wrk, {args.duration} s per level ...", flush=True)
                for c in CONCURRENCY:
                    for peer in alternate(peers, c):
                        figures = wrk(
                            servers[peer.name].port, peer.path, bodies[peer.name], c, args.duration
                        )
                        results[peer.name][f"throughput_c{c}_rps"] = round(figures["rps"], 1)
                        results[peer.name][f"throughput_c{c}_errors"] = figures["errors"]
                        results[peer.name][f"throughput_c{c}_requests"] = figures["requests"]

            for peer in peers:
                results[peer.name]["peak_rss_mb"] = servers[peer.name].peak_rss_mb()
            conn = http.client.HTTPConnection(HOST, servers[ours.name].port, timeout=10)
            conn.request("GET", "/health")
            health = json.loads(conn.getresponse().read())
            conn.close()
        breakdown = None
        if not args.quick:
            # the servers are stopped: the in-process measurement has the machine to itself
            print("where the server time of a 10,000-row request goes, in-process ...", flush=True)
            breakdown = server_breakdown(env_ours)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "machine": info,
        "model": {
            "name": MODEL,
            "stage": STAGE,
            "version": version,
            "estimator": args.estimator,
            "churnlab_scorer": health.get("scorer"),
            "max_probability_difference_1000_rows": diff,
        },
        "settings": {
            "quick": args.quick,
            "latency": {
                "client": "httpx",
                "runs": args.latency_runs,
                "rounds": ROUNDS,
                "warm_up": WARM_UP,
                "timed": TIMED,
            },
            "wrk_seconds": args.duration,
            "startup_runs": args.startup_runs,
            "concurrency": list(CONCURRENCY),
        },
        "results": results,
        "latency_runs": latency,
        "server_breakdown_10000_rows": breakdown,
        "targets": targets(results[ours.name], results[theirs.name], latency),
    }


def targets(
    ours: dict[str, Any], theirs: dict[str, Any], latency: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each target of the issues: the ratio (or figure) and whether it is met."""
    p50 = ours["latency_p50_ms"] / theirs["latency_p50_ms"]
    start = ours["startup_s"] / theirs["startup_s"]
    floors = [run[CHURNLAB]["p50_ms"] / run[FLOOR]["p50_ms"] for run in latency]
    invocations = ours["invocations_p50_ms"] / ours["latency_p50_ms"]
    found = {
        "startup_s": {"value": round(start, 3), "goal": "<= 0.35", "met": start <= 0.35},
        "latency_p50_ms": {"value": round(p50, 3), "goal": "<= 0.25", "met": p50 <= 0.25},
        "floor_ratio": {
            "value": [round(r, 2) for r in floors],
            "goal": "<= 1.5 in every run",
            "met": all(r <= 1.5 for r in floors),
        },
        "invocations_p50_ms": {
            "value": round(invocations, 3),
            "goal": "<= 1.1x /predict",
            "met": invocations <= 1.1,
        },
    }
    if "throughput_c8_rps" in ours:
        c8 = ours["throughput_c8_rps"] / theirs["throughput_c8_rps"]
        found["throughput_c8_rps"] = {"value": round(c8, 2), "goal": ">= 4", "met": c8 >= 4}
    if f"server_{LARGE}_columns_ms" in ours:
        found[f"server_{LARGE}_columns_ms"] = {
            "value": ours[f"server_{LARGE}_columns_ms"],
            "goal": "<= 50 ms",
            "met": ours[f"server_{LARGE}_columns_ms"] <= 50,
        }
    return found


ROWS = [
    ("startup_s", "start-up to first prediction (s, median)"),
    ("startup_cpu_s", "CPU time spent to get there (s, all processes)"),
    ("latency_p50_ms", "single-row latency p50 (ms; /predict, mlflow's /invocations)"),
    ("floor_ratio", "single-row p50 / the floor's, each run"),
    ("latency_p99_ms", "single-row latency p99 (ms)"),
    ("invocations_p50_ms", "single-row latency p50 of churnlab's /invocations (ms)"),
    ("throughput_c1_rps", "throughput, concurrency 1 (req/s)"),
    ("throughput_c8_rps", "throughput, concurrency 8 (req/s)"),
    ("throughput_c32_rps", "throughput, concurrency 32 (req/s)"),
    ("batch_1000_ms", "1,000-row batch (ms, median)"),
    ("batch_10000_ms", "10,000-row batch, records (ms, median)"),
    ("batch_10000_columns_ms", "10,000-row batch as columns (ms, median)"),
    (
        "server_10000_columns_ms",
        "10,000-row server time, columns: the target (ms, median; records beside it)",
    ),
    ("peak_rss_mb", "peak RSS (MiB, whole process tree)"),
]


#: The steps benchmarks.breakdown times, in the order a request takes them.
STEPS = (
    ("decode_ms", "decode"),
    ("to_inputs_ms", "to inputs"),
    ("onnxruntime_ms", "onnxruntime"),
    ("score_ms", "score"),
    ("decisions_ms", "decisions"),
    ("render_ms", "render"),
)


def breakdown_line(layout: str, steps: dict[str, Any]) -> str:
    """``app = decode + to inputs + onnxruntime + decisions + render + the rest``."""
    parts = [f"{label} {steps[key]}" for key, label in STEPS if key in steps]
    rest = steps["app_ms"] - sum(steps[key] for key, _ in STEPS if key in steps)
    return (
        f"{layout} ({steps['bytes'] / 1e6:.1f} MB): {steps['app_ms']} = "
        + " + ".join(parts)
        + f" + reading the body and the framework {rest:.1f}; "
        f"pydantic, for a body the fast path leaves to it: {steps['pydantic_ms']}"
    )


def render(report: dict[str, Any]) -> str:
    """The side-by-side table, the targets and the machine line."""
    names = list(report["results"])
    ours, theirs = (report["results"][n] for n in names)
    latency = report["latency_runs"]
    floor = {q: median([run[FLOOR][f"{q}_ms"] for run in latency]) for q in ("p50", "p99")}
    rows = []
    for key, label in ROWS:
        if key not in ours and key != "floor_ratio":
            continue  # not measured (--quick)
        goal = report["targets"].get(key)
        verdict = f"{goal['goal']}: {'met' if goal['met'] else 'MISSED'}" if goal else ""
        if key == "floor_ratio":
            runs = " / ".join(f"{r:.2f}x" for r in goal["value"])
            rows.append([label, "1x", runs, "-", "-", verdict])
            continue
        a, b = ours[key], theirs.get(key, "-")
        if key == "invocations_p50_ms":
            b = theirs["latency_p50_ms"]
            verdict = verdict.replace("/predict:", f"/predict ({goal['value']:.2f}x):")
        if key == "peak_rss_mb":
            a, b = a["total"], b["total"]
        ratio = f"{a / b:.2f}x" if isinstance(b, int | float) and b else "-"
        if key == "server_10000_columns_ms":
            a = f"{a} (records {ours['server_10000_records_ms']})"
        if key.startswith("throughput"):
            errors = ours[key.replace("rps", "errors")] + theirs[key.replace("rps", "errors")]
            verdict = (verdict + "; " if verdict else "") + f"errors {errors}"
        shown_floor = floor[key[8:11]] if key in ("latency_p50_ms", "latency_p99_ms") else "-"
        rows.append([label, shown_floor, a, b, ratio, verdict])
    model = report["model"]
    settings = report["settings"]["latency"]
    lines = [
        table(["figure", FLOOR, names[0], names[1], "ratio", "target"], rows),
        "",
        f"single-row latency: one customer per request, sequential, from one "
        f"{settings['client']} client; {settings['runs']} run(s) of {settings['rounds']} "
        f"alternating rounds of {settings['warm_up']} untimed and {settings['timed']} timed "
        f"requests per target (medians of the runs). {FLOOR}: a bare ASGI app on the same "
        "stack (uvicorn, httptools, uvloop) answering a constant JSON body.",
        "",
        f"{model['name']} v{model['version']} ({model['estimator']}) @{model['stage']}; "
        f"churnlab scorer: {model['churnlab_scorer']}; "
        f"largest probability difference between the two on 1,000 rows: "
        f"{model['max_probability_difference_1000_rows']:.1e}",
        "",
        f"machine: {machine_line(report['machine'])}, at end {report['machine']['load_average_end'][0]}",
    ]
    if report.get("server_breakdown_10000_rows"):
        lines += [
            "",
            "churnlab's server time on 10,000 rows, in-process, by step (ms, medians):",
            "",
            *(
                f"- {breakdown_line(layout, report['server_breakdown_10000_rows'][layout])}"
                for layout in ("columns", "records")
            ),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimator", default="logreg", choices=["logreg", "forest", "gbm"])
    parser.add_argument(
        "--latency-runs", type=int, default=3, help="single-row latency runs (each one ratio)"
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--startup-runs", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="start-up and single-row latency only (~5 min)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.latency_runs < 1:
        parser.error("--latency-runs must be at least 1")
    if not args.quick and shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    report = measure(args)
    path = write_json("serving", report)
    print(render(report))
    print(f"\nwritten: {path.relative_to(ROOT)}")
    errors = sum(
        v for r in report["results"].values() for k, v in r.items() if k.endswith("_errors")
    )
    if errors:
        print(f"wrk saw {errors} failed requests", file=sys.stderr)
        return 1
    if report["model"]["max_probability_difference_1000_rows"] > 1e-9:
        print("the two servers disagree: they do not serve the same model", file=sys.stderr)
        return 1
    missed = [k for k, t in report["targets"].items() if not t["met"]]
    if missed and args.strict:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
