"""The feature schema: the one place that says which columns a customer record has.

Training, the model signature, the gate's schema check and the serving API all read it
from here. The layout is that of the public IBM Telco Customer Churn CSV (21 columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["categorical", "integer", "number"]

ID_COLUMN = "customerID"
TARGET = "Churn"
TARGET_VALUES = ("No", "Yes")

_YES_NO = ("No", "Yes")
_INTERNET_ADDON = ("No", "Yes", "No internet service")


@dataclass(frozen=True)
class Feature:
    """One input column: its name, kind, allowed values (categorical) or range (numeric)."""

    name: str
    kind: Kind
    values: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    used_by_model: bool = True
    description: str = ""

    @property
    def is_categorical(self) -> bool:
        return self.kind == "categorical"


FEATURES: tuple[Feature, ...] = (
    Feature(
        "gender",
        "categorical",
        ("Female", "Male"),
        used_by_model=False,
        description="Accepted but not used by the model: a protected attribute (fairness).",
    ),
    Feature("SeniorCitizen", "integer", minimum=0, maximum=1, description="1 if 65 or older"),
    Feature("Partner", "categorical", _YES_NO),
    Feature("Dependents", "categorical", _YES_NO),
    Feature("tenure", "integer", minimum=0, maximum=120, description="months as a customer"),
    Feature("PhoneService", "categorical", _YES_NO),
    Feature("MultipleLines", "categorical", ("No", "Yes", "No phone service")),
    Feature("InternetService", "categorical", ("DSL", "Fiber optic", "No")),
    Feature("OnlineSecurity", "categorical", _INTERNET_ADDON),
    Feature("OnlineBackup", "categorical", _INTERNET_ADDON),
    Feature("DeviceProtection", "categorical", _INTERNET_ADDON),
    Feature("TechSupport", "categorical", _INTERNET_ADDON),
    Feature("StreamingTV", "categorical", _INTERNET_ADDON),
    Feature("StreamingMovies", "categorical", _INTERNET_ADDON),
    Feature("Contract", "categorical", ("Month-to-month", "One year", "Two year")),
    Feature("PaperlessBilling", "categorical", _YES_NO),
    Feature(
        "PaymentMethod",
        "categorical",
        (
            "Electronic check",
            "Mailed check",
            "Bank transfer (automatic)",
            "Credit card (automatic)",
        ),
    ),
    Feature("MonthlyCharges", "number", minimum=0.0, maximum=1000.0, description="USD"),
    Feature("TotalCharges", "number", minimum=0.0, maximum=100000.0, description="USD"),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
MODEL_FEATURES: tuple[Feature, ...] = tuple(f for f in FEATURES if f.used_by_model)
CATEGORICAL: tuple[str, ...] = tuple(f.name for f in MODEL_FEATURES if f.is_categorical)
NUMERIC: tuple[str, ...] = tuple(f.name for f in MODEL_FEATURES if not f.is_categorical)
#: The 21 columns of the Telco CSV, in the published order.
CSV_COLUMNS: tuple[str, ...] = (ID_COLUMN, *FEATURE_NAMES, TARGET)

#: One plausible customer, a record as ``POST /predict`` takes it (the API's example, the
#: serving page's form, the smoke check's requests).
EXAMPLE_RECORD: dict[str, Any] = {
    "customerID": "7590-VHVEG",
    "gender": "Female",
    "SeniorCitizen": 0,
    "Partner": "Yes",
    "Dependents": "No",
    "tenure": 1,
    "PhoneService": "No",
    "MultipleLines": "No phone service",
    "InternetService": "DSL",
    "OnlineSecurity": "No",
    "OnlineBackup": "Yes",
    "DeviceProtection": "No",
    "TechSupport": "No",
    "StreamingTV": "No",
    "StreamingMovies": "No",
    "Contract": "Month-to-month",
    "PaperlessBilling": "Yes",
    "PaymentMethod": "Electronic check",
    "MonthlyCharges": 29.85,
    "TotalCharges": 29.85,
}

_BY_NAME = {f.name: f for f in FEATURES}

_MLFLOW_TYPES = {"categorical": "string", "integer": "long", "number": "double"}
_PANDAS_DTYPES = {"categorical": "object", "integer": "int64", "number": "float64"}


def feature(name: str) -> Feature:
    """Return the feature called ``name``; raise ``KeyError`` naming the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown feature {name!r}; known: {list(FEATURE_NAMES)}") from None


def pandas_dtypes() -> dict[str, str]:
    """Column -> pandas dtype of a model input frame."""
    return {f.name: _PANDAS_DTYPES[f.kind] for f in FEATURES}


def input_schema():
    """The MLflow input schema of the model signature (what the serving API accepts)."""
    from mlflow.types import ColSpec, Schema

    return Schema([ColSpec(_MLFLOW_TYPES[f.kind], f.name) for f in FEATURES])


def describe() -> list[dict]:
    """The schema as plain data (for `/metadata`, reports and docs)."""
    out = []
    for f in FEATURES:
        entry: dict = {
            "name": f.name,
            "type": _MLFLOW_TYPES[f.kind],
            "used_by_model": f.used_by_model,
        }
        if f.values:
            entry["values"] = list(f.values)
        if f.minimum is not None:
            entry["minimum"] = f.minimum
            entry["maximum"] = f.maximum
        if f.description:
            entry["description"] = f.description
        out.append(entry)
    return out
