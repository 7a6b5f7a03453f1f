"""The ONNX export computes what the scikit-learn pipeline computes, for every estimator.

Parity is what makes the fast serving path safe: the graph must give the pipeline's
probabilities to float64 rounding (the gate allows 1e-9; we see ~1e-16).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from churnlab import data, gate, onnx_export, schema, tags, train
from churnlab.scoring import Scorer
from churnlab.tags import ONNX_PARITY as PARITY_TAG

FLOAT64_ROUNDING = 1e-12


@pytest.fixture(scope="module")
def frames():
    frame = data.generate(2000, seed=3)
    parts = data.split(frame, seed=3)
    return parts["training"], parts["evaluation"]


def fitted(estimator: str, frames, **params):
    training, _ = frames
    pipeline = train.build_pipeline(estimator, params, seed=1)
    return pipeline.fit(data.features(training), data.labels(training))


SMALL = {"logreg": {}, "forest": {"n_estimators": 25}, "gbm": {"max_iter": 40}}


@pytest.mark.parametrize("estimator", list(SMALL))
def test_onnx_graph_gives_the_pipelines_probabilities(estimator, frames):
    pipeline = fitted(estimator, frames, **SMALL[estimator])
    model = onnx_export.OnnxModel(onnx_export.export(pipeline))
    X = data.features(frames[1])
    noisy = gate.perturb(X, 0.05, seed=2)  # values off the training grid, near thresholds
    for frame in (X, noisy):
        expected = pipeline.predict_proba(frame)
        actual = model.predict_proba(frame)
        assert actual.dtype == np.float64
        assert actual.shape == expected.shape
        assert np.max(np.abs(actual - expected)) <= FLOAT64_ROUNDING


def test_forest_parity_holds_for_features_at_float32_rounding_edges(frames):
    """Trees compare float32 copies of the features; the graph must do the same."""
    pipeline = fitted("forest", frames, n_estimators=25)
    X = data.features(frames[1]).copy()
    rng = np.random.default_rng(5)
    X["MonthlyCharges"] = np.round(rng.uniform(18, 119, len(X)), 6) + 1e-9
    X["TotalCharges"] = X["MonthlyCharges"] * X["tenure"] * (1 + 1e-8)
    model = onnx_export.OnnxModel(onnx_export.export(pipeline))
    assert onnx_export.max_difference(pipeline, model, X) <= FLOAT64_ROUNDING


def test_gradient_boosting_sends_missing_values_where_scikit_learn_does(frames):
    pipeline = fitted("gbm", frames, max_iter=40)
    X = data.features(frames[1]).copy()
    X.loc[X.index[::3], "TotalCharges"] = np.nan
    model = onnx_export.OnnxModel(onnx_export.export(pipeline))
    assert onnx_export.max_difference(pipeline, model, X) <= FLOAT64_ROUNDING


def test_trees_that_are_a_single_leaf_are_exported(frames):
    pipeline = fitted("forest", frames, n_estimators=3, min_samples_leaf=100_000)
    model = onnx_export.OnnxModel(onnx_export.export(pipeline))
    X = data.features(frames[1])
    proba = model.predict_proba(X)[:, 1]
    assert np.unique(proba).size == 1  # every tree is its root leaf: one answer for all
    assert onnx_export.max_difference(pipeline, model, X) <= FLOAT64_ROUNDING


def test_a_classifier_without_an_exact_export_is_refused_and_not_logged(frames):
    from sklearn.naive_bayes import GaussianNB

    pipeline = fitted("logreg", frames)
    pipeline.steps[-1] = ("classifier", GaussianNB())
    training, _ = frames
    pipeline.fit(data.features(training), data.labels(training))
    with pytest.raises(onnx_export.ExportUnsupported, match="GaussianNB"):
        onnx_export.export(pipeline)
    assert onnx_export.log_artifact(pipeline) == {}  # no tag: the version is served by sklearn


def test_the_graph_takes_the_categorical_and_numeric_features_as_two_inputs(frames):
    model = onnx_export.OnnxModel(onnx_export.export(fitted("logreg", frames)))
    inputs = {i.name: (i.type, i.shape[1]) for i in model.session.get_inputs()}
    assert inputs == {
        "categorical": ("tensor(string)", len(schema.CATEGORICAL)),
        "numeric": ("tensor(double)", len(schema.NUMERIC)),
    }
    assert "gender" not in schema.CATEGORICAL  # accepted by the API, not used by the model


# ------------------------------------------------------------------ in the registry and gate
def test_each_trained_version_logs_its_graph_and_the_gate_proves_parity(registry):
    policy = gate.Policy.load()
    for version in (1, 2):  # logistic regression, random forest
        mv = registry.version(version)
        assert mv.tags[tags.ONNX_ARTIFACT] == onnx_export.ARTIFACT_PATH
        check = gate.check_onnx_parity(
            registry, version, registry.load_model(version), registry.snapshot(version), policy
        )
        assert check.status == "pass", check
        assert 0 <= check.value <= policy.onnx_parity_max


def test_a_graph_that_differs_from_the_pipeline_fails_the_gate_and_is_not_served(isolated_home):
    import mlflow

    from churnlab.registry import Registry

    # a private version (its artifacts are ours to change), then an impostor graph: one
    # exported from a differently trained pipeline, logged in its place
    version = train.train_candidate(estimator="logreg", rows=600).model_version
    registry = Registry()
    other = train.build_pipeline("logreg", {"C": 0.01})
    frame = data.generate(800, seed=9)
    other.fit(data.features(frame), data.labels(frame))
    with mlflow.start_run(run_id=registry.version(version).run_id):
        onnx_export.log_artifact(other)
    result = gate.run_gate(version, registry=registry)
    check = next(c for c in result.checks if c.name == "onnx_parity")
    assert check.status == "fail" and check.value > 1e-6
    assert not result.passed
    assert registry.version(version).tags[PARITY_TAG] == "fail"
    scorer = Scorer.from_registry(registry, version)
    assert scorer.kind == "sklearn"
    assert "failed" in scorer.reason


def test_a_version_without_a_graph_skips_the_parity_check(registry):
    registry.client.delete_model_version_tag(registry.model_name, "2", tags.ONNX_ARTIFACT)
    check = gate.check_onnx_parity(
        registry, 2, registry.load_model(2), registry.snapshot(2), gate.Policy.load()
    )
    assert check.status == "skip"
    assert "scikit-learn" in check.detail


def test_the_parity_bound_is_a_policy_setting():
    assert gate.Policy.load().onnx_parity_max == pytest.approx(1e-9)
    assert gate.Policy.load(onnx_parity_max="1e-6").onnx_parity_max == pytest.approx(1e-6)


@pytest.mark.parametrize("estimator", ["logreg", "forest"])
def test_a_big_batch_scored_in_two_halves_equals_one_run(estimator, frames, monkeypatch):
    pipeline = fitted(estimator, frames, **SMALL[estimator])
    model = onnx_export.OnnxModel(onnx_export.export(pipeline))
    X = data.features(data.generate(onnx_export.SPLIT_ROWS + 7, seed=5))
    whole = model.session.run([onnx_export.PROBABILITIES], onnx_export.frame_inputs(X))[0]
    halves = model.predict_proba(X)
    if (os.cpu_count() or 1) >= 2:
        assert model._helper is not None, "the batch was split"
    np.testing.assert_array_equal(halves, whole)
    np.testing.assert_allclose(halves, pipeline.predict_proba(X), rtol=0, atol=FLOAT64_ROUNDING)
