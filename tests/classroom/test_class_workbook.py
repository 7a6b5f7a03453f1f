"""A class does the workbook on the class server at the same time, hands in, and is graded.

Three students, each on a machine of their own (their own HOME, so their own
``~/.mlflow/credentials``, and their own ``churnlab.toml``), log in once with ``churnlab
login`` and then run ``churnlab workbook`` with no flag and no variable, all at once: ana
the teacher's edition (the committed notebooks: every task done), cleo an untouched
student edition (``churnlab handout``, with its own package), and dora the teacher's edition
on a model whose promotions need a reviewer's approval (``class-add-students --approvals
1``). Then the teacher grades the class from the server as its admin, and a report edited
to claim what was never done is handed in and flagged.
"""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from leaks import files_containing, forms, registry_texts
from support import CHROMIUM_ARGS, CHURNLAB, ROOT, needs, remote_env

from churnlab import classroom, handin, store, tags, work
from churnlab.postgres import postgres_folder

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("class-server")]

TEACHERS_EDITION = ("ana",)
HANDOUT = "cleo"
FOUR_EYES = "dora"  # the teacher's edition on a model that needs one approval
STUDENTS = (*TEACHERS_EDITION, HANDOUT, FOUR_EYES)
TASKS = ("task1", "task2", "task3", "task4")
#: a workbook takes 3-4 min alone on 2 cores; three at once on a busy machine, far longer
WORKBOOK_TIMEOUT = 3600


