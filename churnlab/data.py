"""Customer data: a seeded synthetic Telco generator, a loader for the real CSV, snapshots.

The generator writes exactly the layout of the public IBM Telco Customer Churn CSV, with
its vocabularies and its main effects (month-to-month contracts, short tenure, fiber-optic
internet and electronic-check payment raise churn). The loader accepts that CSV as
published and refuses anything else with a message naming the offending columns.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from churnlab import schema
from churnlab.errors import InputError

DEFAULT_ROWS = 7043  # the size of the published data set
DEFAULT_SEED = 42


def _choice(rng: np.random.Generator, values: tuple[str, ...], p, n: int) -> np.ndarray:
    return rng.choice(np.array(values, dtype=object), size=n, p=p)


def generate(n: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED, drift: float = 0.0) -> pd.DataFrame:
    """Return ``n`` synthetic customers in the Telco CSV layout (21 columns).

    ``drift`` in [0, 1] shifts the population the way a market change would (more
    month-to-month fiber customers paying more, shorter tenure); 0 is the reference one.
    """
    if n <= 0:
        raise InputError(f"n must be a positive number of rows, got {n}")
    if not 0.0 <= drift <= 1.0:
        raise InputError(f"drift must be in [0, 1], got {drift}")
    rng = np.random.default_rng(seed)
    yes_no = ("No", "Yes")

    gender = _choice(rng, ("Female", "Male"), [0.495, 0.505], n)
    senior = (rng.random(n) < 0.162).astype(np.int64)
    partner = _choice(rng, yes_no, [0.517, 0.483], n)
    dependents = np.where(
        partner == "Yes",
        _choice(rng, yes_no, [0.48, 0.52], n),
        _choice(rng, yes_no, [0.90, 0.10], n),
    )
    m2m = 0.55 + 0.25 * drift
    one_year = 0.21 - 0.1 * drift  # shares stay non-negative up to drift=1
    contract = _choice(
        rng, ("Month-to-month", "One year", "Two year"), [m2m, one_year, 1.0 - m2m - one_year], n
    )
    # tenure depends on the contract: long contracts belong to long-standing customers
    scale = np.select(
        [contract == "Month-to-month", contract == "One year"], [18.0, 40.0], 57.0
    ) * (1.0 - 0.4 * drift)
    tenure = np.clip(np.round(rng.gamma(2.0, scale / 2.0, n)), 0, 72).astype(np.int64)
    tenure[rng.random(n) < 0.0016] = 0  # brand-new customers with no bill yet

    phone = _choice(rng, yes_no, [0.097, 0.903], n)
    multiple = np.where(
        phone == "No", "No phone service", _choice(rng, ("No", "Yes"), [0.53, 0.47], n)
    )
    fiber = 0.44 + 0.2 * drift
    internet = _choice(rng, ("DSL", "Fiber optic", "No"), [0.34, fiber, 0.66 - fiber], n)
    has_net = internet != "No"
    addons = {}
    for col, p_yes in [
        ("OnlineSecurity", 0.37),
        ("OnlineBackup", 0.44),
        ("DeviceProtection", 0.44),
        ("TechSupport", 0.37),
        ("StreamingTV", 0.49),
        ("StreamingMovies", 0.50),
    ]:
        addons[col] = np.where(
            has_net, _choice(rng, ("No", "Yes"), [1 - p_yes, p_yes], n), "No internet service"
        )
    paperless = _choice(rng, yes_no, [0.41, 0.59], n)
    payment = _choice(
        rng,
        (
            "Electronic check",
            "Mailed check",
            "Bank transfer (automatic)",
            "Credit card (automatic)",
        ),
        [0.336, 0.229, 0.219, 0.216],
        n,
    )

    monthly = (
        20.0
        + np.where(phone == "Yes", 5.0, 0.0)
        + np.where(multiple == "Yes", 5.0, 0.0)
        + np.select([internet == "DSL", internet == "Fiber optic"], [25.0, 50.0], 0.0)
        + sum(np.where(addons[c] == "Yes", 5.0, 0.0) for c in addons)
        + rng.normal(0.0, 2.0, n)
    ) * (1.0 + 0.1 * drift)
    monthly = np.round(np.clip(monthly, 18.25, 118.75), 2)
    total = np.round(np.maximum(tenure * monthly * rng.normal(1.0, 0.03, n), 0.0), 2)
    total = np.where(tenure == 0, 0.0, np.maximum(total, monthly))

    logit = (
        -1.27
        + np.select([contract == "Month-to-month", contract == "One year"], [1.25, -0.45], -1.6)
        - 0.035 * tenure
        + np.where(internet == "Fiber optic", 0.85, np.where(internet == "No", -0.7, 0.0))
        + np.where(payment == "Electronic check", 0.75, 0.0)
        + np.where(paperless == "Yes", 0.3, 0.0)
        + 0.35 * senior
        - np.where(addons["OnlineSecurity"] == "Yes", 0.45, 0.0)
        - np.where(addons["TechSupport"] == "Yes", 0.4, 0.0)
        - np.where(partner == "Yes", 0.1, 0.0)
        - np.where(dependents == "Yes", 0.2, 0.0)
        + 0.008 * (monthly - 65.0)
    )
    churn = np.where(rng.random(n) < 1.0 / (1.0 + np.exp(-logit)), "Yes", "No")

    letters = rng.integers(65, 91, size=(n, 5), dtype=np.uint8).view("S5").ravel()
    ids = [f"{a:04d}-{b.decode()}" for a, b in zip(rng.integers(0, 10000, n), letters, strict=True)]
    frame = pd.DataFrame(
        {
            schema.ID_COLUMN: ids,
            "gender": gender,
            "SeniorCitizen": senior,
            "Partner": partner,
            "Dependents": dependents,
            "tenure": tenure,
            "PhoneService": phone,
            "MultipleLines": multiple,
            "InternetService": internet,
            **addons,
            "Contract": contract,
            "PaperlessBilling": paperless,
            "PaymentMethod": payment,
            "MonthlyCharges": monthly,
            "TotalCharges": total.astype(np.float64),
            schema.TARGET: churn,
        }
    )
    return frame[list(schema.CSV_COLUMNS)]


def to_csv_text(frame: pd.DataFrame) -> str:
    """Render a frame the way the published CSV looks (blank TotalCharges for tenure 0)."""
    out = frame.copy()
    if "TotalCharges" in out and "tenure" in out:
        total = out["TotalCharges"].map(lambda v: f"{v:.2f}".rstrip("0").rstrip("."))
        out["TotalCharges"] = total.where(out["tenure"] != 0, " ")
    return out.to_csv(index=False)


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` as a Telco-layout CSV, atomically (a temporary file then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(to_csv_text(frame), encoding="utf-8")
    tmp.replace(path)
    return path


def load_csv(path: str | Path) -> pd.DataFrame:
    """Read a Telco-layout CSV and return a validated frame.

    Handles the published file's quirks: a UTF-8 byte-order mark, blank ``TotalCharges``
    for customers with zero tenure, stray whitespace, ``SeniorCitizen`` as 0/1. Raises
    :class:`InputError` naming the missing or malformed columns.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    raw = path.read_bytes()
    if not raw.strip():
        raise InputError(f"{path}: the file is empty")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw:
        raise InputError(f"{path}: UTF-16 or binary data, not UTF-8 text; save the CSV as UTF-8")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the CSV as UTF-8"
        ) from None
    _check_complete_rows(text, path)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable CSV ({first})") from None
    return validate(frame, source=str(path))


