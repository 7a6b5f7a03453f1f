"""API fuzzing: requests generated from the backend's own OpenAPI schema (schemathesis).

A real uvicorn process serves a staged version on 127.0.0.1. Schemathesis reads its
``/openapi.json`` and generates ``CHURNLAB_FUZZ_CASES`` requests (``make test`` a few
hundred, ``make test-load`` the full 1,500): schema-valid ones (which must be
answered 200 with a body that matches the documented response) and schema-breaking ones
(which must be refused with a documented 4xx, never a 5xx). ``POST /predict`` and MLflow's
scoring protocol (``POST /invocations`` in its JSON formats and CSV, ``GET /ping``,
``GET /version``) are fuzzed alike. The server must still be healthy and correct afterwards.

The backend runs with ``SERVING_MAX_RECORDS=16``: the schema's ``maxItems`` follows it,
which keeps generated batches small enough for a thousand cases to take seconds, and the
batch limit itself is fuzzed (too-long batches are among the negative cases).
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
import requests
from support import running_backend, staged_copy

from churnlab.schema import EXAMPLE_RECORD

pytestmark = [pytest.mark.slow, pytest.mark.load, pytest.mark.xdist_group("fuzz-backend")]

#: the cases in all, shared out as the full run's 1,500 are: 620 schema-valid and 400
#: schema-breaking requests to POST /predict, 300 and 200 to POST /invocations
CASES = int(os.environ.get("CHURNLAB_FUZZ_CASES", "300"))
POSITIVE_CASES = round(CASES * 620 / 1500)  # schema-valid requests to POST /predict
NEGATIVE_CASES = round(CASES * 400 / 1500)  # schema-breaking requests to POST /predict
#: the same for POST /invocations (JSON in four formats, and CSV)
INVOCATION_CASES = {"positive": round(CASES * 300 / 1500), "negative": round(CASES * 200 / 1500)}
MAX_RECORDS = 16


@pytest.fixture(scope="module")
def staged_home(template_home, tmp_path_factory):
    """A copy of the trained template registry with v1 in staging."""
    return staged_copy(template_home, tmp_path_factory.mktemp("fuzz-home"), "fuzzing the backend")


@pytest.fixture(scope="module")
def backend(staged_home):
    env = {"CHURNLAB_HOME": str(staged_home), "SERVING_MAX_RECORDS": str(MAX_RECORDS)}
    # start-up takes 5-20 s; 120 s means it hangs
    with running_backend("staging", env=env, timeout=120) as running:
        yield running


def _equal(columns: dict) -> dict:
    size = min(len(v) for v in columns.values())
    return {k: v[:size] for k, v in columns.items()}


def equal_columns(case):
    """A columns body's lists cut to the shortest: JSON Schema cannot say that they must be
    equally long, so a schema-valid body may still break the contract (a 422 that is right).
    The same for MLflow's ``inputs`` / ``instances`` sent as one list per column."""
    body = case.body
    if not isinstance(body, dict):
        return case
    for key in ("columns", "inputs", "instances"):
        value = body.get(key)
        if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
            case.body = {**body, key: _equal(value)}
    return case


def beyond_json_schema(case) -> bool:
    """A CSV body, or a ``dataframe_split`` one, of ``POST /invocations``: its columns may come
    in any order and each row must be as long as the header, which JSON Schema cannot say.
    A schema-valid body of either may still break the contract (a documented 422, right)."""
    body = case.body
    return case.operation.label == "POST /invocations" and (
        isinstance(body, str) or (isinstance(body, dict) and "dataframe_split" in body)
    )


