"""Property-based tests (hypothesis) of the expression evaluator over generated values:
``Std:Join``, ``Std:JsonGet`` paths into generated documents, and comparison conditions."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.local.expressions import Context, ExpressionError, evaluate_condition, resolve, to_text

FAST = settings(max_examples=60, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
URI = "s3://b/doc.json"
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=False, allow_infinity=False, width=32), st.text(max_size=8))
keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC_0123456789-", min_size=1, max_size=6)
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)), max_leaves=12)
numbers = st.one_of(st.integers(-10**9, 10**9), st.floats(-1e9, 1e9, allow_nan=False))


@FAST
@given(values=st.lists(st.text(alphabet="abc xyz01", max_size=6), min_size=1, max_size=6),
       separator=st.sampled_from(["/", ",", "|", ""]))
def test_join_of_plain_strings_splits_back(values, separator):
    joined = resolve({"Std:Join": {"On": separator, "Values": values}}, Context())
    assert joined == separator.join(values)
    if separator:
        assert joined.split(separator) == values


@FAST
@given(values=st.lists(scalars, max_size=5))
def test_join_resolves_gets_inside_values(values):
    params = {f"P{i}": v for i, v in enumerate(values)}
    expr = {"Std:Join": {"On": "/", "Values": [{"Get": f"Parameters.P{i}"} for i in range(len(values))]}}
    assert resolve(expr, Context(parameters=params)) == "/".join(to_text(v) for v in values)
    assert all(to_text(b) == ("true" if b else "false") for b in values if isinstance(b, bool))


def paths_into(document, prefix: str = ""):
    """Every (path text, value) reachable in ``document``."""
    yield prefix, document
    if isinstance(document, dict):
        for key, value in document.items():
            yield from paths_into(value, f"{prefix}.{key}" if prefix else key)
    elif isinstance(document, list):
        for i, value in enumerate(document):
            yield from paths_into(value, f"{prefix}[{i}]")
            yield from paths_into(value, f"{prefix}[{i - len(document)}]")


@FAST
@given(document=st.dictionaries(keys, documents, min_size=1, max_size=4))
def test_json_get_finds_every_value_of_a_document(document):
    ctx = Context(read_json=lambda uri: json.loads(json.dumps(document)))
    for path, value in paths_into(document):
        if path and not path[0].isdigit():
            found = resolve({"Std:JsonGet": {"S3Uri": URI, "Path": path}}, ctx)
            assert found == json.loads(json.dumps(value)), path


@FAST
@given(items=st.lists(scalars, max_size=5), extra=st.integers(0, 3))
def test_json_get_past_either_end_of_a_list_is_an_error(items, extra):
    ctx = Context(read_json=lambda uri: {"items": items})
    for index in (len(items) + extra, -len(items) - 1 - extra):
        with pytest.raises(ExpressionError, match="index out of range"):
            resolve({"Std:JsonGet": {"S3Uri": URI, "Path": f"items[{index}]"}}, ctx)


def condition(kind: str, left, right) -> bool:
    return evaluate_condition({"Type": kind, "LeftValue": left, "RightValue": right}, Context())


@FAST
@given(left=numbers, right=numbers)
def test_numeric_comparisons_agree_with_python(left, right):
    assert condition("GreaterThan", left, right) is (left > right)
    assert condition("GreaterThanOrEqualTo", left, right) is (left >= right)
    assert condition("LessThan", left, right) is (left < right)
    assert condition("LessThanOrEqualTo", left, right) is (left <= right)
    assert condition("Equals", left, right) is (left == right)
    assert condition("Equals", left, right) is condition("Equals", right, left)
    assert evaluate_condition({"Type": "Not", "Condition": {"Type": "GreaterThan", "LeftValue": left,
                                                            "RightValue": right}}, Context()) is (left <= right)


@FAST
@given(left=numbers, right=numbers)
def test_a_numeric_string_compares_as_its_number(left, right):
    text = repr(float(left))
    assert math.isclose(float(text), float(left))
    assert condition("GreaterThan", text, right) is (float(left) > right)
    assert condition("Equals", text, right) is (float(left) == right)
    assert evaluate_condition({"Type": "In", "QueryValue": left, "Values": [text, "x"]}, Context()) is True


@FAST
@given(left=st.text(alphabet="abcxyz", min_size=1, max_size=5), right=numbers)
def test_text_against_a_number_is_refused_by_ordering_and_unequal(left, right):
    for kind in ("GreaterThan", "LessThanOrEqualTo"):
        with pytest.raises(ExpressionError, match="cannot compare"):
            condition(kind, left, right)
    assert condition("Equals", left, right) is False