def _check_complete_rows(text: str, path: Path) -> None:
    """Refuse rows with fewer fields than the header (a truncated or cut-off file).

    pandas pads such rows with blanks, which would otherwise surface as confusing
    "values outside" errors on every column after the cut.
    """
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, [])
        if len(header) == 1:
            for sep in (";", "\t", "|"):
                if sep in header[0]:
                    raise InputError(
                        f"{path}: fields are separated by {sep!r}; expected commas (CSV)"
                    )
        for row in reader:
            if len(row) > len(header):
                raise InputError(
                    f"{path}: line {reader.line_num} has {len(row)} fields but the header "
                    f"has {len(header)}"
                )
            if row and len(row) < len(header):
                raise InputError(
                    f"{path}: line {reader.line_num} has {len(row)} of {len(header)} fields; "
                    "the file looks truncated"
                )
    except csv.Error as exc:
        raise InputError(f"{path}: not a readable CSV ({exc})") from None


def validate(frame: pd.DataFrame, source: str = "data") -> pd.DataFrame:
    """Check and coerce a frame of strings or values to the schema; return a new frame."""
    frame = frame.rename(columns=lambda c: str(c).strip())
    required = [c for c in schema.CSV_COLUMNS if c != schema.ID_COLUMN]
    missing = [c for c in required if c not in frame.columns]
    if len(missing) == len(required):
        header = ",".join(str(c) for c in frame.columns)
        raise InputError(
            f"{source}: none of the Telco churn columns in the header "
            f"({header[:60]!r}); expected {', '.join(schema.CSV_COLUMNS[:3])}, ..., "
            f"{schema.TARGET}"
        )
    if missing:
        raise InputError(f"{source}: missing columns {missing}; expected the Telco churn layout")
    if len(frame) == 0:
        raise InputError(f"{source}: no rows")
    out = pd.DataFrame(index=frame.index)
    if schema.ID_COLUMN in frame:
        out[schema.ID_COLUMN] = frame[schema.ID_COLUMN].astype(str).str.strip()
    else:
        out[schema.ID_COLUMN] = [f"row-{i}" for i in range(len(frame))]
    problems: list[str] = []
    for feat in schema.FEATURES:
        col = frame[feat.name]
        text = col.astype(str).str.strip()
        if feat.is_categorical:
            bad = sorted(set(text) - set(feat.values))
            if bad:
                problems.append(f"{feat.name} has values outside {list(feat.values)}: {bad[:3]}")
            out[feat.name] = text.astype(object)
            continue
        if feat.name == "TotalCharges":
            text = text.where(text != "", "0")  # blank for brand-new customers in the real file
        values = pd.to_numeric(text, errors="coerce")
        bad_rows = int(values.isna().sum() + (~np.isfinite(values.fillna(0))).sum())
        if bad_rows:
            problems.append(f"{feat.name} has {bad_rows} non-numeric value(s)")
            continue
        lo, hi = feat.minimum, feat.maximum
        if lo is not None and ((values < lo) | (values > hi)).any():
            problems.append(f"{feat.name} has values outside [{lo:g}, {hi:g}]")
            continue
        if feat.kind == "integer":
            if (values != values.round()).any():
                problems.append(f"{feat.name} has non-integer values")
                continue
            out[feat.name] = values.astype(np.int64)
        else:
            out[feat.name] = values.astype(np.float64)
    target = frame[schema.TARGET].astype(str).str.strip()
    bad_target = sorted(set(target) - set(schema.TARGET_VALUES))
    if bad_target:
        problems.append(
            f"{schema.TARGET} has values outside {list(schema.TARGET_VALUES)}: {bad_target[:3]}"
        )
    out[schema.TARGET] = target
    if problems:
        raise InputError(f"{source}: malformed columns: " + "; ".join(problems))
    return out[list(schema.CSV_COLUMNS)].reset_index(drop=True)


