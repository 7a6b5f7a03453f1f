"""A student's path through JupyterLab, in a real browser, from the handout to the report.

A fresh handout (`churnlab handout`) with its own package; the student's name set once
(`churnlab config student NAME`, written to the handout's ``churnlab.toml``); JupyterLab
started by `make lab` on a free port with a private HOME and Jupyter folders; Debian's
Chromium driven by Playwright (never `playwright install`) opens 01_train, runs every cell,
does Task 1 wrong twice (an unknown hyperparameter, then none), then right, types an answer
to Question 4 and saves. `churnlab report` then builds the report from the notebooks as
saved and the registry the lab used, and it carries the answer and Task 1's lines.

Every line is read from the page with Playwright's polling ``expect`` (no
``wait_for_function``). ``CHURNLAB_LAB_SCREENSHOT=docs/lab-task1.png`` also writes the
picture of the wrong attempt that the README and the teaching guide show.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest
import requests
from support import CHROMIUM_ARGS, CHURNLAB, _end_group, free_port, needs

from churnlab import store
from churnlab.student import seed_of

NAME = "Zoë Lab"
ANSWER = (
    "On the model version itself: each snapshot is identified by its digest, so the gate "
    "and the smoke check judge exactly the rows the model was built from."
)
WRONG_PARAMETER = 'workbook.train_own(story, "forest", {"depth": 3})'
NO_PARAMETER = 'workbook.train_own(story, "forest")'
RIGHT = 'workbook.train_own(story, "forest", {"max_depth": 8})'
#: the page's waits: a cell that trains, or the whole of 01, on a loaded 2-core CI machine
CELL_MS = 240_000
RUN_ALL_MS = 600_000
#: an output on stderr: an error, or a warning a student would meet
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
SCREENSHOT = os.environ.get("CHURNLAB_LAB_SCREENSHOT", "").strip()

pytestmark = pytest.mark.slow


def chromium() -> Path:
    """Debian's Chromium (missing: the test skips by name, or fails under CI)."""
    return Path(needs("chromium"))


# ---------------------------------------------------------------------------- the student's lab
@dataclass
class Lab:
    """A handout with JupyterLab running on it, as `make lab` started it."""

    handout: Path
    env: dict[str, str]
    url: str
    token: str
    timings: dict[str, float] = field(default_factory=dict)

    def churnlab(self, *args: str) -> subprocess.CompletedProcess:
        """The student's `churnlab` in the handout: its own package, the lab's environment."""
        return subprocess.run(
            [CHURNLAB, *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.handout,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?token={self.token}"


def student_env(root: Path, handout: Path) -> dict[str, str]:
    """A student's environment: the handout's package, a private HOME and Jupyter folders,
    none of this machine's tracking server, churnlab or Jupyter settings."""
    skip = ("JUPYTER", "CHURNLAB_", "MLFLOW_", "IPYTHON", "XDG_", "VIRTUAL_ENV", "CONDA_")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in store.SERVER_VARIABLES and not k.startswith(skip)
    }
    home = root / "home"
    env.update(
        HOME=str(home),
        JUPYTER_CONFIG_DIR=str(home / ".jupyter"),
        JUPYTER_DATA_DIR=str(home / ".local/share/jupyter"),
        JUPYTER_RUNTIME_DIR=str(home / ".local/share/jupyter/runtime"),
        IPYTHONDIR=str(home / ".ipython"),
        PYTHONPATH=str(handout),  # the handout's own package, not this checkout's
    )
    # JupyterLab's news and update checks would ask for the network: answered "never"
    settings = home / ".jupyter/lab/user-settings/@jupyterlab/apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    return env


@contextlib.contextmanager
def make_lab(handout: Path, env: dict[str, str], root: Path) -> Iterator[Lab]:
    """`make lab ARGS=...` in the handout with this interpreter's tools (no install)."""
    venv = root / "venv"
    venv.mkdir()
    (venv / "bin").symlink_to(Path(sys.executable).parent)
    (venv / ".churnlab-installed").touch()  # newer than the handout's pyproject.toml
    port, token = free_port(), "lab-browser-test"
    log = root / "lab.log"
    args = f"--port {port} --no-browser --IdentityProvider.token={token}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["make", "lab", f"ARGS={args}"],
            cwd=handout,
            env={**env, "VIRTUAL_ENV": str(venv)},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    lab = Lab(handout, env, f"http://127.0.0.1:{port}", token)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"make lab exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no JupyterLab in 180 s:\n{log.read_text()}"
            with contextlib.suppress(requests.RequestException):
                status = requests.get(f"{lab.url}/api/status", params={"token": token}, timeout=5)
                if status.ok:
                    break
            time.sleep(0.5)
        yield lab
    finally:
        _end_group(proc, grace=30)  # JupyterLab shuts its kernels down on SIGTERM
        _kill_left_kernels(Path(env["JUPYTER_RUNTIME_DIR"]))


def _kill_left_kernels(runtime: Path) -> None:
    """Kernels of this lab that outlived it (they run in sessions of their own)."""
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if str(runtime).encode() in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)


