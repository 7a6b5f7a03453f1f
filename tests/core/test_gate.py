"""The quality gate: its policy, its checks, what it records, and that a failure moves nothing."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import IPython.lib.pretty
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from churnlab import cli, data, gate, schema
from churnlab.errors import InputError, Refused
from churnlab.metrics import score
from churnlab.registry import PRODUCTION, STAGING
from churnlab.tags import GATE_VERDICT as GATE_TAG

CORE_CHECKS = {
    "min_eval_rows",
    "accuracy",
    "roc_auc",
    "signature",
    "latency_p95_ms",
    "slice_gap",
    "robustness_drop",
    "invariance",
    "directional",
    "champion",
}
DEFAULT_YAML = Path(gate.__file__).parent / "policy" / "default.yaml"


def fast(**overrides) -> gate.Policy:
    """The default policy with a short, generous latency probe: latency depends on the machine
    (and on the other tests sharing it); its check is tested on its own below."""
    return gate.Policy.load(latency_samples=20, latency_p95_ms=10_000, **overrides)


@pytest.fixture(scope="module")
def customers() -> pd.DataFrame:
    return data.generate(1500, seed=21)


# ---------------------------------------------------------------- the policy


def test_policy_defaults_come_from_the_shipped_yaml():
    shipped = yaml.safe_load(DEFAULT_YAML.read_text())
    policy = gate.Policy.load()
    as_dict = policy.to_dict()
    assert set(shipped) == set(as_dict), "default.yaml and Policy list different settings"
    for name, value in shipped.items():
        assert as_dict[name] == value, name
    assert policy == gate.Policy()  # the dataclass defaults say the same thing


def test_policy_overrides_are_coerced_and_layered(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("roc_auc_min: 0.6\naccuracy_min: 0.5\n")
    policy = gate.Policy.load(path, accuracy_min="0.9", slice_columns="Contract, SeniorCitizen")
    assert policy.roc_auc_min == 0.6  # from the file
    assert policy.accuracy_min == 0.9  # the override wins over the file
    assert policy.slice_columns == ("Contract", "SeniorCitizen")
    assert gate.Policy.load(latency_samples="7").latency_samples == 7
    assert gate.Policy.load(latency_samples=8.0).latency_samples == 8
    assert gate.Policy.load(accuracy_min=1).accuracy_min == 1.0


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"accuracy_minimum": 0.9}, "accuracy_minimum"),
        ({"accuracy_min": "high"}, "accuracy_min"),
        ({"latency_samples": "many"}, "latency_samples"),
        ({"latency_samples": "2.5"}, "latency_samples"),
        ({"latency_samples": 2.5}, "latency_samples"),  # a YAML float is not a count
        ({"min_eval_rows": True}, "min_eval_rows"),
        ({"accuracy_min": True}, "accuracy_min"),  # YAML `true` is not a threshold
        ({"roc_auc_min": float("nan")}, "roc_auc_min"),
        ({"slice_columns": 5}, "slice_columns"),
        ({"slice_columns": "Contract,Planet"}, "Planet"),
        ({"invariance_columns": ["gender", "shoe_size"]}, "shoe_size"),
        ({"slice_metric": "vibes"}, "vibes"),
        ({"champion_metric": "log_loss"}, "log_loss"),
    ],
)
def test_bad_overrides_raise_input_error_naming_them(overrides, named):
    with pytest.raises(InputError) as err:
        gate.Policy.load(**overrides)
    assert named in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("accuracy_min: [1, 2\n", "not valid YAML"),
        ("- 1\n- 2\n", "mapping"),
    ],
)
def test_bad_policy_files_are_refused(tmp_path, content, message):
    path = tmp_path / "policy.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=message):
        gate.Policy.load(path)


# ---------------------------------------------------------------- a full gate run


def test_gate_runs_every_check_and_records_them(registry, tmp_path):
    result = gate.run_gate(1, registry=registry, policy=fast())

    names = [c.name for c in result.checks]
    assert CORE_CHECKS <= set(names)
    assert len(names) == len(set(names))
    for check in result.checks:
        assert check.status in ("pass", "fail", "skip"), check
        assert check.operator in (">=", "<=", "=="), check
        assert check.threshold is not None, check
        if check.status != "skip":
            assert check.value is not None, check
    by_name = {c.name: c for c in result.checks}
    assert by_name["champion"].status == "skip"
    assert "no production" in by_name["champion"].detail
    assert result.passed and result.verdict == "passed", result.summary()
    assert result.summary().startswith("Gate passed: churn-model v1")
    assert list(result.table().columns) == [
        "name",
        "status",
        "value",
        "operator",
        "threshold",
        "detail",
    ]

    # the measured values are the model's real metrics on its evaluation snapshot
    model, frame = registry.load_model(1), registry.snapshot(1, "evaluation")
    truth = score(data.labels(frame), model.predict_proba(data.features(frame))[:, 1])
    assert by_name["accuracy"].value == pytest.approx(truth["accuracy"])
    assert by_name["roc_auc"].value == pytest.approx(truth["roc_auc"])
    assert by_name["min_eval_rows"].value == len(frame)

    # recorded: verdict and per-check tags on the version, the JSON on its run
    client = MlflowClient()
    mv = client.get_model_version("churn-model", "1")
    assert mv.tags[GATE_TAG] == "passed"
    for check in result.checks:
        assert mv.tags[f"churnlab.gate.{check.name}"] == check.status
    local = client.download_artifacts(mv.run_id, "gate/v1.json", str(tmp_path))
    recorded = json.loads(Path(local).read_text())
    assert recorded == json.loads(json.dumps(result.to_dict(), default=str))
    assert recorded["verdict"] == "passed" and recorded["version"] == 1
    assert recorded["policy"]["accuracy_min"] == gate.Policy().accuracy_min
    assert registry.verdicts(1)["gate"] == "passed"


def test_failed_gate_leaves_the_version_registered_and_unstaged(registry):
    result = gate.run_gate(1, registry=registry, policy=fast(accuracy_min=0.99))

    assert not result.passed and result.verdict == "failed"
    failed = {c.name for c in result.failed}
    assert "accuracy" in failed
    accuracy = next(c for c in result.checks if c.name == "accuracy")
    assert accuracy.status == "fail" and accuracy.threshold == 0.99 and accuracy.value < 0.99
    assert "accuracy" in result.summary() and result.summary().startswith("Gate failed")
    assert IPython.lib.pretty.pretty(result) == result.summary()  # a cell's last value

    mv = MlflowClient().get_model_version("churn-model", "1")
    assert mv.tags[GATE_TAG] == "failed"
    assert mv.tags["churnlab.gate.accuracy"] == "fail"
    assert mv.aliases == []
    assert mv.current_stage == "None"
    assert registry.holder(STAGING) is None and registry.holder(PRODUCTION) is None
    assert registry.history() == []
    with pytest.raises(Refused, match="gate is failed"):
        registry.stage(1)


def test_a_later_passing_gate_replaces_a_failed_verdict(registry):
    assert not gate.run_gate(1, registry=registry, policy=fast(accuracy_min=0.99)).passed
    assert gate.run_gate(1, registry=registry, policy=fast()).passed
    assert registry.verdicts(1)["gate"] == "passed"
    assert "Staged churn-model v1" in registry.stage(1).message


def test_champion_check_runs_against_production(registry):
    registry.promote(1, override=True, reason="a champion to beat")
    result = gate.run_gate(2, registry=registry, policy=fast())
    champion = next(c for c in result.checks if c.name == "champion")
    assert champion.status in ("pass", "fail")
    assert "production v1" in champion.detail

    # the value is the candidate's metric minus production's, on the candidate's snapshot
    frame = registry.snapshot(2, "evaluation")
    X, y = data.features(frame), data.labels(frame)
    mine = score(y, registry.load_model(2).predict_proba(X)[:, 1])["roc_auc"]
    theirs = score(y, registry.load_model(1).predict_proba(X)[:, 1])["roc_auc"]
    assert champion.value == pytest.approx(mine - theirs, abs=1e-6)
    assert champion.threshold == -gate.Policy().champion_tolerance
    assert champion.status == ("pass" if champion.value >= champion.threshold else "fail")


def test_champion_check_compares_with_the_tolerance(registry):
    registry.promote(1, override=True, reason="a champion to beat")
    model, frame = registry.load_model(2), registry.snapshot(2, "evaluation")
    lenient = gate.check_champion(registry, 2, model, frame, gate.Policy(champion_tolerance=1.0))
    strict = gate.check_champion(registry, 2, model, frame, gate.Policy(champion_tolerance=-0.5))
    assert lenient.status == "pass" and strict.status == "fail"
    assert lenient.value == strict.value
    # production itself is not compared with itself
    own = gate.check_champion(registry, 1, registry.load_model(1), frame, gate.Policy())
    assert own.status == "skip"


# ---------------------------------------------------------------- behavioural checks


def fit(columns: list[str], frame: pd.DataFrame, y: np.ndarray) -> Pipeline:
    """A small real scikit-learn pipeline on the given categorical columns."""
    pre = ColumnTransformer(
        [("categorical", OneHotEncoder(handle_unknown="ignore"), columns)], remainder="drop"
    )
    return Pipeline([("preprocess", pre), ("classifier", LogisticRegression())]).fit(frame, y)


def test_invariance_fails_for_a_model_that_uses_gender(customers):
    y = ((customers["gender"] == "Male") ^ (np.arange(len(customers)) % 5 == 0)).astype(int)
    biased = fit(["gender", "Contract"], data.features(customers), y.to_numpy())
    check = gate.check_invariance(biased, customers, gate.Policy())
    assert check.status == "fail"
    assert check.value > 0.1 and check.threshold == gate.Policy().invariance_tolerance


def test_invariance_passes_for_a_model_that_ignores_gender(registry, customers):
    check = gate.check_invariance(registry.load_model(1), customers, gate.Policy())
    assert check.status == "pass" and check.value == 0.0


def test_directional_fails_when_a_two_year_contract_raises_churn(customers):
    y = (customers["Contract"] == "Two year").astype(int).to_numpy()
    backwards = fit(["Contract", "PaymentMethod"], data.features(customers), y)
    check = gate.check_directional(backwards, customers, gate.Policy())
    assert check.status == "fail"
    assert check.value == pytest.approx(1.0)  # every customer's probability rises


def test_directional_passes_for_the_trained_model(registry, customers):
    check = gate.check_directional(registry.load_model(1), customers, gate.Policy())
    assert check.status == "pass" and check.value == 0.0


def test_latency_check_compares_p95_with_the_budget(registry, customers):
    model, X = registry.load_model(1), data.features(customers)
    over = gate.check_latency(model, X, gate.Policy(latency_p95_ms=0.0, latency_samples=5))
    under = gate.check_latency(model, X, gate.Policy(latency_p95_ms=1e6, latency_samples=5))
    assert over.status == "fail" and over.value > 0
    assert under.status == "pass" and under.operator == "<="


def test_slice_check_names_the_worst_segment(registry):
    frame = registry.snapshot(1, "evaluation")
    check = gate.check_slices(registry.load_model(1), frame, gate.Policy())
    assert check.status in ("pass", "fail")
    assert 0.0 < check.value < 1.0
    assert any(col in check.detail for col in gate.Policy().slice_columns)
    strict = gate.check_slices(registry.load_model(1), frame, gate.Policy(slice_max_gap=0.0))
    assert strict.status == "fail" and strict.value == check.value


def test_a_segment_with_too_few_of_a_class_is_not_judged(registry):
    """roc_auc on a segment with few churners is mostly noise: below slice_min_class_rows
    of either class the segment is named as too small to judge, and left out of the gap."""
    frame = registry.snapshot(1, "evaluation")
    churners = int(data.labels(frame[frame["Contract"] == "Two year"]).sum())
    policy = gate.Policy(slice_columns=("Contract",), slice_min_rows=1)
    judged = gate.check_slices(
        registry.load_model(1), frame, replace(policy, slice_min_class_rows=churners)
    )
    left_out = gate.check_slices(
        registry.load_model(1), frame, replace(policy, slice_min_class_rows=churners + 1)
    )
    assert "too small to judge" not in judged.detail
    assert left_out.detail.endswith("too small to judge: Contract=Two year")
    assert "Two year" not in left_out.detail.split(";")[1]
    assert left_out.value <= judged.value


def test_perturb_keeps_inputs_inside_the_schema(customers):
    X = data.features(customers)
    noisy = gate.perturb(X, 0.5)
    assert not noisy[list(schema.NUMERIC)].equals(X[list(schema.NUMERIC)])
    for name in schema.NUMERIC:
        feat = schema.feature(name)
        assert noisy[name].between(feat.minimum, feat.maximum).all()
    assert noisy["tenure"].dtype == np.int64
    assert (noisy[list(schema.CATEGORICAL)] == X[list(schema.CATEGORICAL)]).all().all()


def test_signature_check_fails_for_a_different_schema():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    assert gate.check_signature(ModelSignature(inputs=schema.input_schema())).status == "pass"
    fewer = Schema([ColSpec("string", f.name) for f in schema.FEATURES[:-1]])
    check = gate.check_signature(ModelSignature(inputs=fewer))
    assert check.status == "fail" and "TotalCharges" in check.detail
    assert gate.check_signature(None).status == "fail"


# ---------------------------------------------------------------- the CLI


def test_cli_gate_exits_1_on_failure(registry, capsys):
    code = cli.main(["gate", "1", "--set", "accuracy_min=0.99", "--set", "latency_samples=20"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert err == ""
    last = out.strip().splitlines()[-1]
    assert last.startswith("Gate failed: churn-model v1: accuracy")
    assert "needs >= 0.99" in last
    table = out.strip().splitlines()[:-1]
    assert any(line.split()[:2] == ["fail", "accuracy"] for line in table)
    assert MlflowClient().get_model_version("churn-model", "1").tags[GATE_TAG] == "failed"


def test_cli_gate_json_and_bad_settings(registry, capsys):
    code = cli.main(
        ["gate", "1", "--json", "--set", "latency_samples=20", "--set", "latency_p95_ms=10000"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    payload = json.loads(out)
    assert payload["verdict"] == "passed" and payload["version"] == 1
    assert CORE_CHECKS <= {c["name"] for c in payload["checks"]}

    assert cli.main(["gate", "1", "--set", "accuracy_minimum=0.9"]) == 2
    assert "accuracy_minimum" in capsys.readouterr().err
    assert cli.main(["gate", "1", "--set", "accuracy_min=lots"]) == 2
    assert "accuracy_min" in capsys.readouterr().err
    assert cli.main(["gate", "1", "--set", "accuracy_min"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    assert cli.main(["gate", "9"]) == 2
    assert "no version 9" in capsys.readouterr().err
