"""Server time of one large /predict, in-process, and where it goes.

Run by benchmarks.serving in a subprocess (with the benchmark's CHURNLAB_HOME): loads the
stage's version exactly as the server does, then times the whole app on a ``rows``-row
request through ASGI (no socket: the server's own time) and each step of it. Prints JSON.

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


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median milliseconds of ``fn`` over ``repeats`` calls (after one warm-up)."""
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(median(times), 2), result


def measure(stage: str, rows: int, repeats: int) -> dict[str, Any]:
    from starlette.responses import JSONResponse

    with warnings.catch_warnings():  # starlette's note about httpx versions
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from benchmarks.serving import workload
    from churnlab.scoring import records_to_inputs
    from serving.app import Settings, create_app, load

    served = load(Settings(stage=stage))
    scorer = served.scorer
    body = json.dumps({"records": workload(rows, 2024)}).encode()
    app = create_app(served=served)

    headers = {"Content-Type": "application/json"}
    with TestClient(app) as client:  # runs the app's start-up, as uvicorn would

        def request() -> None:
            response = client.post("/predict", content=body, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"/predict answered {response.status_code}")

        app_ms, _ = timed(request, repeats)
    checker = app.state.contract
    steps: dict[str, float] = {}
    steps["parse_and_validate_ms"], records = timed(lambda: checker.validate_json(body), repeats)
    steps["score_records_ms"], predictions = timed(lambda: scorer.score_records(records), repeats)
    if scorer.kind == "onnx":
        steps["records_to_inputs_ms"], inputs = timed(lambda: records_to_inputs(records), repeats)
        steps["onnxruntime_ms"], _ = timed(lambda: scorer.model.churn_probability(inputs), repeats)
    payload = {"predictions": predictions}
    steps["json_response_ms"], _ = timed(lambda: JSONResponse(payload), repeats)
    return {"rows": rows, "bytes": len(body), "scorer": scorer.kind, "app_ms": app_ms, **steps}


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
