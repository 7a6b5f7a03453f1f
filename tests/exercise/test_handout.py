"""`churnlab handout DIR`: the student edition, generated from the teacher's notebooks.

nbgrader's rules on cells built here and on the committed notebooks (compared with
nbgrader's own ClearSolutions where it is installed), a real copy of this checkout with
none of the teacher's answer prose in it, refusals that leave folders untouched, a
failure that leaves nothing, `make lab` and the workbook run inside the handout.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import requests
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from support import ROOT, UNICODE_NAME, _end_group, free_port, main

from churnlab import cli, handout, train
from churnlab.errors import InputError, Refused

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ANSWER = (
    "A stage names the version that serves, and moving it is recorded with who and why. "
    "A git tag only names code, not the model trained from it."
)


def _grader(**marks) -> dict:
    return {"nbgrader": {"schema_version": 3, **marks}}


def teacher_notebook() -> nbformat.NotebookNode:
    """One cell of each kind the notebooks use, executed (with outputs)."""
    act = new_code_cell(
        "from churnlab import train\n"
        "### BEGIN SOLUTION\n"
        "result = train.train_candidate(estimator='forest')\n"
        "### END SOLUTION\n"
        "print('trained')",
        metadata=_grader(
            grade=False, grade_id="task1_act", locked=False, solution=True, task=False
        ),
        execution_count=3,
        outputs=[new_output("stream", name="stdout", text="trained\n")],
    )
    check = new_code_cell(
        "exercises.check_task1()",
        metadata=_grader(grade=True, grade_id="task1_check", locked=True, points=1, solution=False),
        execution_count=4,
        outputs=[new_output("stream", name="stdout", text="done: v3\n")],
    )
    prompt = new_markdown_cell(
        "**Question 2.** What does a registry stage give that a git tag does not?",
        metadata=_grader(grade=False, grade_id="q2_prompt", locked=True, solution=False),
    )
    answer = new_markdown_cell(
        ANSWER,
        metadata=_grader(grade=True, grade_id="q2", locked=False, points=1, solution=True),
    )
    helper = new_code_cell(
        "def pick():\n    ### BEGIN SOLUTION\n    return 3\n    ### END SOLUTION",
        execution_count=5,
    )
    walkthrough = new_code_cell(
        "print(1)", execution_count=1, outputs=[new_output("stream", name="stdout", text="1\n")]
    )
    return new_notebook(
        cells=[walkthrough, act, check, prompt, answer, helper],
        metadata={
            "kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}
        },
    )


def test_student_notebook_follows_nbgrader_rules():
    teacher = teacher_notebook()
    student, solutions, answers = handout.student_notebook(teacher)
    walkthrough, act, check, prompt, answer, helper = student.cells
    assert act.source == "from churnlab import train\n# YOUR CODE HERE\nprint('trained')"
    assert helper.source == "def pick():\n    # YOUR CODE HERE"  # indented like its marker
    assert check.source == teacher.cells[2].source
    assert check.metadata == teacher.cells[2].metadata  # marks kept for nbgrader
    assert prompt.source == teacher.cells[3].source
    assert answer.source == "YOUR ANSWER HERE"
    assert walkthrough.source == "print(1)"
    assert (solutions, answers) == (2, 1)
    for cell in student.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert teacher.cells[1].outputs, "the teacher's notebook is not changed"
    # an untouched task cell runs harmlessly: it only imports and prints
    exec(compile(act.source.replace("print('trained')", ""), "act", "exec"), {})


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("### BEGIN SOLUTION\nx = 1", "BEGIN SOLUTION without END SOLUTION"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "inside another"),
        ("x = 1\n### END SOLUTION", "END SOLUTION without BEGIN SOLUTION"),
    ],
)
def test_broken_solution_regions_are_named(source, problem):
    nb = new_notebook(cells=[new_markdown_cell("intro"), new_code_cell(source)])
    with pytest.raises(InputError, match=rf"^notebooks/01_train.ipynb cell 2: .*{problem}"):
        handout.student_notebook(nb, "notebooks/01_train.ipynb")


def _nbgrader_edition(nb: nbformat.NotebookNode, strict: bool) -> nbformat.NotebookNode:
    from nbgrader.nbgraderformat import MetadataValidator
    from nbgrader.preprocessors import ClearOutput, ClearSolutions

    if strict:  # the committed notebooks: nbgrader's own checks of the marks pass too
        MetadataValidator().validate_nb(nb)
    clear = ClearSolutions(code_stub={"python": handout.CODE_STUB}, enforce_metadata=strict)
    nb, resources = clear.preprocess(copy.deepcopy(nb), {})
    nb, _ = ClearOutput().preprocess(nb, resources)
    return nb


@pytest.mark.parametrize(
    "source",
    [pytest.param(None, id="cells"), *(pytest.param(p, id=p.stem) for p in NOTEBOOKS)],
)
def test_same_edition_as_nbgrader(source):
    """nbgrader's own ClearSolutions (code stub configured as ours) gives the same cells."""
    pytest.importorskip("nbgrader.preprocessors", reason="nbgrader is not installed")
    teacher = teacher_notebook() if source is None else nbformat.read(source, as_version=4)
    ours, _, _ = handout.student_notebook(teacher)
    theirs = _nbgrader_edition(teacher, strict=source is not None)
    assert [(c.cell_type, c.source) for c in ours.cells] == [
        (c.cell_type, c.source) for c in theirs.cells
    ]
    assert [c.get("outputs") for c in ours.cells] == [c.get("outputs") for c in theirs.cells]


