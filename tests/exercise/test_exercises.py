"""The tasks' checks against a real sqlite registry and a real backend process.

One student works through Tasks 1-4 step by step; after each step every check says what
it should: "not yet" with the line naming what is missing, then "done" with the evidence.
"""

from __future__ import annotations

import pytest

from churnlab import exercises, following, gate, smoke, workbook
from churnlab.backend import Backend, running_backends
from churnlab.registry import PRODUCTION, Registry
from churnlab.story import Story

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
    story = Story.of("alice", rows=ROWS)
    registry = Registry()
    workbook.train_candidates("logreg", story=story)  # v1, the walkthrough's
    assert _missing(1).startswith("no candidate of your own is registered")
    assert _missing(2).startswith("no candidate of your own yet")

    # Task 1: an own candidate with a hyperparameter, the 0.90 replay, the default policy
    defaults = workbook.train_own(story, "logreg").model_version
    assert "is a logreg with its defaults" in _missing(1), "the task asks for a hyperparameter"
    assert not exercises.verdict(1, part=1).done
    mine = workbook.train_own(story, "logreg", {"C": 0.3}).model_version
    assert (defaults, mine) == (2, 3) and exercises.own_versions(registry) == [2, 3]
    assert workbook.my_candidate(registry) == 3, "the newest own candidate is the student's"
    assert workbook.pending_versions(registry) == [1], "the walkthrough leaves it alone"
    assert exercises.verdict(1, part=1).done
    assert "(C=0.3)" in exercises.verdict(1, part=1).evidence
    assert (
        "in 02's Your turn cell run workbook.replay_gate(registry, "
        "workbook.my_candidate(registry), accuracy_min=0.9)" in _missing(1)
    ), "versions are named through my_candidate, never as a number that changes"
    assert workbook.replay_gate(registry, mine, accuracy_min=0.5).verdict == "passed"
    assert "ran at accuracy_min=0.5, not at the exercise's 0.90" in _missing(1)
    strict = workbook.replay_gate(registry, mine, accuracy_min=0.9)
    assert not strict.passed
    assert (
        "the replay failed your candidate (v3) as it should; its last gate run was the 0.90 "
        "replay: now run the default policy, gate.run_gate(workbook.my_candidate(registry), "
        "registry=registry)" in _missing(1)
    ), "not yet names the next step, not a verdict the default policy never gave"
    assert gate.run_gate(mine, registry=registry, policy=gate.Policy.load(accuracy_min=0.5))
    assert "its last gate run was a policy of your own" in _missing(1)
    assert gate.run_gate(mine, registry=registry).passed
    assert _line(1).startswith("Task 1 done: v3 is yours: logreg (C=0.3)")
    assert "accuracy" in _line(1) and "(needs >= 0.9)" in _line(1)

    # Task 2: staged and smoke-checked
    assert (
        "your candidate (v3) passed the gate but was never staged: in 03's Your turn cell run "
        "registry.stage(workbook.my_candidate(registry)), then smoke.smoke_check(" in _missing(2)
    )
    registry.stage(mine)
    assert "your candidate (v3) is staged, but not smoke-checked: run smoke.smoke_check(" in (
        _missing(2)
    ), "staging alone is not enough, and the line says what is left"
    assert smoke.smoke_check(mine, stage="staging", registry=registry, latency_requests=20).passed
    assert _line(2).startswith("Task 2 done: Staged churn-model v3 -> Staging; its smoke check")

    # Task 3: promote by number, roll back, promote again
    gate.run_gate(1, registry=registry)
    registry.promote(1, override=True, reason="the walkthrough's production")
    assert (
        "your candidate (v3) was never promoted: in 04's Your turn cell run "
        "registry.promote(workbook.my_candidate(registry))" in _missing(3)
    )
    registry.promote(mine)
    assert "production was not rolled back from it" in _missing(3)
    registry.rollback(reason="practice")
    assert "after the rollback, promote your candidate (v3) again" in _missing(3)
    assert "production holds v1, not your candidate (v3)" in _missing(4)
    registry.promote(mine)
    assert _line(3) == (
        "Task 3 done: Promoted churn-model v3 -> Production (archived v1); rolled back to v1; "
        "promoted again: Promoted churn-model v3 -> Production (archived v1)"
    )

    # Task 4: a running production backend serves v3; the newest version nobody
    assert "no production backend of this registry is running on this machine" in _line(4)
    production = Backend("production").start().wait_ready()
    try:
        mine_only = running_backends(children_only=True)
        assert [b.stage for b in mine_only] == ["production"]
        assert "the newest registered version (v3) must be one nobody serves" in _line(4)
        workbook.train_candidates("main", story=story)  # v4: what main built
        exercises.check(4)
        out = capsys.readouterr().out
        assert out == (
            "Task 4 done: /health of production: churn-model v3 (stage production, status ok); "
            "the newest version, v4, is served by nobody\n"
        )
    finally:
        assert following.stop_backends() == 1
        production.stop()
    assert running_backends(children_only=True) == []
    # what the check saw was recorded: the report, later, still finds it done
    assert [v.done for v in exercises.verdicts(registry)] == [True, True, True, True]
    registry.rollback(reason="an incident")
    assert registry.holder(PRODUCTION) == 1
    assert not exercises.verdicts(registry)[3].done, "the registry moved on: no longer true"
