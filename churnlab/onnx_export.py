"""The trained pipeline as an ONNX graph that computes what scikit-learn computes, in float64.

Serving a pipeline through scikit-learn costs milliseconds a call whatever the batch size:
the time goes to pandas and validation, not arithmetic. The same pipeline exported to ONNX
and run by onnxruntime is far cheaper (figures in benchmarks/README.md). The export is only
worth serving if it is the same function, so every value stays in float64 from the inputs to the
probabilities:

* preprocessing (one-hot + scaling): skl2onnx's converters, fed double inputs;
* the classifier: appended by hand (:func:`_classifier`), node for node what scikit-learn
  does. Logistic regression is a MatMul, an Add and a Sigmoid. Random forest and histogram
  gradient boosting become one ``TreeEnsemble`` (``ai.onnx.ml`` opset 5) with double
  thresholds and leaf values; skl2onnx's defaults store both in float32, which moves
  probabilities by up to 1e-2 when a feature sits near a threshold. A forest compares
  float32 copies of the features, as scikit-learn's trees do.

The result agrees with ``pipeline.predict_proba`` to about 1e-15: the arithmetic is the same,
only summation order may differ. The gate's ``onnx_parity`` check proves it for every
version on its evaluation data before anything is served from the graph.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from churnlab import schema, tags
from churnlab.errors import ChurnlabError

#: Where the graph is logged in the version's run (the tag ``tags.ONNX_ARTIFACT`` records it).
ARTIFACT_PATH = "onnx/model.onnx"
PROBABILITIES = "probabilities"
#: skl2onnx converts the preprocessing at ai.onnx.ml opset 3 at most; a graph with a
#: ``TreeEnsemble`` (ai.onnx.ml opset 5) declares 5, under which skl2onnx's ai.onnx.ml
#: operators (OneHotEncoder) are unchanged.
TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}
TREE_OPSET = 5

_ML = "ai.onnx.ml"
_LEQ = 0  # TreeEnsemble node mode BRANCH_LEQ: go to the true branch when x <= split
_SUM = 1  # TreeEnsemble aggregate function


class ExportUnsupported(ChurnlabError):
    """The pipeline holds a step the exporter cannot reproduce exactly."""


#: The graph's two inputs: the categorical features as one ``[N, 14]`` string tensor and
#: the numeric ones as one ``[N, 4]`` double tensor, columns in schema order. Two inputs
#: instead of eighteen: each input costs onnxruntime's Python binding a few microseconds,
#: and records become two arrays in two passes.
CATEGORICAL_INPUT, NUMERIC_INPUT = "categorical", "numeric"


def input_names() -> tuple[str, ...]:
    """The graph's inputs: ``categorical`` (strings) and ``numeric`` (doubles)."""
    return (CATEGORICAL_INPUT, NUMERIC_INPUT)


def export(pipeline) -> bytes:
    """The fitted ``pipeline`` (``train.build_pipeline``) as a serialized ONNX model.

    The preprocessing is converted by skl2onnx; the classifier is appended by hand (see
    :func:`_classifier`). Raises :class:`ExportUnsupported` for a classifier or a step it
    cannot convert exactly.
    """
    from onnx import TensorProto, checker, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType

    if len(pipeline.steps) < 2:
        raise ExportUnsupported("the ONNX export needs a preprocessing step and a classifier")
    clf = pipeline.steps[-1][1]
    tail = _classifier(clf)
    types = [
        (f.name, StringTensorType([None, 1]) if f.is_categorical else DoubleTensorType([None, 1]))
        for f in schema.MODEL_FEATURES
    ]
    width = int(clf.n_features_in_)
    try:
        model = convert_sklearn(
            pipeline[:-1],
            initial_types=types,
            target_opset=TARGET_OPSET,
            final_types=[("features", DoubleTensorType([None, width]))],
        )
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
        raise ExportUnsupported(f"ONNX export failed: {type(exc).__name__}: {exc}") from None
    graph = model.graph
    (features,) = graph.output
    graph.node.extend(tail.nodes(features.name))
    graph.initializer.extend(tail.initializers)
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info(PROBABILITIES, TensorProto.DOUBLE, [None, 2]),
        ]
    )
    if tail.uses_trees:
        ml = [o for o in model.opset_import if o.domain == _ML]
        if ml:
            ml[0].version = max(ml[0].version, TREE_OPSET)
        else:
            model.opset_import.append(helper.make_opsetid(_ML, TREE_OPSET))
    _pack_inputs(model)
    checker.check_model(model)
    model.doc_string = f"churnlab {type(clf).__name__} pipeline, float64 end to end"
    return model.SerializeToString()


