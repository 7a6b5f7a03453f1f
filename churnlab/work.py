"""The student's work in a report: task verdicts, answers, their data; as JSON and as HTML.

:func:`work_summary` builds it after a workbook run: the task verdicts come from
:mod:`churnlab.exercises` run against the registry (not from notebook output), the answers
from the executed notebooks' answer cells (nbgrader ``grade_id`` ``q1`` ... ``q5``,
``extension``). :func:`embed` puts it in the report as
``<script type="application/json" id="churnlab-work">`` and :func:`read_work` reads it back.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from churnlab import exercises, store, tags

FORMAT = "churnlab-work/1"
SCRIPT_ID = "churnlab-work"
#: what each kind of report is, as the report and the grade say it
KINDS: dict[str, str] = {
    "replay": "A replay: churnlab workbook executed every notebook headless (make workbook).",
    "lab": (
        "The lab's own work: churnlab report built this from the notebooks as saved in "
        "JupyterLab and the registry they used; nothing was re-run."
    ),
}
#: what an answer cell of the student edition holds until the student writes (nbgrader's)
PLACEHOLDER = "YOUR ANSWER HERE"
#: the questions, in the report's order (the extension's answer is optional)
QUESTIONS: dict[str, str] = {
    "q1": 'Why is deploying "whatever merged to main" dangerous?',
    "q2": "What does a registry stage or alias give that a git tag does not?",
    "q3": "What can make production fail when staging passed?",
    "q4": "Where does data versioning belong?",
    "q5": "What does a gate need beyond accuracy?",
    "extension": "Extension (optional): a public endpoint",
}
_SCRIPT = re.compile(
    rf"""<script\s+type=["']application/json["']\s+id=["']{SCRIPT_ID}["']\s*>(.*?)</script>""",
    re.S | re.I,
)


def answers(notebooks: Iterable[Path]) -> dict[str, str]:
    """The answer cells' text by ``grade_id``, read from executed notebooks (missing: skipped)."""
    import nbformat

    found: dict[str, str] = {}
    for path in notebooks:
        if not Path(path).is_file():
            continue
        for cell in nbformat.read(path, as_version=4).cells:
            grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            if grade_id in QUESTIONS and cell.cell_type == "markdown":
                found[grade_id] = cell.source
    return found


def is_answered(text: str) -> bool:
    """False for an empty answer or nbgrader's untouched placeholder."""
    stripped = text.strip()
    return bool(stripped) and stripped != PLACEHOLDER


def _data(registry: Any, story_source: str) -> dict[str, Any]:
    """The student's base candidate's data: source, rows, the three digests."""
    from churnlab import workbook

    base = workbook.CANDIDATES["baseline"].description
    found = [v for v in registry.versions() if (v.description or "") == base]
    if not found:
        return {"source": story_source, "rows": 0, "digests": {}}
    evidence = registry.evidence(found[-1].version)
    source = evidence.run_tags.get(tags.DATA_SOURCE, "")
    return {
        "source": "synthetic" if source.startswith("synthetic") else (source or story_source),
        "rows": int(evidence.params.get("rows", 0)),
        "digests": evidence.data,
    }


def work_summary(
    parameters: Mapping[str, Any],
    notebooks: Iterable[Path],
    *,
    model_name: str | None = None,
    kind: str = "replay",
    registry_label: str = "",
) -> dict[str, Any]:
    """The student's work after a run with ``parameters`` (``student``, ``seed``, ``data``)
    on ``model_name`` (None: :func:`store.model_name`): ``kind`` says how the report was made
    (:data:`KINDS`), ``registry_label`` which registry it read.

    Never raises for an unreadable registry: the tasks then say so, one line each.
    """
    from churnlab.story import DEFAULT_SEED, Story

    model_name = model_name or store.model_name()
    story = Story.of(
        parameters.get("student"),
        seed=int(parameters.get("seed", DEFAULT_SEED)),
        data=parameters.get("data"),
    )
    data: dict[str, Any] = {"source": story.source, "rows": 0, "digests": {}}
    registry = None
    try:
        from churnlab.registry import Registry

        registry = Registry(model_name)
        registry.model()
        data = _data(registry, story.source)
    except Exception:  # noqa: BLE001 - no model yet: the tasks below say what is missing
        registry = None
    tasks = [v.to_dict() for v in exercises.verdicts(registry, model_name=model_name)]
    written = answers(notebooks)
    questions = []
    for key, title in QUESTIONS.items():
        text = written.get(key, "")
        answered = is_answered(text)
        questions.append(
            {
                "id": key,
                "title": title,
                "answer": text.strip() if answered else "",
                "answered": answered,
                "words": len(text.split()) if answered else 0,
            }
        )
    return {
        "format": FORMAT,
        "kind": kind,
        "registry": store.redact(registry_label),
        "student": story.student,
        "seed": story.base_seed,
        "model_name": model_name,
        "data": data,
        "tasks": tasks,
        "questions": questions,
    }


