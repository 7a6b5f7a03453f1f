"""``churnlab serve``: run the serving backend for one stage.

The stage's version is resolved and loaded BEFORE uvicorn starts, so an empty stage, an
unknown model or an unreachable registry ends the command at once with one line and exit
code 1, 2 or 3 (see :mod:`churnlab.errors`).
"""

from __future__ import annotations

import argparse
import socket

from churnlab.errors import InputError

DEFAULT_PORTS = {"staging": 8000, "production": 8001}


def port_free(host: str, port: int) -> bool:
    """True when ``host:port`` can be bound now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the stage's version, then serve it with uvicorn until interrupted."""
    from churnlab import store
    from serving.app import Settings, create_app, load

    # --model left at its default lets MODEL_NAME (the server's variable) decide
    model = None if args.model == store.DEFAULT_MODEL_NAME else args.model
    settings = Settings.from_env(
        model_name=model,
        stage=args.stage,
        max_records=args.max_records,
        max_body_bytes=args.max_body_bytes,
    )
    port = args.port if args.port is not None else DEFAULT_PORTS[settings.stage]
    if not 0 < port < 65536:
        raise InputError(f"--port must be between 1 and 65535, got {port}")
    if not port_free(args.host, port):
        raise InputError(f"port {port} on {args.host} is in use; choose another with --port")
    served = load(settings)
    import uvicorn

    print(
        f"Serving {settings.model_name} v{served.version} ({settings.stage}) "
        f"on http://{args.host}:{port}  (page /, API docs /docs)",
        flush=True,
    )
    uvicorn.run(
        create_app(served=served),
        host=args.host,
        port=port,
        log_level=args.log_level,
        access_log=args.access_log,
    )
    return 0


def add_cli(subparsers) -> None:
    """Add ``serve`` to the churnlab command line."""
    p = subparsers.add_parser(
        "serve",
        help="serve the version a stage holds over HTTP (FastAPI + uvicorn)",
        description=__doc__.splitlines()[0],
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
    p.add_argument("--log-level", default="warning", choices=["error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)
