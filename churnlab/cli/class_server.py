"""The class server's commands: class-server, class-add-students; a student's login, whoami,
logout and handin."""

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


def cmd_login(args) -> int:
    """``churnlab login URL``: check a login against the class server, then store it."""
    from churnlab import login

    for line in login.login(args.url, username=args.username).lines():
        print(line)
    return 0


def cmd_whoami(args) -> int:
    """``churnlab whoami``: the server, user, model and experiment every command uses."""
    from churnlab import login

    for line in login.whoami().lines():
        print(line)
    return 0


def cmd_logout(args) -> int:
    """``churnlab logout``: forget the login (the password and the server)."""
    from churnlab import login

    login.logout()
    return 0


def cmd_handin(args) -> int:
    """``churnlab handin``: hand the report in to the class server."""
    from churnlab import handin, store

    path = Path(args.report) if args.report else store.project_root() / "reports/workbook.html"
    handin.hand_in(path, echo=print)
    return 0


def add_commands(sub) -> None:
    """The parsers of class-server, class-add-students, login, whoami, logout and handin."""
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

    p = sub.add_parser("login", help="log in to a class server once (asks for your password)")
    p.add_argument("url", help="the class server, e.g. http://mlflow.school.org:5000")
    p.add_argument(
        "--username", help="your user name (default: asked, or MLFLOW_TRACKING_USERNAME)"
    )
    p.set_defaults(func=cmd_login, offline=True)

    p = sub.add_parser("whoami", help="the server, user, model and experiment commands use")
    p.set_defaults(func=cmd_whoami)

    p = sub.add_parser("logout", help="forget the login (the password and the server)")
    p.set_defaults(func=cmd_logout, offline=True)

    p = sub.add_parser("handin", help="hand your report in to the class server you logged in to")
    p.add_argument("report", nargs="?", help="the report (default: reports/workbook.html)")
    p.set_defaults(func=cmd_handin)
