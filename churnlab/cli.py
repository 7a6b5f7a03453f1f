"""The ``churnlab`` command line: the same steps the notebooks take, for CI and terminals.

Exit codes: 0 done, 1 refused (gate failed, promotion refused), 2 bad input or usage,
3 registry unreachable or failing, 4 permission denied by the server (wrong login, or
another user's model).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from churnlab import store
from churnlab.backend import DEFAULT_PORTS
from churnlab.errors import ChurnlabError, RegistryUnavailable
from churnlab.smoke import LATENCY_P95_MS, PEAK_RSS_MB

#: what ``churnlab serve`` runs, named by its import string: the package never imports serving
SERVE = "serving.app:serve"


def _registry(args):
    from churnlab.registry import Registry

    approvals = 0
    if hasattr(args, "policy"):  # the commands that apply four eyes read the policy
        from churnlab import gate

        approvals = gate.Policy.load(args.policy, **_overrides(args.set)).production_approvals
    return Registry(args.model, production_approvals=approvals)


def cmd_train(args) -> int:
    from churnlab import train

    frame, source = train.load_training_data(args.data)  # validated before the registry
    result = train.train_candidate(
        frame,
        model_name=args.model,
        estimator=args.estimator,
        seed=args.seed,
        rows=args.rows,
        data_source=source,
        description=args.description or "",
    )
    print(train.result_json(result))
    return 0


def _overrides(pairs: Sequence[str]) -> dict[str, str]:
    from churnlab.errors import InputError

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"--set takes NAME=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def cmd_gate(args) -> int:
    from churnlab import gate

    policy = gate.Policy.load(args.policy, **_overrides(args.set))
    result = gate.run_gate(args.version, registry=_registry(args), policy=policy)
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True, default=str))
    else:
        for c in result.checks:
            value = "-" if c.value is None else c.value
            print(
                f"  {c.status:4}  {c.name:16} {value!s:>10} {c.operator} {c.threshold!s:<10} {c.detail}"
            )
        print(result.summary())
    return 0 if result.passed else 1


def cmd_stage(args) -> int:
    move = _registry(args).stage(args.version, override=args.override, reason=args.reason or "")
    print(move.message)
    return 0


def cmd_promote(args) -> int:
    move = _registry(args).promote(args.version, override=args.override, reason=args.reason or "")
    print(move.message)
    return 0


def cmd_approve(args) -> int:
    registry = _registry(args)
    approval = registry.approve(args.version, reason=args.reason or "")
    print(f"Approved {registry.model_name} v{approval.version} for Production by {approval.actor}")
    return 0


def cmd_rollback(args) -> int:
    print(_registry(args).rollback(reason=args.reason or "").message)
    return 0


def cmd_status(args) -> int:
    status = _registry(args).status()
    if args.json:
        print(json.dumps(status, sort_keys=True))
        return 0
    print(f"{status['model_name']} at {store.display_uri()}")
    for alias, entry in status["stages"].items():
        version = "-" if entry["version"] is None else f"v{entry['version']}"
        verdicts = (
            f"gate {entry['gate']}, smoke {entry['smoke']}" if entry["version"] is not None else ""
        )
        if entry.get("approvals"):
            verdicts += f", approved by {', '.join(entry['approvals'])}"
        if entry.get("approvals_required"):
            verdicts += f" (needs {entry['approvals_required']} approval(s))"
        print(f"  {alias:10} {version:5} {verdicts}")
    unapproved = status["stages"]["production"].get("approval_missing")
    for problem in status["problems"]:
        hint = "" if problem == unapproved else " (run `churnlab repair`, or `repair --restore`)"
        print(f"  inconsistent: {problem}{hint}")
    return 0 if status["consistent"] else 1


def cmd_history(args) -> int:
    events = _registry(args).timeline()  # moves and approvals, in the order recorded
    if args.json:
        print(json.dumps(events, sort_keys=True))
        return 0
    if not events:
        print("no promotions yet")
    for e in events:
        # "(login)": the server authenticated the actor; otherwise the name was declared
        who = e["actor"] + (" (login)" if e.get("actor_source") == "server" else "")
        if e["action"] == "approve":
            print(
                f"{e['time']}  {who:10} approve  {e['alias']:10}         v{e['version']:<4} {e['reason']}"
            )
            continue
        before = "-" if e["from_version"] is None else f"v{e['from_version']}"
        after = "-" if e["to_version"] is None else f"v{e['to_version']}"
        flag = " OVERRIDE" if e["override"] else ""
        if e.get("approved_by"):
            flag += f" approved by {','.join(e['approved_by'])}"
        print(
            f"{e['time']}  {who:10} {e['action']:8} {e['alias']:10} {before:>4} -> {after:<4}{flag} {e['reason']}"
        )
    return 0


def cmd_repair(args) -> int:
    fixed = _registry(args).repair(restore=args.restore)
    for problem in fixed:
        print(f"{'restored' if args.restore else 'repaired'}: {problem}")
    if not fixed:
        print("nothing to repair: aliases, stages and history agree")
    return 0


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


def cmd_workbook(args) -> int:
    """``churnlab workbook``: run the notebooks, write the executed copies and the report."""
    from churnlab import runner
    from churnlab.errors import InputError

    parameters = {name: runner.parse_value(value) for name, value in args.parameters}
    if args.student is not None:
        parameters["student"] = args.student
    if args.update_notebooks:
        if parameters or args.reuse_registry:
            raise InputError("--update-notebooks runs the defaults on a fresh registry: drop -p")
        runner.update_notebooks(runner.select(args.only))
        print(f"re-executed {', '.join(runner.select(args.only))} in {runner.notebooks_dir()}")
        return 0
    result = runner.run_workbook(
        only=args.only,
        parameters=parameters,
        reuse_registry=args.reuse_registry,
        output=Path(args.output) if args.output else None,
        model_name=args.model,
        shared_kernel=not args.kernel_per_notebook,
    )
    failed = result.failed
    if failed is not None:
        kept = result.report.with_name("workbook.html") if result.report else None
        print(f"partial report: {_relative(result.report)} ({result.seconds:.1f} s in all)")
        if kept is not None and kept.is_file():
            print(f"the last complete report is kept: {_relative(kept)}")
        error = runner.NotebookFailed(f"{store.redact(failed.error)}; see {_relative(failed.path)}")
        error.exit_code = failed.exit_code or 1
        raise error
    if result.report is not None:
        print(f"report: {_relative(result.report)} ({result.seconds:.1f} s in all)")
        if store.login_server() is not None and not args.only:
            from churnlab import handin

            handin.hand_in(result.report, echo=print)
    return 0


def cmd_report(args) -> int:
    """``churnlab report``: the report of the notebooks as saved in JupyterLab."""
    from churnlab import runner

    result = runner.lab_report(
        output=Path(args.output) if args.output else None,
        notebooks=Path(args.notebooks) if args.notebooks else None,
        model_name=args.model,
    )
    for run in result.runs:
        note = f": {store.redact(run.error)}" if run.error else ""
        print(f"  {run.name:12} {run.status}{note}")
    print(f"report: {_relative(result.report)} (the lab's own work; nothing was re-run)")
    return 0


def cmd_handin(args) -> int:
    """``churnlab handin``: hand the report in to the class server."""
    from churnlab import handin

    path = Path(args.report) if args.report else store.project_root() / "reports/workbook.html"
    handin.hand_in(path, echo=print)
    return 0


def cmd_config(args) -> int:
    """``churnlab config [student [NAME]]``: show or set the project's settings."""
    from churnlab import config
    from churnlab.errors import InputError
    from churnlab.student import normal_name

    if args.key is None:
        found = config.read()
        if not found:
            print(f"nothing set in {config.path()}")
        for key, value in sorted(found.items()):
            print(f"{key} = {value}")
        return 0
    if args.key != "student":
        raise InputError(
            f"churnlab config sets student only, got {args.key!r} (churnlab login sets the server)"
        )
    if args.unset:
        config.update(student=None)
        print(f"student unset in {config.path()}: the notebooks tell the reference story")
        return 0
    if args.value is None:
        print(config.get("student") or "(not set)")
        return 0
    name = normal_name(args.value)
    config.update(student=name)
    print(
        f"student = {name} (in {config.path()}): the notebooks, make lab, make workbook and "
        "the report use it; restart a running kernel to pick it up"
    )
    return 0


