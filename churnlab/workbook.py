"""The workbook: five numbered notebooks that walk a churn model from candidate to production.

Two halves:

- small helpers the notebooks call (which versions to gate, which to stage, tables and
  drift figures), so that no logic lives only in a notebook;
- the runner behind ``churnlab workbook``: papermill executes the notebooks headless, in
  order, against a fresh registry (or the student's own with ``--reuse-registry``), stops
  at the first failing cell with one clear line, and :mod:`churnlab.report` builds one
  self-contained HTML report. ``churnlab ui`` opens the MLflow UI on the embedded store.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnlab import store
from churnlab.errors import ChurnlabError, InputError, Refused

NOTEBOOKS = ("01_train", "02_gate", "03_staging", "04_promote", "05_verify")

#: the data snapshots every version records (tags ``churnlab.data.<kind>``)
DATA_KINDS = ("training", "evaluation", "reference")

#: the actor recorded by the committed notebooks' runs (nbval compares the history table)
REFERENCE_ACTOR = "student"

#: checks whose measured value differs on every run (shown through the sanitizer, not in tables)
VOLATILE_CHECKS = ("latency", "startup", "rss", "memory", "uptime", "_ms", "_s", "_mb")


class NotebookFailed(ChurnlabError):
    """A notebook of the workbook raised in one of its cells (exit 1)."""

    exit_code = 1


# ---------------------------------------------------------------------------- candidates
@dataclass(frozen=True)
class Candidate:
    """A named way to train a candidate: estimator, its parameters, data seed, a note."""

    estimator: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    description: str = ""


CANDIDATES: dict[str, Candidate] = {
    "baseline": Candidate(
        "logreg",
        {"C": 0.0005},
        description="baseline: an over-regularised logistic regression",
    ),
    "logreg": Candidate("logreg", description="logistic regression"),
    "forest": Candidate("forest", {"n_estimators": 100}, description="random forest"),
    "gbm": Candidate("gbm", description="gradient boosting"),
    "retrain": Candidate("logreg", seed=7, description="logistic regression on fresh data"),
    "main": Candidate("logreg", seed=11, description="built from the latest commit on main"),
}


def candidate_names(names: str | Sequence[str]) -> list[str]:
    """``"baseline,logreg"`` or a list as validated candidate names."""
    items = names.split(",") if isinstance(names, str) else list(names)
    chosen = [str(n).strip() for n in items if str(n).strip()]
    unknown = [n for n in chosen if n not in CANDIDATES]
    if unknown or not chosen:
        raise InputError(f"candidates must be names from {list(CANDIDATES)}, got {names!r}")
    return chosen


def train_candidates(
    names: str | Sequence[str],
    *,
    rows: int = 7043,
    seed: int = 42,
    model_name: str = store.DEFAULT_MODEL_NAME,
) -> list:
    """Train and register each named candidate in order; return the ``TrainResult`` list."""
    from churnlab import train

    results = []
    for name in candidate_names(names):
        spec = CANDIDATES[name]
        results.append(
            train.train_candidate(
                model_name=model_name,
                estimator=spec.estimator,
                params=spec.params,
                seed=spec.seed if spec.seed is not None else seed,
                rows=rows,
                description=spec.description,
            )
        )
    return results


def results_table(results: Sequence) -> pd.DataFrame:
    """One row per trained candidate: version, estimator, evaluation metrics."""
    rows = []
    for r in results:
        m = r.metrics
        rows.append(
            {
                "version": r.model_version,
                "estimator": r.estimator,
                "accuracy": round(m["accuracy"], 4),
                "roc_auc": round(m["roc_auc"], 4),
                "f1": round(m["f1"], 4),
                "business_value": round(m["business_value"], 2),
            }
        )
    return pd.DataFrame(rows).set_index("version")


# ---------------------------------------------------------------------------- registry views
def pending_versions(registry) -> list[int]:
    """Versions whose gate verdict is still pending, oldest first."""
    from churnlab.registry import GATE_TAG

    return [
        int(v.version)
        for v in registry.versions()
        if (v.tags or {}).get(GATE_TAG, "pending") == "pending"
    ]


def ever_held(registry) -> set[int]:
    """Versions that held staging or production at some point of the history."""
    held = set()
    for e in registry.history():
        held.update(v for v in (e.from_version, e.to_version) if v is not None)
    return held


def next_to_stage(registry) -> int | None:
    """The newest version that passed the gate and never held a stage, or None."""
    from churnlab.registry import GATE_TAG

    held = ever_held(registry)
    passed = [
        int(v.version)
        for v in registry.versions()
        if (v.tags or {}).get(GATE_TAG) == "passed" and int(v.version) not in held
    ]
    return max(passed, default=None)


def versions_table(registry) -> pd.DataFrame:
    """Every version with its estimator, evaluation metrics, verdicts and the stage it holds."""
    from churnlab.registry import GATE_TAG, PRODUCTION, SMOKE_TAG, STAGING

    holders = {registry.holder(STAGING): STAGING, registry.holder(PRODUCTION): PRODUCTION}
    rows = []
    for mv in registry.versions():
        tags = mv.tags or {}
        metrics = registry._call(registry.client.get_run, mv.run_id).data.metrics
        rows.append(
            {
                "version": int(mv.version),
                "estimator": tags.get("churnlab.estimator", "?"),
                "accuracy": round(metrics.get("accuracy", float("nan")), 4),
                "roc_auc": round(metrics.get("roc_auc", float("nan")), 4),
                "gate": tags.get(GATE_TAG, "pending"),
                "smoke": tags.get(SMOKE_TAG, "none"),
                "holds": holders.get(int(mv.version), "-"),
                "description": mv.description or "",
            }
        )
    return pd.DataFrame(rows).set_index("version")


def data_table(registry) -> pd.DataFrame:
    """The data snapshot digests recorded on every version (tags ``churnlab.data.<kind>``)."""
    rows = []
    for mv in registry.versions():
        tags = mv.tags or {}
        rows.append(
            {
                "version": int(mv.version),
                **{k: tags.get(f"churnlab.data.{k}", "-") for k in DATA_KINDS},
            }
        )
    return pd.DataFrame(rows).set_index("version")


def history_table(registry) -> pd.DataFrame:
    """Every move of an alias, oldest first, as a table."""
    columns = ["time", "actor", "action", "alias", "from", "to", "override", "reason"]
    rows = []
    for e in registry.history():
        rows.append(
            {
                "time": e.time,
                "actor": e.actor,
                "action": e.action,
                "alias": e.alias,
                "from": "-" if e.from_version is None else f"v{e.from_version}",
                "to": "-" if e.to_version is None else f"v{e.to_version}",
                "override": "yes" if e.override else "",
                "reason": e.reason,
            }
        )
    return pd.DataFrame(rows, columns=columns)


def history_events(registry) -> list[dict[str, Any]]:
    """The history as plain dicts (what ``plots.stage_timeline`` draws)."""
    return [e.to_dict() for e in registry.history()]


def evaluation(registry, version: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Labels, churn probabilities and confusion counts of ``version`` on its evaluation
    snapshot, read back from the registry."""
    from churnlab import data
    from churnlab.metrics import THRESHOLD, confusion

    frame = registry.snapshot(version, "evaluation")
    model = registry.load_model(version)
    y = data.labels(frame)
    proba = model.predict_proba(data.features(frame))[:, 1]
    return y, proba, confusion(y, proba >= THRESHOLD)


