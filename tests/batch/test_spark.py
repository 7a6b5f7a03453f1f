"""Past one machine: Spark scores the production alias through MLflow like `churnlab score`.

Starts a JVM (Spark in local mode) and Python workers, so it is marked slow.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from support import needs

from churnlab import data, schema
from churnlab.cli import main
from churnlab.tags import ONNX_PARITY

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]


@pytest.fixture
def spark(monkeypatch):
    """A local Spark session on 127.0.0.1 (two cores, no UI), stopped afterwards."""
    pytest.importorskip("pyspark")
    needs("java")  # Spark's JVM
    from pyspark.sql import SparkSession

    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    monkeypatch.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master("local[2]")
        .appName("churnlab-spark-parity")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    yield session
    session.stop()


def test_spark_udf_on_the_production_alias_gives_churnlab_scores(registry, spark, tmp_path):
    import mlflow.pyfunc
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, DoubleType

    from churnlab import gate

    # production serves v2's ONNX graph in `churnlab score`; Spark runs the logged pipeline
    check = gate.check_onnx_parity(
        registry, 2, registry.load_model(2), registry.snapshot(2), gate.Policy.load()
    )
    assert check.status == "pass"
    registry.set_version_tags(2, {ONNX_PARITY: "pass"})
    registry.promote(2, override=True, reason="spark parity test")
    customers = data.generate(10_000, seed=12)
    data.write_csv(customers, tmp_path / "customers.csv")
    assert main(["score", str(tmp_path / "customers.csv"), "-o", str(tmp_path / "s.csv")]) == 0
    scores = pd.read_csv(tmp_path / "s.csv")

    # the model's pyfunc predicts predict_proba: two columns, [stay, churn] per customer
    predict = mlflow.pyfunc.spark_udf(
        spark,
        "models:/churn-model@production",
        result_type=ArrayType(DoubleType()),
        env_manager="local",
    )
    columns = [schema.ID_COLUMN, *schema.FEATURE_NAMES]
    frame = spark.createDataFrame(customers[columns])
    features = F.struct(*[F.col(name) for name in schema.FEATURE_NAMES])
    scored = frame.select(schema.ID_COLUMN, predict(features)[1].alias("churn_probability"))
    by_spark = scored.toPandas()

    # a select without a shuffle keeps the input's order: customer by customer
    assert by_spark[schema.ID_COLUMN].tolist() == scores[schema.ID_COLUMN].tolist()
    difference = np.abs(
        by_spark["churn_probability"].to_numpy() - scores["churn_probability"].to_numpy()
    )
    assert difference.max() <= 1e-9, difference.max()  # the gate's parity bound
    print(f"Spark vs churnlab score, 10,000 customers: largest difference {difference.max():.1e}")