def test_fuzzing_from_the_openapi_schema_finds_no_5xx_and_no_schema_violation(backend, capsys):
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import positive_data_acceptance
    from schemathesis.core.failures import FailureGroup

    schema = schemathesis.openapi.from_url(f"{backend.url}/openapi.json")
    operations = {op.label: op for op in (r.ok() for r in schema.get_all_operations())}
    assert {"GET /health", "GET /metadata", "POST /predict"} <= set(operations)
    assert {"POST /invocations", "GET /ping", "GET /version"} <= set(operations)

    tally: Counter = Counter()
    failures: list[str] = []
    session = requests.Session()

    def exercise(operation, mode, cases: int) -> None:
        strategy = operation.as_strategy(generation_mode=mode)
        if mode == GenerationMode.POSITIVE:
            strategy = strategy.map(equal_columns)

        @settings(
            max_examples=cases,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def one(case) -> None:
            # an answer takes milliseconds; 60 s means it hangs
            response = case.call(session=session, timeout=60)
            tally["cases"] += 1
            tally[f"{mode.value} {response.status_code}"] += 1
            if isinstance(case.body, dict) and "columns" in case.body:
                tally[f"columns: {mode.value} {response.status_code}"] += 1
            if operation.label == "POST /invocations":
                kind = "csv" if isinstance(case.body, str) else "json"
                tally[f"invocations {kind}: {mode.value} {response.status_code}"] += 1
            if response.status_code >= 500:
                tally["5xx"] += 1
            excluded = [positive_data_acceptance] if beyond_json_schema(case) else []
            try:
                case.validate_response(response, excluded_checks=excluded)
            except FailureGroup as exc:
                tally["violations"] += 1
                failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:1500]}")

        one()

    start = time.perf_counter()
    for label, operation in sorted(operations.items()):
        if label == "POST /predict":
            exercise(operation, GenerationMode.POSITIVE, POSITIVE_CASES)
            exercise(operation, GenerationMode.NEGATIVE, NEGATIVE_CASES)
        elif label == "POST /invocations":
            exercise(operation, GenerationMode.POSITIVE, INVOCATION_CASES["positive"])
            exercise(operation, GenerationMode.NEGATIVE, INVOCATION_CASES["negative"])
        else:  # no parameters: one request says it all (nothing to break)
            exercise(operation, GenerationMode.POSITIVE, 5)
    seconds = time.perf_counter() - start

    with capsys.disabled():
        codes = {k: v for k, v in sorted(tally.items()) if k[0].isalpha() and " " in k}
        print(
            f"\n[fuzz] {tally['cases']} cases in {seconds:.1f} s; 5xx: {tally['5xx']}; "
            f"schema violations: {tally['violations']}; answers: {codes}"
        )
    assert failures == [], "\n\n".join(failures[:3])
    assert tally["5xx"] == 0
    assert tally["cases"] >= CASES
    # both kinds really happened: valid batches scored, broken ones refused
    assert tally["positive 200"] >= POSITIVE_CASES // 2
    assert tally["columns: positive 200"] >= POSITIVE_CASES // 10  # both request layouts
    assert sum(v for k, v in tally.items() if k.startswith("negative 4")) >= NEGATIVE_CASES // 2
    invocations = {k: v for k, v in tally.items() if k.startswith("invocations")}
    scored = sum(v for k, v in invocations.items() if k.endswith(": positive 200"))
    refused = sum(v for k, v in invocations.items() if ": negative 4" in k)
    # a third, not a half: the schema lets a split's or a CSV's cells be any string, number
    # or null, so about a third of schema-valid requests break the contract (422); with 60
    # cases, a half failed 3 runs of 12 here (one scored 28) with nothing wrong
    assert scored >= INVOCATION_CASES["positive"] // 3
    assert refused >= INVOCATION_CASES["negative"] // 2

    # still alive, still the same version, still scoring correctly
    assert backend.process.poll() is None
    health = backend.health()
    assert (health["status"], health["stage"], health["model_version"]) == ("ok", "staging", 1)
    answer = backend.predict([EXAMPLE_RECORD, EXAMPLE_RECORD])
    probabilities = [p["churn_probability"] for p in answer["predictions"]]
    assert len(probabilities) == 2 and probabilities[0] == probabilities[1]
    assert 0.0 <= probabilities[0] <= 1.0
    mlflow = requests.post(
        f"{backend.url}/invocations", json={"dataframe_records": [EXAMPLE_RECORD]}, timeout=30
    )
    # (batches of another size may differ in the last bit)
    assert mlflow.json()["predictions"][0][1] == pytest.approx(probabilities[0], abs=1e-12)
