"""The request's fast path (msgspec) never accepts what the contract of record (pydantic) refuses.

Property: for any body, if ``Contract.decode_fast`` accepts it then ``Contract.validate_json``
accepts it too, with the same layout, size and values (same types, same floats). Bodies are
generated from the schema in both layouts, valid or mutated the ways clients get requests
wrong: wrong types, booleans, NaN/infinity/huge numbers, strings for numbers, unknown or
missing keys, duplicate keys, values outside the vocabulary or range, bad customer ids,
batches too long, columns of different lengths. JSON is written by hand so that literals
json.dumps never writes (``NaN``, ``1e999``, ``3.0`` for an integer, duplicate keys) occur.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from churnlab import schema
from serving import contract

MAX_RECORDS = 6
CHECKER = contract.Contract(max_records=MAX_RECORDS, max_body_bytes=1 << 20)
SEEN: Counter = Counter()


class Raw(str):
    """A JSON literal written as is (``NaN``, ``3.0``, ``1e999``)."""


def dump(value) -> str:
    """JSON text of ``value``; a list of pairs is an object (so keys may repeat)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


class Pairs(list):
    """A JSON object as ``[(key, value), ...]``."""


def value_of(feature: schema.Feature) -> st.SearchStrategy:
    """A valid value of ``feature``."""
    if feature.is_categorical:
        return st.sampled_from(feature.values)
    if feature.kind == "integer":
        return st.integers(int(feature.minimum), int(feature.maximum))
    return st.one_of(
        st.floats(feature.minimum, feature.maximum, allow_nan=False),
        st.integers(int(feature.minimum), int(feature.maximum)),
    )