# ---------------------------------------------------------------------------- checks on display
def is_volatile(name: str) -> bool:
    """True for checks whose measured value changes from run to run (times, memory)."""
    key = name.lower()
    return any(key.endswith(s) if s.startswith("_") else s in key for s in VOLATILE_CHECKS)


def checks_table(checks: Sequence) -> pd.DataFrame:
    """Checks (dataclasses or dicts) as a table whose text is the same on every run.

    Measured times and memory vary between runs: their value shows as ``measured`` and
    :func:`measurements` prints the numbers with their units instead.
    """
    rows = []
    for c in checks:
        c = _as_dict(c)
        volatile = is_volatile(c["name"])
        rows.append(
            {
                "check": c["name"],
                "status": c.get("status"),
                "value": "measured" if volatile else _shown(c.get("value")),
                "operator": c.get("operator", ""),
                "threshold": _shown(c.get("threshold")),
                "detail": "" if volatile else str(c.get("detail") or ""),
            }
        )
    return pd.DataFrame(rows).set_index("check")


def measurements(checks: Sequence) -> str:
    """One line per volatile check: ``name: value unit (threshold)``, e.g. for p95 latency."""
    lines = []
    for c in checks:
        c = _as_dict(c)
        if not is_volatile(c["name"]) or c.get("value") is None:
            continue
        unit = _unit(c["name"])
        op = c.get("operator") or "<="
        limit = c.get("threshold")
        if unit == "MB":  # memory is not masked when outputs are compared: say where it stands
            side = "within" if c.get("status") == "pass" else "over"
            lines.append(f"{c['name']}: {side} the {limit} MB limit -> {c.get('status')}")
            continue
        bound = f" (needs {op} {limit} {unit})" if limit is not None else ""
        lines.append(f"{c['name']}: {_number(c['value'])} {unit}{bound} -> {c.get('status')}")
    return "\n".join(lines)


