"""FeedbackBook: analyst verdicts as data, asked in event time."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.feedback import FeedbackBook, validate_feedback


def rec(**kw):
    base = {"entity_type": "account", "entity": "acct-1", "verdict": "confirmed", "ts": 100.0}
    base.update(kw)
    return base


def test_validate_normalises_optional_fields():
    r = validate_feedback(rec(ts=5))
    assert r == {
        "entity_type": "account",
        "entity": "acct-1",
        "verdict": "confirmed",
        "until": None,
        "ts": 5.0,
        "analyst": None,
        "note": None,
    }


@pytest.mark.parametrize(
    "bad, words",
    [
        ("not a dict", "JSON object"),
        (rec(verdict="maybe"), "verdict"),
        (rec(entity_type="tenant"), "entity_type"),
        (rec(entity=""), "entity"),
        (rec(ts=float("nan")), "ts"),
        (rec(ts=True), "ts"),
        (rec(until="tomorrow"), "until"),
        (rec(until=50.0), "before ts"),
        (rec(analyst=7), "analyst"),
        (rec(untill=5.0), "unknown field"),
        ({"entity": "x", "verdict": "confirmed"}, "missing"),
    ],
)
def test_validate_rejects_with_a_message_saying_what_to_fix(bad, words):
    with pytest.raises(ValueError, match=words):
        validate_feedback(bad)


def test_allowlist_expires_at_until_and_starts_at_ts():
    book = FeedbackBook()
    book.apply(rec(entity_type="api_key", entity="k", verdict="allowlisted", ts=100.0, until=200.0))
    assert book.verdict("api_key", "k", 99.0) is None
    assert book.verdict("api_key", "k", 100.0) == "allowlisted"
    assert book.verdict("api_key", "k", 199.9) == "allowlisted"
    assert book.verdict("api_key", "k", 200.0) is None
    assert book.verdict("account", "k", 150.0) is None  # entity types do not mix


def test_latest_record_wins_and_late_old_records_are_ignored():
    book = FeedbackBook()
    book.apply(rec(verdict="false_positive", ts=100.0))
    book.apply(rec(verdict="confirmed", ts=300.0))
    book.apply(rec(verdict="allowlisted", ts=200.0))  # older, arrives late
    assert book.verdict("account", "acct-1", 400.0) == "confirmed"
    assert book.verdict("account", "acct-1", 150.0) is None  # the held record starts at 300


def test_export_import_round_trip_and_rejects_foreign_blobs():
    book = FeedbackBook()
    book.apply(rec(entity="a", verdict="allowlisted", until=500.0, analyst="ana", note="reseller"))
    book.apply(rec(entity_type="api_key", entity="k9", verdict="false_positive", ts=50.0))
    other = FeedbackBook()
    other.import_state(book.export_state())
    assert other.export_state() == book.export_state()
    assert other.verdict("account", "a", 200.0) == "allowlisted"
    with pytest.raises(ValueError, match="version"):
        other.import_state(orjson.dumps({"version": 99, "records": []}))
    with pytest.raises(ValueError, match="JSON"):
        other.import_state(b"\x80garbage")


def test_load_jsonl_skips_blanks_and_names_the_bad_line():
    book = FeedbackBook()
    lines = [
        b"# analyst verdicts\n",
        orjson.dumps(rec(entity="a1")) + b"\n",
        b"\n",
        orjson.dumps(rec(entity="a2", verdict="allowlisted")).decode(),
    ]
    assert book.load_jsonl(lines) == 2
    assert len(book) == 2
    with pytest.raises(ValueError, match="line 2"):
        book.load_jsonl(["", '{"entity_type": "account"}'])


def test_bounded_book_drops_expired_allowlists_first():
    book = FeedbackBook(max_entries=2)
    book.apply(rec(entity="old", verdict="allowlisted", ts=1.0, until=2.0))
    book.apply(rec(entity="keep1", ts=3.0))
    book.apply(rec(entity="keep2", ts=4.0))
    assert len(book) == 2
    assert book.record("account", "old") is None
    assert book.verdict("account", "keep1", 10.0) == "confirmed"
    with pytest.raises(ValueError):
        FeedbackBook(max_entries=0)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(
    ["entity_type", "entity", "verdict", "until", "ts", "analyst", "note", "x"]),
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5))))
def test_validate_never_raises_anything_but_value_error(obj):
    try:
        validate_feedback(obj)
    except ValueError:
        pass
