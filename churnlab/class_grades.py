"""The teacher's view of a class on its server: ``churnlab grade --server``.

For every student of the class (the server's logins with the admins left out, or the
``username`` column of a students CSV) grading trusts the server, never a file:

- each task is judged again from the student's model on the server, by the checks the
  notebooks run (:func:`churnlab.exercises.verdicts`; Task 4 from production's ``/health``
  answer recorded on the version). The row's task count is the server's;
- the student's latest hand-in (``churnlab handin``: a run in ``churnlab-<user>``) gives the
  answers, their words and the report's kind; the report the server keeps must have the
  SHA-256 recorded when it was handed in;
- every claim the server contradicts is flagged: a task the report says is done and the
  registry says is not (with the server's line saying what is missing), no hand-in, a
  hand-in by another login or of a report on another model or registry, a visible "Your
  work" section that disagrees with the report's JSON, a model moved outside churnlab
  (``Registry.status``), and answers identical to another student's
  (:func:`churnlab.grade.cross_flags`), with the flags :mod:`churnlab.grade` raises on the
  report itself.

Report files given too are graded as :mod:`churnlab.grade` grades them and cross-checked:
only the tasks the server confirms on the model a report describes count, so a report made
on the embedded registry counts none. Grading needs the class's admin login; the table
goes to the terminal, :func:`write_csv` and :func:`write_html` (:mod:`churnlab.class_page`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from churnlab import class_page, classroom, exercises, grade, handin, store, tags, work
from churnlab.errors import InputError, PermissionDenied

if TYPE_CHECKING:
    from churnlab.exercises import Verdict
    from churnlab.registry import Registry

#: the auth app's list of logins (any login may read it: the admin check is ours)
USERS_ENDPOINT = "/api/2.0/mlflow/users/list"
TASKS = grade.TASKS
QUESTIONS = grade.QUESTIONS
COLUMNS = (
    "student",
    "tasks",
    *TASKS,
    "answered",
    *QUESTIONS,
    "kind",
    "handed in",
    "report",
    "flags",
)


@dataclass(frozen=True)
class HandIn:
    """A student's latest hand-in as the server keeps it: the run, when, its tags, and the
    SHA-256 of the report stored with it (None when it is missing)."""

    run_id: str
    time: str
    kind: str
    digest: str
    stored: str | None
    login: str
    model: str
    commit: str


@dataclass
class ClassRow:
    """One row of the class: a student's hand-in (``source`` "hand-in") or a report file,
    what the server says of each task, and the report's own grade with every flag."""

    student: str
    source: str
    model: str
    verdicts: list[Verdict]
    counted: dict[str, bool]
    grade: grade.Grade
    hand_in: HandIn | None = None
    #: what the report claims done, task by task ({} without a report)
    claimed: dict[str, bool] = field(default_factory=dict)

    @property
    def flags(self) -> list[str]:
        return self.grade.flags

    @property
    def tasks_done(self) -> int:
        """Tasks the server confirms (for a file: claimed by it and done on the server)."""
        return sum(1 for task in TASKS if self.counted.get(task))

    def verdict(self, task: str) -> Verdict | None:
        return next((v for v in self.verdicts if v.id == task), None)

    def row(self) -> dict[str, str]:
        """The table's row: the same columns on the terminal, in the CSV and on the page."""
        out = {"student": self.student, "tasks": f"{self.tasks_done}/{len(TASKS)}"}
        out.update({t: "done" if self.counted.get(t) else "not yet" for t in TASKS})
        out["answered"] = f"{self.grade.answered}/{len(grade.REQUIRED)}"
        out.update({q: str(self.grade.words.get(q, 0)) for q in QUESTIONS})
        out["kind"] = self.grade.kind or "-"
        out["handed in"] = self.hand_in.time if self.hand_in else "-"
        out["report"] = self.source
        out["flags"] = "; ".join(self.flags)
        return out


@dataclass
class ClassGrades:
    """The class at one moment: its rows, the server and who graded it, when."""

    server: str
    teacher: str
    when: str
    rows: list[ClassRow] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def students(self) -> list[ClassRow]:
        return [r for r in self.rows if r.source == "hand-in"]

    def summary(self) -> str:
        handed = sum(1 for r in self.students if r.hand_in is not None)
        flagged = sum(1 for r in self.rows if r.flags)
        files = len(self.rows) - len(self.students)
        more = f", {files} report file(s) cross-checked" if files else ""
        return (
            f"graded {len(self.students)} student(s) on {self.server} ({handed} handed in)"
            f"{more}, {flagged} flagged"
        )


# ---------------------------------------------------------------------------- who is grading
def teacher() -> str:
    """The admin login grading runs as (``churnlab login`` as the admin, or MLflow's
    variables); anyone else is refused in one line (:class:`PermissionDenied`, exit 4)."""
    store.configure()
    if not store.is_remote():
        raise InputError(
            "grade --server reads the class server, and none is chosen: `churnlab login URL` "
            "as the class's admin (or set MLFLOW_TRACKING_URI with the admin's "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
        )
    store.check_reachable()
    found = store.current_user()
    if found is None:
        raise PermissionDenied(
            f"grade --server needs the admin's login on {store.display_uri()}: "
            "`churnlab login URL` as the class's admin"
        )
    if not found["is_admin"]:
        raise PermissionDenied(
            f"permission denied: {found['username']} is not an admin of "
            f"{store.display_uri()}, and grade --server reads every student's model and "
            "hand-in: log in as the class's admin"
        )
    return found["username"]