def _unit(name: str) -> str:
    key = name.lower()
    if key.endswith("_ms") or "latency" in key:
        return "ms"
    if "rss" in key or "memory" in key or key.endswith("_mb"):
        return "MB"
    return "s"


def _number(value: Any) -> str:
    try:
        return f"{float(value):.2f}"
    except (TypeError, ValueError):
        return str(value)


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"  # 4 significant digits: 0.8035, 1e-09
    return "-" if value is None else str(value)


def _as_dict(check: Any) -> dict[str, Any]:
    if isinstance(check, dict):
        return check
    from dataclasses import asdict

    return asdict(check)


def refusal(action: Callable[[], Any]) -> str | None:
    """Run ``action``; return the refusal's message if a rule said no, else None."""
    try:
        action()
    except Refused as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------------- drift
@dataclass
class DriftCheck:
    """Production's drift-reference snapshot against a newer batch of customers."""

    version: int
    psi: pd.DataFrame
    accuracy_reference: float
    accuracy_current: float
    rows: int

    @property
    def verdict(self) -> str:
        """``stable``, ``moderate`` (some PSI of 0.1 or more) or ``major`` (0.25 or more)."""
        worst = float(self.psi["psi"].max()) if len(self.psi) else 0.0
        return "major" if worst >= 0.25 else "moderate" if worst >= 0.1 else "stable"

    @property
    def drifted(self) -> bool:
        """True when any feature moved by a moderate amount or more (PSI of 0.1 or more)."""
        return self.verdict != "stable"

    def summary(self) -> str:
        moved = self.psi[self.psi["level"] != "stable"]
        names = ", ".join(f"{r.feature} {r.psi:.3f}" for r in moved.itertuples()) or "none"
        advice = {
            "major": "major drift: train a new candidate",
            "moderate": "moderate drift: investigate, plan a new candidate",
            "stable": "no drift",
        }[self.verdict]
        return (
            f"v{self.version}: {advice}. Features that moved (PSI): {names}. Accuracy "
            f"{self.accuracy_reference:.4f} on the drift-reference snapshot, "
            f"{self.accuracy_current:.4f} on the new batch of {self.rows} customers."
        )


def drift_check(registry, version: int, *, rows: int = 2000, seed: int = 2024, drift: float = 0.5):
    """PSI per feature of ``version``'s drift-reference snapshot against ``rows`` new
    customers generated with ``drift`` (0 = the same population), and accuracy on both."""
    from churnlab import data
    from churnlab.metrics import score

    reference = registry.snapshot(version, "reference")
    current = data.generate(rows, seed=seed, drift=drift)
    model = registry.load_model(version)

    def accuracy(frame: pd.DataFrame) -> float:
        return score(data.labels(frame), model.predict_proba(data.features(frame))[:, 1])[
            "accuracy"
        ]

    return DriftCheck(
        version=int(version),
        psi=data.population_stability(reference, current),
        accuracy_reference=accuracy(reference),
        accuracy_current=accuracy(current),
        rows=rows,
    )


