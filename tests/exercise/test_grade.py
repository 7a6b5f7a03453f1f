"""`churnlab grade PATH...`: one row per student, flags for copies, skipped non-reports, CSV.

The reports are made here: a work summary (``churnlab-work/1``) with the digests a
student's name really gives (``churnlab.student``), embedded in a workbook page.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
from support import main

from churnlab import cli, grade, student, work

ROWS = 400  # small synthetic data: the digests are recomputed for each name


def work_of(
    name: str | None, *, tasks_done: int = 4, answers: dict | None = None, kind: str = "replay"
) -> dict:
    """A work summary as the workbook writes it for ``name`` on synthetic data."""
    seed = student.seed_of(name) if name else 42
    model = "churn-model"
    evidence = {
        "task1": "v5 is yours: forest (n_estimators=80), accuracy 0.8010; the replayed gate failed",
        "task2": f"v5 was staged (Staged {model} v5 -> Staging) and its smoke check passed",
        "task3": f"Promoted {model} v5 -> Production (archived v2); rolled back to v2; "
        f"promoted again: Promoted {model} v5 -> Production (archived v2)",
        "task4": f"/health of production: {model} v5 (stage production, status ok); "
        "the newest version, v6, is served by nobody",
    }
    tasks = []
    for n, (task_id, text) in enumerate(evidence.items(), start=1):
        done = n <= tasks_done
        tasks.append(
            {
                "id": task_id,
                "title": f"Task {n}",
                "done": done,
                "evidence": text if done else "",
                "missing": "" if done else f"do task {n}: run its Your turn cell",
            }
        )
    answers = answers or {}
    questions = [
        {
            "id": qid,
            "title": f"Question {qid}",
            "answer": answers.get(qid, ""),
            "answered": bool(answers.get(qid, "").strip()),
            "words": len(answers.get(qid, "").split()),
        }
        for qid in grade.QUESTIONS
    ]
    return {
        "format": "churnlab-work/1",
        "student": name,
        "seed": seed,
        "model_name": model,
        "kind": kind,
        "data": {
            "source": "synthetic",
            "rows": ROWS,
            "digests": student.snapshot_digests(seed, ROWS),
        },
        "tasks": tasks,
        "questions": questions,
    }


def page_of(summary: dict) -> str:
    """A workbook page with the report's own "Your work" section and embedded summary."""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>churnlab workbook</title>'
        f"</head><body>{work.work_html(summary)}{work.embed(summary)}</body></html>\n"
    )


def write_report(folder: Path, work: dict, name: str = "workbook.html") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(page_of(work), encoding="utf-8")
    return path


ALICE = {
    "q1": "Main changes every hour; what merged was never evaluated on data.",
    "q2": "An alias is moved with a recorded reason and who moved it.",
    "q3": "Real traffic differs: <script>drift</script> and load.",
}
BOB = {
    "q1": "Because code on main was never gated, nor smoke tested.",
    "q2": "A stage points at a model version with its evidence.",
    "extension": "I would put the backend behind an authenticated proxy.",
}


@pytest.fixture
def class_reports(tmp_path) -> Path:
    """alice (all done), bob (all done, the report of his lab), carol (an untouched handout: nothing done)."""
    reports = tmp_path / "reports"
    write_report(reports / "alice", work_of("alice", answers=ALICE))
    write_report(reports / "bob", work_of("bob", answers=BOB, kind="lab"))  # from JupyterLab
    write_report(reports / "carol", work_of("Carölina", tasks_done=0))
    return reports