# ---------------------------------------------------------------------------- in the report
def embed(summary: Mapping[str, Any]) -> str:
    """The summary as ``<script type="application/json" id="churnlab-work">`` (``</`` escaped)."""
    text = json.dumps(summary, ensure_ascii=False, sort_keys=True).replace("</", "<\\/")
    return f'<script type="application/json" id="{SCRIPT_ID}">{text}</script>'


def read_work(html_text: str) -> dict[str, Any] | None:
    """The summary a report embeds, or None when the page carries none (or a broken one)."""
    match = _SCRIPT.search(html_text)
    if match is None:
        return None
    try:
        found = json.loads(match.group(1))
    except ValueError:
        return None
    if not isinstance(found, dict) or found.get("format") != FORMAT:
        return None
    return found


def visible_work(html_text: str) -> dict[str, Any] | None:
    """What a report's visible "Your work" section shows: each task's mark (True: done) and
    each question's answer text ("" when it shows "not answered"); None without it.

    The grade compares it with the JSON the same page embeds: an edit to one of the two
    alone shows as a disagreement.
    """
    section = re.search(r'<section id="your-work".*?</section>', html_text, re.S)
    if section is None:
        return None
    body = section.group(0)
    tasks = {
        key: 'class="wb-ok"' in row
        for key, row in re.findall(r'<tr data-task="([^"]*)">(.*?)</tr>', body, re.S)
    }
    answers = {
        key: html.unescape(text or "").strip()
        for key, text in re.findall(
            r'<div class="wb-question" data-question="([^"]*)"><h3>[^<]*</h3>'
            r'(?:<div class="wb-answer">([^<]*)</div>)?',
            body,
        )
    }
    return {"tasks": tasks, "answers": answers}


def write_json(summary: Mapping[str, Any], path: Path) -> Path:
    """Write the summary as JSON (a temporary file renamed, never half written)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, ensure_ascii=False, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def work_html(summary: Mapping[str, Any]) -> str:
    """The report's "Your work" section: name, tasks with verdicts, questions with answers."""
    student = summary.get("student")
    who = html.escape(student) if student else "the reference story (no student name given)"
    data = summary.get("data") or {}
    digests = ", ".join(f"{k} {v}" for k, v in sorted((data.get("digests") or {}).items()))
    kind = str(summary.get("kind") or "replay")
    parts = [
        '<section id="your-work" class="wb-summary wb-work">',
        "<h1>Your work</h1>",
        f'<p class="wb-kind" data-kind="{html.escape(kind)}">'
        f"{html.escape(KINDS.get(kind, kind))}</p>",
        f'<p class="wb-student">Student: <b>{who}</b> · seed {summary.get("seed")} · '
        f"data: {html.escape(str(data.get('source', '')))}, {data.get('rows', 0)} rows"
        + (f" · digests: <code>{html.escape(digests)}</code>" if digests else "")
        + "</p>",
        "<h2>Tasks</h2><table><thead><tr><th>task</th><th>verdict</th><th>evidence, or what "
        "is missing</th></tr></thead><tbody>",
    ]
    for task in summary.get("tasks", []):
        done = task.get("done")
        mark = '<span class="wb-ok">done</span>' if done else '<span class="wb-bad">not yet</span>'
        text = task.get("evidence") if done else task.get("missing")
        parts.append(
            f'<tr data-task="{html.escape(str(task.get("id", "")))}">'
            f"<td>{html.escape(task.get('id', ''))}: {html.escape(task.get('title', ''))}"
            f"</td><td>{mark}</td><td>{html.escape(text or '')}</td></tr>"
        )
    parts.append("</tbody></table><h2>Questions</h2>")
    for q in summary.get("questions", []):
        title = f"{q.get('id', '')}: {q.get('title', '')}"
        if q.get("answered"):
            body = (
                f'<div class="wb-answer">{html.escape(q.get("answer", ""))}</div>'
                f'<p class="wb-words">{q.get("words", 0)} words</p>'
            )
        else:
            body = '<p class="wb-bad wb-unanswered">not answered</p>'
        parts.append(
            f'<div class="wb-question" data-question="{html.escape(str(q.get("id", "")))}">'
            f"<h3>{html.escape(title)}</h3>{body}</div>"
        )
    parts.append("</section>")
    return "".join(parts)


__all__ = [
    "FORMAT",
    "KINDS",
    "PLACEHOLDER",
    "QUESTIONS",
    "answers",
    "embed",
    "is_answered",
    "read_work",
    "visible_work",
    "work_html",
    "work_summary",
    "write_json",
]
