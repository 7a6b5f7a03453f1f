"""The report is the student's work: "Your work", workbook.json, the embedded summary.

Whole workbook runs as the real console script: the teacher's edition for two students
(every task done, each with their own numbers) and the student edition (solutions removed
by ``churnlab.handout``) for a student with a Unicode name (every task not yet, no
traceback); then what cannot fool the report, and the refusals.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from support import UNICODE_NAME, WORKBOOK_TIMEOUT_S, main, run_cli

from churnlab import data, report, runner, student, work
from churnlab.registry import Registry


# ---------------------------------------------------------------------------- the summary
def _summary(**changes) -> dict:
    summary = {
        "format": work.FORMAT,
        "student": "alice",
        "seed": 1,
        "model_name": "churn-model",
        "data": {"source": "synthetic", "rows": 7043, "digests": {}},
        "tasks": [
            {"id": "task1", "title": "t", "done": False, "evidence": "", "missing": "train one"}
        ],
        "questions": [
            {
                "id": "q1",
                "title": "why?",
                "answer": "Because </script><script>alert(1)</script> & more",
                "answered": True,
                "words": 5,
            },
            {"id": "q2", "title": "what?", "answer": "", "answered": False, "words": 0},
        ],
    }
    summary.update(changes)
    return summary


def test_the_embedded_summary_reads_back_exactly_and_cannot_end_the_script():
    summary = _summary()
    block = work.embed(summary)
    assert block.count("</script>") == 1 and "<\\/script>" in block
    page = f"<html><body><main>x</main>{block}</body></html>"
    assert work.read_work(page) == summary


@pytest.mark.parametrize(
    "page",
    [
        "<html>no summary</html>",
        '<script type="application/json" id="churnlab-work">{not json</script>',
        '<script type="application/json" id="churnlab-work">{"format": "other/1"}</script>',
    ],
)
def test_a_page_without_a_summary_reads_as_none(page):
    assert work.read_work(page) is None


def test_your_work_shows_verdicts_and_unanswered_questions_in_plain_sight():
    shown = work.work_html(_summary())
    assert "Student: <b>alice</b>" in shown
    assert '<span class="wb-bad">not yet</span></td><td>train one</td>' in shown
    assert "&lt;/script&gt;" in shown and "<script>" not in shown
    assert '<p class="wb-bad wb-unanswered">not answered</p>' in shown
    assert "the reference story" in work.work_html(_summary(student=None))


def test_answers_are_read_by_grade_id_and_the_placeholder_is_not_an_answer(tmp_path):
    nb = nbformat.v4.new_notebook()
    for grade_id, text in [("q1", "My answer."), ("q2", work.PLACEHOLDER), ("q9", "x")]:
        cell = nbformat.v4.new_markdown_cell(text)
        cell.metadata["nbgrader"] = {"grade_id": grade_id, "solution": True}
        nb.cells.append(cell)
    nbformat.write(nb, tmp_path / "a.ipynb")
    found = work.answers([tmp_path / "a.ipynb", tmp_path / "missing.ipynb"])
    assert found == {"q1": "My answer.", "q2": work.PLACEHOLDER}
    assert work.is_answered("My answer.") and not work.is_answered(" YOUR ANSWER HERE \n")


# ---------------------------------------------------------------------------- whole runs
def _run(folder: Path, *args: str):
    done = run_cli("workbook", "--output", str(folder), *args, timeout=WORKBOOK_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    return done


def _registry(folder: Path) -> Registry:
    os.environ["CHURNLAB_HOME"] = str(folder / "registry")  # the test's isolated home is reset
    return Registry()


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    folders = {}
    for name in ("alice", "bob"):
        folders[name] = tmp_path_factory.mktemp(f"teacher-{name}")
        _run(folders[name], "--student", name)
    return folders


@pytest.fixture(scope="module")
def handed_out(untouched_handout) -> runner.WorkbookRun:
    """The student edition, untouched, run by a student with a Unicode name (conftest)."""
    assert untouched_handout.returncode == 0, untouched_handout.stdout + untouched_handout.stderr
    return untouched_handout.as_run({"student": UNICODE_NAME})


@pytest.mark.slow
def test_two_students_get_every_task_done_with_their_own_numbers(teachers):
    metrics, digests = {}, {}
    for name, folder in teachers.items():
        page = (folder / "workbook.html").read_text()
        summary = work.read_work(page)
        assert summary == json.loads((folder / "workbook.json").read_text())
        assert summary["student"] == name and summary["seed"] == student.seed_of(name)
        assert [t["id"] for t in summary["tasks"]] == ["task1", "task2", "task3", "task4"]
        assert all(t["done"] for t in summary["tasks"]), summary["tasks"]
        assert [q["id"] for q in summary["questions"]] == [
            *(f"q{i}" for i in range(1, 6)),
            "extension",
        ]
        assert all(q["answered"] and q["words"] > 50 for q in summary["questions"])
        assert summary["data"]["source"] == "synthetic" and summary["data"]["rows"] == 7043
        assert summary["data"]["digests"] == student.snapshot_digests(summary["seed"], 7043)
        assert page.index('id="your-work"') < page.index('id="summary"')
        assert f"Student: <b>{name}</b>" in page and "Traceback" not in page
        assert report.network_references(page) == []
        registry = _registry(folder)
        metrics[name] = [registry.evidence(v).metrics["accuracy"] for v in (1, 2, 3)]
        digests[name] = summary["data"]["digests"]
        assert {e.actor for e in registry.history()} == {name}, "the student moved the aliases"
    assert metrics["alice"] != metrics["bob"]
    assert set(digests["alice"].values()).isdisjoint(digests["bob"].values())


@pytest.mark.slow
@pytest.mark.xdist_group("handout-run")
def test_an_untouched_handout_runs_to_the_end_and_says_what_is_missing(handed_out):
    page = handed_out.report.read_text(encoding="utf-8")
    summary = work.read_work(page)
    assert summary["student"] == UNICODE_NAME
    assert f"Student: <b>{UNICODE_NAME}</b>" in page
    assert [t["done"] for t in summary["tasks"]] == [False] * 4
    assert all(t["missing"] for t in summary["tasks"])
    assert summary["tasks"][0]["missing"].startswith("no candidate of your own is registered")
    assert [q["answered"] for q in summary["questions"]] == [False] * 6
    assert page.count('<p class="wb-bad wb-unanswered">not answered</p>') == 6
    yours = page[page.index('id="your-work"') : page.index('id="summary"')]
    assert "Traceback" not in page and "Error" not in yours
    assert summary["data"]["digests"] == student.snapshot_digests(summary["seed"], 7043)
    for path in handed_out.report.parent.glob("executed/*.ipynb"):  # every check said not yet
        text = path.read_text()
        assert "Task " not in text or " done:" not in text


@pytest.mark.slow
@pytest.mark.xdist_group("handout-run")
def test_editing_a_check_cells_output_cannot_change_the_verdict(handed_out, tmp_path):
    for run in handed_out.runs:
        nb = nbformat.read(run.path, as_version=4)
        for cell in nb.cells:
            if cell.get("metadata", {}).get("nbgrader", {}).get("grade", False):
                if cell.cell_type == "code":
                    cell.outputs = [
                        nbformat.v4.new_output("stream", name="stdout", text="Task 1 done: yes\n")
                    ]
        nbformat.write(nb, run.path)
    os.environ["CHURNLAB_HOME"] = str(handed_out.report.parent / "registry")
    out = report.build_report(handed_out, out=tmp_path / "workbook.html")
    summary = work.read_work(out.read_text(encoding="utf-8"))
    assert [t["done"] for t in summary["tasks"]] == [False] * 4
    assert "Task 1 done: yes" in out.read_text(encoding="utf-8"), "the edited output is shown"


@pytest.mark.slow
def test_a_telco_csv_replaces_the_synthetic_data(tmp_path):
    csv = data.write_csv(data.generate(3000, 5), tmp_path / "my-telco.csv")
    _run(tmp_path / "reports", "--only", "01,02", "-p", "data", str(csv), "--student", "carol")
    summary = json.loads((tmp_path / "reports" / "workbook.json").read_text())
    assert summary["data"]["source"] == "my-telco.csv" and summary["data"]["rows"] == 3000
    assert summary["tasks"][0]["done"], summary["tasks"][0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--student", "   "], "student name must not be empty or blank"),
        (["-p", "data", "no-such.csv"], "data must be a CSV file in the Telco layout"),
    ],
)
def test_a_blank_name_or_a_missing_file_is_refused_in_one_line(tmp_path, args, message):
    done = main("workbook", "--output", str(tmp_path / "reports"), *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and message in done.stderr
    assert not (tmp_path / "reports" / "workbook.html").exists()


def test_a_model_without_versions_is_tabled_empty():
    """A class's model exists before its first version (class-add-students creates it): a
    run that fails in 01 still writes its partial report, whose tables keep their columns."""
    from mlflow.tracking import MlflowClient

    from churnlab import store, tables
    from churnlab.registry import Registry

    store.configure()
    MlflowClient().create_registered_model("churn-model-nobody-yet")
    registry = Registry("churn-model-nobody-yet")
    versions = tables.versions_table(registry)
    assert versions.empty and versions.index.name == "version"
    assert list(versions.columns) == [
        "estimator", "accuracy", "roc_auc", "gate", "smoke", "holds", "description"
    ]  # fmt: skip
    assert tables.data_table(registry).empty and tables.history_table(registry).empty
