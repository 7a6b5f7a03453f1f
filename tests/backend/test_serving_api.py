"""The serving API in-process (FastAPI's TestClient): endpoints and the input contract.

One app per module, loaded from a real registry (a copy of the session's template with
v1 staged): every contract case is a real request through the real app and Scorer, in
both request layouts (records and columns).
"""

from __future__ import annotations

import json
import re

import pytest
from support import staged_copy

from churnlab import schema, store
from churnlab.errors import InputError, Refused
from serving import contract
from serving.app import ENV_VARIABLES, Settings, create_app, load

#: one worker runs this module (--dist loadgroup): its fixtures are costly to repeat
pytestmark = pytest.mark.xdist_group("serving-api")

MAX_RECORDS = 50
MAX_BODY = 64 * 1024
GOOD = {k: v for k, v in schema.EXAMPLE_RECORD.items()}


def _staged_app(template_home, tmp_path_factory, folder: str, prove_onnx: bool):
    """A TestClient on an app serving @staging = v1 of a private copy of the template.

    ``prove_onnx`` first runs the gate's own ONNX parity check on v1 and records its pass,
    so that the app serves the graph; otherwise it serves the scikit-learn pipeline.
    """
    import warnings

    from churnlab import gate
    from churnlab.registry import Registry
    from churnlab.tags import ONNX_PARITY as PARITY_TAG

    with warnings.catch_warnings():  # starlette's note about its httpx client
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    def prove(registry) -> None:
        check = gate.check_onnx_parity(
            registry, 1, registry.load_model(1), registry.snapshot(1), gate.Policy.load()
        )
        assert check.status == "pass", check
        registry.client.set_model_version_tag(registry.model_name, "1", PARITY_TAG, "pass")

    home = staged_copy(
        template_home,
        tmp_path_factory.mktemp(folder),
        f"api tests ({folder})",
        prepare=prove if prove_onnx else None,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHURNLAB_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        store.configure()
        registry = Registry()
        app = create_app(
            Settings(stage="staging", max_records=MAX_RECORDS, max_body_bytes=MAX_BODY)
        )
        with TestClient(app) as client:
            yield client, registry, home


@pytest.fixture(scope="module")
def module_app(template_home, tmp_path_factory):
    """An app serving @staging = v1 of a private registry, with small limits."""
    yield from _staged_app(template_home, tmp_path_factory, "api-home", prove_onnx=False)


@pytest.fixture(scope="module")
def onnx_app(template_home, tmp_path_factory):
    """An app serving v1 through its ONNX graph: parity proven by the gate's own check."""
    yield from _staged_app(template_home, tmp_path_factory, "api-onnx-home", prove_onnx=True)


@pytest.fixture(params=["sklearn", "onnx"])
def either(request, monkeypatch):
    """Each app in turn (scikit-learn, then ONNX), MLflow pointed at its store."""
    client, registry, home = request.getfixturevalue(
        "module_app" if request.param == "sklearn" else "onnx_app"
    )
    monkeypatch.setenv("CHURNLAB_HOME", str(home))
    store.configure()
    assert client.get("/health").json()["scorer"] == request.param
    return client, registry


@pytest.fixture
def served(module_app, monkeypatch):
    """The module's client and registry; MLflow points at the module's store in this test."""
    client, registry, home = module_app
    monkeypatch.setenv("CHURNLAB_HOME", str(home))
    store.configure()
    return client, registry


@pytest.fixture
def client(served):
    return served[0]


def post(client, payload, **headers):
    body = payload if isinstance(payload, bytes | str) else json.dumps(payload)
    return client.post(
        "/predict", content=body, headers={"Content-Type": "application/json", **headers}
    )


def as_columns(records):
    """The same customers as a columns request body."""
    return {"columns": contract.to_columns(records)}


# ---------------------------------------------------------------------------- endpoints
def test_health_names_stage_version_and_run(served):
    client, registry = served
    answer = client.get("/health")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok"
    assert body["stage"] == "staging"
    assert body["model_name"] == "churn-model"
    assert body["model_version"] == 1
    assert body["run_id"] == registry.version(1).run_id
    assert body["scorer"]


def test_predict_agrees_with_the_version_loaded_in_process(served):
    from churnlab import data
    from churnlab.scoring import Scorer

    client, registry = served
    frame = registry.snapshot(1, "evaluation").head(MAX_RECORDS)
    records = frame[[schema.ID_COLUMN, *schema.FEATURE_NAMES]].to_dict(orient="records")
    answer = post(client, {"records": records})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model_name"], body["model_version"], body["stage"]) == (
        "churn-model",
        1,
        "staging",
    )
    expected = Scorer.from_registry(registry, 1).predict_proba(data.features(frame))
    served_p = [p["churn_probability"] for p in body["predictions"]]
    assert len(served_p) == len(expected)
    assert max(abs(a - b) for a, b in zip(served_p, expected, strict=True)) <= 1e-9
    assert [p["churn"] for p in body["predictions"]] == [bool(p >= 0.5) for p in expected]
    assert len(set(served_p)) > 1  # different customers, different answers


