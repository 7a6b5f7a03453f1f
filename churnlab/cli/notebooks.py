"""The notebooks' commands: workbook (run them, build the report), handout, grade."""

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
    if result.report is not None:
        print(f"report: {_relative(result.report)} ({result.seconds:.1f} s in all)")
    failed = result.failed
    if failed is not None:
        raise runner.NotebookFailed(f"{store.redact(failed.error)}; see {_relative(failed.path)}")
    return 0


def cmd_handout(args) -> int:
    """``churnlab handout DIR``: write the student edition of the project."""
    from churnlab import handout

    written = handout.write_handout(Path(args.dir), force=args.force)
    print(written.summary())
    print(f'students: cd {args.dir} && make lab   (or make workbook ARGS="--student NAME")')
    return 0


def cmd_grade(args) -> int:
    """``churnlab grade PATH...``: one row per student from a class's workbook reports."""
    from churnlab import grade

    grades = grade.grade_paths([Path(p) for p in args.paths], echo=print)
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
    """The parsers of workbook, handout and grade."""
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
        "handout",
        help="write the student edition: the project with solutions removed, answers as prompts",
    )
    p.add_argument("dir", help="the folder to write (refused if it exists and is not empty)")
    p.add_argument("--force", action="store_true", help="replace a folder that is not empty")
    p.set_defaults(func=cmd_handout, offline=True)

    p = sub.add_parser(
        "grade", help="one row per student from a class's workbook reports, with flags"
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="workbook reports or folders of them")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    p.set_defaults(func=cmd_grade, offline=True)