def class_logins() -> list[str]:
    """The class's students: every login of the server that is not an admin, sorted."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(
            get_default_host_creds(store.tracking_uri()), USERS_ENDPOINT, "GET", timeout=30
        )
    except Exception as exc:
        known = store.failure(exc)
        if known is not None:
            raise known from None
        raise
    if response.status_code == 401:
        raise store.login_refused()
    if response.status_code >= 500:
        raise store.server_failed(response.status_code)
    if response.status_code != 200:
        raise InputError(
            f"{store.display_uri()} answered {USERS_ENDPOINT} with HTTP "
            f"{response.status_code}: name the students with --students students.csv"
        )
    users = response.json().get("users") or []
    return sorted(str(u["username"]) for u in users if not u.get("is_admin"))


# ---------------------------------------------------------------------------- one student
def _hand_in(registry: Registry, login: str) -> tuple[HandIn | None, str | None]:
    """The student's latest hand-in and the report's text (None: missing or not text)."""
    from mlflow.exceptions import MlflowException

    run = registry.latest_run(classroom.experiment_for(login), tags.HANDIN)
    if run is None:
        return None, None
    found = run.data.tags
    page, stored = None, None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = Path(
                registry.download_artifact(
                    run.info.run_id, f"{handin.ARTIFACT_DIR}/{handin.REPORT}", tmp
                )
            )
            stored = handin.digest_of(path)
            page = path.read_text(encoding="utf-8")
        except (MlflowException, OSError, UnicodeDecodeError):
            pass
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run.info.start_time / 1000))
    record = HandIn(
        run.info.run_id,
        when,
        found.get(tags.HANDIN, ""),
        found.get(tags.HANDIN_DIGEST, ""),
        stored,
        found.get(tags.HANDIN_LOGIN, ""),
        found.get(tags.HANDIN_MODEL, ""),
        found.get(tags.HANDIN_COMMIT, ""),
    )
    return record, page


def claimed_done(summary: dict[str, Any]) -> dict[str, bool]:
    """Task by task, whether the report says it is done."""
    return {
        str(t.get("id")): t.get("done") is True
        for t in summary.get("tasks") or []
        if isinstance(t, dict)
    }


def _claims(summary: dict[str, Any], verdicts: Sequence[Verdict]) -> list[str]:
    """A flag for each task the report says is done and the server says is not."""
    claimed = claimed_done(summary)
    return [
        f"{v.id} claims done, and the server says not yet: {v.missing}"
        for v in verdicts
        if claimed.get(v.id) and not v.done
    ]


def _on_a_server(summary: dict[str, Any]) -> bool:
    """True when the report was made on a tracking server (its registry is an http(s) URL)."""
    return str(summary.get("registry") or "").startswith(("http://", "https://"))


def _model_flags(registry: Registry) -> list[str]:
    """The student's model is missing, or was moved outside churnlab (its status's problems)."""
    try:
        registry.model()
    except InputError:
        return [
            f"no model {registry.model_name} on the server (churnlab class-add-students adds it)"
        ]
    return [f"{registry.model_name}: {problem}" for problem in registry.status()["problems"]]


def _empty_grade(source: str, login: str) -> grade.Grade:
    return grade.Grade(source, login, 0, dict.fromkeys(QUESTIONS, 0))


def grade_student(login: str, logins: Sequence[str] = ()) -> ClassRow:
    """A student's row: each task judged on their model on the server, their latest
    hand-in read and checked, and every flag. ``logins`` are the class's (a report telling
    another one's story is flagged)."""
    from churnlab.registry import Registry

    model = classroom.model_for(login)
    registry = Registry(model)
    verdicts = exercises.verdicts(registry)
    hand_in, page = _hand_in(registry, login)
    summary = work.read_work(page) if page else None
    if summary is None:
        graded = _empty_grade("hand-in", login)
        if hand_in is None:
            graded.flags.append(f"no hand-in in {classroom.experiment_for(login)}")
        else:
            graded.flags.append(f"the hand-in of {hand_in.time} holds no churnlab report")
    else:
        graded = grade.grade_work(summary, "hand-in")
        graded.flags += grade.visible_flags(page or "", summary)
        graded.flags += _claims(summary, verdicts)
        graded.flags += _hand_in_flags(login, model, hand_in, summary, logins)
    graded.student = login  # the row is the login's, whatever name the report carries
    graded.flags += _model_flags(registry)
    if hand_in is not None and hand_in.kind:  # the hand-in's tag, else the report's own
        graded.kind = hand_in.kind
    counted = {v.id: v.done for v in verdicts}
    claimed = claimed_done(summary) if summary else {}
    return ClassRow(login, "hand-in", model, verdicts, counted, graded, hand_in, claimed)