# ---------------------------------------------------------------------------- the runner
@dataclass
class NotebookRun:
    """One executed notebook: where it was written, how long it took, how it ended."""

    name: str
    path: Path
    seconds: float
    status: str = "ok"  # ok | failed
    error: str = ""


@dataclass
class WorkbookRun:
    """What ``churnlab workbook`` did."""

    runs: list[NotebookRun]
    report: Path | None
    registry_label: str
    parameters: dict[str, Any]
    seconds: float = 0.0

    @property
    def failed(self) -> NotebookRun | None:
        return next((r for r in self.runs if r.status != "ok"), None)


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


def _kernel_manager_class():
    """A kernel manager whose ``python3`` kernel is this very Python environment."""
    import ipykernel.kernelspec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class ThisPythonSpecs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            spec = ipykernel.kernelspec.get_kernel_dict()
            # the kernel's own log lines (a plain-TCP notice, the interrupt that precedes a
            # shutdown) are not the notebook's output: keep them off the runner's terminal
            spec["argv"] = [*spec["argv"], "--IPKernelApp.log_level=CRITICAL"]
            return self.kernel_spec_class(resource_dir=ipykernel.kernelspec.RESOURCES, **spec)

    class ThisPythonKernel(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _kernel_spec_manager_default(self):
            return ThisPythonSpecs(data_dir=self.data_dir)

    return ThisPythonKernel


@contextlib.contextmanager
def registry_environment(
    home: Path | None, actor: str | None = None, configure: bool = True
) -> Iterator[str]:
    """Point this process, and the kernels it starts, at a registry; restore on exit.

    ``home`` is a fresh embedded store's folder (emptied first; the tracking server
    variables are ignored), or None for the store the environment already names.
    ``configure=False`` sets the environment only, leaving :func:`store.configure` (which
    imports MLflow, ~2 s) to the caller. Yields a label for the registry that is safe to
    print.
    """
    keys = ("CHURNLAB_HOME", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "CHURNLAB_ACTOR")
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
        if actor:
            os.environ["CHURNLAB_ACTOR"] = actor
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

    _skip_slow_format_checkers()
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
        kernel_manager_class=_kernel_manager_class(),
        **({"km": kernel.manager} if kernel is not None else {}),
    )


def _skip_slow_format_checkers() -> None:
    """Keep jsonschema from compiling grammars that nbformat never uses (about 2.5 s).

    nbformat imports jsonschema, whose format checkers import ``rfc3987_syntax`` when it
    is installed (JupyterLab's dependencies install it), and that module compiles about
    forty lark grammars at import. Notebook validation checks no IRI format, so the
    runner's process goes without it. Called by the runner, never at import.
    """
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


#: What a reused kernel runs before a notebook (binds no name in the user namespace).
_FRESH_STATE = '__import__("churnlab.workbook").workbook.fresh_kernel_state()'
_WARM_UP = '__import__("churnlab.workbook").workbook.warm_imports()'
#: The folder and environment a reused kernel started with (filled inside the kernel).
_KERNEL_START: dict[str, Any] = {}
#: The modules the notebooks import, directly or on their first training, gate or smoke
#: check: a reused kernel imports them while the runner prepares the registry.
WARM_MODULES = (
    "matplotlib.pyplot",
    "churnlab.workbook",
    "churnlab.gate",
    "churnlab.plots",
    "churnlab.staging",
    "churnlab.verify",
    "churnlab.train",
    "churnlab.scoring",
    "churnlab.onnx_export",
    "mlflow.sklearn",
    "skops.io",
    "skl2onnx",
    "onnxruntime",
)


def warm_imports() -> None:
    """Inside a reused kernel: import :data:`WARM_MODULES` (no name is bound)."""
    import importlib

    for name in WARM_MODULES:
        importlib.import_module(name)


