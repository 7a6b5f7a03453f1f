"""Batch scoring: `churnlab score` files in, scores out, every row accounted for, atomically."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import prove_parity, read_metadata

from churnlab import batch, data, schema
from churnlab.cli import main
from churnlab.errors import InputError
from churnlab.scoring import Scorer


@pytest.fixture
def production(registry):
    """The registry with v2 (random forest) in production, its ONNX graph proven."""
    prove_parity(registry, 2)
    registry.promote(2, override=True, reason="batch tests")
    return registry


def expected(registry, frame: pd.DataFrame, version: int = 2) -> np.ndarray:
    """What the served scorer gives these customers in-process."""
    columns = [schema.ID_COLUMN, *schema.FEATURE_NAMES]
    return Scorer.from_registry(registry, version).churn_probability(
        frame[columns].to_dict("records")
    )


def score(*args: str) -> int:
    return main(["score", *args, "--quiet"])


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(("source", "target"), [("csv", "csv"), ("parquet", "parquet")])
def test_every_customer_is_scored_like_the_scorer_in_process(
    production, tmp_path, capsys, source, target
):
    customers = data.generate(2500, seed=5)
    given = tmp_path / f"customers.{source}"
    if source == "csv":
        data.write_csv(customers, given)  # the published layout: blank TotalCharges at tenure 0
    else:
        customers.to_parquet(given, index=False)
    output = tmp_path / f"scores.{target}"

    assert score(str(given), "-o", str(output), "--chunk-rows", "1000") == 0

    line = capsys.readouterr().out.strip()
    assert line.startswith("Scored 2,500 customers with churn-model v2 (onnx, @production)")
    assert "0 rejected" in line
    scores = pd.read_csv(output) if target == "csv" else pd.read_parquet(output)
    assert list(scores.columns) == [schema.ID_COLUMN, "churn_probability", "churn"]
    assert scores[schema.ID_COLUMN].tolist() == customers[schema.ID_COLUMN].tolist()
    want = expected(production, customers)
    assert np.array_equal(scores["churn_probability"].to_numpy(), want)  # exactly, CSV too
    assert scores["churn"].tolist() == (want >= 0.5).tolist()
    rejects = pd.read_csv(tmp_path / "scores.rejects.csv")
    assert rejects.empty and list(rejects.columns[:2]) == ["row", "reason"]


def test_csv_in_parquet_out_with_the_pipeline_when_parity_is_unproven(registry, tmp_path):
    registry.promote(1, override=True, reason="batch tests")
    customers = data.generate(800, seed=8).drop(columns=[schema.ID_COLUMN, "gender"])
    data.write_csv(customers, tmp_path / "in.csv")

    result = batch.score_file(tmp_path / "in.csv", tmp_path / "out.parquet")

    assert (result.scorer, result.version, result.accepted, result.rejected) == (
        "sklearn",
        1,
        800,
        0,
    )
    scores = pd.read_parquet(tmp_path / "out.parquet")
    assert list(scores.columns) == ["churn_probability", "churn"]  # no customerID to carry
    pipeline = registry.load_model(1)
    frame = data.features(customers.assign(gender="Female"))
    want = pipeline.predict_proba(frame)[:, 1]
    assert np.abs(scores["churn_probability"].to_numpy() - want).max() <= 1e-12


def bad_batch() -> tuple[pd.DataFrame, dict[int, str]]:
    """40 customers as strings, some broken; 1-based data row -> the reason expected."""
    frame = data.generate(40, seed=3).astype(str)
    frame["TotalCharges"] = frame["TotalCharges"].where(frame["tenure"] != "0", " ")
    broken = {
        3: ("Contract", "monthly"),
        5: ("tenure", "abc"),
        7: ("MonthlyCharges", "-5"),
        8: ("tenure", "3.5"),
        11: ("PaymentMethod", ""),
        13: ("TotalCharges", "inf"),
        17: ("gender", "X"),
        21: ("SeniorCitizen", "2"),
    }
    for row, (column, value) in broken.items():
        frame.loc[row - 1, column] = value
    frame.loc[30 - 1, "Partner"] = " Yes "  # surrounding blanks are forgiven
    frame.loc[33 - 1, ["Dependents", "tenure"]] = ["maybe", "-1"]  # two problems, one row
    reasons = {
        3: "Contract: 'monthly' is not one of ['Month-to-month', 'One year', 'Two year']",
        5: "tenure: 'abc' is not a number",
        7: "MonthlyCharges: -5 is outside [0, 1000]",
        8: "tenure: 3.5 is not a whole number",
        11: "PaymentMethod is missing",
        13: "TotalCharges: 'inf' is not finite",
        17: "gender: 'X' is not one of ['Female', 'Male']",
        21: "SeniorCitizen: 2 is outside [0, 1]",
        33: "Dependents: 'maybe' is not one of ['No', 'Yes']; tenure: -1 is outside [0, 120]",
    }
    return frame, reasons


def test_bad_rows_go_to_the_rejects_file_with_their_row_number_and_reason(
    production, tmp_path, capsys
):
    frame, reasons = bad_batch()
    frame.to_csv(tmp_path / "in.csv", index=False)

    assert (
        score(str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv"), "--chunk-rows", "7") == 0
    )

    assert "Scored 31 customers with churn-model v2 (onnx, @production)" in capsys.readouterr().out
    rejects = pd.read_csv(tmp_path / "out.rejects.csv", dtype=str, keep_default_na=False)
    assert dict(zip(rejects["row"].astype(int), rejects["reason"], strict=True)) == reasons
    assert rejects[schema.ID_COLUMN].tolist() == [frame[schema.ID_COLUMN][r - 1] for r in reasons]
    assert rejects.loc[0, "Contract"] == "monthly"  # the row as given, to fix and re-run
    scores = pd.read_csv(tmp_path / "out.csv")
    kept = frame.drop(index=[r - 1 for r in reasons]).reset_index(drop=True)
    assert scores[schema.ID_COLUMN].tolist() == kept[schema.ID_COLUMN].tolist()
    valid = data.validate(kept)  # strips " Yes " and reads the blank TotalCharges as 0
    assert np.array_equal(scores["churn_probability"].to_numpy(), expected(production, valid))
    assert read_metadata(tmp_path / "out.csv")["rows"] == {
        "accepted": 31,
        "rejected": 9,
        "total": 40,
    }


def test_typed_parquet_columns_are_checked_too(production, tmp_path):
    frame = data.generate(10, seed=4)
    frame["tenure"] = frame["tenure"].astype("float64")
    frame.loc[1, "tenure"] = np.nan
    frame.loc[2, "MonthlyCharges"] = 5000.0
    frame.loc[3, "Contract"] = None
    frame.to_parquet(tmp_path / "in.parquet", index=False)

    result = batch.score_file(tmp_path / "in.parquet", tmp_path / "out.parquet")

    assert (result.accepted, result.rejected) == (7, 3)
    rejects = pd.read_csv(tmp_path / "out.rejects.csv")
    assert rejects["row"].tolist() == [2, 3, 4]
    assert rejects["reason"].tolist() == [
        "tenure is missing",
        "MonthlyCharges: 5000 is outside [0, 1000]",
        "Contract is missing",
    ]


def test_row_numbers_count_across_chunks():
    frame, reasons = bad_batch()
    found = {}
    for start in range(0, len(frame), 6):
        checked = batch.check_chunk(frame.iloc[start : start + 6], first_row=start + 1)
        found.update(zip(checked.rejects["row"], checked.rejects["reason"], strict=True))
    assert found == reasons


def test_a_missing_column_is_one_line_and_exit_2(production, tmp_path, capsys):
    data.generate(20).drop(columns=["tenure"]).to_csv(tmp_path / "in.csv", index=False)

    assert score(str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv")) == 2

    err = capsys.readouterr().err
    assert err == (
        "churnlab: in.csv: missing columns ['tenure']; expected the Telco churn layout\n"
    )
    assert files(tmp_path) == ["in.csv"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("in.csv", "", "in.csv: the file is empty"),
        ("in.txt", "a,b\n", "input in.txt: unknown extension '.txt'"),
        ("in.csv", "x;y\n1;2\n", "in.csv: none of the Telco churn columns in the header"),
    ],
)
def test_files_that_cannot_be_scored_are_refused_with_one_line(
    production, tmp_path, capsys, name, text, message
):
    (tmp_path / name).write_text(text)
    assert score(str(tmp_path / name), "-o", str(tmp_path / "out.csv")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"churnlab: {message}") and err.count("\n") == 1
    assert files(tmp_path) == [name]


def test_an_empty_stage_is_refused_with_one_line_and_exit_1(registry, tmp_path, capsys):
    data.write_csv(data.generate(20), tmp_path / "in.csv")

    assert score(str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv")) == 1

    err = capsys.readouterr().err
    assert err == (
        "churnlab: churn-model has no version in production: nothing to score with "
        "(run `churnlab promote VERSION`)\n"
    )
    assert files(tmp_path) == ["in.csv"]


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
@pytest.mark.parametrize("target", ["out.csv", "out.parquet"])
def test_an_interrupted_run_leaves_no_half_written_file(
    production, tmp_path, monkeypatch, failure, target
):
    data.write_csv(data.generate(3000, seed=9), tmp_path / "in.csv")
    (tmp_path / "out.rejects.csv").write_text("an earlier run's rejects\n")
    real = Scorer.churn_probability_of_columns
    calls = []

    def fail_after_the_first_chunk(self, columns):
        calls.append(len(columns["tenure"]))
        if len(calls) > 1:
            raise failure("stopped mid-run")
        return real(self, columns)

    monkeypatch.setattr(Scorer, "churn_probability_of_columns", fail_after_the_first_chunk)

    with pytest.raises(failure):
        batch.score_file(tmp_path / "in.csv", tmp_path / target, chunk_rows=1000)

    assert calls == [1000, 1000]
    assert files(tmp_path) == ["in.csv", "out.rejects.csv"]  # no temporary file either
    assert (tmp_path / "out.rejects.csv").read_text() == "an earlier run's rejects\n"
    runs = production.client.search_runs(
        [production.client.get_experiment_by_name(batch.EXPERIMENT_NAME).experiment_id]
    )
    assert [r.info.status for r in runs] == ["KILLED" if failure is KeyboardInterrupt else "FAILED"]


def test_an_interrupt_on_the_command_line_exits_130(production, tmp_path, monkeypatch, capsys):
    data.write_csv(data.generate(300), tmp_path / "in.csv")

    def interrupt(self, columns):
        raise KeyboardInterrupt

    monkeypatch.setattr(Scorer, "churn_probability_of_columns", interrupt)
    assert score(str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv")) == 130
    assert capsys.readouterr().err == "churnlab: interrupted\n"
    assert files(tmp_path) == ["in.csv"]


@pytest.mark.parametrize("target", ["out.csv", "out.parquet"])
def test_what_scored_is_recorded_with_the_output_and_as_an_mlflow_run(production, tmp_path, target):
    frame, _ = bad_batch()
    frame.to_csv(tmp_path / "in.csv", index=False)
    digest = hashlib.sha256((tmp_path / "in.csv").read_bytes()).hexdigest()

    result = batch.score_file(tmp_path / "in.csv", tmp_path / target)

    found = read_metadata(tmp_path / target)
    mv = production.version(2)
    assert found["model_name"] == "churn-model"
    assert (found["version"], found["run_id"], found["stage"]) == (2, mv.run_id, "production")
    assert found["input_sha256"] == digest and found["input"] == "in.csv"
    assert found["rows"] == {"accepted": 31, "rejected": 9, "total": 40}
    assert found["scorer"] == "onnx" and found["batch_run_id"] == result.batch_run_id
    if target.endswith(".csv"):
        assert json.loads((tmp_path / "out.csv.json").read_text()) == found
    else:
        assert not (tmp_path / "out.parquet.json").exists()

    run = production.client.get_run(result.batch_run_id)
    experiment = production.client.get_experiment(run.info.experiment_id)
    assert experiment.name == "churnlab-batch"
    assert run.info.status == "FINISHED"
    assert run.data.params["model_version"] == "2"
    assert run.data.params["model_run_id"] == mv.run_id
    assert run.data.params["input_sha256"] == digest
    assert run.data.params["scorer"] == "onnx"
    assert run.data.metrics["rows_accepted"] == 31 and run.data.metrics["rows_rejected"] == 9
    assert not any("password" in k.lower() or "token" in k.lower() for k in run.data.params)


def test_staging_can_be_scored_too(registry, tmp_path):
    registry.stage(1, override=True, reason="batch tests")
    data.write_csv(data.generate(50), tmp_path / "in.csv")
    result = batch.score_file(tmp_path / "in.csv", tmp_path / "out.csv", stage="staging")
    assert (result.stage, result.version, result.accepted) == ("staging", 1, 50)


def test_the_output_is_not_the_input(production, tmp_path):
    data.write_csv(data.generate(50), tmp_path / "in.csv")
    with pytest.raises(InputError, match="three different files"):
        batch.score_file(tmp_path / "in.csv", tmp_path / "in.csv")
