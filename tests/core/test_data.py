"""The synthetic Telco generator, the CSV loader and its refusals, snapshots and drift (PSI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnlab import data, schema
from churnlab.errors import InputError

PUBLISHED_CHURN_RATE = 0.265  # 1869 of 7043 customers in the IBM Telco file


@pytest.fixture(scope="module")
def population() -> pd.DataFrame:
    """A full-size synthetic population (the size of the published file)."""
    return data.generate(data.DEFAULT_ROWS, seed=42)


def churn_rate(frame: pd.DataFrame) -> float:
    return float((frame[schema.TARGET] == "Yes").mean())


# ---------------------------------------------------------------- generator


def test_generator_is_deterministic_per_seed():
    a, b = data.generate(400, seed=7), data.generate(400, seed=7)
    pd.testing.assert_frame_equal(a, b)


def test_generator_differs_across_seeds():
    a, b = data.generate(400, seed=7), data.generate(400, seed=8)
    assert not a.equals(b)
    assert (a["tenure"].to_numpy() != b["tenure"].to_numpy()).any()
    assert data.digest_of(a) != data.digest_of(b)


def test_generator_has_the_21_telco_columns_in_order(population):
    assert len(schema.CSV_COLUMNS) == 21
    assert list(population.columns) == list(schema.CSV_COLUMNS)
    assert population.columns[0] == "customerID" and population.columns[-1] == "Churn"
    assert len(population) == data.DEFAULT_ROWS


def test_generator_uses_the_schema_vocabularies_and_ranges(population):
    for feat in schema.FEATURES:
        column = population[feat.name]
        if feat.is_categorical:
            assert set(column) <= set(feat.values), feat.name
            assert column.nunique() >= 2, feat.name
        else:
            assert column.between(feat.minimum, feat.maximum).all(), feat.name
    assert set(population["SeniorCitizen"]) == {0, 1}
    assert set(population[schema.TARGET]) == set(schema.TARGET_VALUES)
    assert population[schema.ID_COLUMN].str.fullmatch(r"\d{4}-[A-Z]{5}").all()
    # the dependent vocabularies of the real file
    no_phone = population["PhoneService"] == "No"
    assert (population.loc[no_phone, "MultipleLines"] == "No phone service").all()
    no_net = population["InternetService"] == "No"
    assert (population.loc[no_net, "OnlineSecurity"] == "No internet service").all()
    assert (population.loc[~no_net, "OnlineSecurity"] != "No internet service").all()


def test_generated_frame_passes_its_own_validation(population):
    checked = data.validate(population)
    assert list(checked.columns) == list(schema.CSV_COLUMNS)
    assert len(checked) == len(population)


@pytest.mark.parametrize("seed", [42, 1, 2, 3])
def test_churn_rate_is_near_the_published_rate(seed):
    rate = churn_rate(data.generate(data.DEFAULT_ROWS, seed=seed))
    assert abs(rate - PUBLISHED_CHURN_RATE) < 0.02, rate


@pytest.mark.parametrize(
    ("mask", "what"),
    [
        (lambda f: f["Contract"] == "Month-to-month", "month-to-month contract"),
        (lambda f: f["tenure"] < 12, "tenure under a year"),
        (lambda f: f["InternetService"] == "Fiber optic", "fiber-optic internet"),
        (lambda f: f["PaymentMethod"] == "Electronic check", "electronic-check payment"),
    ],
)
def test_known_risk_factors_raise_churn(population, mask, what):
    inside = mask(population)
    assert 0.05 < inside.mean() < 0.95, f"{what} should be a real segment"
    with_it, without = churn_rate(population[inside]), churn_rate(population[~inside])
    assert with_it > without + 0.05, f"{what}: {with_it:.3f} vs {without:.3f}"


def test_total_charges_is_about_tenure_times_monthly_charges(population):
    billed = population[population["tenure"] > 0]
    ratio = billed["TotalCharges"] / (billed["tenure"] * billed["MonthlyCharges"])
    assert abs(ratio.median() - 1.0) < 0.02
    assert ratio.between(0.8, 1.2).all()
    new = population[population["tenure"] == 0]
    assert (new["TotalCharges"] == 0).all()


def test_drift_works_over_its_whole_range_and_shifts_the_population():
    shares = []
    for drift in (0.0, 0.5, 0.97, 1.0):
        frame = data.generate(3000, seed=6, drift=drift)
        assert set(frame["Contract"]) <= set(schema.feature("Contract").values)
        shares.append(float((frame["Contract"] == "Month-to-month").mean()))
    assert shares == sorted(shares) and shares[-1] > shares[0] + 0.15


def test_generate_refuses_bad_arguments():
    with pytest.raises(InputError, match="n must be"):
        data.generate(0)
    with pytest.raises(InputError, match="drift"):
        data.generate(100, drift=1.5)


# ---------------------------------------------------------------- loader


def published_layout(frame: pd.DataFrame) -> bytes:
    """Bytes laid out like the published IBM file: UTF-8 BOM, CRLF, blank TotalCharges."""
    text = data.to_csv_text(frame)
    return ("\ufeff" + text.replace("\n", "\r\n")).encode("utf-8")


def test_loader_accepts_the_published_layout_with_its_quirks(tmp_path):
    frame = data.generate(300, seed=5)
    frame.loc[[3, 17], "tenure"] = 0  # brand-new customers: blank TotalCharges in the file
    frame.loc[[3, 17], "TotalCharges"] = 0.0
    raw = published_layout(frame)
    assert raw.startswith(b"\xef\xbb\xbf")
    assert raw.count(b", ,") == 2  # the blank " " TotalCharges quirk
    path = tmp_path / "WA_Fn-UseC_-Telco-Customer-Churn.csv"
    path.write_bytes(raw)

    loaded = data.load_csv(path)
    assert list(loaded.columns) == list(schema.CSV_COLUMNS)  # no BOM left on customerID
    assert len(loaded) == 300
    assert loaded.loc[[3, 17], "TotalCharges"].tolist() == [0.0, 0.0]
    assert loaded["SeniorCitizen"].dtype == np.int64
    assert set(loaded["SeniorCitizen"]) <= {0, 1}
    assert loaded["TotalCharges"].dtype == np.float64
    np.testing.assert_allclose(loaded["MonthlyCharges"], frame["MonthlyCharges"])
    np.testing.assert_allclose(loaded["TotalCharges"], frame["TotalCharges"], atol=0.005)
    assert (loaded["Contract"] == frame["Contract"]).all()


def test_loader_strips_stray_whitespace(tmp_path):
    frame = data.generate(60, seed=2)
    text = data.to_csv_text(frame).replace(",Yes,", ", Yes ,")
    path = tmp_path / "spaces.csv"
    path.write_text(text, encoding="utf-8")
    loaded = data.load_csv(path)
    assert set(loaded["Partner"]) <= {"Yes", "No"}


def _write(tmp_path: Path, name: str, content: bytes | str) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def _good_text(rows: int = 80) -> str:
    return data.to_csv_text(data.generate(rows, seed=3))


def test_missing_columns_are_named(tmp_path):
    frame = data.generate(80, seed=3).drop(columns=["Contract", "Churn"])
    path = _write(tmp_path, "missing.csv", frame.to_csv(index=False))
    with pytest.raises(InputError, match=r"missing columns \['Contract', 'Churn'\]"):
        data.load_csv(path)


def test_out_of_vocabulary_values_are_named(tmp_path):
    frame = data.generate(80, seed=3)
    frame["Contract"] = frame["Contract"].astype(object)
    frame.loc[4, "Contract"] = "monthly"
    path = _write(tmp_path, "vocab.csv", data.to_csv_text(frame))
    with pytest.raises(InputError) as err:
        data.load_csv(path)
    assert "Contract" in str(err.value) and "monthly" in str(err.value)
    assert "\n" not in str(err.value)


def test_non_numeric_numbers_are_named(tmp_path):
    text = _good_text()
    lines = text.splitlines()
    cells = lines[2].split(",")
    cells[schema.CSV_COLUMNS.index("MonthlyCharges")] = "cheap"
    lines[2] = ",".join(cells)
    path = _write(tmp_path, "numbers.csv", "\n".join(lines) + "\n")
    with pytest.raises(InputError, match="MonthlyCharges has 1 non-numeric"):
        data.load_csv(path)


def test_out_of_range_numbers_are_named(tmp_path):
    frame = data.generate(80, seed=3)
    frame.loc[0, "tenure"] = -4
    path = _write(tmp_path, "range.csv", frame.to_csv(index=False))
    with pytest.raises(InputError, match="tenure has values outside"):
        data.load_csv(path)


def test_empty_file_is_refused(tmp_path):
    with pytest.raises(InputError, match="empty"):
        data.load_csv(_write(tmp_path, "empty.csv", ""))
    with pytest.raises(InputError, match="empty"):
        data.load_csv(_write(tmp_path, "blank.csv", "\n\n  \n"))


def test_header_only_file_is_refused(tmp_path):
    path = _write(tmp_path, "header.csv", ",".join(schema.CSV_COLUMNS) + "\n")
    with pytest.raises(InputError, match="no rows"):
        data.load_csv(path)


def test_truncated_file_is_refused(tmp_path):
    text = _good_text()
    cut = text[: len(text) // 2]  # a download that stopped in the middle of a row
    assert not cut.endswith("\n")
    path = _write(tmp_path, "truncated.csv", cut)
    with pytest.raises(InputError, match="truncated") as err:
        data.load_csv(path)
    assert "line " in str(err.value)


def test_non_utf8_bytes_are_refused(tmp_path):
    raw = _good_text().encode("utf-8")
    path = _write(tmp_path, "latin1.csv", raw[:500] + "Müller".encode("latin-1") + raw[500:])
    with pytest.raises(InputError, match="not UTF-8"):
        data.load_csv(path)


def test_missing_file_and_garbage_are_refused(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        data.load_csv(tmp_path / "nope.csv")
    garbage = _write(tmp_path, "garbage.csv", "just,some\ntext,here,and,more,fields\n")
    with pytest.raises(InputError):
        data.load_csv(garbage)


# ---------------------------------------------------------------- snapshots and drift


def test_snapshot_digest_is_stable_and_content_addressed(tmp_path):
    frame = data.generate(200, seed=9)
    digest = data.digest_of(frame)
    assert digest == data.digest_of(data.generate(200, seed=9))
    assert len(digest) == 16 and all(c in "0123456789abcdef" for c in digest)

    snap = data.write_snapshot(frame, "evaluation", tmp_path)
    assert snap.path.name == f"evaluation-{digest}.csv"
    assert snap.digest == digest and snap.rows == 200
    # reading a snapshot back gives the same digest (the registry checks this)
    assert data.digest_of(snap.load()) == digest
    # writing again keeps the file and the digest
    again = data.write_snapshot(frame, "evaluation", tmp_path)
    assert again == snap
    assert sorted(p.name for p in tmp_path.iterdir()) == [snap.path.name]

    changed = frame.copy()
    changed.loc[0, "MonthlyCharges"] += 1.0
    assert data.digest_of(changed) != digest


def test_split_is_stratified_and_disjoint():
    frame = data.generate(2000, seed=4)
    parts = data.split(frame, seed=4)
    assert set(parts) == {"training", "evaluation", "reference"}
    assert sum(len(p) for p in parts.values()) == len(frame)
    ids = [set(p[schema.ID_COLUMN]) for p in parts.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    overall = churn_rate(frame)
    for part in parts.values():
        assert abs(churn_rate(part) - overall) < 0.02
    with pytest.raises(InputError, match="at least 40 rows"):
        data.split(frame.head(10))


def test_psi_is_near_zero_for_the_same_population():
    psi = data.population_stability(data.generate(4000, seed=1), data.generate(4000, seed=2))
    assert set(psi["feature"]) == {f.name for f in schema.MODEL_FEATURES}
    assert psi["psi"].max() < 0.05
    assert (psi["level"] == "stable").all()


def test_psi_is_large_for_a_drifted_population():
    reference = data.generate(4000, seed=1)
    psi = data.population_stability(reference, data.generate(4000, seed=2, drift=1.0))
    by_feature = dict(zip(psi["feature"], psi["psi"], strict=True))
    assert psi["psi"].max() > 0.25
    for name in ("Contract", "tenure", "MonthlyCharges"):
        assert by_feature[name] > 0.1, (name, by_feature[name])
    assert "major" in set(psi["level"])
    # sorted worst first, for reports
    assert psi["psi"].is_monotonic_decreasing