def cmd_login(args) -> int:
    """``churnlab login URL``: check a login against the class server, then store it."""
    from churnlab import login

    found = login.login(args.url, username=args.username)
    for line in found.lines():
        print(line)
    return 0


def cmd_whoami(args) -> int:
    """``churnlab whoami``: server, user, model and experiment every command uses."""
    from churnlab import login

    for line in login.whoami().lines():
        print(line)
    return 0


def cmd_logout(args) -> int:
    """``churnlab logout``: forget the login (password and server)."""
    from churnlab import login

    login.logout()
    return 0


def cmd_handout(args) -> int:
    """``churnlab handout DIR``: write the student edition of the project."""
    from churnlab import handout

    written = handout.write_handout(Path(args.dir), force=args.force)
    print(written.summary())
    print(f'students: cd {args.dir} && make lab   (or make workbook ARGS="--student NAME")')
    return 0


def cmd_grade(args) -> int:
    """``churnlab grade PATH...``: one row per student from a class's workbook reports;
    ``--server``: one row per student of the class server, judged from the server."""
    from churnlab import grade
    from churnlab.errors import InputError

    paths = [Path(p) for p in args.paths]
    if args.server:
        from churnlab import class_grades

        graded = class_grades.grade_class(
            students=Path(args.students) if args.students else None, paths=paths, echo=print
        )
        if args.csv:
            print(f"wrote {class_grades.write_csv(graded, Path(args.csv))}")
        if args.html:
            print(f"wrote {class_grades.write_html(graded, Path(args.html))}")
        return 0
    if args.students or args.html:
        raise InputError("--students and --html grade the class from its server: add --server")
    if not paths:
        raise InputError("grade needs workbook reports or folders of them (PATH...), or --server")
    grades = grade.grade_paths(paths, echo=print)
    if args.csv:
        grade.write_csv(grades, Path(args.csv))
        print(f"wrote {args.csv}")
    return 0


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


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
    process = subprocess.Popen(command)
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
        registry=_registry(args),
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
        registry=_registry(args),
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
    """
    from uvicorn.importer import import_from_string

    serve = import_from_string(SERVE)
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
    return 0


def cmd_score(args) -> int:
    """``churnlab score``: score a file of customers with the version a stage holds."""
    from churnlab.batch import CHUNK_ROWS, score_file

    result = score_file(
        args.input,
        args.output,
        stage=args.stage,
        registry=_registry(args),
        rejects_path=args.rejects,
        chunk_rows=CHUNK_ROWS if args.chunk_rows is None else args.chunk_rows,
        progress=not args.quiet,
    )
    print(json.dumps(result.to_dict(), sort_keys=True) if args.json else result.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="churnlab", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=None,
        help="registered model name (default: yours after churnlab login, else churn-model)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train and register a candidate version")
    p.add_argument("--data", help="a CSV in the Telco churn layout (default: synthetic data)")
    p.add_argument("--estimator", default="logreg", choices=["logreg", "forest", "gbm"])
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--rows", type=int, default=7043, help="rows of synthetic data")
    p.add_argument("--description", help="a note stored on the version")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("gate", help="run the quality gate on a version and record the verdict")
    p.add_argument("version")
    p.add_argument("--policy", help="a policy YAML file (defaults: churnlab/policy/default.yaml)")
    p.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="override one setting"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gate)

    for name, func, text in (
        ("stage", cmd_stage, "move @staging to a version that passed the gate"),
        ("promote", cmd_promote, "move @production to a version that passed gate and smoke check"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("version")
        p.add_argument("--override", action="store_true", help="move despite missing evidence")
        p.add_argument("--reason", help="why (required with --override)")
        if name == "promote":
            _policy_options(p)
        p.set_defaults(func=func)

    p = sub.add_parser("approve", help="approve a version for production (four eyes: not your own)")
    p.add_argument("version")
    p.add_argument("--reason", required=True, help="why this version may go to production")
    p.set_defaults(func=cmd_approve)

    p = sub.add_parser("rollback", help="return @production to its previous holder")
    p.add_argument("--reason")
    p.set_defaults(func=cmd_rollback)

    for name, func, text in (
        ("status", cmd_status, "who holds staging and production, with their verdicts"),
        ("history", cmd_history, "every promotion event, oldest first"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true")
        if name == "status":
            _policy_options(p)
        p.set_defaults(func=func)

    p = sub.add_parser("repair", help="record a move made outside churnlab (or an interrupted one)")
    p.add_argument(
        "--restore",
        action="store_true",
        help="instead, put each alias back on the last holder the history recorded",
    )
    _policy_options(p)
    p.set_defaults(func=cmd_repair)

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

    p = sub.add_parser(
        "workbook",
        help="run the five notebooks headless and build reports/workbook.html",
        description="Run notebooks 01-05 with papermill, in order, stopping at the first "
        "failing cell; write reports/executed/*.ipynb and reports/workbook.html.",
    )
    p.add_argument(
        "-p",
        "--parameter",
        dest="parameters",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a notebook parameter, e.g. -p accuracy_threshold 0.9",
    )
    p.add_argument("--only", help="run only these notebooks, e.g. 01,02,03")
    p.add_argument(
        "--student",
        help="your name: your own seeds (data, split, models) and your name in the report",
    )
    p.add_argument(
        "--reuse-registry",
        action="store_true",
        help="use your own registry (CHURNLAB_HOME, .churnlab or MLFLOW_TRACKING_URI) "
        "instead of a fresh one",
    )
    p.add_argument("--output", help="folder for executed/ and workbook.html (default: reports)")
    p.add_argument(
        "--kernel-per-notebook",
        action="store_true",
        help="give each notebook a kernel of its own instead of one kernel reset between "
        "notebooks (about 8 s slower a notebook; the same results)",
    )
    p.add_argument(
        "--update-notebooks",
        action="store_true",
        help="maintainers: re-execute the committed notebooks in place (fresh registry)",
    )
    p.set_defaults(func=cmd_workbook)

    p = sub.add_parser(
        "report",
        help="build reports/workbook.html from the notebooks as saved in JupyterLab (no re-run)",
    )
    p.add_argument("--output", help="folder for workbook.html (default: reports)")
    p.add_argument("--notebooks", help="the folder of the five notebooks (default: notebooks)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("handin", help="hand your report in to the class server you logged in to")
    p.add_argument("report", nargs="?", help="the report (default: reports/workbook.html)")
    p.set_defaults(func=cmd_handin)

    p = sub.add_parser("config", help="show or set this checkout's settings (your name)")
    p.add_argument("key", nargs="?", help="student")
    p.add_argument("value", nargs="?", help='your name, e.g. "Zoë Ñúñez"')
    p.add_argument("--unset", action="store_true", help="remove the setting")
    p.set_defaults(func=cmd_config, offline=True)

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

    p = sub.add_parser(
        "handout",
        help="write the student edition: the project with solutions removed, answers as prompts",
    )
    p.add_argument("dir", help="the folder to write (refused if it exists and is not empty)")
    p.add_argument("--force", action="store_true", help="replace a folder that is not empty")
    p.set_defaults(func=cmd_handout, offline=True)

    p = sub.add_parser(
        "grade", help="one row per student from a class's workbook reports, with flags"
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="workbook reports or folders of them")
    p.add_argument(
        "--server",
        action="store_true",
        help="grade every student of the class server you are logged in to as its admin, "
        "each task judged from their model there (report files given are cross-checked)",
    )
    p.add_argument(
        "--students", metavar="CSV", help="with --server: only these (a `username` column)"
    )
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    p.add_argument("--html", metavar="FILE", help="with --server: the class as one page")
    p.set_defaults(func=cmd_grade, offline=True)

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
    return parser


def _policy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", help="a policy YAML file (its production_approvals applies)")
    p.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="override one setting"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; print a one-line error and return its exit code on failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    store.quiet()
    try:
        if not getattr(args, "offline", False):  # handout and grade never use the registry
            store.check_reachable()  # before the heavy imports: a dead server fails in seconds
        return int(args.func(args) or 0)
    except ChurnlabError as exc:
        print(f"churnlab: {store.redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("churnlab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an MLflow or network failure we did not foresee
        first = _first_line(exc)
        # refused or failing outside the registry's own calls: a login, a 403, a 5xx
        known = store.failure(exc)
        if known is None and store.http_status(exc) == 403:
            known = store.refusal(exc, getattr(args, "model", None) or store.model_name())
        if known is not None:
            print(f"churnlab: {store.redact(str(known))}", file=sys.stderr)
            return known.exit_code
        if _looks_unreachable(exc):
            err: ChurnlabError = RegistryUnavailable(
                f"cannot reach the MLflow tracking server at {store.display_uri()}"
            )
            print(f"churnlab: {err}", file=sys.stderr)
            return err.exit_code
        print(f"churnlab: {type(exc).__name__}: {store.redact(first)}", file=sys.stderr)
        return 3


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _looks_unreachable(exc: Any) -> bool:
    text = str(exc)
    return any(s in text for s in ("Max retries exceeded", "Connection refused", "timed out"))


if __name__ == "__main__":
    sys.exit(main())