# ---------------------------------------------------------------------------- the page
class Notebook:
    """One notebook open in JupyterLab; cells by their nbgrader ids, run one at a time."""

    def __init__(self, page, path: Path) -> None:
        from playwright.sync_api import expect

        self.page, self.expect = page, expect
        self.cells = page.locator(".jp-Notebook .jp-Cell")
        on_disk = nbformat.read(path, as_version=4).cells
        self.ids = {
            c.metadata["nbgrader"]["grade_id"]: i
            for i, c in enumerate(on_disk)
            if "nbgrader" in c.metadata
        }
        self.code = [i for i, c in enumerate(on_disk) if c.cell_type == "code"]
        self.count = 0  # the kernel's execution count: every cell run adds one
        expect(self.cells).to_have_count(len(on_disk), timeout=CELL_MS)

    def cell(self, key: str | int):
        return self.cells.nth(self.ids[key] if isinstance(key, str) else key)

    def outputs(self, key: str | int):
        return self.cell(key).locator(".jp-OutputArea-output")

    def wait_for_kernel(self) -> None:
        """Until the kernel has started and is idle (a run asked for before it would open
        JupyterLab's "Select Kernel" dialog)."""
        status = self.page.locator("#jp-main-statusbar")
        self.expect(status).to_contain_text(re.compile(r"Python 3.*\| Idle"), timeout=CELL_MS)

    def run_all(self) -> None:
        """Run > Run All Cells, then wait until the last code cell has run."""
        self.wait_for_kernel()
        self.page.get_by_role("menuitem", name="Run", exact=True).click()
        self.page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()
        self.count += len(self.code)
        last = self.cell(self.code[-1]).locator(".jp-InputPrompt", has_text=f"[{self.count}]:")
        failed = self.page.locator(STDERR)  # a failing cell stops Run All: fail at once
        self.expect(last.or_(failed).first).to_be_visible(timeout=RUN_ALL_MS)
        assert failed.count() == 0, failed.all_text_contents()

    def run(self, key: str) -> list[str]:
        """Select the cell, run it (Ctrl+Enter), wait for its execution count; its outputs."""
        cell = self.cell(key)
        cell.locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Escape")  # command mode: the keys act on the cell
        self.page.keyboard.press("Control+Enter")
        self.count += 1
        prompt = cell.locator(".jp-InputPrompt")
        self.expect(prompt).to_have_text(f"[{self.count}]:", timeout=CELL_MS)
        return [o.text_content() or "" for o in self.outputs(key).all()]

    def line(self, key: str, starts: str) -> str:
        """The one output line of a cell that starts with ``starts``, as the page shows it."""
        self.expect(self.outputs(key).first).to_contain_text(starts, timeout=CELL_MS)
        text = self.outputs(key).first.text_content() or ""
        lines = [line for line in text.splitlines() if line.startswith(starts)]
        assert len(lines) == 1, text
        return lines[0]

    def replace_last_line(self, key: str, code: str) -> None:
        """Type ``code`` over the cell's last line (``# YOUR CODE HERE``, then the last try)."""
        self.cell(key).locator(".cm-content").click()
        self.page.keyboard.press("Control+End")
        self.page.keyboard.press("Shift+Home")
        self.page.keyboard.insert_text(code)

    def answer(self, key: str, text: str) -> None:
        """Write a markdown answer cell and render it."""
        cell = self.cell(key)
        cell.dblclick()  # a rendered markdown cell opens its editor
        cell.locator(".cm-content").click()
        self.page.keyboard.press("Control+a")
        self.page.keyboard.insert_text(text)
        self.page.keyboard.press("Control+Enter")
        self.expect(cell.locator(".jp-RenderedMarkdown")).to_contain_text(text)

    def save(self) -> None:
        """Ctrl+S, until the tab no longer says the notebook has unsaved changes."""
        self.page.keyboard.press("Escape")
        self.page.keyboard.press("Control+s")
        dirty = self.page.locator(".lm-TabBar-tab.jp-mod-current.jp-mod-dirty")
        self.expect(dirty).to_have_count(0, timeout=CELL_MS)


