"""API fuzzing: requests generated from the backend's own OpenAPI schema (schemathesis).

A real uvicorn process serves a staged version on 127.0.0.1. Schemathesis reads its
``/openapi.json`` and generates over a thousand requests: schema-valid ones (which must be
answered 200 with a body that matches the documented response) and schema-breaking ones
(which must be refused with a documented 4xx, never a 5xx). The server must still be
healthy and correct afterwards.

The backend runs with ``SERVING_MAX_RECORDS=16``: the schema's ``maxItems`` follows it,
which keeps generated batches small enough for a thousand cases to take seconds, and the
batch limit itself is fuzzed (too-long batches are among the negative cases).
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
import requests
from support import staged_copy

from churnlab.backend import running_backend
from churnlab.schema import EXAMPLE_RECORD

POSITIVE_CASES = 620  # schema-valid requests to POST /predict
NEGATIVE_CASES = 400  # schema-breaking requests to POST /predict
MAX_RECORDS = 16


@pytest.fixture(scope="module")
def staged_home(template_home, tmp_path_factory):
    """A copy of the trained template registry with v1 in staging."""
    return staged_copy(template_home, tmp_path_factory.mktemp("fuzz-home"), "fuzzing the backend")


@pytest.fixture(scope="module")
def backend(staged_home):
    env = {"CHURNLAB_HOME": str(staged_home), "SERVING_MAX_RECORDS": str(MAX_RECORDS)}
    with running_backend("staging", env=env, timeout=120) as running:
        yield running


def equal_columns(case):
    """A columns body's lists cut to the shortest: JSON Schema cannot say that they must be
    equally long, so a schema-valid body may still break the contract (a 422 that is right)."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("columns"), dict) and body["columns"]:
        size = min(len(v) for v in body["columns"].values())
        case.body = {**body, "columns": {k: v[:size] for k, v in body["columns"].items()}}
    return case


def test_fuzzing_from_the_openapi_schema_finds_no_5xx_and_no_schema_violation(backend, capsys):
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode
    from schemathesis.core.failures import FailureGroup

    schema = schemathesis.openapi.from_url(f"{backend.url}/openapi.json")
    operations = {op.label: op for op in (r.ok() for r in schema.get_all_operations())}
    assert {"GET /health", "GET /metadata", "POST /predict"} <= set(operations)

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
            response = case.call(session=session, timeout=60)
            tally["cases"] += 1
            tally[f"{mode.value} {response.status_code}"] += 1
            if isinstance(case.body, dict) and "columns" in case.body:
                tally[f"columns: {mode.value} {response.status_code}"] += 1
            if response.status_code >= 500:
                tally["5xx"] += 1
            try:
                case.validate_response(response)
            except FailureGroup as exc:
                tally["violations"] += 1
                failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:1500]}")

        one()

    start = time.perf_counter()
    for label, operation in sorted(operations.items()):
        if label == "POST /predict":
            exercise(operation, GenerationMode.POSITIVE, POSITIVE_CASES)
            exercise(operation, GenerationMode.NEGATIVE, NEGATIVE_CASES)
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
    assert tally["cases"] >= 1000
    # both kinds really happened: valid batches scored, broken ones refused
    assert tally["positive 200"] >= POSITIVE_CASES // 2
    assert tally["columns: positive 200"] >= POSITIVE_CASES // 10  # both request layouts
    assert sum(v for k, v in tally.items() if k.startswith("negative 4")) >= NEGATIVE_CASES // 2

    # still alive, still the same version, still scoring correctly
    assert backend.process.poll() is None
    health = backend.health()
    assert (health["status"], health["stage"], health["model_version"]) == ("ok", "staging", 1)
    answer = backend.predict([EXAMPLE_RECORD, EXAMPLE_RECORD])
    probabilities = [p["churn_probability"] for p in answer["predictions"]]
    assert len(probabilities) == 2 and probabilities[0] == probabilities[1]
    assert 0.0 <= probabilities[0] <= 1.0
