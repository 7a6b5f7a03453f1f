"""The notebooks' commands: workbook (run them, build the report), report (the lab's), config
(the student's name), handout, grade."""

from __future__ import annotations

from pathlib import Path

from churnlab import store


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
        error.exit_code = failed.exit_code or 1  # a notebook's own error gives its code
        raise error
    if result.report is not None:
        print(f"report: {_relative(result.report)} ({result.seconds:.1f} s in all)")
        if store.login_server() is not None and not args.only:  # a whole run, logged in
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


def cmd_handout(args) -> int:
    """``churnlab handout DIR``: write the student edition of the project."""
    from churnlab import handout

    written = handout.write_handout(Path(args.dir), force=args.force)
    print(written.summary())
    print(f'students: cd {args.dir} && churnlab config student "NAME" && make lab')
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


def add_commands(sub) -> None:
    """The parsers of workbook, report, config, handout and grade."""
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

    p = sub.add_parser("config", help="show or set this checkout's settings (your name)")
    p.add_argument("key", nargs="?", help="student")
    p.add_argument("value", nargs="?", help='your name, e.g. "Zoë Ñúñez"')
    p.add_argument("--unset", action="store_true", help="remove the setting")
    p.set_defaults(func=cmd_config, offline=True)

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