@contextlib.contextmanager
def browser_page(executable: Path, lab: Lab) -> Iterator:
    """A Chromium page that may reach the lab and nothing else."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(executable), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})

            def guard(route):
                if route.request.url.startswith(lab.url):
                    route.continue_()
                else:
                    route.abort()

            context.route("**/*", guard)
            yield context.new_page()
        finally:
            browser.close()


def timed(lab: Lab, phase: str, started: float) -> float:
    now = time.monotonic()
    lab.timings[phase] = round(now - started, 1)
    return now


# ---------------------------------------------------------------------------- the test
@pytest.fixture
def executable() -> Path:
    return chromium()


@pytest.fixture
def lab(executable, tmp_path) -> Iterator[Lab]:
    """A fresh handout, the student's name set once, `make lab` running on it."""
    started = time.monotonic()
    handout = tmp_path / "handout"
    env = student_env(tmp_path, handout)
    teacher = {k: v for k, v in env.items() if k != "PYTHONPATH"}  # this checkout's package
    made = subprocess.run(
        [CHURNLAB, "handout", str(handout)],
        capture_output=True,
        text=True,
        env=teacher,
        timeout=300,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    named = subprocess.run(
        [CHURNLAB, "config", "student", NAME],
        capture_output=True,
        text=True,
        env=env,
        cwd=handout,
        timeout=120,
    )
    assert named.returncode == 0, named.stdout + named.stderr
    assert named.stdout.startswith(f"student = {NAME} (in {handout / 'churnlab.toml'})")
    with make_lab(handout, env, tmp_path) as lab:
        timed(lab, "handout, name, make lab", started)
        yield lab


def test_a_student_does_task1_wrong_then_right_in_jupyterlab_and_reports_it(
    executable, lab, tmp_path
):
    started = time.monotonic()
    notebook = lab.handout / "notebooks" / "01_train.ipynb"
    with browser_page(executable, lab) as page:
        page.goto(lab.notebook_url("01_train.ipynb"))
        nb = Notebook(page, notebook)
        started = timed(lab, "open 01_train", started)

        # the walkthrough, run whole: the story is the named student's; nothing on stderr
        nb.run_all()
        started = timed(lab, "Run All Cells", started)
        story = f"story: {NAME}'s (seed {seed_of(NAME)}, synthetic data)"
        begin = nb.code[1]  # workbook.begin(...): which registry, model and story
        assert nb.line(begin, "story: ") == story
        untouched = nb.line("task1_progress", "Task 1")
        assert untouched.startswith(
            "Task 1, part 1 not yet: no candidate of your own is registered"
        )

        # wrong: a hyperparameter the forest does not have is one line naming the valid ones
        nb.replace_last_line("task1_act_1", WRONG_PARAMETER)
        nb.run("task1_act_1")
        refused = nb.line("task1_act_1", "InputError: ")
        assert refused.startswith(
            "InputError: forest (RandomForestClassifier) has no hyperparameter 'depth'; valid: "
        )
        assert "max_depth" in refused and refused.endswith("(%tb shows the traceback)")
        assert [t.strip() for t in nb.outputs("task1_act_1").all_text_contents()] == [refused]
        nb.run("task1_progress")
        wrong_check = nb.line("task1_progress", "Task 1")
        assert wrong_check == untouched
        nb.cell(nb.ids["task1_act_1"] - 1).evaluate("cell => cell.scrollIntoView()")  # Your turn
        shot = page.screenshot(path=str(tmp_path / "lab-task1.png"))
        if SCREENSHOT:
            Path(SCREENSHOT).write_bytes(shot)

        # wrong again: a candidate with no hyperparameter set is registered, but not enough
        nb.replace_last_line("task1_act_1", NO_PARAMETER)
        first = nb.run("task1_act_1")
        assert len(first) == 1 and first[0].startswith("churn-model v3: forest, accuracy ")
        nb.run("task1_progress")
        defaults = nb.line("task1_progress", "Task 1")
        assert defaults.startswith(
            "Task 1, part 1 not yet: your candidate (v3) is a forest with its defaults, and the "
            "task asks you to set at least one hyperparameter"
        )

        # right: max_depth set; the check finds the newest own candidate, v4
        nb.replace_last_line("task1_act_1", RIGHT)
        second = nb.run("task1_act_1")
        assert len(second) == 1 and second[0].startswith("churn-model v4: forest, accuracy ")
        nb.run("task1_progress")
        done = nb.line("task1_progress", "Task 1")
        assert re.fullmatch(
            r"Task 1, part 1 done: v4 is yours: forest \(max_depth=8\), accuracy 0\.\d{4}; "
            r"replay the gate on it in 02",
            done,
        ), done
        started = timed(lab, "Task 1 wrong, wrong, right", started)

        nb.answer("q4", ANSWER)
        nb.save()
        started = timed(lab, "answer and save", started)

    # what JupyterLab saved: the typed answer, the code and the check's line
    saved = nbformat.read(notebook, as_version=4).cells
    assert saved[nb.ids["q4"]].source == ANSWER
    assert saved[nb.ids["task1_act_1"]].source.endswith("\n" + RIGHT)
    assert [o.get("text") for o in saved[nb.ids["task1_progress"]].outputs] == [done + "\n"]

    # churnlab report: the notebooks as saved and the lab's registry, nothing re-run
    reported = lab.churnlab("report")
    timed(lab, "churnlab report", started)
    assert reported.returncode == 0, reported.stdout + reported.stderr
    assert reported.stdout.splitlines()[0].split() == ["01_train", "saved"]
    assert "nothing was re-run" in reported.stdout
    work = json.loads((lab.handout / "reports/workbook.json").read_text(encoding="utf-8"))
    assert (work["kind"], work["student"], work["seed"]) == ("lab", NAME, seed_of(NAME))
    q4 = {q["id"]: q for q in work["questions"]}["q4"]
    assert (q4["answer"], q4["answered"]) == (ANSWER, True)
    task1 = {t["id"]: t for t in work["tasks"]}["task1"]
    # the whole of Task 1 also needs 02's replay: the report says so, of the lab's v4
    assert not task1["done"]
    assert task1["missing"].startswith(
        "the exercise's 0.90 gate was not replayed on your candidate (v4)"
    )
    page_html = (lab.handout / "reports/workbook.html").read_text(encoding="utf-8")
    for text in (ANSWER, done, task1["missing"]):
        assert html.escape(text) in page_html, text
    assert html.escape(f"student = {NAME!r}") in page_html
    assert "seed = 42" not in page_html  # the name's seed, not 01's default
    assert "Traceback" not in page_html
    # the registry the lab used is the handout's own, as a student's would be
    assert (lab.handout / ".churnlab/mlflow.db").is_file()
    shown = (untouched, refused, wrong_check, first[0], defaults, second[0], done)
    print("the page showed:", *shown, sep="\n  ")
    print("timings (s):", lab.timings)
