"""One student's session on the class server, run in a worker process of the load test.

Each worker process imports MLflow and churnlab once and then plays whole students one after
another: it exports the student's login (as the student would) and runs the real CLI entry
point, ``churnlab.cli.main``, in-process, timing each command. Starting a fresh interpreter
for each of ~300 commands would measure Python's start-up, not the class server.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from typing import Any

#: the gate on small data: 400 rows leave ~100 for evaluation (the policy asks for 500)
FAST_GATE = ("--set", "latency_samples=20", "--set", "min_eval_rows=80")
ROWS = "400"


def _login(url: str, user: str, password: str, home: str) -> None:
    os.environ.update(
        MLFLOW_TRACKING_URI=url,
        MLFLOW_TRACKING_USERNAME=user,
        MLFLOW_TRACKING_PASSWORD=password,
        CHURNLAB_EXPERIMENT=f"churnlab-{user}",
        CHURNLAB_ACTOR="mallory",  # a lie the server's login must override
        CHURNLAB_HOME=home,
    )


def _run(times: dict[str, list[float]], name: str, *argv: str) -> tuple[int, str, str]:
    from churnlab import cli

    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    times.setdefault(name, []).append(time.perf_counter() - start)
    return code, out.getvalue(), err.getvalue()


def own_flow(url: str, user: str, password: str, home: str, seed: int, smoke: bool) -> dict:
    """train, gate, stage, (smoke,) promote, retrain (a copy), stage, promote, rollback."""
    _login(url, user, password, home)
    model = f"churn-model-{user}"
    times: dict[str, list[float]] = {}
    errors: list[str] = []

    def step(name: str, *argv: str, codes: tuple[int, ...] = (0,)) -> tuple[int, str]:
        code, out, err = _run(times, name, "--model", model, *argv)
        if code not in codes:
            errors.append(f"{user} {name} {' '.join(argv)}: exit {code}: {err.strip()[-300:]}")
        return code, out

    code, out = step("train", "train", "--rows", ROWS, "--seed", str(seed))
    if code:
        return {"user": user, "times": times, "errors": errors}
    gate, _ = step("gate", "gate", "1", *FAST_GATE, codes=(0, 1))
    step("stage", "stage", "1", *(() if gate == 0 else ("--override", "--reason", "gate")))
    smoked = False
    if smoke:
        code, _ = step("smoke", "smoke", "--requests", "20", codes=(0, 1))
        smoked = code == 0 and gate == 0
    step("promote", "promote", "1", *(() if smoked else ("--override", "--reason", "no smoke")))
    _copy(model)  # "a retrained candidate": v2, without a second minute of training
    step("stage", "stage", "2", "--override", "--reason", "retrained")
    step("promote", "promote", "2", "--override", "--reason", "hotfix")
    step("rollback", "rollback", "--reason", "hotfix misbehaves")
    return {"user": user, "times": times, "errors": errors, "gate": gate, "smoke": smoked}


def _copy(model: str) -> None:
    from mlflow.tracking import MlflowClient

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        MlflowClient().copy_model_version(f"models:/{model}/1", model)


def cross_and_check(url: str, user: str, password: str, home: str, other: str) -> dict[str, Any]:
    """Try to move ``other``'s production (must be refused), then read back one's own."""
    _login(url, user, password, home)
    times: dict[str, list[float]] = {}
    code, out, err = _run(
        times,
        "refused promote",
        "--model",
        f"churn-model-{other}",
        "promote",
        "2",  # v1 holds production: moving it there would change nothing
        "--override",
        "--reason",
        "hijack",
    )
    refusal = {"code": code, "stderr": err, "stdout": out}
    _, status_out, _ = _run(times, "status", "--model", f"churn-model-{user}", "status", "--json")
    _, history_out, _ = _run(
        times, "history", "--model", f"churn-model-{user}", "history", "--json"
    )
    return {
        "user": user,
        "times": times,
        "refusal": refusal,
        "status": json.loads(status_out) if status_out else None,
        "history": json.loads(history_out) if history_out else None,
    }
