"""Stages on the registry: the rules to move, aliases vs legacy stages, history, rollback, repair."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from churnlab import cli, data, store
from churnlab.errors import InputError, Refused
from churnlab.registry import PRODUCTION, STAGING, Registry
from churnlab.tags import GATE_VERDICT as GATE_TAG
from churnlab.tags import SMOKE_VERDICT as SMOKE_TAG

NAME = "churn-model"
STAGES = {STAGING: "Staging", PRODUCTION: "Production"}


def plain_client() -> MlflowClient:
    """A client that knows nothing of churnlab, on the same store."""
    uri = store.tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def evidence(version: int, gate: str = "passed", smoke: str | None = None) -> None:
    """Record verdicts directly (the gate and smoke check are tested elsewhere)."""
    client = plain_client()
    client.set_model_version_tag(NAME, str(version), GATE_TAG, gate)
    if smoke is not None:
        client.set_model_version_tag(NAME, str(version), SMOKE_TAG, smoke)


def alias_holder(client: MlflowClient, alias: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(NAME, alias).version)
    except Exception:
        return None


def stage_holders(client: MlflowClient, stage: str) -> list[int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        latest = client.get_latest_versions(NAME, stages=[stage])
    every = [int(v.version) for v in client.search_model_versions(f"name='{NAME}'")]
    holding = [v for v in every if client.get_model_version(NAME, str(v)).current_stage == stage]
    assert sorted(int(v.version) for v in latest) == sorted(holding)[-1:]
    return sorted(holding)


def assert_alias_and_stage_agree() -> dict[str, int | None]:
    """As read by a plain MlflowClient: each alias and its legacy stage name the same version."""
    client = plain_client()
    holders = {}
    for alias, stage in STAGES.items():
        holder = alias_holder(client, alias)
        assert stage_holders(client, stage) == ([] if holder is None else [holder]), alias
        holders[alias] = holder
    return holders


# ---------------------------------------------------------------- the rules


def test_stage_requires_a_passed_gate(registry):
    with pytest.raises(Refused, match=r"v1 -> Staging: gate is pending \(needs passed\)"):
        registry.stage(1)
    evidence(1, gate="failed")
    with pytest.raises(Refused, match="gate is failed"):
        registry.stage(1)
    assert assert_alias_and_stage_agree() == {STAGING: None, PRODUCTION: None}
    assert registry.history() == []

    evidence(1)
    move = registry.stage(1)
    assert move.message == "Staged churn-model v1 -> Staging"
    assert assert_alias_and_stage_agree() == {STAGING: 1, PRODUCTION: None}


def test_promote_requires_a_passed_gate_and_a_passed_smoke_check(registry):
    evidence(2, gate="passed", smoke="none")
    with pytest.raises(Refused, match="smoke is none"):
        registry.promote(2)
    evidence(2, gate="pending", smoke="passed")
    with pytest.raises(Refused, match="gate is pending"):
        registry.promote(2)
    evidence(2, gate="passed", smoke="failed")
    with pytest.raises(Refused, match="smoke is failed"):
        registry.promote(2)
    assert registry.holder(PRODUCTION) is None

    evidence(2, gate="passed", smoke="passed")
    assert registry.promote(2).message == "Promoted churn-model v2 -> Production"
    assert assert_alias_and_stage_agree() == {STAGING: None, PRODUCTION: 2}


def test_override_needs_a_reason(registry):
    for reason in ("", "   "):
        with pytest.raises(InputError, match="override needs a written reason"):
            registry.promote(1, override=True, reason=reason)
        with pytest.raises(InputError, match="override needs a written reason"):
            registry.stage(1, override=True, reason=reason)
    assert registry.holder(PRODUCTION) is None and registry.history() == []


def test_override_with_a_reason_moves_and_is_recorded(registry):
    move = registry.promote(1, override=True, reason="  hotfix for incident 42 ")
    assert (
        move.message == "Promoted churn-model v1 -> Production [override: hotfix for incident 42]"
    )
    (event,) = registry.history()
    assert event.override is True
    assert event.reason == "hotfix for incident 42"
    assert event.action == "promote" and event.to_version == 1 and event.from_version is None
    assert assert_alias_and_stage_agree() == {STAGING: None, PRODUCTION: 1}


def test_an_overlong_reason_is_refused_before_anything_moves(registry):
    with pytest.raises(InputError, match="--reason is 5000 characters"):
        registry.promote(1, override=True, reason="x" * 5000)
    assert registry.holder(PRODUCTION) is None and registry.history() == []
    assert registry.status()["consistent"]


def test_every_move_keeps_alias_and_stage_in_step_and_archives(registry):
    evidence(1, smoke="passed")
    evidence(2, smoke="passed")

    registry.stage(1)
    assert assert_alias_and_stage_agree() == {STAGING: 1, PRODUCTION: None}

    registry.promote(1)  # staging's holder moves on: staging is left empty
    assert assert_alias_and_stage_agree() == {STAGING: None, PRODUCTION: 1}

    registry.stage(2)
    assert assert_alias_and_stage_agree() == {STAGING: 2, PRODUCTION: 1}

    move = registry.promote(2)
    assert move.message == "Promoted churn-model v2 -> Production (archived v1)"
    assert move.archived == 1
    assert assert_alias_and_stage_agree() == {STAGING: None, PRODUCTION: 2}
    assert plain_client().get_model_version(NAME, "1").current_stage == "Archived"

    actions = [(e.action, e.alias, e.from_version, e.to_version) for e in registry.history()]
    assert actions == [
        ("stage", STAGING, None, 1),
        ("promote", PRODUCTION, None, 1),
        ("unstage", STAGING, 1, None),
        ("stage", STAGING, None, 2),
        ("promote", PRODUCTION, 1, 2),
        ("unstage", STAGING, 2, None),
    ]
    assert registry.status()["consistent"]


def test_the_production_holder_cannot_be_staged(registry):
    evidence(1, smoke="passed")
    registry.promote(1)
    with pytest.raises(Refused, match="already holds Production"):
        registry.stage(1)


def test_moving_to_the_current_holder_changes_nothing(registry):
    evidence(1, smoke="passed")
    registry.promote(1)
    move = registry.promote(1)
    assert move.message == "churn-model v1 already holds Production"
    assert len(registry.history()) == 1


def test_history_events_say_who_when_what_and_why(registry, monkeypatch):
    evidence(1, smoke="passed")
    evidence(2, smoke="passed")
    start = datetime.now(UTC) - timedelta(seconds=2)

    monkeypatch.setenv("CHURNLAB_ACTOR", "alice")
    monkeypatch.setenv("GITHUB_ACTOR", "gh-bob")
    registry.stage(1, reason="first candidate")
    monkeypatch.delenv("CHURNLAB_ACTOR")
    registry.promote(1)
    monkeypatch.delenv("GITHUB_ACTOR")
    monkeypatch.setenv("USER", "carol")
    registry.promote(2, override=True, reason="urgent")

    events = registry.history()
    assert [e.actor for e in events] == ["alice", "gh-bob", "gh-bob", "carol"]
    for e in events:
        moment = datetime.fromisoformat(e.time)
        assert moment.tzinfo is not None
        assert start <= moment <= datetime.now(UTC) + timedelta(seconds=2)
    first, promoted, _unstaged, last = events
    assert (first.alias, first.from_version, first.to_version) == (STAGING, None, 1)
    assert first.reason == "first candidate" and first.override is False
    assert (promoted.alias, promoted.from_version, promoted.to_version) == (PRODUCTION, None, 1)
    assert (last.action, last.from_version, last.to_version) == ("promote", 1, 2)
    assert last.override is True and last.reason == "urgent"
    assert set(last.to_dict()) == {
        "time",
        "actor",
        "alias",
        "from_version",
        "to_version",
        "action",
        "reason",
        "override",
    }
    # stored on the registered model, where a team sharing the server sees it
    tags = plain_client().get_registered_model(NAME).tags
    stored = [json.loads(v) for k, v in sorted(tags.items()) if k.startswith("churnlab.event.")]
    assert stored == [e.to_dict() for e in events]


# ---------------------------------------------------------------- rollback


def test_rollback_returns_production_to_its_previous_holder(registry):
    evidence(1, smoke="passed")
    evidence(2, smoke="passed")
    registry.promote(1)
    registry.promote(2)

    move = registry.rollback(reason="v2 misbehaves")
    assert move.message == "Rolled back churn-model v1 -> Production (archived v2)"
    assert assert_alias_and_stage_agree() == {STAGING: None, PRODUCTION: 1}
    assert plain_client().get_model_version(NAME, "2").current_stage == "Archived"
    last = registry.history()[-1]
    assert (last.action, last.from_version, last.to_version) == ("rollback", 2, 1)
    assert last.reason == "v2 misbehaves"

    with pytest.raises(Refused, match="nothing to roll back to"):
        registry.rollback()
    assert registry.holder(PRODUCTION) == 1


def test_rollback_without_production_is_refused(registry):
    with pytest.raises(Refused, match="no production version"):
        registry.rollback()
    assert registry.history() == []


# ---------------------------------------------------------------- versions


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("9", "churn-model has no version 9 (latest is 2)"),
        ("abc", "version must be a positive whole number like 3, got 'abc'"),
        ("0", "version must be a positive whole number"),
        ("-1", "version must be a positive whole number"),
        ("1.5", "version must be a positive whole number"),
        ("models:/other-model/1", "belongs to model 'other-model', not 'churn-model'"),
    ],
)
def test_bad_versions_are_refused_with_clear_messages(registry, capsys, text, message):
    with pytest.raises(InputError) as err:
        registry.version(text)
    assert message in str(err.value)
    for command in (["stage", text], ["promote", text, "--override", "--reason", "x"]):
        assert cli.main(command) == 2
        out, errtext = capsys.readouterr()
        assert out == "" and message in errtext and len(errtext.strip().splitlines()) == 1
    assert registry.history() == []


def test_version_spellings_that_name_the_same_version(registry):
    for text in (2, "2", "v2", " 2 ", "models:/churn-model/2"):
        assert int(registry.version(text).version) == 2


def test_a_model_that_does_not_exist_is_named(trained_home, capsys):
    with pytest.raises(InputError, match="no registered model 'other-model'"):
        Registry("other-model").version(1)
    assert cli.main(["--model", "other-model", "status"]) == 2
    assert "no registered model 'other-model'" in capsys.readouterr().err


def test_snapshot_is_read_back_with_its_recorded_digest(registry):
    frame = registry.snapshot(1, "evaluation")
    tags = plain_client().get_model_version(NAME, "1").tags
    assert data.digest_of(frame) == tags["churnlab.data.evaluation"]
    with pytest.raises(InputError, match="records no holdout snapshot"):
        registry.snapshot(1, "holdout")


# ---------------------------------------------------------------- status and repair


def test_status_json_matches_what_a_plain_client_sees(registry, capsys):
    evidence(1, smoke="passed")
    evidence(2)
    registry.promote(1)
    registry.stage(2)

    assert cli.main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert set(status) == {"model_name", "stages", "consistent", "problems"}
    assert status["model_name"] == NAME
    assert status["consistent"] is True and status["problems"] == []
    assert set(status["stages"]) == {STAGING, PRODUCTION}
    client = plain_client()
    for alias, stage in STAGES.items():
        entry = status["stages"][alias]
        mv = client.get_model_version_by_alias(NAME, alias)
        assert entry["version"] == int(mv.version)
        assert entry["stage"] == stage and entry["stage_versions"] == [int(mv.version)]
        assert entry["run_id"] == mv.run_id
        assert entry["gate"] == mv.tags[GATE_TAG] and entry["smoke"] == mv.tags[SMOKE_TAG]
    assert status["stages"][PRODUCTION]["smoke"] == "passed"
    assert status["stages"][STAGING]["smoke"] == "none"

    assert cli.main(["status"]) == 0
    text = capsys.readouterr().out
    assert "production v1" in " ".join(text.split()) and "staging v2" in " ".join(text.split())


def test_history_json_lists_every_event(registry, capsys):
    assert cli.main(["history"]) == 0
    assert "no promotions yet" in capsys.readouterr().out
    registry.promote(2, override=True, reason="because")
    assert cli.main(["history", "--json"]) == 0
    (event,) = json.loads(capsys.readouterr().out)
    assert event["to_version"] == 2 and event["override"] is True and event["actor"] == "pytest"
    assert cli.main(["history"]) == 0
    line = capsys.readouterr().out.strip()
    assert "promote" in line and "OVERRIDE" in line and "because" in line and "v2" in line


def test_an_interrupted_move_is_detected_and_repaired(registry, capsys):
    evidence(1, smoke="passed")
    registry.promote(1)
    # a move that died after setting the alias, before mirroring the stage and the history
    plain_client().set_registered_model_alias(NAME, PRODUCTION, "2")

    assert cli.main(["status"]) == 1
    out = capsys.readouterr().out
    assert "inconsistent" in out and "churnlab repair" in out
    status = registry.status()
    assert status["consistent"] is False and status["problems"]

    assert cli.main(["repair"]) == 0
    assert "repaired:" in capsys.readouterr().out
    assert assert_alias_and_stage_agree() == {STAGING: None, PRODUCTION: 2}
    assert plain_client().get_model_version(NAME, "1").current_stage == "Archived"
    last = registry.history()[-1]
    assert (last.action, last.alias, last.from_version, last.to_version) == (
        "repair",
        PRODUCTION,
        1,
        2,
    )
    assert cli.main(["status"]) == 0
    assert "inconsistent" not in capsys.readouterr().out
    assert cli.main(["repair"]) == 0
    assert "nothing to repair" in capsys.readouterr().out


def test_two_promotions_at_the_same_time_leave_one_holder(registry, trained_home):
    """Two real `churnlab promote` processes race on the same store (about 10 s)."""
    evidence(1, smoke="passed")
    evidence(2, smoke="passed")
    exe = str(Path(sys.executable).with_name("churnlab"))
    procs = [
        subprocess.Popen(
            [exe, "promote", str(v)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "CHURNLAB_ACTOR": actor},
        )
        for v, actor in ((1, "racer-one"), (2, "racer-two"))
    ]
    outputs = []
    try:
        for proc in procs:
            # a promotion takes 2-10 s; 300 s means it hangs
            out, err = proc.communicate(timeout=300)
            outputs.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for code, out, err in outputs:
        assert code == 0, err
        assert out.startswith("Promoted churn-model v") and err == ""

    holders = assert_alias_and_stage_agree()
    assert holders[PRODUCTION] in (1, 2)
    promotions = [e for e in registry.history() if e.action == "promote"]
    assert sorted(e.to_version for e in promotions) == [1, 2]
    assert {e.actor for e in promotions} == {"racer-one", "racer-two"}
    # the second mover archived the first, and the history ends on the holder
    loser = 1 if holders[PRODUCTION] == 2 else 2
    assert any(f"(archived v{loser})" in out for _, out, _ in outputs)
    assert [e for e in registry.history() if e.alias == PRODUCTION][-1].to_version == holders[
        PRODUCTION
    ]
    assert plain_client().get_model_version(NAME, str(loser)).current_stage == "Archived"
    assert registry.status()["consistent"]


# ---------------------------------------------------------------- four eyes, refusals, out-of-band moves
def _registered_by(version: int, who: str) -> None:
    from churnlab.tags import REGISTERED_BY

    plain_client().set_model_version_tag(NAME, str(version), REGISTERED_BY, who)


def test_four_eyes_needs_an_approval_of_that_version_by_someone_else(trained_home, monkeypatch):
    registry = Registry(production_approvals=1)
    for v in (1, 2):
        evidence(v, smoke="passed")
        _registered_by(v, "alice")
    monkeypatch.setenv("CHURNLAB_ACTOR", "alice")
    with pytest.raises(Refused, match="alice may not approve churn-model v1: alice registered it"):
        registry.approve(1, reason="mine is fine")
    with pytest.raises(Refused, match=r"needs 1 approval\(s\) of v1 by someone other than alice"):
        registry.promote(1)
    assert registry.holder(PRODUCTION) is None and registry.history() == []

    monkeypatch.setenv("CHURNLAB_ACTOR", "bob")
    with pytest.raises(InputError, match="needs a written reason"):
        registry.approve(1, reason=" ")
    approval = registry.approve(1, reason="metrics checked")
    assert (approval.actor, approval.version, approval.actor_source) == ("bob", 1, "declared")
    assert registry.approvers(1, promoter="bob") == []  # never counts for its own promoter

    monkeypatch.setenv("CHURNLAB_ACTOR", "alice")
    with pytest.raises(Refused, match="has 0"):  # an approval of v1 is not one of v2
        registry.promote(2)
    move = registry.promote(1)
    assert move.message == "Promoted churn-model v1 -> Production (approved by bob)"
    assert move.event.approved_by == ("bob",)
    override = registry.promote(2, override=True, reason="urgent fix")  # still possible, marked
    assert override.event.override and override.event.reason == "urgent fix"
    status = registry.status()
    assert status["consistent"], status["problems"]  # a recorded override needs no approval
    assert status["stages"][PRODUCTION]["approvals_required"] == 1
    timeline = registry.timeline()
    assert [e["action"] for e in timeline] == ["approve", "promote", "promote"]
    assert timeline[0] == {
        "action": "approve",
        "alias": PRODUCTION,
        "actor": "bob",
        "actor_source": "declared",
        "reason": "metrics checked",
        "time": approval.time,
        "version": 1,
    }


def test_status_flags_a_production_holder_without_its_approval(registry):
    evidence(1, smoke="passed")
    registry.promote(1)  # no approvals required then
    strict = Registry(production_approvals=1)
    status = strict.status()
    assert status["consistent"] is False
    (problem,) = status["problems"]
    assert problem.startswith("production v1 was moved there by pytest with 0 of the 1 approval(s)")
    assert strict.repair() == []  # an approval is given, not repaired


def test_a_move_the_server_refuses_writes_nothing(registry):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    from churnlab.errors import PermissionDenied

    class Refusing:
        """The real client, except that moving an alias is refused as a 403 would be."""

        def __init__(self, client):
            self._client = client

        def __getattr__(self, name):
            return getattr(self._client, name)

        def set_registered_model_alias(self, *args, **kwargs):
            raise MlflowException("failed with error code 403 != 200", PERMISSION_DENIED)

    evidence(1, smoke="passed")
    before = assert_alias_and_stage_agree()
    refusing = Registry(client=Refusing(plain_client()))
    with pytest.raises(PermissionDenied) as caught:
        refusing.promote(1, override=True, reason="x")
    assert str(caught.value) == "permission denied: pytest may not move @production of churn-model"
    assert caught.value.exit_code == 4
    assert registry.history() == [] and assert_alias_and_stage_agree() == before


def test_an_out_of_band_move_is_reported_and_can_be_restored(registry):
    evidence(1, smoke="passed")
    registry.promote(1)
    plain_client().set_registered_model_alias(NAME, PRODUCTION, "2")  # a raw client, no rules
    problems = registry.status()["problems"]
    assert (
        "alias production names v2 but no recorded event put it there (the history's last "
        "production move names v1): moved outside churnlab, or a move was interrupted"
    ) in problems
    assert registry.repair(restore=True) == problems
    assert assert_alias_and_stage_agree() == {STAGING: None, PRODUCTION: 1}
    last = registry.history()[-1]
    assert (last.action, last.from_version, last.to_version) == ("repair", 2, 1)
    assert last.reason == "restored v1: @production had been set to v2 outside churnlab"
    assert registry.status()["consistent"]


def test_events_written_before_actor_source_still_read_as_declared(registry):
    from churnlab.registry import Event

    old = {
        "time": "2025-01-01T00:00:00+00:00",
        "actor": "teacher",
        "alias": PRODUCTION,
        "from_version": None,
        "to_version": 1,
        "action": "promote",
        "reason": "",
        "override": False,
    }
    plain_client().set_registered_model_tag(
        NAME, "churnlab.event.00000000000000000001.a", json.dumps(old)
    )
    (event,) = registry.history()
    assert (event.actor, event.actor_source, event.approved_by) == ("teacher", "declared", ())
    assert event.to_dict() == old  # a declared event keeps the shape older readers know
    assert Event.from_dict({**old, "actor_source": "server"}).to_dict()["actor_source"] == "server"