def wrong_value(feature: schema.Feature) -> st.SearchStrategy:
    """Something a client might send instead of a valid value of ``feature``."""
    lo = feature.minimum if feature.minimum is not None else 0
    hi = feature.maximum if feature.maximum is not None else 0
    common = [
        st.none(),
        st.booleans(),
        st.text(max_size=12),
        st.lists(st.integers(0, 3), max_size=2),
        st.just(Pairs([("a", 1)])),
        st.sampled_from(
            [Raw(x) for x in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e308")]
        ),
        st.integers(-(10**30), 10**30),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([lo - 1, hi + 1, -0.0, 0, lo, hi]),
    ]
    if feature.is_categorical:
        vocab = feature.values
        common += [
            st.sampled_from([v.lower() for v in vocab] + [v.upper() for v in vocab]),
            st.sampled_from([v + " " for v in vocab] + [" " + v for v in vocab]),
            st.sampled_from(
                [Raw(json.dumps(v).replace(v[0], f"\\u{ord(v[0]):04x}", 1)) for v in vocab]
            ),
        ]
    else:
        whole = st.integers(int(lo), int(hi))
        common += [
            whole.map(lambda n: Raw(f"{n}.0")),  # 3.0 for an integer: pydantic accepts it
            whole.map(lambda n: Raw(f"{n}e0")),
            whole.map(str),  # "12": a string, never a number
            st.floats(lo, hi).map(lambda x: Raw(repr(x))),
            st.floats(lo, hi).map(lambda x: Raw(f"{x:.25g}")),  # more digits than a double
        ]
    return st.one_of(common)


def customer_id() -> st.SearchStrategy:
    return st.one_of(
        st.text(max_size=10),
        st.none(),
        st.integers(),
        st.booleans(),
        st.sampled_from([Raw('"\\ud800"'), Raw('"\\u00e9t\\u00e9"'), Raw('"a\\"b"')]),
    )


@st.composite
def batch(draw) -> tuple[str, int, dict]:
    """``(layout, size, {name: [values]})``: a valid batch, before any mutation."""
    size = draw(st.integers(1, MAX_RECORDS))
    columns = {
        f.name: draw(st.lists(value_of(f), min_size=size, max_size=size)) for f in schema.FEATURES
    }
    if draw(st.booleans()):
        columns[schema.ID_COLUMN] = draw(
            st.lists(st.one_of(st.text(max_size=8), st.none()), min_size=size, max_size=size)
        )
    return draw(st.sampled_from(contract.LAYOUTS)), size, columns


MUTATIONS = (  # a wrong value is the commonest mistake: it gets three shares
    "none",
    "value",
    "value",
    "value",
    "integral float",
    "unknown key",
    "missing key",
    "duplicate key",
    "customer id",
    "too many",
    "length",
    "whole column",
    "body",
)


@st.composite
def body(draw) -> tuple[str, bytes]:
    """``(mutation, JSON bytes)`` of a request, valid when the mutation is ``none``."""
    layout, size, columns = draw(batch())
    mutation = draw(st.sampled_from(MUTATIONS))
    names = [f.name for f in schema.FEATURES]
    name = draw(st.sampled_from(names))
    row = draw(st.integers(0, size - 1))
    if mutation == "value":
        columns[name][row] = draw(wrong_value(schema.feature(name)))
    elif mutation == "integral float":  # 3.0 or 3e0 for an integer: only pydantic takes it
        name = draw(st.sampled_from([f.name for f in schema.FEATURES if f.kind == "integer"]))
        value = columns[name][row]
        columns[name][row] = Raw(
            draw(st.sampled_from([f"{value}.0", f"{value}e0", f"{value}.000"]))
        )
    elif mutation == "customer id":
        columns[schema.ID_COLUMN] = [draw(customer_id()) for _ in range(size)]
    elif mutation == "too many":
        for values in columns.values():
            values.extend(values[:1] * (MAX_RECORDS + 1 - size))
        size = MAX_RECORDS + 1
    elif mutation == "length" and layout == "columns":
        columns[name] = columns[name][:-1] if size > 1 else columns[name] * 2
    elif mutation == "whole column" and layout == "columns":
        columns[name] = draw(st.one_of(st.none(), st.integers(), st.just([]), st.text()))
    if layout == "records":
        records = [
            Pairs(
                (k, columns[k][i])
                for k in contract.COLUMN_NAMES
                if k in columns and isinstance(columns[k], list)
            )
            for i in range(size)
        ]
        target = records[row]
    else:
        target = Pairs((k, v) for k, v in columns.items())
    if mutation == "unknown key":
        target.insert(draw(st.integers(0, len(target))), (draw(st.text(max_size=8)), 1))
    elif mutation == "missing key":
        del target[draw(st.integers(0, len(target) - 1))]
    elif mutation == "duplicate key":
        key = draw(st.sampled_from([k for k, _ in target]))
        if key == schema.ID_COLUMN:
            other = draw(customer_id())
        else:
            feature = schema.feature(key)
            other = draw(st.one_of(value_of(feature), wrong_value(feature)))
        if layout == "columns":
            other = draw(st.lists(st.just(other), min_size=size, max_size=size))
        target.insert(draw(st.integers(0, len(target))), (key, other))
    payload = Pairs([(layout, records if layout == "records" else target)])
    if mutation == "body":
        shape = draw(st.sampled_from(["both", "neither", "null layout", "extra", "list"]))
        if shape == "both":
            other = "columns" if layout == "records" else "records"
            payload.append((other, Pairs() if other == "columns" else []))
        elif shape == "neither":
            payload = Pairs([("rows", payload[0][1])])
        elif shape == "null layout":
            payload.append(("columns" if layout == "records" else "records", None))
        elif shape == "extra":
            payload.append(("threshold", 0.3))
        else:
            return mutation, dump([payload]).encode()
    return mutation, dump(payload).encode()


def same(a, b) -> bool:
    """Equal values of the same type; floats equal to the bit (``-0.0`` is not ``0.0``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


#: the property and the check of what it saw run on one worker, one after the other: apart,
#: the check found nothing seen and skipped
ONE_WORKER = pytest.mark.xdist_group("fastpath-property")


@ONE_WORKER
@settings(
    max_examples=600,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=body())
def test_what_the_fast_path_accepts_the_contract_accepts_with_the_same_values(case):
    mutation, raw = case
    fast = CHECKER.decode_fast(raw)
    try:
        slow = CHECKER.validate_json(raw)
    except ValidationError:
        slow = None
    verdict = f"{'fast' if fast else '-'}/{'pydantic' if slow else '-'}"
    SEEN[verdict] += 1
    SEEN[f"{mutation}: {verdict}"] += 1
    event(f"{mutation}: {verdict}")
    if mutation == "none":
        assert fast is not None, raw  # a valid body takes the fast path
    if fast is None:
        return
    assert slow is not None, f"the fast path accepted what pydantic refuses: {raw!r}"
    assert (fast.layout, fast.size) == (slow.layout, slow.size)
    for name in contract.COLUMN_NAMES:
        a = list(fast.columns[name]) if name in fast.columns else [None] * fast.size
        b = list(slow.columns[name]) if name in slow.columns else [None] * slow.size
        assert len(a) == len(b) == fast.size, name
        assert all(same(x, y) for x, y in zip(a, b, strict=True)), (name, a, b, raw)


@ONE_WORKER
def test_the_property_saw_every_outcome():
    """The generated bodies reached all three outcomes (runs after the property above)."""
    if not SEEN:
        pytest.skip("run with the property test")
    print("\n[fastpath] outcomes:", dict(sorted(SEEN.items())))
    assert SEEN["fast/pydantic"] > 100  # accepted by both
    assert SEEN["-/pydantic"] >= 5  # left to pydantic, which accepts it (e.g. 3.0 for an int)
    assert SEEN["-/-"] > 100  # refused by both
    assert SEEN["fast/-"] == 0


@pytest.mark.parametrize("layout", contract.LAYOUTS)
def test_integers_written_as_floats_are_left_to_pydantic_which_accepts_them(layout):
    record = {**schema.EXAMPLE_RECORD, "tenure": 3}
    text = json.dumps(
        {"records": [record]} if layout == "records" else {"columns": contract.to_columns([record])}
    )
    assert CHECKER.decode_fast(text.encode()).columns["tenure"] == [3]
    as_float = text.replace('"tenure": 3', '"tenure": 3.0').replace(
        '"tenure": [3]', '"tenure": [3.0]'
    )
    assert as_float != text
    assert CHECKER.decode_fast(as_float.encode()) is None
    batch = CHECKER.parse(as_float.encode())
    assert batch.layout == layout and batch.columns["tenure"] == [3]


def test_records_and_columns_of_the_same_customers_are_the_same_batch():
    records = [
        schema.EXAMPLE_RECORD,
        {**schema.EXAMPLE_RECORD, "customerID": None, "tenure": 40, "MonthlyCharges": 80},
    ]
    by_records = CHECKER.parse(json.dumps({"records": records}).encode())
    by_columns = CHECKER.parse(json.dumps({"columns": contract.to_columns(records)}).encode())
    assert (by_records.layout, by_columns.layout) == ("records", "columns")
    for name in contract.COLUMN_NAMES:
        assert list(by_records.columns[name]) == list(by_columns.columns[name]), name
    assert by_columns.columns["MonthlyCharges"] == [29.85, 80.0]


def test_unequal_columns_are_named_in_one_line():
    columns = contract.to_columns([schema.EXAMPLE_RECORD] * 3)
    columns["tenure"] = [1, 2]
    columns["Contract"] = columns["Contract"] * 2
    body = json.dumps({"columns": columns}).encode()
    assert CHECKER.decode_fast(body) is None
    with pytest.raises(ValidationError) as caught:
        CHECKER.validate_json(body)
    found = contract.problems(caught.value)
    line = contract.summary(found, caught.value.error_count())
    assert line == (
        "columns: every column needs one value per customer: "
        "18 columns have 3 values, but tenure has 2, Contract has 6"
    )
