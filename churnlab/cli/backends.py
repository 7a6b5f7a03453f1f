"""The commands that run processes on the registry's versions: ui, smoke, verify, serve, score."""

from __future__ import annotations

import json
import os
import sys

from churnlab import store
from churnlab.backend import DEFAULT_PORTS
from churnlab.cli.common import registry_for
from churnlab.smoke import LATENCY_P95_MS, PEAK_RSS_MB

#: what ``churnlab serve`` runs, named by its import string: the package never imports serving
_SERVE = "serving.app:serve"


def cmd_ui(args) -> int:
    """``churnlab ui``: the MLflow UI on the embedded store, on 127.0.0.1."""
    import subprocess

    store.configure()
    if store.is_remote():
        print(f"the registry is the tracking server at {store.display_uri()}: open it there")
        return 0
    uri = store.tracking_uri()
    print(f"MLflow UI for {uri} at http://127.0.0.1:{args.port} (Ctrl-C stops it)", flush=True)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        store.artifact_root() or "",
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    # MLflow's background job runner (a huey consumer per job kind, each a Python process
    # importing MLflow) serves none of the UI's pages: off unless the user turns it on
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    process = subprocess.Popen(command, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise


def cmd_smoke(args) -> int:
    """``churnlab smoke``: run the stage's backend for real, check it, record the verdict."""
    from churnlab.registry import parse_stage
    from churnlab.smoke import smoke_check

    stage = parse_stage(args.stage)  # a typo fails before the registry is opened
    result = smoke_check(
        args.version,
        stage=stage,
        registry=registry_for(args),
        latency_requests=args.requests,
        max_p95_ms=args.max_p95_ms,
        max_rss_mb=args.max_rss_mb,
    )
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True, default=str))
    else:
        for c in result.checks:
            value = "-" if c.value is None else c.value
            print(f"  {c.status:4}  {c.name:12} {value!s:>22}  {c.threshold!s:<10} {c.detail}")
        print(result.summary())
    return 0 if result.passed else 1


def cmd_verify(args) -> int:
    """``churnlab verify``: both backends side by side, each against its alias."""
    from churnlab.verify import STAGES, verify_side_by_side

    result = verify_side_by_side(
        registry=registry_for(args),
        staging_port=args.staging_port,
        production_port=args.production_port,
        sample_rows=args.sample_rows,
        stages=args.stage or STAGES,
        attach=args.attach,
    )
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True, default=str))
    else:
        print("\n".join(result.lines()))
        print(result.summary())
    return 0 if result.ok else 1


def cmd_serve(args) -> int:
    """``churnlab serve``: load the stage's version, then serve it until interrupted.

    The version is loaded BEFORE uvicorn starts, so an empty stage, an unknown model or an
    unreachable registry ends the command at once with one line and exit code 1, 2 or 3.

    The cyclic garbage collector is off until the app has started (the app turns it back
    on, and so does this command when it ends, however it ends): importing MLflow, FastAPI
    and pandas builds hundreds of thousands of objects, and collecting them again and again
    while nothing is garbage yet cost a fifth of the start-up (benchmarks/README.md).
    """
    import gc

    from uvicorn.importer import import_from_string

    gc.disable()
    try:
        serve = import_from_string(_SERVE)
        serve(
            # --model left at its default lets MODEL_NAME (the server's variable) decide
            model_name=args.model,
            stage=args.stage,
            host=args.host,
            port=args.port,
            max_records=args.max_records,
            max_body_bytes=args.max_body_bytes,
            follow_alias=args.follow,
            poll_interval_s=args.poll_interval,
            log_level=args.log_level,
            access_log=args.access_log,
        )
    finally:  # a refusal before uvicorn starts, in a caller's process (cli.main in a test)
        gc.enable()
    return 0


def cmd_score(args) -> int:
    """``churnlab score``: score a file of customers with the version a stage holds."""
    from churnlab.batch import CHUNK_ROWS, score_file

    result = score_file(
        args.input,
        args.output,
        stage=args.stage,
        registry=registry_for(args),
        rejects_path=args.rejects,
        chunk_rows=CHUNK_ROWS if args.chunk_rows is None else args.chunk_rows,
        progress=not args.quiet,
    )
    print(json.dumps(result.to_dict(), sort_keys=True) if args.json else result.summary())
    return 0


def add_commands(sub) -> None:
    """The parsers of ui, smoke, verify, serve and score."""
    p = sub.add_parser("ui", help="open the MLflow UI on the embedded registry")
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser(
        "smoke", help="start the stage's backend for real, check it, record the smoke verdict"
    )
    p.add_argument("--stage", default="staging", help="staging (default) or production")
    p.add_argument("--version", default=None, help="must be the stage's holder (default)")
    p.add_argument("--requests", type=int, default=200, help="single-row requests to time")
    p.add_argument("--max-p95-ms", type=float, default=LATENCY_P95_MS, help="latency limit")
    p.add_argument("--max-rss-mb", type=float, default=PEAK_RSS_MB, help="memory limit")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_smoke)

    p = sub.add_parser(
        "verify",
        help="run the staging and production backends side by side and check each against its alias",
    )
    p.add_argument("--staging-port", type=int, default=DEFAULT_PORTS["staging"])
    p.add_argument("--production-port", type=int, default=DEFAULT_PORTS["production"])
    p.add_argument(
        "--stage",
        action="append",
        choices=list(DEFAULT_PORTS),
        help="verify only this stage (repeatable; default both)",
    )
    p.add_argument("--sample-rows", type=int, default=50, help="customers in the fixed sample")
    p.add_argument(
        "--attach",
        action="store_true",
        help="check backends already running on the ports instead of starting them",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "serve",
        help="serve the version a stage holds over HTTP (FastAPI + uvicorn)",
        description="``churnlab serve``: run the serving backend for one stage.",
    )
    p.add_argument(
        "--stage",
        default=None,
        help="staging or production (default: $MODEL_STAGE, else staging)",
    )
    p.add_argument(
        "--port", type=int, default=None, help="default 8000 for staging, 8001 for production"
    )
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (0.0.0.0 in a container)")
    p.add_argument("--max-records", type=int, default=None, help="records per request (10000)")
    p.add_argument("--max-body-bytes", type=int, default=None, help="bytes per request (8 MiB)")
    p.add_argument(
        "--follow",
        action="store_true",
        help="follow the alias: swap in each version it names once proven ready "
        "(default: $MODEL_FOLLOW, else serve one version until restarted)",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        metavar="S",
        help="seconds between two reads of the alias when following (default 5)",
    )
    p.add_argument("--log-level", default="warning", choices=["error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "score", help="score a file of customers with the version a stage holds (CSV or Parquet)"
    )
    p.add_argument("input", help="customers in the Telco layout: a .csv or .parquet file")
    p.add_argument("-o", "--output", required=True, help="the scores: a .csv or .parquet file")
    p.add_argument("--stage", default="production", help="production (default) or staging")
    p.add_argument("--rejects", help="rejected rows (default: beside the output, NAME.rejects.csv)")
    p.add_argument("--chunk-rows", type=int, default=None, help="rows scored at a time (100000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.set_defaults(func=cmd_score)
