"""The class page of ``churnlab grade --server --html``: where the class stands, in one file.

A row per student (then one per report file cross-checked), a column per task coloured
done or not yet by the server's verdict, with the server's evidence or missing step one
click away, the answers and their words, the latest hand-in and every flag. The page is
self-contained: its only style is inline and its Content-Security-Policy forbids every
load, so it looks the same opened offline, from a shared drive or an e-mail.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from churnlab import exercises, work
from churnlab.report import network_references

if TYPE_CHECKING:
    from churnlab.class_grades import ClassGrades, ClassRow

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1f2328; }
h1 { font-size: 22px; margin: 0 0 4px; }
p.meta { color: #57606a; margin: 0 0 12px; }
ul.totals { list-style: none; padding: 0; margin: 0 0 16px; display: flex; gap: 8px; flex-wrap: wrap; }
ul.totals li { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 4px 10px; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #d0d7de; padding: 6px 8px; vertical-align: top; text-align: left; }
th { background: #f6f8fa; font-weight: 600; }
td.count { font-weight: 600; white-space: nowrap; }
td.done { background: #dafbe1; }
td.notyet { background: #ffebe9; }
td.task summary { cursor: pointer; font-weight: 600; }
td.task details p { margin: 4px 0 0; font-size: 12px; max-width: 22em; }
td.done summary { color: #1a7f37; }
td.notyet summary { color: #cf222e; }
tr.flagged td.who { border-left: 4px solid #bf8700; }
.src, .words, .note { color: #57606a; font-size: 12px; }
ul.flags { margin: 0; padding-left: 18px; color: #9a6700; }
ul.flags li { margin: 0 0 2px; }
td.noflags { color: #57606a; }
div.claim { font-size: 12px; color: #9a6700; font-weight: 600; margin-top: 4px; }
tr.section td { background: #f6f8fa; font-weight: 600; color: #57606a; }
"""
_CSP = "default-src 'none'; style-src 'unsafe-inline'"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _task_cell(row: ClassRow, task: str) -> str:
    verdict = row.verdict(task)
    done = bool(row.counted.get(task))
    mark, css = ("done", "done") if done else ("not yet", "notyet")
    if verdict is None:
        why = "not confirmed: the report is not on this server's model"
    elif done:
        why = verdict.evidence
    elif verdict.done:  # a file that does not claim what the server shows
        why = "the server has it done, this report does not claim it"
    else:
        why = verdict.missing
    claim = (
        '<div class="claim">the report claims done</div>'
        if row.claimed.get(task) and not done
        else ""
    )
    return (
        f'<td class="task {css}" data-task="{_e(task)}"><details><summary>{mark}</summary>'
        f"<p>{_e(why)}</p></details>{claim}</td>"
    )


def _row(row: ClassRow) -> str:
    values = row.row()
    source = (
        f"hand-in {_e(row.hand_in.kind)}, {_e(row.hand_in.time)}"
        if row.hand_in is not None
        else ("no hand-in" if row.source == "hand-in" else f"file: {_e(row.source)}")
    )
    words = " · ".join(f"{q} {values[q]}" for q in work.QUESTIONS)
    flags = (
        '<td class="flags"><ul class="flags">'
        + "".join(f"<li>{_e(f)}</li>" for f in row.flags)
        + "</ul></td>"
        if row.flags
        else '<td class="noflags">none</td>'
    )
    return (
        f'<tr class="{"flagged" if row.flags else "clean"}" data-student="{_e(row.student)}">'
        f'<td class="who"><b>{_e(row.student)}</b><div class="src">{source}</div></td>'
        f'<td class="count">{_e(values["tasks"])}</td>'
        + "".join(_task_cell(row, t) for t in exercises.TASKS)
        + f'<td>{_e(values["answered"])}<div class="words">{_e(words)}</div></td>'
        + flags
        + "</tr>"
    )


def _files(grades: ClassGrades) -> str:
    """The report files' rows, under a line of their own."""
    files = [r for r in grades.rows if r.source != "hand-in"]
    if not files:
        return ""
    heading = (
        '<tr class="section"><td colspan="8">report files, cross-checked against the server: '
        "only the tasks they claim and the server confirms count</td></tr>"
    )
    return heading + "".join(_row(r) for r in files)


def render(grades: ClassGrades) -> str:
    """The class page as one self-contained HTML document."""
    students = grades.students
    totals = [
        f"<li>Task {task.removeprefix('task')}: {sum(1 for r in students if r.counted.get(task))}"
        f" of {len(students)} done</li>"
        for task in exercises.TASKS
    ]
    handed = sum(1 for r in students if r.hand_in is not None)
    flagged = sum(1 for r in grades.rows if r.flags)
    header = "".join(
        f"<th>Task {t.removeprefix('task')}<div class='note'>{_e(title)}</div></th>"
        for t, title in exercises.TASKS.items()
    )
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>churnlab class: {_e(grades.server)}</title><style>{_STYLE}</style></head>"
        "<body><main>"
        f"<h1>The class on {_e(grades.server)}</h1>"
        f'<p class="meta">graded {_e(grades.when)} by {_e(grades.teacher)}: '
        f"{len(students)} student(s), {handed} handed in, {flagged} row(s) flagged. Each task "
        "is the server's verdict on the student's model, never the report's claim; click a "
        "task for its evidence or what is missing.</p>"
        f'<ul class="totals">{"".join(totals)}</ul>'
        f'<table id="class"><thead><tr><th>student</th><th>tasks</th>{header}'
        "<th>answered<div class='note'>words per answer</div></th><th>flags</th></tr></thead>"
        f"<tbody>{''.join(_row(r) for r in students)}{_files(grades)}</tbody></table>"
        '<p class="note">churnlab grade --server: a student\'s hand-in is the latest one in '
        "their experiment (churnlab-USER); the report it keeps must match the digest recorded "
        "when it was handed in.</p>"
        "</main></body></html>\n"
    )
    loads = network_references(page)
    if loads:  # never write a page that would reach for the network
        raise RuntimeError(f"the class page would load from the network: {loads[:3]}")
    return page


__all__ = ["render"]