def test_batch_keeps_order_and_matches_single_requests(client):
    records = [
        {**GOOD, "tenure": 2, "Contract": "Month-to-month"},
        {**GOOD, "tenure": 70, "Contract": "Two year", "TotalCharges": 2000.0},
    ]
    batch = post(client, {"records": records}).json()["predictions"]
    singles = [post(client, {"records": [r]}).json()["predictions"][0] for r in records]
    assert [p["churn"] for p in batch] == [p["churn"] for p in singles]
    for a, b in zip(
        batch, singles, strict=True
    ):  # batch and row arithmetic may differ in the last bit
        assert a["churn_probability"] == pytest.approx(b["churn_probability"], abs=1e-12)
    assert batch[0]["churn_probability"] != batch[1]["churn_probability"]


def test_customer_id_is_optional_and_ignored(client):
    without = {k: v for k, v in GOOD.items() if k != "customerID"}
    answers = [
        post(client, {"records": [r]}).json()["predictions"][0]
        for r in (GOOD, without, {**GOOD, "customerID": None}, {**GOOD, "customerID": "x"})
    ]
    assert all(a == answers[0] for a in answers)


def test_whole_numbers_are_accepted_for_money_fields(client):
    answer = post(client, {"records": [{**GOOD, "MonthlyCharges": 30, "TotalCharges": 30}]})
    assert answer.status_code == 200
    reference = post(client, {"records": [{**GOOD, "MonthlyCharges": 30.0, "TotalCharges": 30.0}]})
    assert answer.json() == reference.json()


def test_json_with_charset_and_json_suffix_types_are_accepted(client):
    body = json.dumps({"records": [GOOD]})
    for ctype in ("application/json; charset=utf-8", "application/vnd.churn+json"):
        assert (
            client.post("/predict", content=body, headers={"Content-Type": ctype}).status_code
            == 200
        )


def test_metadata_has_schema_metrics_gate_and_digests(served):
    client, registry = served
    body = client.get("/metadata").json()
    mv = registry.version(1)
    assert body["schema"] == schema.describe()
    assert body["model_version"] == 1 and body["stage"] == "staging"
    run = registry.client.get_run(mv.run_id)
    assert body["metrics"] == pytest.approx(run.data.metrics)
    assert body["metrics"]["roc_auc"] > 0.5
    assert body["gate"]["verdict"] == mv.tags["churnlab.gate.verdict"]
    assert body["smoke"]["verdict"] == mv.tags["churnlab.smoke.verdict"]
    assert body["data"] == {
        k.split(".")[-1]: v for k, v in mv.tags.items() if k.startswith("churnlab.data.")
    }
    assert set(body["data"]) == {"training", "evaluation", "reference"}
    assert body["limits"] == {"max_records": MAX_RECORDS, "max_body_bytes": MAX_BODY}
    # the page's example customer is valid under the contract
    assert post(client, {"records": [body["example"]]}).status_code == 200


