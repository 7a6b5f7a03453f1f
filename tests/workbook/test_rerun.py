"""The workbook runs again on the registry it left, a notebook run out of order says which to
run first, and ``churnlab report`` describes the lab's own work without re-running it."""

from __future__ import annotations

import json
import shutil

import nbformat
import pytest
import support

from churnlab import exercises, runner, store, work
from churnlab.registry import Registry

#: the tests that read the session's one workbook run share its worker (--dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("workbook")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return support.default_run(tmp_path_factory)


@pytest.fixture
def copied(run, tmp_path):
    """A copy of the registry the default run left (the student's own, to run again on)."""
    home = tmp_path / "home"
    shutil.copytree(run.registry_home, home)
    return home


def _printed(path, needle: str) -> str:
    nb = nbformat.read(path, as_version=4)
    [cell] = [c for c in nb.cells if c.cell_type == "code" and needle in c.source]
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_the_whole_workbook_runs_again_on_the_registry_it_left(copied, tmp_path, monkeypatch):
    again = support.run_workbook(tmp_path / "again", "--reuse-registry", home=copied)
    assert again.returncode == 0, again.stdout + again.stderr
    executed = again.executed
    assert _printed(executed / "01_train.ipynb", "register_candidates(").startswith(
        "found v1 (baseline), v2 (logreg), registered by an earlier run of this story: "
        "not trained again"
    )
    judged = _printed(executed / "02_gate.ipynb", "workbook.judge(")
    assert judged.startswith(
        "v1: judged already under this policy: failed\n"
        "v2: judged already under this policy: passed\n"
    )
    assert _printed(executed / "03_staging.ipynb", "stage_next(").startswith(
        "nothing new passed the gate since the last staging: staging holds v4 already"
    )
    promoted = _printed(executed / "04_promote.ipynb", "workbook.to_promote(")
    assert promoted.startswith("Promoted churn-model v4 -> Production (archived v3)")
    monkeypatch.setenv("CHURNLAB_HOME", str(copied))
    store.configure()
    registry = Registry()
    assert registry.status()["consistent"], registry.status()["problems"]
    assert exercises.own_versions(registry) == [3, 6], "the second run's own candidate is new"
    assert [v.done for v in exercises.verdicts(registry)] == [True] * 4
    summary = json.loads((again.folder / "workbook.json").read_text())
    assert summary["kind"] == "replay" and [t["done"] for t in summary["tasks"]] == [True] * 4


def test_staging_restarted_midway_runs_again(tmp_path):
    first = support.run_workbook(tmp_path / "first", "--only", "01,02,03", "-p", "rows", "2000")
    assert first.returncode == 0, first.stderr
    restart = support.run_workbook(
        tmp_path / "restart", "--only", "03", "--reuse-registry", home=first.registry_home
    )
    assert restart.returncode == 0, restart.stdout + restart.stderr
    staging = restart.executed / "03_staging.ipynb"
    assert _printed(staging, "stage_next(").startswith(
        "nothing new passed the gate since the last staging: staging holds v3 already"
    )
    assert "churn-model v3 already holds Staging" in _printed(staging, "registry.stage(mine)")
    assert _printed(staging, "exercises.check(2)").startswith("Task 2 done: Staged churn-model v3")


@pytest.mark.parametrize(
    ("only", "message"),
    [
        ("02", "02_gate builds on what 01_train registers, and churn-model has nothing at "),
        ("01,04", "04_promote promotes a version that passed its smoke check in staging, and "),
    ],
)
def test_a_notebook_run_out_of_order_names_the_one_to_run_first(tmp_path, only, message):
    small = ["-p", "rows", "1500"] if only.startswith("01") else []
    out = support.run_workbook(
        tmp_path / "reports", "--only", only, *small, "-p", "your_turn", "False"
    )
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and f"OutOfOrder: {message}" in out.stderr, out.stderr
    first = {"02": "01_train", "01,04": "03_staging"}[only]
    assert f"run {first} first" in out.stderr
    assert not (out.folder / "workbook.html").exists(), "no complete report from a failed run"


def test_the_lab_report_is_the_notebooks_as_saved_and_nothing_is_run(run, copied, tmp_path):
    saved = tmp_path / "notebooks"
    shutil.copytree(run.executed, saved)
    nb = nbformat.read(saved / "02_gate.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "workbook.judge(" in c.source)
    cell.outputs.append(
        nbformat.v4.new_output("error", ename="OutOfOrder", evalue="run 01_train first")
    )
    nbformat.write(nb, saved / "02_gate.ipynb")
    done = support.run_cli(
        "report",
        "--notebooks",
        str(saved),
        "--output",
        str(tmp_path / "reports"),
        env={"CHURNLAB_HOME": str(copied)},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split() == ["02_gate", "error:", "02_gate", "cell", *lines[1].split()[4:]]
    assert "shows OutOfOrder: run 01_train first" in lines[1]
    assert lines[-1].endswith("(the lab's own work; nothing was re-run)")
    page = (tmp_path / "reports" / "workbook.html").read_text()
    summary = work.read_work(page)
    assert summary["kind"] == "lab" and 'data-kind="lab"' in page
    assert [t["done"] for t in summary["tasks"]] == [True] * 4
    answered = {q["id"]: q["answered"] for q in summary["questions"]}
    assert all(answered[q] for q in ("q1", "q2", "q3", "q4", "q5")), answered
    assert work.visible_work(page)["tasks"] == {f"task{n}": True for n in range(1, 5)}
    assert not (tmp_path / "reports" / "executed").exists(), "nothing was executed"
    assert summary == json.loads((tmp_path / "reports" / "workbook.json").read_text())
    assert runner.LAB == summary["kind"]
