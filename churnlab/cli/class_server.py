"""The class server's commands: class-server, class-add-students."""

from __future__ import annotations

from pathlib import Path


def cmd_class_server(args) -> int:
    from churnlab import classroom

    return classroom.serve(
        folder=Path(args.folder),
        host=args.host,
        port=args.port,
        backend_store_uri=args.backend_store_uri,
        auth_database_uri=args.auth_database_uri,
        allowed_hosts=args.allowed_hosts,
    )


def cmd_class_add_students(args) -> int:
    from churnlab import classroom

    # the one-time passwords go to this terminal, once, line by line: nothing keeps them
    classroom.add_students(
        Path(args.csv),
        url=args.url,
        approvals=args.approvals,
        folder=Path(args.folder),
        echo=lambda line: print(line, flush=True),
    )
    return 0


def add_commands(sub) -> None:
    """The parsers of class-server and class-add-students."""
    p = sub.add_parser(
        "class-server",
        help="a teacher's class server: mlflow basic-auth on PostgreSQL, served artifacts",
    )
    p.add_argument("--folder", default="class-server", help="its data: database, artifacts, auth")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve the class network")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument(
        "--backend-store-uri",
        help="an existing database (default: a private PostgreSQL cluster in the folder)",
    )
    p.add_argument(
        "--auth-database-uri",
        help="the logins' database (default: beside the registry's, or auth/basic_auth.db)",
    )
    p.add_argument("--allowed-hosts", help="host names students use, e.g. mlflow.school.org")
    p.set_defaults(func=cmd_class_server)

    p = sub.add_parser(
        "class-add-students",
        help="create a login, a model and an experiment per student (prints passwords once)",
    )
    p.add_argument("csv", help="a CSV with a `username` column (one student a line)")
    p.add_argument("--url", help="the class server (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--folder", default="class-server", help="the class server's folder")
    p.add_argument(
        "--approvals", type=int, default=0, help="approvals each student's promotion needs"
    )
    p.set_defaults(func=cmd_class_add_students)
