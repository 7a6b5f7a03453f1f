"""Grading a class (``churnlab grade PATH...``): one row per student's report, with flags.

Each report embeds its "Your work" summary as JSON (``churnlab-work/1``). Grading counts
the tasks done and the questions answered, then re-derives what it can: the data digests a
student's name gives on synthetic data (so a copied report is caught), the answers shared
with another student, "done" or "answered" claims that the report's own evidence
contradicts, and a visible "Your work" section that disagrees with the JSON (an edit to one
of the two). ``churnlab grade --server`` (:mod:`churnlab.class_grades`) grades the class
from its server instead, with these rows' flags.
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from churnlab import exercises, student, work
from churnlab.errors import InputError

#: the tasks and questions a report is expected to carry, in the table's order
TASKS = tuple(exercises.TASKS)
QUESTIONS = tuple(work.QUESTIONS)
#: the questions every student answers (the extension is optional)
REQUIRED = tuple(q for q in QUESTIONS if q != "extension")
#: the lines the task checks quote as evidence: a move, and production's /health answer
_MOVE = re.compile(r"\b(?:Promoted|Staged) (\S+) v\d+ -> (?:Production|Staging)\b")
_HEALTH = re.compile(r"/health of production: (\S+) v(\d+) \(stage (\w+)")
_NEWEST = re.compile(r"the newest version, v(\d+), is served by nobody")


@dataclass
class Grade:
    """One student's row: what the report claims and what grading found wrong with it."""

    report: Path | str  # a file, or where on the server the report was handed in
    student: str | None
    tasks_done: int
    words: dict[str, int]  # question id -> words of its answer (0: not answered)
    flags: list[str] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict, repr=False)
    kind: str = ""  # "replay" (churnlab workbook) or "lab" (churnlab report); "" when unsaid

    @property
    def answered(self) -> int:
        """How many of the required questions have an answer (the extension not counted)."""
        return sum(1 for q in REQUIRED if self.words.get(q))

    def row(self) -> dict[str, str]:
        """The table's row: the same columns on the terminal and in the CSV."""
        out = {
            "student": self.student or "-",
            "tasks": f"{self.tasks_done}/{len(TASKS)}",
            "answered": f"{self.answered}/{len(REQUIRED)}",
        }
        out.update({q: str(self.words.get(q, 0)) for q in QUESTIONS})
        out["kind"] = self.kind or "-"
        out["report"] = str(self.report)
        out["flags"] = "; ".join(self.flags)
        return out


COLUMNS = ("student", "tasks", "answered", *QUESTIONS, "kind", "report", "flags")


