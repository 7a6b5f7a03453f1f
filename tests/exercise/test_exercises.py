"""The tasks' checks against a real sqlite registry and a real backend process.

One student works through Tasks 1-4 step by step; after each step every check says what
it should: "not yet" with the line naming what is missing, then "done" with the evidence.
"""

from __future__ import annotations

import pytest

from churnlab import exercises, gate, smoke, workbook
from churnlab.backend import Backend
from churnlab.registry import PRODUCTION, Registry

ROWS = 2400  # enough evaluation rows for the gate (min_eval_rows 500)


def _line(task: int, **options) -> str:
    return exercises.verdict(task, **options).line()


def _missing(task: int) -> str:
    found = exercises.verdict(task, **({"live": False} if task == 4 else {}))
    assert not found.done, found.line()
    return found.missing


def test_checks_before_anything_is_registered_say_what_to_run(capsys):
    for task in (1, 2, 3, 4):
        found = exercises.verdict(task)
        assert not found.done
        assert found.missing.startswith("nothing is registered yet: run 01_train")
    exercises.check(1)
    out = capsys.readouterr().out
    assert out.startswith("Task 1 not yet: nothing is registered yet") and out.count("\n") == 1


def test_under_the_autograder_a_task_not_done_is_an_assertion(monkeypatch, capsys):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    with pytest.raises(AssertionError, match="Task 2 not yet: "):
        exercises.check(2)
    assert "Task 2 not yet" in capsys.readouterr().out


@pytest.mark.slow
def test_a_student_works_through_the_four_tasks(capsys):
    story = workbook.Story.of("alice", rows=ROWS)
    registry = Registry()
    workbook.train_candidates("logreg", story=story)  # v1, the walkthrough's
    assert _missing(1).startswith("no candidate of your own is registered")
    assert _missing(2).startswith("no candidate of your own yet")

    # Task 1: an own candidate, the 0.90 replay, the default policy
    mine = workbook.train_own(story, "logreg", {"C": 0.3}).model_version
    assert mine == 2 and exercises.own_versions(registry) == [2]
    assert workbook.pending_versions(registry) == [1], "the walkthrough leaves it alone"
    assert exercises.verdict(1, part=1).done
    assert "(C=0.3)" in exercises.verdict(1, part=1).evidence
    assert "workbook.replay_gate(registry, 2, accuracy_min=0.9)" in _missing(1)
    strict = workbook.replay_gate(registry, mine, accuracy_min=0.9)
    assert not strict.passed
    assert "gate verdict under the default policy is failed" in _missing(1)
    assert gate.run_gate(mine, registry=registry).passed
    assert _line(1).startswith("Task 1 done: v2 is yours: logreg (C=0.3)")
    assert "accuracy" in _line(1) and "(needs >= 0.9)" in _line(1)

    # Task 2: staged and smoke-checked
    assert "registry.stage(2) then smoke.smoke_check(2" in _missing(2)
    registry.stage(mine)
    assert "was not staged and smoke-checked" in _missing(2), "staging alone is not enough"
    assert smoke.smoke_check(mine, stage="staging", registry=registry, latency_requests=20).passed
    assert _line(2).startswith("Task 2 done: Staged churn-model v2 -> Staging; its smoke check")

    # Task 3: promote by number, roll back, promote again
    gate.run_gate(1, registry=registry)
    registry.promote(1, override=True, reason="the walkthrough's production")
    assert "v2 was never promoted: in 04's Your turn cell run registry.promote(2)" in _missing(3)
    registry.promote(mine)
    assert "production was not rolled back from it" in _missing(3)
    registry.rollback(reason="practice")
    assert "after the rollback, promote v2 again" in _missing(3)
    assert "production holds v1, not your candidate (v2)" in _missing(4)
    registry.promote(mine)
    assert _line(3) == (
        "Task 3 done: Promoted churn-model v2 -> Production (archived v1); rolled back to v1; "
        "promoted again: Promoted churn-model v2 -> Production (archived v1)"
    )

    # Task 4: a running production backend serves v2; the newest version nobody
    assert "no production backend is running" in _line(4)
    production = Backend("production").start().wait_ready()
    try:
        assert [b.stage for b in exercises.running_backends()] == ["production"]
        assert "the newest registered version (v2) must be one nobody serves" in _line(4)
        workbook.train_candidates("main", story=story)  # v3: what main built
        exercises.check(4)
        out = capsys.readouterr().out
        assert out == (
            "Task 4 done: /health of production: churn-model v2 (stage production, status ok); "
            "the newest version, v3, is served by nobody\n"
        )
    finally:
        assert workbook.stop_backends() == 1
        production.stop()
    assert exercises.running_backends() == []
    # what the check saw was recorded: the report, later, still finds it done
    assert [v.done for v in exercises.verdicts(registry)] == [True, True, True, True]
    registry.rollback(reason="an incident")
    assert registry.holder(PRODUCTION) == 1
    assert not exercises.verdicts(registry)[3].done, "the registry moved on: no longer true"