@dataclass
class Desk:
    """One student's machine: a HOME, a project config, where the reports go, a checkout."""

    user: str
    folder: Path
    checkout: Path
    outputs: list[str]

    @property
    def home(self) -> Path:
        return self.folder / "home"

    @property
    def config(self) -> Path:
        return self.folder / "churnlab.toml"

    @property
    def reports(self) -> Path:
        return self.folder / "reports"

    @property
    def credentials(self) -> Path:
        return self.home / ".mlflow" / "credentials"

    def env(self, **extra: str) -> dict[str, str]:
        """This machine's environment: no MLflow variable, its HOME and config, and the
        checkout's own package (a handout's, for the student edition)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in store.SERVER_VARIABLES
            and k not in ("CHURNLAB_HOME", "CHURNLAB_MODEL", "CHURNLAB_EXPERIMENT")
        }
        env.update(
            HOME=str(self.home),
            CHURNLAB_CONFIG=str(self.config),
            CHURNLAB_ACTOR="mallory",  # a lie: the server's login decides
            PYTHONPATH=str(self.checkout),
            **extra,
        )
        return env

    def start(self, *args: str, **extra: str) -> subprocess.Popen:
        self.home.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [CHURNLAB, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(**extra),
            cwd=self.checkout,
            stdin=subprocess.DEVNULL,
        )

    def run(self, *args: str, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess:
        proc = self.start(*args, **extra)
        out, err = proc.communicate(timeout=timeout)
        self.outputs += [out, err]
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@dataclass
class Room:
    """The class server, a machine per student, and when their workbooks started (ms)."""

    server: Any  # the package's class server (conftest.Class)
    desks: dict[str, Desk]
    started: int = 0

    @property
    def url(self) -> str:
        return self.server.url

    def report(self, user: str) -> Path:
        """The student's report: the handout's own reports/, else the --output folder."""
        desk = self.desks[user]
        return (desk.checkout / "reports" if user == HANDOUT else desk.reports) / "workbook.html"


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, (done.args, done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def room(class_server, tmp_path_factory) -> Room:
    """The three students on the class server (dora's model needs one approval), a handout
    for cleo, and a machine each, logged in."""
    class_server.add_students("username\n" + "\n".join((*TEACHERS_EDITION, HANDOUT)) + "\n")
    class_server.add_students(f"username,reviewer\n{FOUR_EYES},ana\n", "--approvals", "1")
    root = tmp_path_factory.mktemp("desks")
    handout = root / "handout"
    made = subprocess.run(
        [CHURNLAB, "handout", str(handout)],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k not in store.SERVER_VARIABLES},
    )
    assert made.returncode == 0, made.stderr
    desks = {
        user: Desk(user, root / user, handout if user == HANDOUT else ROOT, []) for user in STUDENTS
    }
    for user, desk in desks.items():  # the password as a script passes it, once
        done = desk.run(
            "login",
            class_server.url,
            MLFLOW_TRACKING_USERNAME=user,
            MLFLOW_TRACKING_PASSWORD=class_server.passwords[user],
        )
        assert ok(done).splitlines()[0] == (
            f"logged in to {class_server.url} as {user}; the password is in {desk.credentials} "
            "(0600)"
        )
    return Room(class_server, desks)


@pytest.fixture(scope="module")
def workbooks(room) -> dict[str, subprocess.CompletedProcess]:
    """`churnlab workbook` on every machine at once, with nothing but the stored login."""
    room.started = int(time.time() * 1000)
    procs = {}
    for user, desk in room.desks.items():
        args = ["workbook"] if user == HANDOUT else ["workbook", "--output", str(desk.reports)]
        procs[user] = desk.start(*args)
    done = {}
    for user, proc in procs.items():
        out, err = proc.communicate(timeout=WORKBOOK_TIMEOUT)
        room.desks[user].outputs += [out, err]
        done[user] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        print(f"\n{user}'s workbook (exit {proc.returncode}):\n{out}{err}")
    return done


def test_every_student_runs_the_workbook_at_once_and_hands_in(room, workbooks):
    for user, done in workbooks.items():
        out = ok(done)
        assert f"5 notebook(s) against the {room.url}" in out
        assert (
            f"handed in the replay report ({handin.digest_of(room.report(user))[:12]}) to "
            f"{room.url} as {user}: run "
        ) in out
        summary = json.loads(room.report(user).with_suffix(".json").read_text())
        assert (summary["student"], summary["model_name"]) == (user, f"churn-model-{user}")
        done_tasks = [t["done"] for t in summary["tasks"]]
        assert done_tasks == ([False] * 4 if user == HANDOUT else [True] * 4), summary["tasks"]


def as_admin(room: Room):
    """This process as the class's admin (a raw MLflow client reads everything)."""
    user, password = classroom.admin_credentials(classroom.Layout(room.server.folder))
    return remote_env(room.url, MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password)


def test_each_run_wrote_only_to_its_own_model_and_experiment(room, workbooks):
    from mlflow.tracking import MlflowClient

    with as_admin(room):
        client = MlflowClient()
        experiments = {e.experiment_id: e.name for e in client.search_experiments()}
        runs = client.search_runs(
            list(experiments), filter_string=f"attributes.start_time >= {room.started}"
        )
        assert runs, "the workbooks logged no run"
        by_experiment: dict[str, list] = {}
        for run in runs:  # no stray run: every one finished (a failed attempt deletes its own)
            by_experiment.setdefault(experiments[run.info.experiment_id], []).append(run)
            assert run.info.status == "FINISHED", (run.info.run_name, run.info.status)
        assert set(by_experiment) == {f"churnlab-{u}" for u in STUDENTS}
        for user in STUDENTS:
            handins = [r for r in by_experiment[f"churnlab-{user}"] if tags.HANDIN in r.data.tags]
            assert [r.data.tags[tags.HANDIN_LOGIN] for r in handins] == [user]
            assert handins[0].data.tags[tags.HANDIN_MODEL] == f"churn-model-{user}"
        written = [
            mv
            for model in client.search_registered_models()
            for mv in client.search_model_versions(f"name='{model.name}'")
            if mv.creation_timestamp >= room.started
        ]
        assert {mv.name for mv in written} == {f"churn-model-{u}" for u in STUDENTS}
        for mv in written:
            owner = mv.name.removeprefix("churn-model-")
            assert mv.tags[tags.REGISTERED_BY] == owner
            run = client.get_run(mv.run_id)
            assert experiments[run.info.experiment_id] == f"churnlab-{owner}"
        for user in STUDENTS:  # every move recorded, each by the student's own login
            model = client.get_registered_model(f"churn-model-{user}")
            events = [
                json.loads(v) for k, v in model.tags.items() if k.startswith(tags.EVENT_PREFIX)
            ]
            assert events
            assert {(e["actor"], e["actor_source"]) for e in events} == {(user, "server")}


def test_four_eyes_walkthrough_shows_the_refusals_on_the_server(room, workbooks):
    import nbformat

    executed = room.desks["ana"].reports / "executed" / "04_promote.ipynb"
    shown = "".join(
        output.get("text", "")
        for cell in nbformat.read(executed, as_version=4).cells
        for output in cell.get("outputs", [])
        if "four_eyes.demonstrate" in cell.source
    )
    assert "needs 1 approval(s) of v" in shown and "by someone other than ana" in shown
    assert "ana may not approve churn-model-ana v" in shown
    assert f"on {room.url} the server's login decides who acts" in shown


def test_a_model_that_needs_an_approval_still_runs_the_walkthrough(room, workbooks):
    """dora's promotions need a reviewer's approval: the walkthrough and her Task 3 promote
    by override and record why; her model stays consistent."""
    from churnlab.registry import Registry

    with as_admin(room):
        registry = Registry(classroom.model_for(FOUR_EYES))
        assert registry.model().tags[tags.REQUIRED_APPROVALS] == "1"  # class-add-students set it
        promotions = [e for e in registry.history() if e.action == "promote"]
        assert promotions and all(e.override for e in promotions)
        # the walkthrough's first promotion and Task 3's two say a reviewer's was missing
        assert len([e for e in promotions if "approval(s) of v" in e.reason]) == 3
        assert registry.status()["consistent"], registry.status()["problems"]


@pytest.fixture(scope="module")
def teacher(room, workbooks) -> Desk:
    """The teacher's machine, logged in as the class's admin, with the class's roster."""
    user, password = classroom.admin_credentials(classroom.Layout(room.server.folder))
    desk = Desk("teacher", room.desks["ana"].folder.parent / "teacher", ROOT, [])
    ok(
        desk.run(
            "login", room.url, MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password
        )
    )
    (desk.folder / "students.csv").write_text("username\n" + "\n".join(STUDENTS) + "\n")
    return desk


def grade(teacher: Desk, *args: str) -> str:
    """``churnlab grade --server`` on the teacher's machine, the class's roster named."""
    roster = str(teacher.folder / "students.csv")
    return ok(teacher.run("grade", "--server", "--students", roster, *args, timeout=900))


def rows_of(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {(r["student"], r["report"]): r for r in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def graded(teacher) -> tuple[str, Path, Path]:
    """The teacher's ``grade --server --csv --html``: its output, the CSV and the page."""
    csv_path, page = teacher.folder / "class.csv", teacher.folder / "class.html"
    out = grade(teacher, "--csv", str(csv_path), "--html", str(page))
    print(f"\nchurnlab grade --server:\n{out}")
    return out, csv_path, page


def test_the_teacher_grades_the_class_from_the_server(room, graded):
    out, csv_path, page = graded
    rows = rows_of(csv_path)
    assert set(rows) == {(u, "hand-in") for u in STUDENTS}
    for user in (*TEACHERS_EDITION, FOUR_EYES):
        row = rows[(user, "hand-in")]
        assert (row["tasks"], row["answered"], row["kind"]) == ("4/4", "5/5", "replay")
        assert [row[t] for t in TASKS] == ["done"] * 4
        # two reports with the teacher's answers: identical answers, and nothing else
        assert all(" identical to " in f for f in row["flags"].split("; ")), row["flags"]
    assert "q1 identical to dora" in rows[("ana", "hand-in")]["flags"]
    assert "q1 identical to ana" in rows[(FOUR_EYES, "hand-in")]["flags"]
    cleo = rows[(HANDOUT, "hand-in")]
    assert (cleo["tasks"], cleo["answered"], cleo["kind"], cleo["flags"]) == (
        "0/4",
        "0/5",
        "replay",
        "",
    )
    assert [cleo[t] for t in TASKS] == ["not yet"] * 4
    assert out.splitlines()[-3:] == [
        f"graded 3 student(s) on {room.url} (3 handed in), 2 flagged",
        f"wrote {csv_path}",
        f"wrote {page}",
    ]


def test_the_class_page_in_chromium_offline(graded):
    """The page as the teacher opens it: no request leaves it, a row per student, each task
    coloured, and a click shows the server's evidence."""
    from playwright.sync_api import expect, sync_playwright

    page_file = graded[2]
    attempted: list[str] = []

    def guard(route):
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            attempted.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=needs("chromium"), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.route("**/*", guard)
            page = context.new_page()
            page.goto(page_file.as_uri(), wait_until="load")
            assert page.locator("#class tbody tr").count() == len(STUDENTS)
            done = page.locator('tr[data-student="ana"] td[data-task="task1"]')
            not_yet = page.locator('tr[data-student="cleo"] td[data-task="task1"]')
            colour = "e => getComputedStyle(e).backgroundColor"
            assert done.evaluate(colour) == "rgb(218, 251, 225)"
            assert not_yet.evaluate(colour) == "rgb(255, 235, 233)"
            evidence = done.locator("details p")
            expect(evidence).to_be_hidden()
            done.locator("summary").click()
            expect(evidence).to_be_visible()
            assert evidence.inner_text().startswith("v") and "is yours" in evidence.inner_text()
        finally:
            browser.close()
    assert attempted == []


def forge(room: Room, folder: Path) -> Path:
    """cleo's own report edited with care: every task set to done in its JSON with ana's
    evidence, ana's model's name changed to cleo's; her digests and visible section kept."""
    page = room.report(HANDOUT).read_text(encoding="utf-8")
    summary = work.read_work(page)
    ana = work.read_work(room.report("ana").read_text(encoding="utf-8"))
    evidence = {t["id"]: t["evidence"] for t in ana["tasks"]}
    for task in summary["tasks"]:
        copied = evidence[task["id"]].replace("churn-model-ana", "churn-model-cleo")
        task.update(done=True, evidence=copied, missing="")
    embedded = work.embed(work.read_work(page))
    assert embedded in page
    forged = folder / "forged" / "workbook.html"
    forged.parent.mkdir(parents=True, exist_ok=True)
    forged.write_text(page.replace(embedded, work.embed(summary)), encoding="utf-8")
    return forged


def test_a_forged_report_is_flagged_handed_in_and_as_a_file(room, teacher):
    from churnlab import grade as grading

    forged = forge(room, room.desks[HANDOUT].folder)
    [alone], _ = grading.grade_reports([forged])  # as a file alone: the JSON against the page
    assert alone.tasks_done == 4 and alone.flags == [
        "the visible 'Your work' disagrees with its JSON: "
        + ", ".join(f"task{n} shows not yet, its JSON says done" for n in range(1, 5))
    ]
    handed = ok(room.desks[HANDOUT].run("handin", str(forged)))
    assert handed.startswith(f"handed in the replay report ({handin.digest_of(forged)[:12]})")
    out = grade(teacher, "--csv", str(teacher.folder / "forged.csv"), str(forged))
    print(f"\nthe forged report, handed in by cleo and given as a file:\n{out}")
    rows = rows_of(teacher.folder / "forged.csv")
    for key in ((HANDOUT, "hand-in"), (HANDOUT, str(forged))):
        row = rows[key]
        assert row["tasks"] == "0/4", row
        assert row["flags"].startswith("the visible 'Your work' disagrees with its JSON")
        for n in range(1, 5):
            assert f"; task{n} claims done, and the server says not yet: " in row["flags"]
    assert "not the report cleo handed in" not in rows[(HANDOUT, str(forged))]["flags"]


def test_no_password_lands_anywhere_but_each_students_credentials(room, teacher, graded):
    """Every password (each student's and the admin's, as text and in Basic-auth form) is
    nowhere in what login, whoami, logout, workbook, handin and grade --server printed,
    wrote or handed in; on each machine it is only in ~/.mlflow/credentials (0600)."""
    server = room.server
    admin = classroom.admin_credentials(classroom.Layout(server.folder))
    logins = [(u, server.passwords[u]) for u in STUDENTS] + [admin]
    needles = [form for login in logins for form in forms(*login)]
    for user, desk in room.desks.items():
        assert stat.S_IMODE(desk.credentials.stat().st_mode) == 0o600
        assert stat.S_IMODE(desk.credentials.parent.stat().st_mode) == 0o700
        assert server.passwords[user] in desk.credentials.read_text()
        assert files_containing(desk.folder, needles, skip=(desk.credentials,)) == []
        assert ok(desk.run("whoami")).splitlines()[1:] == [
            f"user        {user}",
            f"model       churn-model-{user}",
            f"experiment  churnlab-{user}",
        ]
    assert files_containing(room.desks[HANDOUT].checkout, needles) == []
    assert files_containing(teacher.folder, needles, skip=(teacher.credentials,)) == []
    outputs = [o for desk in (*room.desks.values(), teacher) for o in desk.outputs]
    assert len(outputs) > 20
    assert [o for o in outputs for n in needles if n.decode() in o] == []
    # the server: its log, the handed-in reports among its artifacts, PostgreSQL, every tag
    layout = classroom.Layout(server.folder)
    assert any((server.folder / "artifacts").rglob("workbook.html"))
    assert files_containing(server.folder, needles, skip=(layout.ini,)) == []
    assert files_containing(postgres_folder(server.folder), needles) == []
    texts = registry_texts(server)
    assert any(tags.HANDIN_DIGEST in t for t in texts)
    assert [t for t in texts for n in needles if n.decode() in t] == []
    desk = room.desks["ana"]
    out = ok(desk.run("logout"))
    assert out.startswith(f"logged out of {room.url}: removed the login from {desk.credentials}")
    assert not desk.credentials.exists() and not desk.config.exists()