def fresh_kernel_state() -> None:
    """Inside a reused kernel: forget what the previous notebook left behind.

    The first call records the kernel's working folder and environment. Each later call
    restores both, ends an MLflow run left open, closes figures and resets IPython: the
    user namespace, ``In``/``Out`` and the execution count (back to 1). Imported modules
    stay imported, which is the time saved.
    """
    from IPython import get_ipython

    if not _KERNEL_START:
        _KERNEL_START.update(cwd=os.getcwd(), environ=dict(os.environ))
        return
    os.chdir(_KERNEL_START["cwd"])
    os.environ.clear()
    os.environ.update(_KERNEL_START["environ"])
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        while mlflow.active_run() is not None:
            mlflow.end_run()
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")
    shell = get_ipython()
    if shell is not None:
        shell.reset(new_session=True)


class SharedKernel:
    """One kernel that runs every notebook of a workbook run, reset between notebooks.

    A kernel per notebook pays its start and the imports of mlflow, scikit-learn,
    onnxruntime and matplotlib each time: about 8 s a notebook here. Before each notebook
    but the first, :func:`fresh_kernel_state` empties the namespace and restores the folder
    and the environment, so a notebook that uses a name it never defines fails here as it
    would in a kernel of its own. ``pytest --nbval`` still runs each notebook alone.
    """

    def __init__(self, cwd: Path, timeout: float = 120) -> None:
        self.cwd = cwd
        self.timeout = timeout
        self.manager: Any = None
        self._client: Any = None
        self._used = False

    def start(self) -> None:
        """Launch the kernel process and return at once (:meth:`ready` waits for it)."""
        from jupyter_core.utils import run_sync

        self.manager = _kernel_manager_class()(kernel_name="python3")
        run_sync(self.manager.start_kernel)(cwd=str(self.cwd))

    def ready(self, warm: bool = True) -> None:
        """Wait for the kernel, record its starting state and (``warm``) import the modules."""
        self._client = self.manager.blocking_client()
        self._client.start_channels()
        try:
            self._client.wait_for_ready(timeout=self.timeout)
            self._run(_FRESH_STATE)  # the first call records the folder and the environment
            if warm:
                self._run(_WARM_UP)
        except (RuntimeError, TimeoutError) as exc:
            raise NotebookFailed(f"the notebooks' kernel did not start: {exc}") from None

    def fresh(self) -> None:
        """Make the kernel ready for the next notebook: wait for it, or reset it."""
        if self._client is None:
            self.ready(warm=False)
        elif self._used:
            try:
                self._run(_FRESH_STATE)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"the kernel could not be reset: {exc}") from None
        self._used = True

    def _run(self, code: str) -> None:
        msg_id = self._client.execute(code, silent=True, store_history=False)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                reply = self._client.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no answer within {self.timeout:g} s") from None
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        content = reply["content"]
        if content.get("status") != "ok":
            raise RuntimeError(f"{content.get('ename')}: {content.get('evalue')}")

    def stop(self) -> None:
        """Stop the client and the kernel, whatever state they are in."""
        from jupyter_core.utils import run_sync

        if self._client is not None:
            self._client.stop_channels()
        if self.manager is not None and self.manager.has_kernel:
            run_sync(self.manager.shutdown_kernel)(now=True)

    def __enter__(self) -> SharedKernel:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _in_parallel(main: Callable[[], Any], other: Callable[[], Any] | None) -> None:
    """Run ``other`` in a thread while ``main`` runs here; re-raise the first failure."""
    import threading

    failed: list[BaseException] = []

    def target() -> None:
        try:
            other()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in this thread
            failed.append(exc)

    thread = threading.Thread(target=target, daemon=True) if other else None
    if thread is not None:
        thread.start()
    try:
        main()
    finally:
        if thread is not None:
            thread.join()
    if failed:
        raise failed[0]