def test_openapi_documents_the_request_from_the_schema(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    by_records, by_columns = body["schema"]["oneOf"]
    assert by_records["required"] == ["records"] and by_columns["required"] == ["columns"]
    assert by_records["additionalProperties"] is False is by_columns["additionalProperties"]
    record = by_records["properties"]["records"]["items"]
    assert record["additionalProperties"] is False
    assert set(record["properties"]) == {schema.ID_COLUMN, *schema.FEATURE_NAMES}
    assert set(record["required"]) == set(schema.FEATURE_NAMES)
    contract_enum = record["properties"]["Contract"]["enum"]
    assert contract_enum == list(schema.feature("Contract").values)
    assert record["properties"]["tenure"]["maximum"] == schema.feature("tenure").maximum
    assert by_records["properties"]["records"]["maxItems"] == MAX_RECORDS
    columns = by_columns["properties"]["columns"]
    assert columns["additionalProperties"] is False
    assert set(columns["properties"]) == {schema.ID_COLUMN, *schema.FEATURE_NAMES}
    assert set(columns["required"]) == set(schema.FEATURE_NAMES)
    tenure = columns["properties"]["tenure"]
    assert (tenure["type"], tenure["minItems"], tenure["maxItems"]) == ("array", 1, MAX_RECORDS)
    assert tenure["items"]["maximum"] == schema.feature("tenure").maximum
    assert columns["properties"]["Contract"]["items"]["enum"] == contract_enum
    # both documented examples are requests the server accepts, with the same answer
    examples = body["examples"]
    assert set(examples) == {"records", "columns"}
    answers = [post(client, examples[k]["value"]) for k in ("records", "columns")]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json() == answers[1].json()


def test_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    html = page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "/static/app.js" in assets and "/static/style.css" in assets
    for asset in assets:
        assert not re.match(r"^(https?:)?//", asset), f"external resource {asset}"
        if not asset.startswith("data:"):  # inline (the empty favicon)
            assert client.get(asset).status_code == 200, asset
    for asset in ("/static/app.js", "/static/style.css"):
        text = client.get(asset).text
        assert not re.search(r"https?://", text), f"{asset} reaches outside the server"
    assert "<script>" not in html  # no inline script (the policy would block it)


def test_no_permissive_cors(client):
    origin = {"Origin": "http://elsewhere.example"}
    assert "access-control-allow-origin" not in client.get("/health", headers=origin).headers
    preflight = client.options(
        "/predict", headers={**origin, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code >= 400


def test_no_endpoint_changes_the_registry(served):
    client, registry = served

    def state():
        model = registry.model()
        versions = {
            v.version: (dict(v.tags), v.current_stage, sorted(v.aliases))
            for v in registry.versions()
        }
        return dict(model.tags), versions

    before = state()
    client.get("/health")
    client.get("/metadata")
    client.get("/")
    post(client, {"records": [GOOD]})
    post(client, {"records": []})
    client.post("/health")
    client.delete("/predict")
    assert state() == before


def test_health_and_metadata_are_rendered_once_per_change(client):
    """Not once per request: again after a swap, or when a following backend's status or
    switches change; the same bytes as long as nothing changed."""
    import dataclasses

    state = client.app.state
    served, renders = state.served, []

    def swap():  # what a following backend does: a new Served, assigned whole
        new = dataclasses.replace(state.served)
        health = new.health
        new.health = lambda: renders.append("health") or health()
        state.served = new

    class Following:  # a follower's two readings that change the answers
        def __init__(self):
            self.alias, self.swaps = 1, 0

        def status(self):
            return {"following": True, "alias_version": self.alias, "reason": None}

        def switches(self):
            renders.append("switches")
            switch = {"time": "t", "from": 1, "to": 1, "trigger": "poll", "ready_s": 0.5}
            return [switch] * self.swaps

    try:
        swap()
        first = [client.get("/health").content for _ in range(3)]
        assert renders == ["health"] and len(set(first)) == 1
        swap()
        assert client.get("/health").content == first[0] and renders == ["health"] * 2

        state.follower = follower = Following()
        renders.clear()
        assert client.get("/health").json()["alias_version"] == 1
        client.get("/health")
        follower.alias = 2
        assert client.get("/health").json()["alias_version"] == 2
        assert renders == ["health"] * 2
        assert [client.get("/metadata").json()["switches"] for _ in range(2)] == [[], []]
        follower.swaps = 1
        assert len(client.get("/metadata").json()["switches"]) == 1
        assert renders.count("switches") == 2
    finally:
        state.served, state.follower = served, None


def test_a_later_move_does_not_change_what_is_served(served):
    """The app resolved @staging at start-up; moving the alias changes nothing until restart."""
    client, registry = served
    registry.stage(2, override=True, reason="newer")
    try:
        assert client.get("/health").json()["model_version"] == 1
        assert post(client, {"records": [GOOD]}).json()["model_version"] == 1
    finally:
        registry.stage(1, override=True, reason="back")


# ---------------------------------------------------------------------------- the contract
def _without(field):
    return {k: v for k, v in GOOD.items() if k != field}


BAD_RECORDS = [
    ("unknown field", {**GOOD, "shoe_size": 44}, "records[0].shoe_size", "unknown field"),
    ("missing field", _without("tenure"), "records[0].tenure", "missing"),
    ("string for an integer", {**GOOD, "tenure": "12"}, "records[0].tenure", "valid integer"),
    ("fraction for an integer", {**GOOD, "tenure": 1.5}, "records[0].tenure", "valid integer"),
    (
        "boolean for an integer",
        {**GOOD, "SeniorCitizen": True},
        "records[0].SeniorCitizen",
        "integer",
    ),
    (
        "string for a number",
        {**GOOD, "MonthlyCharges": "29.85"},
        "records[0].MonthlyCharges",
        "number",
    ),
    ("null for a number", {**GOOD, "TotalCharges": None}, "records[0].TotalCharges", "number"),
    ("number for a category", {**GOOD, "gender": 1}, "records[0].gender", "Female"),
    ("unknown category", {**GOOD, "Contract": "Monthly"}, "records[0].Contract", "Month-to-month"),
    ("wrong case category", {**GOOD, "Partner": "yes"}, "records[0].Partner", "'Yes'"),
    (
        "below the minimum",
        {**GOOD, "tenure": -1},
        "records[0].tenure",
        "greater than or equal to 0",
    ),
    (
        "above the maximum",
        {**GOOD, "tenure": 121},
        "records[0].tenure",
        "less than or equal to 120",
    ),
    ("too much money", {**GOOD, "MonthlyCharges": 1e6}, "records[0].MonthlyCharges", "1000"),
    ("non-string id", {**GOOD, "customerID": 7}, "records[0].customerID", "string"),
    ("record not an object", 5, "records[0]", "should be an object"),
]


@pytest.mark.parametrize(
    ("record", "where", "says"),
    [case[1:] for case in BAD_RECORDS],
    ids=[case[0] for case in BAD_RECORDS],
)
def test_bad_record_gets_422_naming_the_field(client, record, where, says):
    answer = post(client, {"records": [GOOD, record]})
    assert answer.status_code == 422, answer.text
    body = answer.json()
    where = where.replace("records[0]", "records[1]")
    assert body["detail"].startswith(where), body["detail"]
    assert says.lower() in body["detail"].lower(), body["detail"]
    assert body["errors"][0]["field"] == where
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_are_refused(client, literal):
    text = json.dumps({"records": [GOOD]}).replace(
        '"MonthlyCharges": 29.85', f'"MonthlyCharges": {literal}'
    )
    assert literal in text
    answer = post(client, text)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].startswith("records[0].MonthlyCharges: must be a finite number")


def test_nan_anywhere_else_is_refused_too(client):
    text = json.dumps({"records": [GOOD]}).replace('"tenure": 1', '"tenure": NaN')
    answer = post(client, text)
    assert answer.status_code == 422
    assert "records[0].tenure" in answer.json()["detail"]


def test_all_problems_are_listed(client):
    answer = post(client, {"records": [{**GOOD, "tenure": -5, "Contract": "x", "extra": 1}]})
    fields = {e["field"] for e in answer.json()["errors"]}
    assert fields == {"records[0].tenure", "records[0].Contract", "records[0].extra"}
    assert "(and 2 more)" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("payload", "status", "says"),
    [
        ({"records": []}, 422, "the batch is empty"),
        ({"records": [GOOD] * (MAX_RECORDS + 1)}, 422, f"at most {MAX_RECORDS} records"),
        ({}, 422, "body: send exactly one of records (a list of customer objects) or columns"),
        ({"records": [GOOD], "threshold": 0.3}, 422, "threshold: unknown field"),
        ({"records": GOOD}, 422, "records: input should be a valid array"),
        ([GOOD], 422, "body: input should be an object"),
        (None, 422, "body: input should be an object"),
    ],
    ids=[
        "empty batch",
        "batch above limit",
        "no records",
        "extra key",
        "not a list",
        "a list",
        "null",
    ],
)
def test_bad_batch_shape(client, payload, status, says):
    answer = post(client, payload)
    assert answer.status_code == status, answer.text
    assert says.lower() in answer.json()["detail"].lower()


def test_batch_at_the_limit_is_accepted(client):
    answer = post(client, {"records": [GOOD] * MAX_RECORDS})
    assert answer.status_code == 200
    assert len(answer.json()["predictions"]) == MAX_RECORDS
    answer = post(client, as_columns([GOOD] * MAX_RECORDS))
    assert answer.status_code == 200
    assert len(answer.json()["predictions"]) == MAX_RECORDS


# ---------------------------------------------------------------------------- columns
def test_columns_and_records_give_identical_answers(either):
    """The same customers in both layouts: the same probabilities, to the bit, in order."""
    from churnlab.scoring import Scorer
    from serving.app import INLINE_BODY_BYTES

    client, registry = either
    frame = registry.snapshot(1, "evaluation").head(MAX_RECORDS)
    records = frame[[schema.ID_COLUMN, *schema.FEATURE_NAMES]].to_dict(orient="records")
    by_records = post(client, {"records": records})
    by_columns = post(client, as_columns(records))
    assert by_records.status_code == by_columns.status_code == 200
    assert by_columns.json() == by_records.json()
    assert by_columns.content == by_records.content
    # what the server sent is exactly what the version's Scorer computes in-process
    expected = Scorer.from_registry(registry, 1).score_records(records)
    assert by_columns.json()["predictions"] == expected
    assert len({p["churn_probability"] for p in expected}) > 1
    # with the ONNX graph, the small columns body is scored on the event loop and the large
    # records body in a worker thread: both paths give the same answer
    assert len(json.dumps(as_columns(records))) <= INLINE_BODY_BYTES
    assert len(json.dumps({"records": records})) > INLINE_BODY_BYTES
    # and one customer alone gets what it gets in a batch (to the last bit or so)
    alone = post(client, as_columns(records[:1])).json()["predictions"][0]
    assert alone["churn"] == expected[0]["churn"]
    assert alone["churn_probability"] == pytest.approx(expected[0]["churn_probability"], abs=1e-12)


@pytest.mark.parametrize("size", [1, 2, contract.FEW_RECORDS, contract.FEW_RECORDS + 1])
def test_a_few_customers_get_the_bytes_columns_give(either, size):
    """Up to FEW_RECORDS customers reach the ONNX graph as records, more as columns; in
    every layout and format the answer is the one the columns path gives, byte for byte."""
    import msgspec
    import numpy as np

    from serving.app import render

    client, registry = either
    served = client.app.state.served
    frame = registry.snapshot(1, "evaluation").iloc[7 : 7 + size]
    records = frame[[schema.ID_COLUMN, *schema.FEATURE_NAMES]].to_dict(orient="records")
    columns = contract.to_columns(records)
    expected = render(served, served.scorer.score_columns(columns))
    assert post(client, {"records": records}).content == expected
    assert post(client, {"columns": columns}).content == expected
    churn = served.scorer.churn_probability_of_columns(columns)
    in_mlflow_shape = msgspec.json.encode(
        {"predictions": np.column_stack((1.0 - churn, churn)).tolist()}
    )
    rows = [{name: r[name] for name in schema.FEATURE_NAMES} for r in records]
    split = {"columns": list(schema.FEATURE_NAMES), "data": [list(r.values()) for r in rows]}
    for body in ({"dataframe_records": rows}, {"dataframe_split": split}, {"inputs": rows}):
        assert client.post("/invocations", json=body).content == in_mlflow_shape


def test_the_start_up_heap_is_frozen_out_of_the_garbage_collector(either):
    """A full collection of the loaded MLflow/onnxruntime heap would stall a request."""
    import gc

    assert gc.get_freeze_count() > 10_000


def test_columns_take_integers_written_as_floats_and_no_customer_ids(client):
    reference = post(client, as_columns([GOOD, {**GOOD, "tenure": 30}])).json()
    columns = {k: v for k, v in as_columns([GOOD, {**GOOD, "tenure": 30}])["columns"].items()}
    columns["tenure"] = [1.0, 30.0]  # not msgspec's int: the pydantic path takes it
    del columns[schema.ID_COLUMN]
    answer = post(client, {"columns": columns})
    assert answer.status_code == 200, answer.text
    assert answer.json() == reference
    columns[schema.ID_COLUMN] = [None, "x"]
    assert post(client, {"columns": columns}).json() == reference


def _bad_columns(**changes):
    columns = as_columns([GOOD, GOOD])["columns"]
    for name, value in changes.items():
        if value is _DROP:
            del columns[name]
        else:
            columns[name] = value
    return {"columns": columns}


_DROP = object()

BAD_COLUMNS = [
    ("string for an integer", {"tenure": [1, "12"]}, "columns.tenure[1]", "valid integer"),
    ("unknown category", {"Contract": ["One year", "Monthly"]}, "columns.Contract[1]", "One year"),
    ("NaN", {"MonthlyCharges": [1.0, float("nan")]}, "columns.MonthlyCharges[1]", "finite"),
    ("above the maximum", {"tenure": [121, 1]}, "columns.tenure[0]", "less than or equal to 120"),
    ("unknown column", {"shoe_size": [44, 45]}, "columns.shoe_size", "unknown field"),
    ("missing column", {"tenure": _DROP}, "columns.tenure", "required field is missing"),
    ("not a list", {"tenure": 3}, "columns.tenure", "valid array"),
    ("empty column", {"tenure": []}, "columns.tenure", "the batch is empty"),
    ("null ids", {"customerID": None}, "columns.customerID", "valid array"),
    ("non-string id", {"customerID": ["a", 7]}, "columns.customerID[1]", "string"),
    (
        "unequal lengths",
        {"tenure": [1, 2, 3]},
        "columns",
        "every column needs one value per customer: 19 columns have 2 values, but tenure has 3",
    ),
    (
        "too many customers",
        {n: [v[0]] * (MAX_RECORDS + 1) for n, v in as_columns([GOOD])["columns"].items()},
        "columns.customerID",
        f"at most {MAX_RECORDS} customers, got {MAX_RECORDS + 1} values",
    ),
]


@pytest.mark.parametrize(
    ("changes", "where", "says"),
    [case[1:] for case in BAD_COLUMNS],
    ids=[case[0] for case in BAD_COLUMNS],
)
def test_bad_columns_get_422_naming_the_column_and_customer(client, changes, where, says):
    answer = post(client, _bad_columns(**changes))
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["detail"].startswith(f"{where}: "), body["detail"]
    assert says.lower() in body["detail"].lower(), body["detail"]
    assert "\n" not in body["detail"]
    assert body["errors"][0]["field"] == where


@pytest.mark.parametrize(
    "payload",
    [{}, {"records": [GOOD], **as_columns([GOOD])}, {"rows": [GOOD]}, {"columns": None, "x": 1}],
    ids=["neither", "both", "another name", "null columns and more"],
)
def test_a_body_with_both_layouts_or_neither_gets_one_line(client, payload):
    answer = post(client, payload)
    assert answer.status_code == 422, answer.text
    if "columns" in payload and "records" not in payload:
        assert answer.json()["detail"].startswith("columns: "), answer.text
        return
    assert answer.json()["detail"] == (
        "body: send exactly one of records (a list of customer objects) "
        "or columns (one list of values per feature)"
    )
    assert answer.json()["errors"] == [
        {"field": "body", "problem": answer.json()["detail"][6:], "type": "request_layout"}
    ]


# ---------------------------------------------------------------------------- timing
def test_every_predict_answer_says_its_server_time(client):
    import time

    cases = [
        ({"records": [GOOD]}, 200),
        (as_columns([GOOD] * MAX_RECORDS), 200),
        ({"records": [{**GOOD, "tenure": -1}]}, 422),
        (b'{"records": [', 400),
    ]
    for payload, status in cases:
        t0 = time.perf_counter()
        answer = post(client, payload)
        client_ms = (time.perf_counter() - t0) * 1000
        assert answer.status_code == status
        match = re.fullmatch(r"app;dur=(\d+\.\d+)", answer.headers["server-timing"])
        assert match, answer.headers["server-timing"]
        assert 0 < float(match.group(1)) <= client_ms
    wrong_type = client.post("/predict", content=b"{}", headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    assert wrong_type.headers["server-timing"].startswith("app;dur=")
    assert "server-timing" not in client.get("/health").headers


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"records": [', "Invalid JSON"),
        (b"", "Invalid JSON"),
        (b"{'records': []}", "Invalid JSON"),
        (b'{"records": [}', "Invalid JSON"),
        (b'\xff\xfe{"records": []}', "Invalid JSON"),
    ],
    ids=["truncated", "empty body", "single quotes", "bad bracket", "not utf-8"],
)
def test_malformed_json_gets_400(client, body, says):
    answer = post(client, body)
    assert answer.status_code == 400, answer.text
    assert says in answer.json()["detail"]
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize(
    "ctype",
    ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1", None],
)
def test_wrong_content_type_gets_415(client, ctype):
    headers = {} if ctype is None else {"Content-Type": ctype}
    answer = client.post("/predict", content=json.dumps({"records": [GOOD]}), headers=headers)
    assert answer.status_code == 415, answer.text
    assert "application/json" in answer.json()["detail"] or "UTF-8" in answer.json()["detail"]


def test_body_above_the_limit_by_content_length_gets_413(client):
    body = json.dumps({"records": [GOOD] * 300})
    assert len(body) > MAX_BODY
    answer = post(client, body)
    assert answer.status_code == 413
    assert str(MAX_BODY) in answer.json()["detail"]


def test_body_above_the_limit_while_streaming_gets_413(client):
    """No Content-Length (chunked): the limit is enforced while reading."""
    piece = json.dumps(GOOD).encode()

    def chunks():
        yield b'{"records": ['
        for i in range(300):
            yield (b"," if i else b"") + piece
        yield b"]}"

    answer = client.post("/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert "exceeds the limit" in answer.json()["detail"]
    assert client.get("/health").status_code == 200


def test_unknown_paths_and_methods_are_4xx(client):
    assert client.get("/nothing").status_code == 404
    assert client.get("/predict").status_code == 405
    assert client.post("/health").status_code == 405


@pytest.mark.parametrize("path", ["/predict", "/invocations"])
def test_a_failure_on_the_direct_path_is_answered_as_fastapi_answers_it(client, monkeypatch, path):
    """A POST to a scoring route skips FastAPI's stack (ServingApp.__call__); a failure
    there still gets FastAPI's 500 and reaches the server, which logs it."""
    from fastapi.testclient import TestClient

    class Broken:
        kind, version = "onnx", 1

        def churn_probability(self, _):
            raise RuntimeError("the scorer broke")

        churn_probability_of_columns = score_columns = churn_probability

    monkeypatch.setattr(client.app.state.served, "scorer", Broken())
    body = {"records": [GOOD]} if path == "/predict" else {"inputs": [GOOD]}
    answer = TestClient(client.app, raise_server_exceptions=False).post(path, json=body)
    assert answer.status_code == 500
    assert answer.content == b"Internal Server Error"
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    with pytest.raises(RuntimeError, match="the scorer broke"):
        TestClient(client.app).post(path, json=body)


# ---------------------------------------------------------------------------- settings
def test_settings_defaults_and_environment():
    default = Settings.from_env({})
    assert (default.model_name, default.stage) == ("churn-model", "staging")
    assert (default.max_records, default.max_body_bytes) == (10_000, 8 * 1024 * 1024)
    env = {
        "MODEL_NAME": "other",
        "MODEL_STAGE": "Production",
        "SERVING_MAX_RECORDS": "7",
        "SERVING_MAX_BODY_BYTES": "1024",
    }
    got = Settings.from_env(env)
    assert (got.model_name, got.stage, got.max_records, got.max_body_bytes) == (
        "other",
        "production",
        7,
        1024,
    )
    # a churnlab run names its model in CHURNLAB_MODEL; MODEL_NAME, the app's own, wins
    assert Settings.from_env({"CHURNLAB_MODEL": "churn-model-ana"}).model_name == "churn-model-ana"
    both = {"CHURNLAB_MODEL": "churn-model-ana", "MODEL_NAME": "other"}
    assert Settings.from_env(both).model_name == "other"


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"MODEL_STAGE": "prod"}, "MODEL_STAGE must be staging or production, got 'prod'"),
        ({"SERVING_MAX_RECORDS": "many"}, "SERVING_MAX_RECORDS must be a positive whole number"),
        ({"SERVING_MAX_BODY_BYTES": "0"}, "SERVING_MAX_BODY_BYTES must be a positive whole number"),
    ],
)
def test_bad_settings_are_named(env, says):
    with pytest.raises(InputError, match=re.escape(says)):
        Settings.from_env(env)


