"""Scorer: one path from records to probabilities, ONNX when proven, scikit-learn otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from support import prove_parity

from churnlab import data, onnx_export, schema, tags
from churnlab.errors import InputError
from churnlab.scoring import Scorer, columns_to_inputs, records_to_inputs


def records(frame, with_id: bool = True) -> list[dict]:
    columns = [schema.ID_COLUMN, *schema.FEATURE_NAMES] if with_id else list(schema.FEATURE_NAMES)
    return frame[columns].to_dict("records")


def columns(frame, with_id: bool = True) -> dict[str, list]:
    """The same customers as :func:`records`, one list per feature (as JSON would bring them)."""
    return {name: [r[name] for r in records(frame, with_id)] for name in records(frame, with_id)[0]}


@pytest.fixture
def customers():
    return data.generate(300, seed=21)


def test_a_version_is_served_by_scikit_learn_until_the_gate_proves_its_graph(registry):
    before = Scorer.from_registry(registry, 1)
    assert before.kind == "sklearn"
    assert "not yet checked" in before.reason
    prove_parity(registry, 1)
    after = Scorer.from_registry(registry, 1)
    assert after.kind == "onnx"
    assert isinstance(after.model, onnx_export.OnnxModel)
    assert (after.model_name, after.version, after.run_id) == (
        before.model_name,
        before.version,
        before.run_id,
    )


@pytest.mark.parametrize("version", [1, 2])  # logistic regression, random forest
def test_both_kinds_score_records_like_the_pipeline(registry, customers, version):
    prove_parity(registry, version)
    pipeline = registry.load_model(version)
    expected = pipeline.predict_proba(data.features(customers))[:, 1]
    for kind in ("onnx", "sklearn"):
        scorer = Scorer.from_registry(registry, version, kind=kind)
        assert scorer.kind == kind
        scored = scorer.score_records(records(customers))
        proba = np.array([s["churn_probability"] for s in scored])
        assert np.max(np.abs(proba - expected)) <= 1e-12
        assert [s["churn"] for s in scored] == [bool(p >= 0.5) for p in proba]
        assert all(type(s["churn_probability"]) is float for s in scored)
        assert all(type(s["churn"]) is bool for s in scored)


@pytest.mark.parametrize("kind", ["onnx", "sklearn"])
def test_score_records_equals_predict_proba(registry, customers, kind):
    scorer = Scorer.from_registry(registry, 1, kind=kind)
    from_records = [s["churn_probability"] for s in scorer.score_records(records(customers))]
    from_frame = scorer.predict_proba(customers)
    assert from_frame.dtype == np.float64
    np.testing.assert_array_equal(np.array(from_records), from_frame)


@pytest.mark.parametrize("kind", ["onnx", "sklearn"])
def test_customer_id_and_gender_do_not_change_a_score(registry, customers, kind):
    scorer = Scorer.from_registry(registry, 1, kind=kind)
    base = scorer.score_records(records(customers, with_id=False))
    changed = records(customers)
    for i, record in enumerate(changed):
        record[schema.ID_COLUMN] = f"{i:04d}-OTHER"
        record["gender"] = "Male" if record["gender"] == "Female" else "Female"
    assert scorer.score_records(changed) == base


def test_a_version_without_a_graph_falls_back_to_scikit_learn(registry, customers):
    prove_parity(registry, 2)
    registry.client.delete_model_version_tag(registry.model_name, "2", tags.ONNX_ARTIFACT)
    scorer = Scorer.from_registry(registry, 2)
    assert scorer.kind == "sklearn"
    assert scorer.reason == "the version has no ONNX artifact"
    expected = registry.load_model(2).predict_proba(data.features(customers))[:, 1]
    np.testing.assert_allclose(scorer.predict_proba(customers), expected, rtol=0, atol=0)
    with pytest.raises(InputError, match="no ONNX artifact"):
        Scorer.from_registry(registry, 2, kind="onnx")


def test_an_unknown_kind_is_refused(registry):
    with pytest.raises(InputError, match=r"kind must be one of \['auto', 'onnx', 'sklearn'\]"):
        Scorer.from_registry(registry, 1, kind="tensorflow")


def test_values_outside_the_vocabulary_score_alike_in_both_kinds(registry, customers):
    rows = records(customers.head(5))
    rows[0]["Contract"] = "Three year"  # unknown: the encoder's all-zero column, in both
    rows[1]["PaymentMethod"] = 7
    onnx = Scorer.from_registry(registry, 1, kind="onnx").score_records(rows)
    sklearn = Scorer.from_registry(registry, 1, kind="sklearn").score_records(rows)
    assert np.allclose(
        [r["churn_probability"] for r in onnx],
        [r["churn_probability"] for r in sklearn],
        rtol=0,
        atol=1e-12,
    )


def test_an_empty_batch_scores_to_nothing(registry):
    assert Scorer.from_registry(registry, 1, kind="onnx").score_records([]) == []
    assert Scorer.from_registry(registry, 1, kind="sklearn").score_records([]) == []


def test_records_with_a_missing_feature_or_a_non_number_are_refused_by_name(customers):
    rows = records(customers.head(3))
    del rows[2]["tenure"]
    with pytest.raises(InputError, match=r"record 2 has no 'tenure'"):
        records_to_inputs(rows)
    for bad in ("cheap", None, float("nan"), float("inf")):
        rows = records(customers.head(3))
        rows[1]["MonthlyCharges"] = bad
        with pytest.raises(InputError, match="MonthlyCharges must be a finite number"):
            records_to_inputs(rows)


def test_records_become_the_graphs_two_inputs(customers):
    inputs = records_to_inputs(records(customers.head(4)))
    assert list(inputs) == list(onnx_export.input_names())
    categorical, numeric = inputs["categorical"], inputs["numeric"]
    assert categorical.shape == (4, len(schema.CATEGORICAL)) and categorical.dtype == object
    assert numeric.shape == (4, len(schema.NUMERIC)) and numeric.dtype == np.float64
    first = customers.iloc[0]
    assert list(categorical[0]) == [first[c] for c in schema.CATEGORICAL]
    assert list(numeric[0]) == [float(first[c]) for c in schema.NUMERIC]


@pytest.mark.parametrize("kind", ["onnx", "sklearn"])
def test_columns_score_exactly_like_records(registry, customers, kind):
    scorer = Scorer.from_registry(registry, 2, kind=kind)
    by_records = scorer.score_records(records(customers))
    by_columns = scorer.score_columns(columns(customers))
    assert by_columns == by_records
    assert len({s["churn_probability"] for s in by_columns}) > 1
    # gender is not used by the model: a batch without it scores the same
    without = {k: v for k, v in columns(customers, with_id=False).items() if k != "gender"}
    assert scorer.score_columns(without) == by_records


def test_columns_become_the_same_two_inputs_as_records(customers):
    from_columns = columns_to_inputs(columns(customers.head(50)))
    from_records = records_to_inputs(records(customers.head(50)))
    assert list(from_columns) == list(from_records)
    for name, array in from_columns.items():
        assert array.dtype == from_records[name].dtype and array.shape == from_records[name].shape
        np.testing.assert_array_equal(array, from_records[name])


def test_an_empty_batch_of_columns_scores_to_nothing(registry):
    empty = {name: [] for name in schema.FEATURE_NAMES}
    for kind in ("onnx", "sklearn"):
        assert Scorer.from_registry(registry, 1, kind=kind).score_columns(empty) == []


def test_bad_columns_are_refused_by_name(customers):
    good = columns(customers.head(3))
    with pytest.raises(InputError, match=r"the columns have no 'tenure'"):
        columns_to_inputs({k: v for k, v in good.items() if k != "tenure"})
    with pytest.raises(InputError, match=r"one value per customer: .*Contract has 2"):
        columns_to_inputs({**good, "Contract": good["Contract"][:2]})
    for bad in ("cheap", None, float("nan"), float("inf")):
        with pytest.raises(InputError, match="MonthlyCharges must be a finite number"):
            columns_to_inputs({**good, "MonthlyCharges": [1.0, bad, 2.0]})
    with pytest.raises(InputError, match="Contract must be a list of values"):
        columns_to_inputs({**good, "Contract": "Yes"})  # as long as the batch: still refused