def log_artifact(pipeline) -> dict[str, str]:
    """Log the pipeline's ONNX graph to the active MLflow run; return the version tags to set.

    A pipeline the exporter does not support logs nothing (the version is then served by
    scikit-learn) and returns no tag.
    """
    import tempfile
    from pathlib import Path

    import mlflow

    try:
        model = export(pipeline)
    except ExportUnsupported:
        return {}
    folder, name = ARTIFACT_PATH.rsplit("/", 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(model)
        mlflow.log_artifact(str(path), artifact_path=folder)
    return {tags.ONNX_ARTIFACT: ARTIFACT_PATH}


def _pack_inputs(model) -> None:
    """Replace the per-column inputs skl2onnx made by the two packed ones (split in-graph)."""
    from onnx import TensorProto, helper

    graph = model.graph
    packed = (
        (CATEGORICAL_INPUT, TensorProto.STRING, schema.CATEGORICAL),
        (NUMERIC_INPUT, TensorProto.DOUBLE, schema.NUMERIC),
    )
    if {i.name for i in graph.input} != {name for _, _, cols in packed for name in cols}:
        raise ExportUnsupported("the exported graph's inputs are not the schema's model features")
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    splits = []
    for name, _, columns in packed:
        sizes = [1] * len(columns)
        if opset >= 13:  # the sizes are an input from opset 13 on
            graph.initializer.append(
                helper.make_tensor(f"split_{name}_sizes", TensorProto.INT64, [len(sizes)], sizes)
            )
            node = helper.make_node(
                "Split", [name, f"split_{name}_sizes"], list(columns), name=f"split_{name}", axis=1
            )
        else:
            node = helper.make_node(
                "Split", [name], list(columns), name=f"split_{name}", axis=1, split=sizes
            )
        splits.append(node)
    del graph.input[:]
    graph.input.extend(
        helper.make_tensor_value_info(name, kind, [None, len(columns)])
        for name, kind, columns in packed
    )
    for node in reversed(splits):
        graph.node.insert(0, node)


# ---------------------------------------------------------------------------- trees
def _ensemble(trees: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Attributes of one ``TreeEnsemble`` node (one target, summed) from plain tree arrays.

    Each tree is a dict of arrays over its nodes, root first: ``left`` and ``right`` (child
    index, -1 at a leaf), ``feature``, ``threshold``, ``value`` (the leaf's contribution) and
    ``missing_left`` (where NaN goes).
    """
    from onnx import numpy_helper

    feature, split, missing, roots = [], [], [], []
    true_id, true_leaf, false_id, false_leaf, weights = [], [], [], [], []
    node_base = leaf_base = 0
    for tree in trees:
        left, right = tree["left"], tree["right"]
        is_leaf = left < 0
        internal, leaves = np.flatnonzero(~is_leaf), np.flatnonzero(is_leaf)
        node_id = np.full(len(left), -1, dtype=np.int64)
        node_id[internal] = np.arange(len(internal)) + node_base
        leaf_id = np.full(len(left), -1, dtype=np.int64)
        leaf_id[leaves] = np.arange(len(leaves)) + leaf_base
        if len(internal) == 0:  # a lone leaf: one node whose both branches reach it
            roots.append(node_base)
            feature.append(np.zeros(1, np.int64))
            split.append(np.zeros(1))
            missing.append(np.zeros(1, np.int64))
            for ids, flags in ((true_id, true_leaf), (false_id, false_leaf)):
                ids.append(leaf_id[:1])
                flags.append(np.ones(1, np.int64))
            node_base += 1
        else:
            roots.append(int(node_id[0]))
            feature.append(tree["feature"][internal].astype(np.int64))
            split.append(tree["threshold"][internal].astype(np.float64))
            missing.append(tree["missing_left"][internal].astype(np.int64))
            for child, ids, flags in ((left, true_id, true_leaf), (right, false_id, false_leaf)):
                target = child[internal]
                to_leaf = is_leaf[target]
                ids.append(np.where(to_leaf, leaf_id[target], node_id[target]))
                flags.append(to_leaf.astype(np.int64))
            node_base += len(internal)
        weights.append(tree["value"][leaves].astype(np.float64))
        leaf_base += len(leaves)

    def ints(parts: list[np.ndarray]) -> list[int]:
        return np.concatenate(parts).astype(np.int64).tolist()

    n_nodes = node_base
    return {
        "n_targets": 1,
        "aggregate_function": _SUM,
        "post_transform": 0,
        "tree_roots": roots,
        "nodes_featureids": ints(feature),
        "nodes_modes": numpy_helper.from_array(np.full(n_nodes, _LEQ, dtype=np.uint8)),
        "nodes_splits": numpy_helper.from_array(np.concatenate(split)),
        "nodes_missing_value_tracks_true": ints(missing),
        "nodes_truenodeids": ints(true_id),
        "nodes_trueleafs": ints(true_leaf),
        "nodes_falsenodeids": ints(false_id),
        "nodes_falseleafs": ints(false_leaf),
        "leaf_targetids": [0] * leaf_base,
        "leaf_weights": numpy_helper.from_array(np.concatenate(weights)),
    }


def _forest_trees(forest) -> list[dict[str, np.ndarray]]:
    """Each tree's leaves carry its churn probability as ``DecisionTreeClassifier`` computes it."""
    trees = []
    for estimator in forest.estimators_:
        t = estimator.tree_
        value = t.value[:, 0, :]
        normalizer = value.sum(axis=1)
        normalizer[normalizer == 0.0] = 1.0
        trees.append(
            {
                "left": t.children_left,
                "right": t.children_right,
                "feature": np.maximum(t.feature, 0),
                "threshold": t.threshold,
                "value": value[:, 1] / normalizer,
                "missing_left": _missing_left(t),
            }
        )
    return trees


def _missing_left(tree) -> np.ndarray:
    missing = getattr(tree, "missing_go_to_left", None)
    if missing is None:
        return np.zeros(tree.node_count, dtype=np.int64)
    return np.asarray(missing, dtype=np.int64)


def _hgb_trees(model) -> list[dict[str, np.ndarray]]:
    """The baseline as a first one-leaf tree (scikit-learn adds it first), then every tree."""
    if getattr(model, "n_trees_per_iteration_", 1) != 1:
        raise ExportUnsupported("the ONNX export supports a binary target only")
    if getattr(model, "_preprocessor", None) is not None or model.is_categorical_ is not None:
        raise ExportUnsupported("the ONNX export does not support native categorical splits")
    baseline = float(np.ravel(model._baseline_prediction)[0])
    trees = [
        {
            "left": np.array([-1]),
            "right": np.array([-1]),
            "feature": np.array([0]),
            "threshold": np.array([0.0]),
            "value": np.array([baseline]),
            "missing_left": np.array([0]),
        }
    ]
    for (predictor,) in model._predictors:
        nodes = predictor.nodes
        leaf = nodes["is_leaf"].astype(bool)
        if nodes["is_categorical"].any():
            raise ExportUnsupported("the ONNX export does not support native categorical splits")
        trees.append(
            {
                "left": np.where(leaf, -1, nodes["left"].astype(np.int64)),
                "right": np.where(leaf, -1, nodes["right"].astype(np.int64)),
                "feature": nodes["feature_idx"].astype(np.int64),
                "threshold": nodes["num_threshold"].astype(np.float64),
                "value": nodes["value"].astype(np.float64),
                "missing_left": nodes["missing_go_to_left"].astype(np.int64),
            }
        )
    return trees


class _Tail:
    """The classifier's nodes, from the preprocessing's ``features`` to the probabilities."""

    def __init__(self) -> None:
        self.initializers: list = []
        self._steps: list[tuple[str, list[str], str, dict[str, Any]]] = []
        self.uses_trees = False

    def constant(self, name: str, value) -> str:
        from onnx import numpy_helper

        name = f"churnlab_{name}"  # apart from the names skl2onnx gave the preprocessing
        self.initializers.append(numpy_helper.from_array(np.asarray(value, np.float64), name))
        return name

    def add(self, op_type: str, inputs: list[str], domain: str = "", **attrs) -> str:
        """Append a node; its output is named after its position; return that name."""
        out = f"churnlab_{op_type.lower()}_{len(self._steps)}"
        self._steps.append((op_type, inputs, out, {"domain": domain, **attrs}))
        self.uses_trees |= op_type == "TreeEnsemble"
        return out

    def finish(self, churn: str) -> None:
        """``probabilities = [1 - p, p]`` and ``label = argmax`` from the ``[N, 1]`` churn column."""
        stay = self.add("Sub", [self.constant("one", 1.0), churn])
        self._steps.append(("Concat", [stay, churn], PROBABILITIES, {"axis": 1}))
        self._steps.append(("ArgMax", [PROBABILITIES], "label", {"axis": 1, "keepdims": 0}))

    def nodes(self, features: str) -> list:
        """The nodes, reading the preprocessing's output ``features``."""
        from onnx import helper

        out = []
        for op_type, inputs, output, attrs in self._steps:
            inputs = [features if name == "features" else name for name in inputs]
            out.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return out


def _classifier(clf) -> _Tail:
    """The graph of ``clf``'s churn probability, computed the way scikit-learn computes it."""
    from onnx import TensorProto
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    if [int(c) for c in getattr(clf, "classes_", [])] != [0, 1]:
        raise ExportUnsupported("the ONNX export needs a fitted classifier of a 0/1 target")
    tail = _Tail()
    if isinstance(clf, LogisticRegression):
        # decision_function, then expit: X @ coef.T + intercept
        z = tail.add("MatMul", ["features", tail.constant("coef", clf.coef_.T)])
        z = tail.add("Add", [z, tail.constant("intercept", clf.intercept_)])
        churn = tail.add("Sigmoid", [z])
    elif isinstance(clf, RandomForestClassifier):
        # its trees compare float32 copies of the features; it averages their probabilities
        x32 = tail.add("Cast", ["features"], to=TensorProto.FLOAT)
        x64 = tail.add("Cast", [x32], to=TensorProto.DOUBLE)
        attrs = _ensemble(_forest_trees(clf))
        total = tail.add("TreeEnsemble", [x64], domain=_ML, **attrs)
        churn = tail.add("Div", [total, tail.constant("trees", float(len(clf.estimators_)))])
    elif isinstance(clf, HistGradientBoostingClassifier):
        attrs = _ensemble(_hgb_trees(clf))
        churn = tail.add("Sigmoid", [tail.add("TreeEnsemble", ["features"], domain=_ML, **attrs)])
    else:
        raise ExportUnsupported(f"no exact ONNX export for {type(clf).__name__}")
    tail.finish(churn)
    return tail


# ---------------------------------------------------------------------------- running
#: A batch of at least this many rows is scored as two halves at once, one on a worker
#: thread: onnxruntime releases the GIL while it converts the strings and computes, so on
#: two cores the halves overlap (measured in benchmarks/README.md). Every row is scored on
#: its own, so the result is the same.
SPLIT_ROWS = 2048


class OnnxModel:
    """An onnxruntime session over an exported pipeline: columns in, churn probabilities out.

    ``threads`` is onnxruntime's intra-op thread count; 1 (the default) keeps single-row
    latency low and leaves the other core to the web server. Batches of
    :data:`SPLIT_ROWS` rows or more run as two concurrent halves when there are two cores.
    """

    def __init__(self, model: bytes, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            model, sess_options=options, providers=["CPUExecutionProvider"]
        )
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(input_names()):
            raise ChurnlabError(
                f"the ONNX model's inputs {names} are not churnlab's {list(input_names())}"
            )
        self._outputs = [PROBABILITIES]
        self._helper: Any = None  # a one-thread pool for the second half of big batches

    def _run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """``[N, 2]`` probabilities; a big batch as two halves at once (see SPLIT_ROWS)."""
        rows = len(next(iter(inputs.values())))
        if rows < SPLIT_ROWS or (os.cpu_count() or 1) < 2:
            return self.session.run(self._outputs, dict(inputs))[0]
        if self._helper is None:
            from concurrent.futures import ThreadPoolExecutor

            self._helper = ThreadPoolExecutor(1, thread_name_prefix="onnx-half")
        half = rows // 2
        second = self._helper.submit(
            self.session.run, self._outputs, {k: v[half:] for k, v in inputs.items()}
        )
        first = self.session.run(self._outputs, {k: v[:half] for k, v in inputs.items()})[0]
        return np.concatenate([first, second.result()[0]])

    def churn_probability(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Churn probability per row of ``inputs`` (``records_to_inputs``, ``frame_inputs``)."""
        return self._run(inputs)[:, 1]

    def predict_proba(self, frame) -> np.ndarray:
        """``[N, 2]`` probabilities for a model input frame (like scikit-learn's)."""
        return self._run(frame_inputs(frame))


def frame_inputs(frame) -> dict[str, np.ndarray]:
    """The graph's inputs taken from a model input frame (extra columns are ignored)."""
    return {
        CATEGORICAL_INPUT: frame[list(schema.CATEGORICAL)].to_numpy(dtype=object, na_value=""),
        NUMERIC_INPUT: frame[list(schema.NUMERIC)].to_numpy(dtype=np.float64),
    }


def max_difference(pipeline, model: OnnxModel, frame) -> float:
    """Largest absolute churn-probability difference between ``pipeline`` and ``model``."""
    expected = np.asarray(pipeline.predict_proba(frame)[:, 1], dtype=np.float64)
    actual = model.predict_proba(frame)[:, 1]
    return float(np.max(np.abs(actual - expected))) if len(expected) else 0.0


__all__ = [
    "ARTIFACT_PATH",
    "ExportUnsupported",
    "OnnxModel",
    "export",
    "frame_inputs",
    "input_names",
    "max_difference",
]