def test_one_row_per_student(class_reports, capsys):
    assert cli.main(["grade", str(class_reports)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0].split() == [
        "student", "tasks", "answered", "q1", "q2", "q3", "q4", "q5", "extension", "kind",
        "report", "flags"
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[1:4]}
    assert rows["alice"][1:11] == ["4/4", "3/5", "11", "12", "6", "0", "0", "0", "replay"] + [
        str(class_reports / "alice" / "workbook.html")
    ]
    assert rows["bob"][1:11] == ["4/4", "2/5", "10", "10", "0", "0", "0", "9", "lab"] + [
        str(class_reports / "bob" / "workbook.html")
    ]
    assert rows["Carölina"][1:3] == ["0/4", "0/5"]
    assert all(len(r) == 11 for r in rows.values()), "no flags"
    assert lines[4] == "graded 3 report(s), 0 flagged, 0 skipped"
    assert len(lines) == 5


def test_a_copied_report_is_caught_by_its_digests(class_reports, capsys):
    """dave hands in alice's report with his name typed in: the data is not his."""
    copied = json.loads(json.dumps(work_of("alice", answers=ALICE)))
    copied["student"] = "dave"
    write_report(class_reports / "dave", copied)
    assert cli.main(["grade", str(class_reports)]) == 0
    rows = {g.split()[0]: g for g in capsys.readouterr().out.splitlines()[1:5]}
    assert "seed is not dave's; data digests are not dave's" in rows["dave"]
    for qid in ("q1", "q2", "q3"):
        assert f"{qid} identical to alice" in rows["dave"]
        assert f"{qid} identical to dave" in rows["alice"]
    assert "digests" not in rows["alice"] and "bob" not in rows["alice"]


def test_only_the_digests_changed_is_caught(tmp_path):
    work = work_of("erin")
    work["data"]["digests"] = student.snapshot_digests(student.seed_of("frank"), ROWS)
    [row], _ = grade.grade_reports([write_report(tmp_path, work)])
    assert row.flags == ["data digests are not erin's"]


def test_the_same_report_twice_and_answers_equal_up_to_case_and_spaces(tmp_path):
    alice = work_of("alice", answers=ALICE)
    write_report(tmp_path / "a", alice)
    write_report(tmp_path / "b", alice)
    shouty = {"q1": "  MAIN changes every hour;\n what merged was NEVER evaluated on data.  "}
    write_report(tmp_path / "c", work_of("gina", answers={**shouty, "q5": ALICE["q2"]}))
    grades, _ = grade.grade_reports([tmp_path])
    by_path = {g.report.parent.name: g for g in grades}
    a, b, c = by_path["a"], by_path["b"], by_path["c"]
    assert f"alice also reported in {b.report}" in a.flags
    assert f"q1 identical to {b.report}, gina" in a.flags
    assert f"q1 identical to {a.report}, {b.report}" in c.flags
    assert f"q5 identical to {a.report} (q2), {b.report} (q2)" in c.flags
    write_report(tmp_path / "d", alice)
    write_report(tmp_path / "e", alice)
    grades, _ = grade.grade_reports([tmp_path])
    d = tmp_path / "d" / "workbook.html"
    assert f"q1 identical to {b.report}, gina, {d} and 1 more" in grades[0].flags
    # empty answers are never "identical"
    assert not [f for f in a.flags if f.startswith(("q4", "extension"))]


def test_done_claims_that_their_evidence_contradicts(tmp_path):
    work = work_of("hana")
    tasks = {t["id"]: t for t in work["tasks"]}
    tasks["task1"]["evidence"] = " "
    tasks["task2"]["missing"] = "the smoke check did not run"
    tasks["task3"]["evidence"] = tasks["task3"]["evidence"].replace(
        "Promoted churn-model v5", "Promoted churn-model-ivan v5", 1
    )
    tasks["task4"]["evidence"] = tasks["task4"]["evidence"].replace("v6,", "v4,")
    work["questions"][3].update(answer="YOUR ANSWER HERE", answered=True, words=3)
    [g], _ = grade.grade_reports([write_report(tmp_path, work)])
    assert g.tasks_done == 0
    assert g.flags == [
        "task1 claims done without evidence",
        "task2 claims done but names what is missing",
        "task3 quotes churn-model-ivan, not churn-model",
        "task4 says v4 is newer than production's v5",
        "q4 claims an answer it does not have",
    ]
    assert g.words["q4"] == 0
    staging = copy.deepcopy(work_of("hana"))
    staging["tasks"][3]["evidence"] = staging["tasks"][3]["evidence"].replace(
        "stage production", "stage staging"
    )
    [g], _ = grade.grade_reports([write_report(tmp_path / "s", staging)])
    assert g.flags == ["task4 quotes the /health of staging, not production"]


def test_csv_data_and_no_name(tmp_path):
    on_csv = work_of("ivan")
    on_csv["data"] = {"source": "telco.csv", "rows": 7043, "digests": {"training": "x"}}
    teacher = work_of(None)
    grades, _ = grade.grade_reports(
        [write_report(tmp_path / "i", on_csv), write_report(tmp_path / "t", teacher)]
    )
    assert [g.flags for g in grades] == [[], ["no student name"]]


def test_files_that_are_not_reports_are_named_skipped_and_counted(class_reports, capsys):
    (class_reports / "notes.html").write_text("<html><body>my notes</body></html>")
    (class_reports / "broken.html").write_text(
        '<script type="application/json" id="churnlab-work">{"format": </script>'
    )
    (class_reports / "other.html").write_text(
        '<script type="application/json" id="churnlab-work">{"format": "other/2"}</script>'
    )
    (class_reports / "image.html").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    loose = class_reports.parent / "essay.txt"
    loose.write_text("not a report")
    missing = class_reports.parent / "nobody.html"
    assert cli.main(["grade", str(class_reports), str(loose), str(missing)]) == 0
    out = capsys.readouterr().out.splitlines()
    not_report = "not a churnlab workbook report (no churnlab-work/1 summary)"
    assert out[:6] == [
        f"skipped {class_reports / 'broken.html'}: {not_report}",
        f"skipped {class_reports / 'image.html'}: not a churnlab workbook report (not UTF-8 text)",
        f"skipped {class_reports / 'notes.html'}: {not_report}",
        f"skipped {class_reports / 'other.html'}: {not_report}",
        f"skipped {loose}: {not_report}",
        f"skipped {missing}: no such file",
    ]
    assert out[-1] == "graded 3 report(s), 0 flagged, 6 skipped"


def test_no_report_at_all_exits_2_in_one_line(tmp_path):
    (tmp_path / "essay.txt").write_text("not a report")
    done = main("grade", str(tmp_path / "essay.txt"))
    assert done.returncode == 2
    assert done.stdout == f"skipped {tmp_path / 'essay.txt'}: " + (
        "not a churnlab workbook report (no churnlab-work/1 summary)\n"
    )
    assert done.stderr == (
        "churnlab: no churnlab workbook report to grade in 1 path(s) (1 file(s) skipped)\n"
    )
    usage = main("grade")
    assert (usage.returncode, usage.stdout) == (2, "")
    assert usage.stderr == (
        "churnlab: grade needs workbook reports or folders of them (PATH...), or --server\n"
    )


def test_csv_has_the_printed_table(class_reports, tmp_path, capsys):
    out_csv = tmp_path / "grades.csv"
    assert cli.main(["grade", str(class_reports), "--csv", str(out_csv)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"wrote {out_csv}"
    with out_csv.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(grade.COLUMNS)
    assert [r["student"] for r in rows] == ["alice", "bob", "Carölina"]
    assert rows[0] | {"report": ""} == {
        "student": "alice",
        "tasks": "4/4",
        "answered": "3/5",
        "q1": "11",
        "q2": "12",
        "q3": "6",
        "q4": "0",
        "q5": "0",
        "extension": "0",
        "kind": "replay",
        "report": "",
        "flags": "",
    }
    assert rows[2]["tasks"] == "0/4"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".grades")] == []
    assert cli.main(["grade", str(class_reports), "--csv", str(tmp_path / "no" / "g.csv")]) == 2
    assert "--csv: folder" in capsys.readouterr().err


def test_a_report_whose_json_alone_was_edited_is_flagged(tmp_path):
    """The issue's forgery: an untouched handout's report, every task set to done in its
    JSON with copied evidence, an answer added; the visible "Your work" is left as it was."""
    honest = work_of("kim", tasks_done=0)
    forged = work_of("kim", answers={"q2": "An alias carries its evidence."})
    page = page_of(honest).replace(work.embed(honest), work.embed(forged))
    path = tmp_path / "workbook.html"
    path.write_text(page, encoding="utf-8")
    [g], _ = grade.grade_reports([path])
    assert g.flags == [
        "the visible 'Your work' disagrees with its JSON: "
        + ", ".join(f"task{n} shows not yet, its JSON says done" for n in range(1, 5))
        + ", q2's answer is not the one shown"
    ]
    assert grade.visible_flags(page_of(forged), forged) == []
    assert grade.visible_flags(work.embed(forged), forged) == [
        "no visible 'Your work' section beside its JSON"
    ]


def test_a_report_made_on_the_embedded_registry_counts_no_server_task(tmp_path):
    """Cross-checked against a class server, a report of the embedded registry confirms
    nothing (no server is needed to say so) and the class page shows it offline."""
    from churnlab import class_grades, class_page, exercises, report

    summary = work_of("lea")
    summary["registry"] = "fresh embedded registry in reports/registry"
    path = write_report(tmp_path, summary)
    row = class_grades.grade_file(path, summary, {}, ["lea"])
    assert (row.student, row.tasks_done, row.row()["tasks"]) == ("lea", 0, "0/4")
    assert row.flags == [
        "made on the fresh embedded registry in reports/registry: no task confirmed by the server"
    ]
    done = exercises.Verdict("task1", exercises.TASKS["task1"], True, evidence="v3 is yours")
    missing = exercises.Verdict("task2", exercises.TASKS["task2"], False, missing="stage <it>")
    student = class_grades.ClassRow(
        "lea",
        "hand-in",
        "churn-model-lea",
        [done, missing],
        {"task1": True, "task2": False},
        grade.Grade("hand-in", "lea", 0, dict.fromkeys(grade.QUESTIONS, 0), ["no hand-in"]),
    )
    graded = class_grades.ClassGrades("http://class:5000", "admin", "now", [student, row])
    page = class_page.render(graded)
    assert report.network_references(page) == []
    assert "default-src 'none'" in page and "<script" not in page
    assert page.count('<tr class="flagged"') == 2
    assert '<td class="task done" data-task="task1">' in page
    assert "stage &lt;it&gt;" in page and "Task 1: 1 of 1 done" in page