# ---------------------------------------------------------------------------- the copy
def _sentences(text: str) -> list[str]:
    """The test's own split of prose into sentences of five words or more (lower case)."""
    text = re.sub(r"[*_`]+", "", text)
    parts = re.split(r"(?<=[.!?])\s+|\n\s*\n", text)
    return [" ".join(p.split()).lower() for p in parts if len(p.split()) >= 5]


def _visible_text(path: Path) -> str | None:
    if path.suffix == ".ipynb":
        return json.dumps(
            [c.source for c in nbformat.read(path, as_version=4).cells], ensure_ascii=False
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def _teacher_answers() -> list[str]:
    """Every sentence of the answers written in the committed (teacher's) notebooks."""
    found = []
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            marks = cell.metadata.get("nbgrader", {})
            if cell.cell_type == "markdown" and marks.get("solution"):
                found.extend(_sentences(cell.source))
    return found


@pytest.fixture(scope="module")
def handout_of_this_checkout(tmp_path_factory) -> tuple[Path, set[str]]:
    """`churnlab handout` of this checkout, by the CLI's entry point in this process, and the
    files the checkout had just before (the console script writes one: exercise/conftest.py)."""
    target = tmp_path_factory.mktemp("class") / "handout"
    expected = {p.as_posix() for p in handout.project_files(ROOT)}
    done = main("handout", str(target))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote the student edition to {target}: ")
    return target, expected


@pytest.fixture(scope="module")
def this_handout(handout_of_this_checkout) -> Path:
    return handout_of_this_checkout[0]


def test_handout_is_this_project_without_the_teachers_files(handout_of_this_checkout):
    this_handout, expected = handout_of_this_checkout
    written = {
        p.relative_to(this_handout).as_posix() for p in this_handout.rglob("*") if p.is_file()
    }
    assert written == expected | {"handout.json"}, "the project, and the commit it came from"
    commit = json.loads((this_handout / "handout.json").read_text())["commit"]
    assert commit == (train.git_commit(ROOT) or "unknown")
    for must in (
        "Makefile",
        "pyproject.toml",
        "churnlab/cli/__init__.py",
        "notebooks/01_train.ipynb",
    ):
        assert must in written
    assert "docs/teaching.md" not in written
    assert not any(
        p.startswith((".venv/", ".churnlab/", ".git/")) or "__pycache__" in p for p in written
    )
    assert not [p for p in written if p.startswith("reports/") and p != "reports/README.md"]
    for name in ("churnlab/schema.py", "docs/spark.md", "notebooks/nbval.cfg"):  # byte for byte
        assert (this_handout / name).read_bytes() == (ROOT / name).read_bytes()


def test_handout_notebooks_have_no_solutions_and_no_outputs(this_handout):
    for path in NOTEBOOKS:
        nb = nbformat.read(this_handout / "notebooks" / path.name, as_version=4)
        for cell in nb.cells:
            assert "BEGIN SOLUTION" not in cell.source and "END SOLUTION" not in cell.source
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None
            if cell.metadata.get("nbgrader", {}).get("solution") and cell.cell_type == "markdown":
                assert cell.source == "YOUR ANSWER HERE"


def test_no_teacher_answer_prose_anywhere_in_the_handout(this_handout):
    answers = _teacher_answers()
    assert answers, "the teacher's notebooks have no answer cells (metadata.nbgrader.solution)"
    leaks = []
    for path in this_handout.rglob("*"):
        text = _visible_text(path) if path.is_file() else None
        if text is None:
            continue
        flat = " ".join(re.sub(r"[*_`]+", "", text).split()).lower()
        leaks += [(path.name, s) for s in answers if s in flat]
    assert leaks == []


def _project(root: Path) -> Path:
    """A small project: a teacher's notebook, the guide, an environment and outputs."""
    (root / "notebooks").mkdir(parents=True)
    nbformat.write(teacher_notebook(), root / "notebooks" / "01_train.ipynb")
    (root / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    (root / "README.md").write_text("# demo\n")
    (root / "docs").mkdir()
    (root / "docs" / "teaching.md").write_text(f"Answers: {ANSWER}\n")
    (root / "reports").mkdir()
    (root / "reports" / "README.md").write_text("generated here\n")
    (root / "reports" / "workbook.html").write_text("<html>teacher's run</html>")
    for junk in (".venv/bin/python", ".churnlab/mlflow.db", "pkg/__pycache__/x.pyc"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_text("x")
    (root / "pkg" / "__init__.py").write_text('"""A package."""\n')
    return root


EXPECTED = {
    "README.md",
    "notebooks/01_train.ipynb",
    "pkg/__init__.py",
    "pyproject.toml",
    "reports/README.md",
}


def test_project_files_walk_and_git(tmp_path):
    root = _project(tmp_path / "walked")
    assert {p.as_posix() for p in handout.project_files(root)} == EXPECTED

    git = _project(tmp_path / "checkout")
    (git / ".gitignore").write_text(
        ".venv/\n.churnlab/\n__pycache__/\nreports/*\n!reports/README.md\n"
    )
    (git / "scratch.txt").write_text("new, not yet committed: a fresh clone of the next commit")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_COMMITTER_NAME": "t"}
    env |= {"GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_EMAIL": "t@example.org"}
    for argv in (["init", "-q"], ["add", "README.md", "notebooks", ".gitignore"]):
        subprocess.run(["git", "-C", str(git), *argv], check=True, env=env)
    listed = {p.as_posix() for p in handout.project_files(git)}
    assert listed == EXPECTED | {".gitignore", "scratch.txt"}
    assert handout.uncommitted_files(git) == [
        "pkg/__init__.py",
        "pyproject.toml",
        "reports/README.md",
        "scratch.txt",
    ]
    assert handout.uncommitted_files(root) == []


def test_write_handout_of_a_project(tmp_path):
    root = _project(tmp_path / "project")
    made = handout.write_handout(tmp_path / "out", root=root)
    assert (made.files, made.notebooks, made.solutions_cleared, made.answers_cleared) == (
        5,
        1,
        2,
        1,
    )
    nb = nbformat.read(tmp_path / "out" / "notebooks" / "01_train.ipynb", as_version=4)
    assert nb.cells[4].source == "YOUR ANSWER HERE"
    assert not (tmp_path / "out" / "docs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "project"]  # no temp left


def test_an_answer_pasted_elsewhere_refuses_the_handout(tmp_path):
    root = _project(tmp_path / "project")
    (root / "README.md").write_text(f"# demo\n\nHint: {ANSWER.upper()}\n")
    with pytest.raises(Refused, match=r"teacher's answer in README.md \(2 sentence"):
        handout.write_handout(tmp_path / "out", root=root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]


def test_a_folder_that_is_not_empty_is_refused_and_left_untouched(tmp_path, capsys):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.md").write_text("mine")
    assert cli.main(["handout", str(target)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"churnlab: {target} exists and is not empty (use --force to replace it)\n"
    assert [p.name for p in target.iterdir()] == ["notes.md"]
    assert (target / "notes.md").read_text() == "mine"

    (tmp_path / "file").write_text("x")
    assert cli.main(["handout", str(tmp_path / "file"), "--force"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert cli.main(["handout", str(ROOT), "--force"]) == 2
    assert "over the project itself" in capsys.readouterr().err


def test_force_replaces_and_an_empty_folder_is_fine(tmp_path):
    root = _project(tmp_path / "project")
    target = tmp_path / "out"
    target.mkdir()
    handout.write_handout(target, root=root)  # empty: no --force needed
    (target / "stale.txt").write_text("from last year")
    handout.write_handout(target, root=root, force=True)
    assert not (target / "stale.txt").exists()
    assert (target / "notebooks" / "01_train.ipynb").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "project"]


@pytest.mark.parametrize("existing", [False, True])
def test_a_failure_midway_leaves_nothing(tmp_path, monkeypatch, existing):
    root = _project(tmp_path / "project")
    for n in (2, 3):
        nbformat.write(teacher_notebook(), root / "notebooks" / f"0{n}_more.ipynb")
    target = tmp_path / "out"
    if existing:
        target.mkdir()
        (target / "old.txt").write_text("kept")
    calls = []
    real = handout.student_notebook

    def fail_on_second(nb, name="notebook"):
        calls.append(name)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(nb, name)

    monkeypatch.setattr(handout, "student_notebook", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        handout.write_handout(target, root=root, force=existing)
    assert len(calls) == 2
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == (["out", "project"] if existing else ["project"])
    if existing:
        assert [p.name for p in target.iterdir()] == ["old.txt"]


# ---------------------------------------------------------------------------- running it
@contextlib.contextmanager
def _make_lab(folder: Path, tmp: Path):
    """`make lab` in ``folder`` with this interpreter's tools (no install), on a free port."""
    env_dir = tmp / "env"
    env_dir.mkdir()
    (env_dir / "bin").symlink_to(Path(sys.executable).parent)
    (env_dir / ".churnlab-installed").touch()  # newer than the copied pyproject.toml
    config = tmp / "jupyter"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"open_browser": False, "allow_root": True}})
    )
    port, token = free_port(), "handout-test"
    env = {
        **os.environ,
        "VIRTUAL_ENV": str(env_dir),
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "JUPYTER_PORT": str(port),
        "JUPYTER_TOKEN": token,
    }
    env.pop("CONDA_PREFIX", None)
    proc = subprocess.Popen(
        ["make", "lab"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield f"http://127.0.0.1:{port}", token, proc
    finally:
        _end_group(proc)


@pytest.mark.slow
def test_make_lab_opens_the_students_notebooks(this_handout, tmp_path):
    with _make_lab(this_handout, tmp_path) as (url, token, proc):
        # JupyterLab answers in 5-20 s; 90 s means it hangs
        deadline = time.monotonic() + 90
        listing = None
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(requests.RequestException):
                answer = requests.get(f"{url}/api/contents", params={"token": token}, timeout=5)
                if answer.ok:
                    listing = answer.json()
                    break
            time.sleep(0.5)
        assert listing is not None, proc.stdout.read().decode() if proc.poll() is not None else ""
        names = sorted(item["name"] for item in listing["content"])
        assert [p.name for p in NOTEBOOKS] == [n for n in names if n.endswith(".ipynb")]
        opened = requests.get(
            f"{url}/api/contents/{NOTEBOOKS[0].name}", params={"token": token}, timeout=10
        ).json()
        served = nbformat.from_dict(opened["content"])
        on_disk = nbformat.read(this_handout / "notebooks" / NOTEBOOKS[0].name, as_version=4)
        assert [c.source for c in served.cells] == [c.source for c in on_disk.cells]


@pytest.mark.slow
@pytest.mark.xdist_group("handout-run")  # the run is shared with test_work.py
def test_untouched_handout_runs_and_its_report_says_what_is_missing(untouched_handout):
    """The student's first run: every task "not yet", every question "not answered"."""
    done = untouched_handout  # `churnlab workbook --student NAME` inside a fresh handout
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    page = done.report.read_text(encoding="utf-8")
    assert "Traceback" not in page
    work = json.loads((done.folder / "workbook.json").read_text())
    assert work["student"] == UNICODE_NAME
    assert [t["id"] for t in work["tasks"]] == ["task1", "task2", "task3", "task4"]
    assert not [t["id"] for t in work["tasks"] if t["done"] or not t["missing"].strip()]
    assert not [q["id"] for q in work["questions"] if q["answered"]]
    assert "not answered" in page