def test_every_variable_the_app_reads_is_declared():
    """ENV_VARIABLES is the one list: each variable read in serving or store.py is in it."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    reads = set()
    for path in (*sorted((root / "serving").glob("*.py")), root / "churnlab" / "store.py"):
        text = path.read_text()
        reads |= set(re.findall(r"""(?:environ|env)\.get\(\s*["']([A-Z_]+)["']""", text))
        reads |= set(re.findall(r"""_whole\(env,\s*["']([A-Z_]+)["']""", text))
    reads -= {"MLFLOW_REGISTRY_URI"}  # never set by churnlab; MLflow's own default
    reads -= {"CHURNLAB_EXPERIMENT"}  # where training logs its runs; a server logs none
    reads -= {"MLFLOW_HTTP_REQUEST_TIMEOUT"}  # how long a write waits; a backend only reads
    assert {"MODEL_NAME", "MODEL_STAGE", "MLFLOW_TRACKING_URI", "CHURNLAB_HOME"} <= reads
    assert reads <= ENV_VARIABLES


def test_mlflow_reads_the_declared_auth_variables():
    import mlflow.environment_variables as ev

    from serving.app import MLFLOW_AUTH_VARIABLES

    declared = {v.name for v in vars(ev).values() if isinstance(v, ev._EnvironmentVariable)}
    assert set(MLFLOW_AUTH_VARIABLES) <= declared


# ---------------------------------------------------------------------------- start-up
def test_load_refuses_an_empty_stage(registry):
    with pytest.raises(
        Refused, match=r"churn-model has no version in production: nothing to serve"
    ):
        load(Settings(stage="production"))


def test_load_refuses_an_unknown_model(registry):
    with pytest.raises(InputError, match=r"no registered model 'nope'"):
        load(Settings(model_name="nope"))