def run_workbook(
    *,
    only: str | Sequence[str] | None = None,
    parameters: dict[str, Any] | None = None,
    reuse_registry: bool = False,
    output: Path | None = None,
    model_name: str = store.DEFAULT_MODEL_NAME,
    shared_kernel: bool = True,
    echo: Callable[[str], None] = print,
) -> WorkbookRun:
    """Run the selected notebooks in order, stop at the first failure, build the report.

    Executed notebooks go to ``<output>/executed/``, the report to
    ``<output>/workbook.html``. Without ``reuse_registry`` the run uses a fresh embedded
    registry in ``<output>/registry`` so that two runs tell the same story. The notebooks
    run one after another in one kernel, reset in between (:class:`SharedKernel`), or each
    in a kernel of its own with ``shared_kernel=False``.
    """
    from churnlab import report

    _skip_slow_format_checkers()
    names = select(only)
    parameters = dict(parameters or {})
    source_dir = notebooks_dir()
    missing = [n for n in names if not (source_dir / f"{n}.ipynb").is_file()]
    if missing:
        raise InputError(f"notebook(s) {missing} not found in {source_dir}")
    declared = {n: declared_parameters(source_dir / f"{n}.ipynb") for n in names}
    check_parameters(parameters, declared)

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

    with registry_environment(home, configure=reuse_registry) as label:
        if reuse_registry:  # an unreachable server fails here, before anything starts
            store.check_reachable()
        with contextlib.ExitStack() as kernels:
            echo(f"churnlab workbook: {len(names)} notebook(s) against the {label}")
            kernel = None
            if shared_kernel:  # the kernel imports while this process prepares the store
                t0 = time.perf_counter()
                kernel = kernels.enter_context(SharedKernel(source_dir))
                _in_parallel(kernel.ready, prepare)
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
                    runs.append(NotebookRun(n, path, seconds, "failed", line))
                    echo(f"  {n:12} FAILED {seconds:6.1f} s")
                    break
                seconds = time.perf_counter() - t0
                runs.append(NotebookRun(n, path, seconds))
                echo(f"  {n:12} ok     {seconds:6.1f} s")
        result = WorkbookRun(runs, None, label, parameters, time.perf_counter() - start)
        result.report = report.build_report(
            result, out=output / "workbook.html", model_name=model_name
        )
    result.seconds = time.perf_counter() - start
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
    _skip_slow_format_checkers()
    with contextlib.ExitStack() as stack:
        if home is None:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "home"
        stack.enter_context(registry_environment(home, actor=REFERENCE_ACTOR))
        for n in names:
            path = notebooks_dir() / f"{n}.ipynb"
            nb = nbformat.read(path, as_version=4)
            client = NotebookClient(
                nb,
                kernel_name="python3",
                timeout=900,
                record_timing=False,
                resources={"metadata": {"path": str(path.parent)}},
                kernel_manager_class=_kernel_manager_class(),
            )
            try:
                client.execute()
            except CellExecutionError as exc:
                raise NotebookFailed(
                    f"{n} failed: {exc.ename}: {(exc.evalue or '').strip()[:300]}; "
                    f"{path.name} was left as it was"
                ) from None
            nbformat.write(nb, path)


# ---------------------------------------------------------------------------- the commands
def cmd_workbook(args) -> int:
    """``churnlab workbook``: run the notebooks, write the executed copies and the report."""
    parameters = {name: parse_value(value) for name, value in args.parameters}
    if args.update_notebooks:
        if parameters or args.reuse_registry:
            raise InputError("--update-notebooks runs the defaults on a fresh registry: drop -p")
        update_notebooks(select(args.only))
        print(f"re-executed {', '.join(select(args.only))} in {notebooks_dir()}")
        return 0
    result = run_workbook(
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
        raise NotebookFailed(f"{store.redact(failed.error)}; see {_relative(failed.path)}")
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


def add_cli(subparsers) -> None:
    """Add ``workbook`` and ``ui`` to the ``churnlab`` command line."""
    p = subparsers.add_parser(
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

    p = subparsers.add_parser("ui", help="open the MLflow UI on the embedded registry")
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    p.set_defaults(func=cmd_ui)


__all__ = [
    "CANDIDATES",
    "DATA_KINDS",
    "NOTEBOOKS",
    "DriftCheck",
    "NotebookFailed",
    "SharedKernel",
    "WorkbookRun",
    "checks_table",
    "data_table",
    "drift_check",
    "evaluation",
    "fresh_kernel_state",
    "history_table",
    "measurements",
    "next_to_stage",
    "pending_versions",
    "refusal",
    "results_table",
    "run_workbook",
    "train_candidates",
    "update_notebooks",
    "versions_table",
]
