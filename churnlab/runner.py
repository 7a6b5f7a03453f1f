"""The runner behind ``churnlab workbook``: execute the notebooks in order, build the report.

papermill executes the notebooks against a fresh registry (or the student's own), stops at
the first failing cell with one clear line, and :mod:`churnlab.report` builds one
self-contained HTML report of the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from churnlab import report, store
from churnlab.errors import InputError
from churnlab.kernel import (
    NotebookFailed,
    SharedKernel,
    in_parallel,
    kernel_manager_class,
    skip_slow_format_checkers,
)
from churnlab.runs import LAB, NOTEBOOKS, REPLAY, NotebookRun, WorkbookRun

#: where a run that failed writes its report, beside the last complete one
PARTIAL = "workbook.partial.html"
#: the actor recorded by the committed notebooks' runs (nbval compares the history table)
REFERENCE_ACTOR = "student"


def notebooks_dir() -> Path:
    """The folder holding the five notebooks."""
    return store.project_root() / "notebooks"


def select(only: str | Sequence[str] | None) -> list[str]:
    """Notebook names for ``--only``: ``"01,02"``, ``"03_staging"`` or None for all."""
    if only is None:
        return list(NOTEBOOKS)
    items = only.split(",") if isinstance(only, str) else list(only)
    chosen = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        match = [n for n in NOTEBOOKS if n == item or n.split("_", 1)[0] == item.zfill(2)]
        if not match:
            raise InputError(
                f"--only takes notebook numbers {[n[:2] for n in NOTEBOOKS]}, got {item!r}"
            )
        if match[0] not in chosen:
            chosen.append(match[0])
    if not chosen:
        raise InputError("--only names no notebook")
    return sorted(chosen)


def parse_value(text: str) -> Any:
    """A ``-p`` value as papermill would read it: int, float, bool, None or text."""
    stripped = text.strip()
    if stripped in ("True", "true"):
        return True
    if stripped in ("False", "false"):
        return False
    if stripped in ("None", "none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(stripped)
        except ValueError:
            pass
    return text


def declared_parameters(path: Path) -> dict[str, Any]:
    """The parameters a notebook declares in its ``parameters`` cell, with their defaults."""
    import papermill

    found = papermill.inspect_notebook(str(path))
    return {name: info for name, info in found.items()}


def check_parameters(
    parameters: dict[str, Any], declared: dict[str, dict[str, dict[str, Any]]]
) -> None:
    """Refuse parameters no selected notebook declares, or of the wrong type."""
    known: dict[str, dict[str, Any]] = {}
    for params in declared.values():
        known.update(params)
    for name, value in parameters.items():
        if name not in known:
            raise InputError(
                f"unknown parameter {name!r} for notebooks {sorted(declared)}; "
                f"known: {sorted(known)}"
            )
        kind = _kind(known[name])
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
        }.get(kind, True)
        if not ok:
            raise InputError(f"parameter {name} takes a {kind}, got {value!r}")


def _story_parameters(parameters: dict[str, Any]) -> None:
    """Check, in place, whose story a run tells: ``student`` (a name, never blank) and
    ``data`` (a readable Telco CSV, made absolute: the notebooks run in their folder)."""
    from churnlab.story import Story

    story = Story.of(parameters.get("student"), data=parameters.get("data"))
    if "student" in parameters:
        parameters["student"] = story.student
    if story.data is not None:
        from churnlab import data

        data.load_csv(story.data)  # a malformed file fails here, before any notebook runs
        parameters["data"] = story.data


def _kind(parameter: dict[str, Any]) -> str:
    """The type a parameter takes: its annotation, else the type of its default literal."""
    import ast

    kind = parameter.get("inferred_type_name") or "None"
    if kind != "None":
        return kind
    try:
        default = ast.literal_eval(parameter.get("default", "None"))
    except (ValueError, SyntaxError):
        return "None"
    return "None" if default is None else type(default).__name__


@contextlib.contextmanager
def _registry_environment(
    home: Path | None,
    actor: str | None = None,
    configure: bool = True,
    model_name: str | None = None,
) -> Iterator[str]:
    """Point this process, and the kernels it starts, at a registry; restore on exit.

    ``home`` is a fresh embedded store's folder (emptied first; the tracking server
    variables and the project's config are ignored), or None for the store the
    environment already names.
    ``model_name`` becomes every notebook's model (``CHURNLAB_MODEL``).
    ``configure=False`` sets the environment only, leaving :func:`store.configure` (which
    imports MLflow, ~2 s) to the caller. Yields a label for the registry that is safe to
    print.
    """
    keys = (
        "CHURNLAB_HOME",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "CHURNLAB_ACTOR",
        "CHURNLAB_MODEL",
        "CHURNLAB_CONFIG",
    )
    saved = {k: os.environ.get(k) for k in keys}
    # re-point MLflow afterwards only at a store that exists: never create the student's
    # .churnlab as a side effect of a run on a fresh registry
    restore = store.is_remote() or store.home().exists()
    try:
        if home is not None:
            if home.exists():
                shutil.rmtree(home)
            home.mkdir(parents=True)
            os.environ["CHURNLAB_HOME"] = str(home)
            os.environ.pop("MLFLOW_TRACKING_URI", None)
            os.environ.pop("MLFLOW_REGISTRY_URI", None)
            # nor a login's server: the run's parameters carry what the config said
            os.environ["CHURNLAB_CONFIG"] = str(home / "no-config.toml")
        if actor:
            os.environ["CHURNLAB_ACTOR"] = actor
        if model_name:
            os.environ["CHURNLAB_MODEL"] = model_name
        if configure:
            store.configure()
        else:
            store.environment_defaults()
        yield _label(home)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if restore:
            store.configure()


def _label(home: Path | None) -> str:
    if home is None:
        return store.display_uri()
    try:
        return f"fresh embedded registry in {home.relative_to(Path.cwd())}"
    except ValueError:
        return f"fresh embedded registry in {home}"


def _exit_code(exc: BaseException) -> int:
    """The exit code a notebook's failure gives ``churnlab workbook``: a churnlab error's
    own (its class named by the failing cell), else 1."""
    from papermill.exceptions import PapermillExecutionError

    from churnlab.errors import exit_code_of

    if isinstance(exc, PapermillExecutionError):
        return exit_code_of(exc.ename) or 1
    return getattr(exc, "exit_code", 1) or 1


def _failure_line(name: str, exc: BaseException) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        first = next((ln for ln in (exc.source or "").splitlines() if ln.strip()), "")
        evalue = (exc.evalue or "").strip().splitlines()
        reason = f"{exc.ename}: {evalue[0]}" if evalue else exc.ename
        where = f"In [{exc.exec_count}] " if exc.exec_count else ""
        return f"{name} failed in cell {exc.cell_index} ({where}{first.strip()[:60]}): {reason}"
    text = str(exc).strip().splitlines()
    return f"{name} failed: {type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_notebook(
    source: Path, output: Path, parameters: dict[str, Any], kernel: SharedKernel | None = None
) -> None:
    """Execute one notebook with papermill (no progress bar).

    In ``kernel`` when one is given (reset first by :meth:`SharedKernel.fresh`), else in a
    kernel of its own that papermill starts and stops.
    """
    import logging

    skip_slow_format_checkers()
    import papermill

    logging.getLogger("papermill").setLevel(logging.ERROR)
    papermill.execute_notebook(
        str(source),
        str(output),
        parameters=parameters,
        kernel_name="python3",
        progress_bar=False,
        log_output=False,
        cwd=str(source.parent),
        execution_timeout=900,
        kernel_manager_class=kernel_manager_class(),
        **({"km": kernel.manager} if kernel is not None else {}),
    )


def run_workbook(
    *,
    only: str | Sequence[str] | None = None,
    parameters: dict[str, Any] | None = None,
    reuse_registry: bool = False,
    output: Path | None = None,
    model_name: str | None = None,
    shared_kernel: bool = True,
    notebooks: Path | None = None,
    echo: Callable[[str], None] = print,
) -> WorkbookRun:
    """Run the selected notebooks in order, stop at the first failure, build the report.

    Executed notebooks go to ``<output>/executed/``, the report to
    ``<output>/workbook.html``; a run that fails writes ``workbook.partial.html`` beside
    it and leaves the last complete report as it was. Without ``reuse_registry`` (and
    not logged in: a login's server is the student's registry) the run uses a fresh
    embedded registry in ``<output>/registry`` so that two runs tell the same story. Every
    notebook uses one model, ``model_name`` (None: :func:`store.model_name`), and the
    student :func:`churnlab.story.student_name` of ``parameters["student"]``. The
    notebooks run one after another in one kernel, reset in between
    (:class:`SharedKernel`), or each in a kernel of its own with ``shared_kernel=False``.
    ``notebooks`` is another folder holding the five notebooks (a student edition, say)
    instead of the project's.
    """
    from churnlab.story import student_name

    skip_slow_format_checkers()
    names = select(only)
    parameters = dict(parameters or {})
    student = student_name(parameters.get("student"))
    if student is not None:
        parameters["student"] = student
    model_name = model_name or store.model_name()
    if store.login_server() is not None:
        reuse_registry = True  # after `churnlab login` the student's registry is the server
    elif not reuse_registry and os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        echo(
            f"churnlab workbook: MLFLOW_TRACKING_URI ({store.display_uri()}) is set, but this "
            "run uses a fresh embedded registry; --reuse-registry (or churnlab login) runs on "
            "that server"
        )
    source_dir = Path(notebooks) if notebooks is not None else notebooks_dir()
    missing = [n for n in names if not (source_dir / f"{n}.ipynb").is_file()]
    if missing:
        raise InputError(f"notebook(s) {missing} not found in {source_dir}")
    declared = {n: declared_parameters(source_dir / f"{n}.ipynb") for n in names}
    # ``student`` is the run's own (the actor, the report): only some notebooks take it
    check_parameters({k: v for k, v in parameters.items() if k != "student"}, declared)
    _story_parameters(parameters)

    output = Path(output or store.project_root() / "reports").resolve()
    executed = output / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    for n in names:
        (executed / f"{n}.ipynb").unlink(missing_ok=True)
    home = None if reuse_registry else output / "registry"

    runs: list[NotebookRun] = []
    start = time.perf_counter()

    def prepare() -> None:  # MLflow (~2 s to import) and the fresh store (~3 s to create)
        store.configure()
        if not reuse_registry:
            store.ensure_experiment()

    actor = parameters.get("student")
    with _registry_environment(
        home, actor=actor, configure=reuse_registry, model_name=model_name
    ) as label:
        if reuse_registry:  # an unreachable server fails here, before anything starts
            store.check_reachable()
        with contextlib.ExitStack() as kernels:
            echo(f"churnlab workbook: {len(names)} notebook(s) against the {label}")
            kernel = None
            if shared_kernel:  # the kernel imports while this process prepares the store
                t0 = time.perf_counter()
                kernel = kernels.enter_context(SharedKernel(source_dir))
                in_parallel(kernel.ready, prepare)
                echo(f"  {'kernel':12} ready  {time.perf_counter() - t0:6.1f} s")
            else:
                prepare()
            for n in names:
                mine = {k: v for k, v in parameters.items() if k in declared[n]}
                path = executed / f"{n}.ipynb"
                t0 = time.perf_counter()
                try:
                    if kernel is not None:
                        kernel.fresh()
                    run_notebook(source_dir / f"{n}.ipynb", path, mine, kernel)
                except Exception as exc:  # papermill's execution error, a dead kernel, ...
                    seconds = time.perf_counter() - t0
                    line = _failure_line(n, exc)
                    runs.append(NotebookRun(n, path, seconds, "failed", line, _exit_code(exc)))
                    echo(f"  {n:12} FAILED {seconds:6.1f} s")
                    break
                seconds = time.perf_counter() - t0
                runs.append(NotebookRun(n, path, seconds))
                echo(f"  {n:12} ok     {seconds:6.1f} s")
        result = WorkbookRun(
            runs, None, label, parameters, time.perf_counter() - start, REPLAY, model_name
        )
        complete = output / "workbook.html"
        partial = output / PARTIAL
        if result.failed is None:
            result.report = report.build_report(result, out=complete)
            report.remove(partial)
        else:  # never replace a good report with a partial one
            result.report = report.build_report(result, out=partial)
    result.seconds = time.perf_counter() - start
    return result


def _saved_state(path: Path) -> tuple[str, str]:
    """How a notebook was saved in JupyterLab: ``saved`` (its cells ran), ``not run`` (no
    output at all) or ``error`` (a cell's error is saved), with the error's line."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    ran = False
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        ran = ran or cell.get("execution_count") is not None or bool(cell.get("outputs"))
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                value = (output.get("evalue") or "").strip().splitlines()
                line = f"{output.get('ename')}: {value[0] if value else ''}"
                return "error", f"{path.stem} cell {index} shows {line}"
    return ("saved", "") if ran else ("not run", f"{path.stem} was saved without outputs")


def lab_report(
    *,
    output: Path | None = None,
    notebooks: Path | None = None,
    model_name: str | None = None,
) -> WorkbookRun:
    """``churnlab report``: the report of the notebooks as saved in JupyterLab (their outputs
    and answers) and the registry the lab used; nothing is re-run.

    The story's parameters are read from 01's saved parameters cell; the student is
    :func:`churnlab.story.student_name` of it.
    """
    import ast

    from churnlab.story import student_name

    source = Path(notebooks) if notebooks is not None else notebooks_dir()
    missing = [n for n in NOTEBOOKS if not (source / f"{n}.ipynb").is_file()]
    if missing:
        raise InputError(f"notebook(s) {missing} not found in {source}")
    store.configure()
    store.check_reachable()
    parameters: dict[str, Any] = {}
    for name, info in declared_parameters(source / f"{NOTEBOOKS[0]}.ipynb").items():
        if name in ("student", "seed", "data"):
            try:
                value = ast.literal_eval(info.get("default", "None"))
            except (ValueError, SyntaxError):
                continue
            if value is not None:
                parameters[name] = value
    student = student_name(parameters.get("student"))
    if student is not None:
        parameters["student"] = student
        parameters.pop("seed", None)  # the name gives the seed: 01's default one went unused
    _story_parameters(parameters)
    runs = []
    for n in NOTEBOOKS:
        path = source / f"{n}.ipynb"
        status, error = _saved_state(path)
        runs.append(NotebookRun(n, path, 0.0, status, error))
    output = Path(output or store.project_root() / "reports").resolve()
    result = WorkbookRun(
        runs, None, store.display_uri(), parameters, 0.0, LAB, model_name or store.model_name()
    )
    result.report = report.build_report(result, out=output / "workbook.html")
    return result


def update_notebooks(names: Sequence[str] | None = None, *, home: Path | None = None) -> None:
    """Re-execute the committed notebooks in place, in order, against one fresh registry.

    What ``pytest --nbval`` compares against: executed by nbclient (no papermill cell),
    with the reference actor, without timing metadata. For maintainers, after an edit.
    """
    import tempfile

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    names = list(names or NOTEBOOKS)
    skip_slow_format_checkers()
    with contextlib.ExitStack() as stack:
        if home is None:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "home"
        stack.enter_context(
            _registry_environment(home, actor=REFERENCE_ACTOR, model_name=store.DEFAULT_MODEL_NAME)
        )
        for n in names:
            path = notebooks_dir() / f"{n}.ipynb"
            nb = nbformat.read(path, as_version=4)
            client = NotebookClient(
                nb,
                kernel_name="python3",
                timeout=900,
                record_timing=False,
                resources={"metadata": {"path": str(path.parent)}},
                kernel_manager_class=kernel_manager_class(),
            )
            try:
                client.execute()
            except CellExecutionError as exc:
                raise NotebookFailed(
                    f"{n} failed: {exc.ename}: {(exc.evalue or '').strip()[:300]}; "
                    f"{path.name} was left as it was"
                ) from None
            nbformat.write(nb, path)


__all__ = [
    "LAB",
    "NOTEBOOKS",
    "PARTIAL",
    "REFERENCE_ACTOR",
    "REPLAY",
    "NotebookFailed",
    "NotebookRun",
    "WorkbookRun",
    "check_parameters",
    "declared_parameters",
    "lab_report",
    "notebooks_dir",
    "parse_value",
    "run_notebook",
    "run_workbook",
    "select",
    "update_notebooks",
]
