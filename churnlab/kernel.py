"""The notebooks' kernel: this very Python, shared by the notebooks of a run, reset between them."""

from __future__ import annotations

import os
import queue
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from churnlab.errors import ChurnlabError


class NotebookFailed(ChurnlabError):
    """A notebook of the workbook could not run: its kernel or one of its cells failed (exit 1)."""

    exit_code = 1


#: What a reused kernel runs before a notebook (binds no name in the user namespace).
_FRESH_STATE = '__import__("churnlab.kernel").kernel.fresh_kernel_state()'
_WARM_UP = '__import__("churnlab.kernel").kernel.warm_imports()'
#: The folder and environment a reused kernel started with (filled inside the kernel).
_KERNEL_START: dict[str, Any] = {}
#: The modules the notebooks import, directly or on their first training, gate or smoke
#: check: a reused kernel imports them while the runner prepares the registry.
WARM_MODULES = (
    "matplotlib.pyplot",
    "churnlab.workbook",
    "churnlab.tables",
    "churnlab.drift",
    "churnlab.gate",
    "churnlab.plots",
    "churnlab.smoke",
    "churnlab.verify",
    "churnlab.train",
    "churnlab.scoring",
    "churnlab.onnx_export",
    "mlflow.sklearn",
    "skops.io",
    "skl2onnx",
    "onnxruntime",
)


def kernel_manager_class() -> type:
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


def skip_slow_format_checkers() -> None:
    """Keep jsonschema from compiling grammars that nbformat never uses (about 2.5 s).

    nbformat imports jsonschema, whose format checkers import ``rfc3987_syntax`` when it
    is installed (JupyterLab's dependencies install it), and that module compiles about
    forty lark grammars at import. Notebook validation checks no IRI format, so the
    runner's process goes without it. Called by the runner, never at import.
    """
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


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

        self.manager = kernel_manager_class()(kernel_name="python3")
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


def in_parallel(main: Callable[[], Any], other: Callable[[], Any] | None) -> None:
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


__all__ = [
    "WARM_MODULES",
    "NotebookFailed",
    "SharedKernel",
    "fresh_kernel_state",
    "in_parallel",
    "kernel_manager_class",
    "skip_slow_format_checkers",
    "warm_imports",
]