def features(frame: pd.DataFrame) -> pd.DataFrame:
    """The model input columns of a frame, in schema order and dtypes."""
    return frame[list(schema.FEATURE_NAMES)].astype(schema.pandas_dtypes())


def labels(frame: pd.DataFrame) -> np.ndarray:
    """The target as 0/1."""
    return (frame[schema.TARGET] == "Yes").astype(np.int64).to_numpy()


def split(
    frame: pd.DataFrame, seed: int = DEFAULT_SEED, evaluation: float = 0.25, reference: float = 0.15
) -> dict[str, pd.DataFrame]:
    """Split into training, evaluation and drift-reference parts (stratified on Churn)."""
    from sklearn.model_selection import train_test_split

    if len(frame) < 40:
        raise InputError(f"need at least 40 rows to train and evaluate, got {len(frame)}")
    stratify = frame[schema.TARGET] if frame[schema.TARGET].nunique() > 1 else None
    rest, evaluation_part = train_test_split(
        frame, test_size=evaluation, random_state=seed, stratify=stratify
    )
    strat_rest = rest[schema.TARGET] if stratify is not None else None
    training, reference_part = train_test_split(
        rest, test_size=reference / (1 - evaluation), random_state=seed, stratify=strat_rest
    )
    return {
        "training": training.reset_index(drop=True),
        "evaluation": evaluation_part.reset_index(drop=True),
        "reference": reference_part.reset_index(drop=True),
    }


@dataclass(frozen=True)
class Snapshot:
    """A data file written once, named and identified by its content digest."""

    kind: str
    path: Path
    digest: str
    rows: int

    def load(self) -> pd.DataFrame:
        return load_csv(self.path)


def digest_of(frame: pd.DataFrame) -> str:
    """SHA-256 (first 16 hex digits) of the frame's canonical CSV text."""
    return hashlib.sha256(to_csv_text(frame).encode("utf-8")).hexdigest()[:16]


def write_snapshot(frame: pd.DataFrame, kind: str, folder: str | Path) -> Snapshot:
    """Write ``frame`` to ``folder/<kind>-<digest>.csv`` (kept if already there)."""
    digest = digest_of(frame)
    path = Path(folder) / f"{kind}-{digest}.csv"
    if not path.exists():
        write_csv(frame, path)
    return Snapshot(kind=kind, path=path, digest=digest, rows=len(frame))


def population_stability(
    reference: pd.DataFrame, current: pd.DataFrame, bins: int = 10
) -> pd.DataFrame:
    """Per-feature population stability index (PSI) of ``current`` against ``reference``.

    Numeric features are binned on the reference's quantiles, categorical ones by value.
    PSI under 0.1 is usually read as stable, 0.1-0.25 as a moderate shift, above as major.
    """
    eps = 1e-4
    rows = []
    for feat in schema.MODEL_FEATURES:
        ref, cur = reference[feat.name], current[feat.name]
        if feat.is_categorical or feat.kind == "integer" and ref.nunique() <= 2:
            cats = sorted(set(ref.astype(str)) | set(cur.astype(str)))
            p = ref.astype(str).value_counts(normalize=True).reindex(cats, fill_value=0)
            q = cur.astype(str).value_counts(normalize=True).reindex(cats, fill_value=0)
        else:
            edges = np.unique(np.quantile(ref.astype(float), np.linspace(0, 1, bins + 1)))
            edges[0], edges[-1] = -np.inf, np.inf
            p = pd.Series(np.histogram(ref, edges)[0] / len(ref))
            q = pd.Series(np.histogram(cur, edges)[0] / len(cur))
        p, q = p.to_numpy() + eps, q.to_numpy() + eps
        psi = float(np.sum((q - p) * np.log(q / p)))
        level = "stable" if psi < 0.1 else "moderate" if psi < 0.25 else "major"
        rows.append({"feature": feat.name, "psi": round(psi, 4), "level": level})
    return pd.DataFrame(rows).sort_values("psi", ascending=False).reset_index(drop=True)