def _hand_in_flags(
    login: str,
    model: str,
    hand_in: HandIn | None,
    summary: dict[str, Any],
    logins: Sequence[str],
) -> list[str]:
    """What the hand-in itself gives away: a report that is not the one its digest names,
    another login, another model, another registry, another student's story."""
    assert hand_in is not None  # a summary was read from it
    flags = []
    if hand_in.stored != hand_in.digest:
        flags.append(
            f"the report kept with the hand-in is not the one handed in (digest "
            f"{hand_in.digest[:12] or 'none'} recorded, {str(hand_in.stored)[:12]} kept)"
        )
    if hand_in.login != login:
        flags.append(f"handed in by {hand_in.login or 'nobody named'}, not {login}")
    described = {str(summary.get("model_name") or ""), hand_in.model} - {model}
    if described:
        flags.append(f"the report describes {', '.join(sorted(described))}, not {model}")
    if not _on_a_server(summary):
        flags.append(f"the report was made on the {summary.get('registry')}, not on a server")
    name = summary.get("student")
    if isinstance(name, str) and name != login and name in logins:
        flags.append(f"the report tells {name}'s story, another login of this class")
    return flags


# ---------------------------------------------------------------------------- a report file
def grade_file(
    path: Path, summary: dict[str, Any], rows: dict[str, ClassRow], logins: Sequence[str]
) -> ClassRow:
    """A report file graded as ``churnlab grade`` does, then cross-checked against the
    server: only the tasks it claims and the server confirms on its model count."""
    page = path.read_text(encoding="utf-8")
    graded = grade.grade_work(summary, path)
    graded.flags += grade.visible_flags(page, summary)
    model = str(summary.get("model_name") or "")
    owner = store.owner_of(model)
    owner = owner if owner in logins else None
    if owner is None or not _on_a_server(summary):
        where = summary.get("registry") or "an unnamed registry"
        why = (
            f"made on the {where}"
            if not _on_a_server(summary)
            else f"describes {model or 'no model'}, no student's model on this server"
        )
        graded.flags.append(f"{why}: no task confirmed by the server")
        student = graded.student or "-"
        claimed = claimed_done(summary)
        return ClassRow(student, str(path), model, [], {}, graded, None, claimed)
    own = rows.get(owner) or grade_student(owner, logins)
    graded.flags += _claims(summary, own.verdicts)
    claimed = claimed_done(summary)
    counted = {t: bool(own.counted.get(t) and claimed.get(t)) for t in TASKS}
    if own.hand_in is None:
        graded.flags.append(f"{owner} has handed nothing in")
    elif handin.digest_of(path) != own.hand_in.digest:
        graded.flags.append(f"not the report {owner} handed in ({own.hand_in.time})")
    name = summary.get("student")
    if isinstance(name, str) and name != owner and name in logins:
        graded.flags.append(f"the report tells {name}'s story, another login of this class")
    graded.student = owner
    return ClassRow(owner, str(path), model, own.verdicts, counted, graded, None, claimed)


# ---------------------------------------------------------------------------- the class
def grade_class(
    *,
    students: Path | None = None,
    paths: Sequence[Path] = (),
    echo: Callable[[str], None] = print,
) -> ClassGrades:
    """Grade the class on the server it is logged in to as its admin: a row per student
    (the server's logins, or the ``username`` column of ``students``), then a row per
    report file under ``paths``; echo the table and a summary line."""
    admin = teacher()
    logins = (
        [name for name, _ in classroom.read_students(Path(students))]
        if students is not None
        else class_logins()
    )
    if not logins:
        raise InputError(
            f"no student on {store.display_uri()}: add them with churnlab class-add-students"
        )
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result = ClassGrades(store.display_uri(), admin, when)
    by_login = {login: grade_student(login, logins) for login in logins}
    result.rows = list(by_login.values())
    for path in grade.find_reports(paths):
        summary = grade.read_report(path)
        if isinstance(summary, str):
            result.skipped.append((path, summary))
        else:
            result.rows.append(grade_file(path, summary, by_login, logins))
    owners = {id(r.grade): r.student for r in result.rows}
    grade.cross_flags([r.grade for r in result.rows], owner=lambda g: owners[id(g)])
    for path, why in result.skipped:
        echo(f"skipped {path}: {why}")
    for line in grade.format_table(result.rows, COLUMNS):
        echo(line)
    echo(result.summary())
    return result


def write_csv(grades: ClassGrades, path: Path) -> Path:
    """The class's table as CSV, the columns as printed (never half written)."""
    return grade.write_csv(grades.rows, Path(path), COLUMNS)


def write_html(grades: ClassGrades, path: Path) -> Path:
    """The class page (:mod:`churnlab.class_page`): one self-contained file, written whole."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"--html: folder {path.parent} does not exist")
    page = class_page.render(grades)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


__all__ = [
    "COLUMNS",
    "ClassGrades",
    "ClassRow",
    "HandIn",
    "class_logins",
    "grade_class",
    "grade_file",
    "grade_student",
    "teacher",
    "write_csv",
    "write_html",
]