# ---------------------------------------------------------------------------- reading
def find_reports(paths: Iterable[Path]) -> list[Path]:
    """The files to grade: each file given, and every ``*.html`` under each folder given."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*.html") if p.is_file()))
        else:
            found.append(path)
    return found


def read_report(path: Path) -> dict[str, Any] | str:
    """The work summary of the report at ``path``, or why it is not a workbook report."""
    if not path.exists():
        return "no such file"
    try:
        page = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return "not a churnlab workbook report (not UTF-8 text)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    found = work.read_work(page)
    if found is None:
        return f"not a churnlab workbook report (no {work.FORMAT} summary)"
    return found


# ---------------------------------------------------------------------------- checking
def _answer_text(entry: dict[str, Any]) -> str:
    text = str(entry.get("answer") or "").strip()
    return text if work.is_answered(text) else ""


def _normal(text: str) -> str:
    return " ".join(text.casefold().split())


def _by_id(entries: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(entries, list):
        return {}
    return {str(e.get("id")): e for e in entries if isinstance(e, dict)}


def _question_flags(
    questions: dict[str, dict[str, Any]],
) -> tuple[dict[str, int], dict[str, str], list[str]]:
    words, answers, flags = {}, {}, []
    for qid in QUESTIONS:
        entry = questions.get(qid)
        if entry is None:
            if qid in REQUIRED:
                flags.append(f"{qid} missing from the report")
            words[qid] = 0
            continue
        text = _answer_text(entry)
        if entry.get("answered") and not text:
            flags.append(f"{qid} claims an answer it does not have")
        words[qid] = len(text.split())
        if text:
            answers[qid] = text
    return words, answers, flags


def _task_problem(task: dict[str, Any], model: Any) -> str | None:
    """Why a task's "done" claim does not hold up against its own evidence, or None.

    Done needs evidence and nothing missing. Every move and ``/health`` answer the
    evidence quotes must name the report's model; production's answer must come from the
    production stage, and the version served by nobody must be newer than production's.
    """
    evidence = str(task.get("evidence") or "")
    if not evidence.strip():
        return "claims done without evidence"
    if str(task.get("missing") or "").strip():
        return "claims done but names what is missing"
    named = set(_MOVE.findall(evidence))
    health = _HEALTH.search(evidence)
    if health:
        named.add(health.group(1))
        newest = _NEWEST.search(evidence)
        if health.group(3) != "production":
            return f"quotes the /health of {health.group(3)}, not production"
        if newest and int(newest.group(1)) <= int(health.group(2)):
            return f"says v{newest.group(1)} is newer than production's v{health.group(2)}"
    if model and named - {model}:
        return f"quotes {', '.join(sorted(named - {model}))}, not {model}"
    return None


def _task_flags(summary: dict[str, Any]) -> tuple[int, list[str]]:
    """The tasks whose "done" claim holds, and a flag for each one that does not."""
    tasks = _by_id(summary.get("tasks"))
    done, flags = 0, []
    for task_id in TASKS:
        task = tasks.get(task_id)
        if task is None:
            flags.append(f"{task_id} missing from the report")
        elif task.get("done") is True:
            problem = _task_problem(task, summary.get("model_name"))
            if problem is None:
                done += 1
            else:
                flags.append(f"{task_id} {problem}")
    return done, flags


_digest_cache: dict[tuple[int, int], dict[str, str]] = {}


def _data_flags(summary: dict[str, Any], name: str | None) -> list[str]:
    """A report whose data is synthetic must carry the seed and digests of its name."""
    data = summary.get("data") if isinstance(summary.get("data"), dict) else {}
    if name is None or data.get("source") != "synthetic":
        return []
    seed = student.seed_of(name)
    flags = []
    if summary.get("seed") != seed:
        flags.append(f"seed is not {name}'s")
    rows = data.get("rows")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows <= 0:
        return [*flags, "data rows missing: digests not checked"]
    if (seed, rows) not in _digest_cache:
        _digest_cache[(seed, rows)] = student.snapshot_digests(seed, rows)
    if data.get("digests") != _digest_cache[(seed, rows)]:
        flags.append(f"data digests are not {name}'s")
    return flags


def grade_work(summary: dict[str, Any], report: Path) -> Grade:
    """One report's grade from its work summary, with the flags it raises on its own."""
    raw = summary.get("student")
    try:
        name = student.normal_name(raw) if isinstance(raw, str) else None
    except InputError:
        name = None
    done, flags = _task_flags(summary)
    words, answers, question_flags = _question_flags(_by_id(summary.get("questions")))
    flags = (["no student name"] if name is None else []) + flags + question_flags
    flags += _data_flags(summary, name)
    kind = summary.get("kind") if isinstance(summary.get("kind"), str) else ""
    return Grade(report, name, done, words, flags, answers, kind)


def visible_flags(page: str, summary: dict[str, Any]) -> list[str]:
    """A flag when the report's visible "Your work" section (:func:`work.visible_work`)
    disagrees with the JSON the same page embeds: a task marked differently, an answer
    that differs, or no visible section at all (the JSON alone was written)."""
    shown = work.visible_work(page)
    if shown is None:
        return ["no visible 'Your work' section beside its JSON"]
    found = []
    tasks = _by_id(summary.get("tasks"))
    for task_id in TASKS:
        claimed = (tasks.get(task_id) or {}).get("done") is True
        seen = shown["tasks"].get(task_id)
        if task_id in tasks and seen is None:
            found.append(f"{task_id} is not shown")
        elif seen is not None and seen != claimed:
            found.append(
                f"{task_id} shows {'done' if seen else 'not yet'}, its JSON says "
                f"{'done' if claimed else 'not yet'}"
            )
    for qid, entry in _by_id(summary.get("questions")).items():
        seen = shown["answers"].get(qid)
        written = str(entry.get("answer") or "") if entry.get("answered") else ""
        if seen is not None and _normal(seen) != _normal(written):
            found.append(f"{qid}'s answer is not the one shown")
    if not found:
        return []
    return ["the visible 'Your work' disagrees with its JSON: " + ", ".join(found)]


