"""A mistake in a notebook is one line: churnlab's errors in IPython, the estimator and its
hyperparameters checked up front, refusals worded in Python terms."""

from __future__ import annotations

import re

import pytest

from churnlab import train, workbook
from churnlab.errors import InputError, OutOfOrder, Refused, exit_code_of
from churnlab.story import Story


@pytest.fixture
def shell(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    found = InteractiveShell.instance()
    assert workbook.show_errors_in_one_line()
    yield found
    found.set_custom_exc((), None)
    InteractiveShell.clear_instance()


def test_a_churnlab_error_is_one_line_and_the_traceback_stays_available(shell, capsys):
    result = shell.run_cell(
        "from churnlab.errors import Refused\n"
        "raise Refused('refused: v1 -> Staging; use --override --reason TEXT to force',\n"
        "              in_python='refused: v1 -> Staging; pass override=True, reason=\"why\"')"
    )
    assert isinstance(result.error_in_exec, Refused), "the cell still fails: a run stops there"
    out = capsys.readouterr().out.strip()
    assert out == (
        'Refused: v1 -> Staging; pass override=True, reason="why"   (%tb shows the traceback)'
    ), "one line, in Python terms, saying 'refused' once: no CLI flag, no traceback"
    shell.run_line_magic("tb", "")
    shown = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    assert "Traceback (most recent call last)" in shown and "raise Refused(" in shown


def test_an_error_whose_message_does_not_name_it_is_named_by_its_class():
    wrong = InputError("estimator must be one of ['logreg', 'forest', 'gbm'], got 'svm'")
    assert workbook.one_line(wrong) == (
        "InputError: estimator must be one of ['logreg', 'forest', 'gbm'], got 'svm'"
    )


def test_other_errors_keep_their_traceback(shell, capsys):
    result = shell.run_cell("1 / 0")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    assert "Traceback" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("estimator", "params", "message"),
    [
        ("svm", {}, "estimator must be one of ['logreg', 'forest', 'gbm'], got 'svm'"),
        ("forest", {"depth": 3}, "forest (RandomForestClassifier) has no hyperparameter 'depth';"),
        ("logreg", {"C": 1, "penality": "l1"}, "has no hyperparameter 'penality'; valid: C, "),
    ],
)
def test_an_unknown_estimator_or_hyperparameter_is_refused_with_the_valid_names(
    estimator, params, message
):
    with pytest.raises(InputError) as refused:
        train.build_pipeline(estimator, params)
    assert message in str(refused.value)
    if estimator == "forest":
        assert "max_depth" in str(refused.value), "the valid names are listed"


def test_a_value_scikit_learn_refuses_is_one_line_before_any_run(trained_home):
    story = Story.of("alice", rows=800)
    with pytest.raises(InputError, match=r"^The 'max_depth' parameter of RandomForestClassifier"):
        workbook.train_own(story, "forest", {"max_depth": "deep"})
    from churnlab.registry import Registry

    assert [int(v.version) for v in Registry().versions()] == [1, 2], "nothing registered"


def test_errors_know_their_exit_codes_by_name():
    assert exit_code_of("PermissionDenied") == 4
    assert exit_code_of("RegistryUnavailable") == 3
    assert exit_code_of("OutOfOrder") == OutOfOrder.exit_code == 1
    assert exit_code_of("InputError") == 2
    assert exit_code_of("ZeroDivisionError") is None


def test_notebooks_out_of_order_say_which_to_run_first(capsys):
    from churnlab.registry import Registry

    with pytest.raises(OutOfOrder, match=r"02_gate builds on what 01_train registers, and "):
        workbook.begin("02_gate")
    with pytest.raises(OutOfOrder, match="02_gate judges the candidates 01_train registers"):
        workbook.to_judge(Registry())


def test_staging_and_promotion_out_of_order(registry):
    assert workbook.to_judge(registry) == [1, 2], "CLI-trained versions wait for the gate too"
    with pytest.raises(OutOfOrder, match="the gate has not judged 01's candidates yet: run 02_ga"):
        workbook.stage_next(registry)
    with pytest.raises(OutOfOrder, match="run 03_staging first"):
        workbook.to_promote(registry)
    registry.stage(1, override=True, reason="a test")
    again = workbook.stage_next(registry)
    assert again.version == 1 and again.message.startswith("nothing new passed the gate since")


def test_the_story_seed_is_not_a_hyperparameter_and_keywords_work(trained_home):
    story = Story.of("alice", rows=800)
    with pytest.raises(InputError, match=r"^random_state is the story's seed"):
        workbook.train_own(story, "forest", {"random_state": 3})
    with pytest.raises(InputError, match="has no hyperparameter 'depth'"):
        workbook.train_own(story, "forest", depth=3)  # keywords are checked the same way
