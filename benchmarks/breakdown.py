"""Where the server time of one large /predict goes, step by step, in-process.

Run by benchmarks.serving in a subprocess (with the benchmark's CHURNLAB_HOME): loads the
stage's version exactly as the server does, runs the app's start-up, then, for the same
``rows`` customers sent as records and as columns:

* ``app_ms``: the app's own ``Server-Timing`` on the whole request through ASGI (no socket);
* each step of it: ``decode`` (msgspec: parse and validate), ``to_inputs`` (the batch's
  columns to the graph's two arrays), ``onnxruntime`` (or ``score`` for a scikit-learn
  scorer), ``decisions`` (the list of answers), ``render`` (JSON bytes);
* ``pydantic_ms``: what the contract of record would take on the same body (the path of a
  body the fast decoder leaves to it) - not part of ``app_ms``.

Prints JSON; every figure is the median of ``repeats`` runs after a warm-up.

    python -m benchmarks.breakdown --stage staging --rows 10000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

from benchmarks.common import median

LAYOUTS = ("records", "columns")


def timed(fn: Callable[[Any], Any], repeats: int, setup: Callable[[], Any] = lambda: None):
    """Median milliseconds of ``fn(setup())`` over ``repeats`` calls (after one warm-up);
    ``setup`` runs outside the timing. Returns ``(ms, the last result)``."""
    result = fn(setup())
    times = []
    for _ in range(repeats):
        given = setup()
        t0 = time.perf_counter()
        result = fn(given)
        times.append((time.perf_counter() - t0) * 1000)
    return round(median(times), 2), result


def bodies(rows: int) -> dict[str, bytes]:
    """The benchmark's ``rows`` customers as a records body and as a columns body."""
    from benchmarks.serving import workload
    from serving import contract

    records = workload(rows, 2024)
    return {
        "records": json.dumps({"records": records}).encode(),
        "columns": json.dumps({"columns": contract.to_columns(records)}).encode(),
    }


def steps(served, checker, body: bytes, repeats: int) -> dict[str, float]:
    """Each step of answering ``body``, timed on its own."""
    from churnlab.scoring import columns_to_inputs, decisions
    from serving.app import render

    scorer = served.scorer
    out: dict[str, float] = {}

    def decode(_: Any = None):
        batch = checker.decode_fast(body)
        if batch is None:
            raise RuntimeError("the fast path refused the benchmark's body")
        return batch

    out["decode_ms"], _ = timed(decode, repeats)
    # a fresh batch each time (outside the timing): a records batch builds its columns
    # when they are first read
    if scorer.kind == "onnx":
        out["to_inputs_ms"], inputs = timed(lambda b: columns_to_inputs(b.columns), repeats, decode)
        out["onnxruntime_ms"], proba = timed(
            lambda _: scorer.model.churn_probability(inputs), repeats
        )
    else:
        out["score_ms"], proba = timed(
            lambda b: scorer.churn_probability_of_columns(b.columns), repeats, decode
        )
    out["decisions_ms"], answers = timed(lambda _: decisions(proba), repeats)
    out["render_ms"], _ = timed(lambda _: render(served, answers), repeats)
    out["pydantic_ms"], _ = timed(lambda _: checker.validate_json(body), repeats)
    return out


def server_time(client, body: bytes, repeats: int) -> float:
    """Median ``Server-Timing`` of ``repeats`` requests (after one warm-up), milliseconds."""
    headers = {"Content-Type": "application/json"}
    times = []
    for i in range(repeats + 1):
        response = client.post("/predict", content=body, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"/predict answered {response.status_code}")
        if i:
            times.append(float(response.headers["server-timing"].split("dur=")[1]))
    return round(median(times), 2)


def measure(stage: str, rows: int, repeats: int) -> dict[str, Any]:
    with warnings.catch_warnings():  # starlette's note about httpx versions
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from serving.app import Settings, create_app, load

    served = load(Settings(stage=stage))
    payloads = bodies(rows)
    app = create_app(served=served)
    out: dict[str, Any] = {"rows": rows, "scorer": served.scorer.kind}
    with TestClient(app) as client:  # runs the app's start-up, as uvicorn would
        for layout, body in payloads.items():
            out[layout] = {"bytes": len(body), "app_ms": server_time(client, body, repeats)}
        for layout, body in payloads.items():
            out[layout].update(steps(served, app.state.contract, body, repeats))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="staging")
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.stage, args.rows, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
