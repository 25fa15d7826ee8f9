"""The compiled validator agrees with a reference JSON Schema 2020-12 validator, and never
raises anything but InvalidEvent, whatever the bytes."""

from __future__ import annotations

import math

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.validation import (
    ALERT_SCHEMA,
    EVENT_SCHEMA,
    InvalidAlert,
    InvalidEvent,
    decode_event,
    validate_alert,
    validate_event,
)

REF_EVENT = jsonschema.Draft202012Validator(EVENT_SCHEMA)
REF_ALERT = jsonschema.Draft202012Validator(ALERT_SCHEMA)

GOOD = {"event_id": "e1", "ts": 1767571200.5, "api_key": "k1", "prompt_tokens": 12,
        "completion_tokens": 340, "status": 200}


def test_schemas_are_valid_2020_12():
    jsonschema.Draft202012Validator.check_schema(EVENT_SCHEMA)
    jsonschema.Draft202012Validator.check_schema(ALERT_SCHEMA)


def test_minimal_event_is_valid_and_unknown_fields_are_dropped():
    e = validate_event({**GOOD, "something_new": [1, 2]})
    assert e == {**GOOD}
    REF_EVENT.validate(e)


@pytest.mark.parametrize("field,value,reason", [
    ("prompt_tokens", -1, "out_of_range"),
    ("prompt_tokens", "12", "wrong_type"),
    ("prompt_tokens", True, "wrong_type"),
    ("prompt_tokens", 1.5, "wrong_type"),
    ("ts", "now", "wrong_type"),
    ("ts", math.inf, "out_of_range"),
    ("api_key", "", "out_of_range"),
    ("api_key", None, "wrong_type"),
    ("status", 200.0, None),
    ("topic", "poetry", "out_of_range"),
    ("prompt_simhash", "xyz", "bad_format"),
    ("prompt_simhash", "0123456789ABCDEF", None),
    ("turn", 0, "out_of_range"),
    ("n", 0, "out_of_range"),
    ("cot_request", 1, "wrong_type"),
])
def test_field_checks(field, value, reason):
    obj = {**GOOD, field: value}
    if reason is None:
        validate_event(obj)
    else:
        with pytest.raises(InvalidEvent) as exc:
            validate_event(obj)
        assert exc.value.reason == reason
        assert field in exc.value.detail


def test_missing_required_names_every_missing_field():
    with pytest.raises(InvalidEvent) as exc:
        validate_event({"event_id": "e"})
    assert exc.value.reason == "missing_field"
    for f in ("ts", "api_key", "prompt_tokens", "completion_tokens", "status"):
        assert f in exc.value.detail


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)

field_values = {
    name: json_values | (st.integers(min_value=-3, max_value=10**9) if spec.get("type") == "integer"
                         else st.floats(min_value=-10, max_value=4e10, allow_nan=False) if spec.get("type") == "number"
                         else st.text(min_size=0, max_size=20) if spec.get("type") == "string"
                         else st.sampled_from(spec.get("enum", [True, False])))
    for name, spec in EVENT_SCHEMA["properties"].items()
}


@st.composite
def event_like(draw):
    obj = {}
    for name, strat in field_values.items():
        if name in EVENT_SCHEMA["required"]:
            if draw(st.integers(0, 20)) == 0:
                continue
            obj[name] = draw(strat) if draw(st.booleans()) else GOOD.get(name, draw(strat))
        elif draw(st.integers(0, 3)) == 0:
            obj[name] = draw(strat)
    return obj


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_like())
def test_compiled_validator_agrees_with_reference(obj):
    ref_ok = REF_EVENT.is_valid(obj)
    try:
        out = validate_event(obj)
        ok = True
    except InvalidEvent:
        ok = False
    assert ok == ref_ok, (obj, list(REF_EVENT.iter_errors(obj))[:1])
    if ok:
        REF_EVENT.validate(out)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_never_crashes_on_bytes(raw):
    try:
        decode_event(raw)
    except InvalidEvent as exc:
        assert exc.reason in {"too_large", "not_utf8", "invalid_json", "not_object",
                              "missing_field", "wrong_type", "out_of_range", "bad_format"}


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_decoder_never_crashes_on_text(text):
    try:
        decode_event(text)
    except InvalidEvent:
        pass


@pytest.mark.parametrize("raw,reason", [
    (b'{"a": NaN}', "invalid_json"),
    (b'{"a": Infinity}', "invalid_json"),
    (b"[" * 100_000, "invalid_json"),
    (b"1e999999", "invalid_json"),
    (b'"just a string"', "not_object"),
    (b"\xc3\x28", "not_utf8"),
    (b" " * (2 << 20), "too_large"),
    (orjson.dumps({**GOOD, "ts": 1e30}), "out_of_range"),
    (orjson.dumps({**GOOD, "prompt_tokens": 1}).replace(b":1,", b":1180591620717411303424,", 1), "out_of_range"),
])
def test_hostile_inputs(raw, reason):
    with pytest.raises(InvalidEvent) as exc:
        decode_event(raw)
    assert exc.value.reason == reason


def _alert(**over):
    a = {"alert_id": "0" * 32, "schema_version": 1, "entity_type": "api_key", "entity": "k",
         "status": "firing", "severity": "warning", "score": 0.8, "event_ts": 1.0,
         "detected_at": 2.0, "window": {"first_ts": 0.0, "last_ts": 1.0, "events": 3},
         "reasons": [{"feature": "cot_share", "observed": 0.9, "baseline": 0.05,
                      "contribution": 0.5, "explanation": "cot_request share 0.90 vs population 0.05"}],
         "detector": "key_population", "model_version": "1", "related_entities": [],
         "related_total": 0}
    a.update(over)
    return a


def test_alert_validator_agrees_with_reference_on_good_and_bad():
    good = _alert()
    validate_alert(good)
    REF_ALERT.validate(good)
    for bad in (_alert(score=1.5), _alert(reasons=[]), _alert(status="open"),
                _alert(alert_id="xyz"), _alert(extra=1), _alert(related_entities="k"),
                _alert(window={"first_ts": 0})):
        assert not REF_ALERT.is_valid(bad)
        with pytest.raises(InvalidAlert):
            validate_alert(bad)


def test_docs_schemas_md_is_generated_from_the_schema_files():
    from schemas.docs import main

    assert main(["--check"]) == 0, "docs/schemas.md is stale: run `python -m schemas.docs`"