def cross_flags(
    grades: Sequence[Grade], owner: Callable[[Grade], str | None] | None = None
) -> None:
    """Flag, on both sides, answers identical to another report's and names seen twice.

    Answers are compared non-empty, in lower case with white space collapsed, across
    questions too. Another report is named by its student, or by its file when that
    name is not unique. ``owner`` says whose each grade is, when that is known (a login on
    a class server): grades of one owner, say a student's hand-in and the file they also
    sent, are not compared with each other.
    """
    owner = owner or (lambda g: None)

    def same(a: Grade, b: Grade) -> bool:
        return a is b or (owner(a) is not None and owner(a) == owner(b))

    names: dict[str, list[Grade]] = {}
    for g in grades:
        if g.student is not None:
            names.setdefault(g.student, []).append(g)

    def label(other: Grade) -> str:
        unique = other.student is not None and len(names[other.student]) == 1
        return other.student if unique else str(other.report)

    seen: dict[str, list[tuple[Grade, str]]] = {}
    for g in grades:
        for qid, text in g.answers.items():
            seen.setdefault(_normal(text), []).append((g, qid))
    for holders in seen.values():
        for g, qid in holders:
            others = [
                label(o) + ("" if oq == qid else f" ({oq})") for o, oq in holders if not same(o, g)
            ]
            if others:
                g.flags.append(f"{qid} identical to {_some(others)}")
    for group in names.values():
        for g in group:
            others = [str(o.report) for o in group if o is not g and not same(o, g)]
            if others:
                g.flags.append(f"{g.student} also reported in {_some(others)}")


def _some(names: Sequence[str], shown: int = 3) -> str:
    """``a, b, c`` or ``a, b, c and 4 more``."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


# ---------------------------------------------------------------------------- the class
def grade_reports(paths: Iterable[Path]) -> tuple[list[Grade], list[tuple[Path, str]]]:
    """Grade every report found under ``paths``; return the grades and the skipped files."""
    grades, skipped = [], []
    for path in find_reports(paths):
        found = read_report(path)
        if isinstance(found, str):
            skipped.append((path, found))
        else:
            graded = grade_work(found, path)
            # read_report read it already: the file is text
            graded.flags += visible_flags(path.read_text(encoding="utf-8"), found)
            grades.append(graded)
    cross_flags(grades)
    return grades, skipped


def format_table(grades: Sequence[Any], columns: Sequence[str] = COLUMNS) -> list[str]:
    """The grades (anything with a ``row()`` of ``columns``) as aligned text lines, a header
    first (the last column, the flags, unpadded)."""
    rows = [dict(zip(columns, columns, strict=True))] + [g.row() for g in grades]
    padded = columns[:-1]
    widths = {c: max(len(r[c]) for r in rows) for c in padded}
    return [
        "  ".join([*(r[c].ljust(widths[c]) for c in padded), r[columns[-1]]]).rstrip() for r in rows
    ]


def grade_paths(paths: Sequence[Path], *, echo: Callable[[str], None] = print) -> list[Grade]:
    """Grade a class: echo one line per skipped file, the table and a count.

    Raises ``InputError`` when no report could be graded.
    """
    grades, skipped = grade_reports(paths)
    for path, why in skipped:
        echo(f"skipped {path}: {why}")
    if not grades:
        raise InputError(
            f"no churnlab workbook report to grade in {len(paths)} path(s) "
            f"({len(skipped)} file(s) skipped)"
        )
    for line in format_table(grades):
        echo(line)
    flagged = sum(1 for g in grades if g.flags)
    echo(f"graded {len(grades)} report(s), {flagged} flagged, {len(skipped)} skipped")
    return grades


def write_csv(grades: Sequence[Any], path: Path, columns: Sequence[str] = COLUMNS) -> Path:
    """Write the table as CSV (one row per report, ``columns`` as printed); return ``path``.

    Written to a temporary file renamed at the end: never half a file."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"--csv: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(g.row() for g in grades)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


__all__ = [
    "COLUMNS",
    "Grade",
    "cross_flags",
    "find_reports",
    "format_table",
    "grade_paths",
    "grade_reports",
    "grade_work",
    "read_report",
    "visible_flags",
    "write_csv",
]
