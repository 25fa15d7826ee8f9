"""Decode, dead-letter and partition: the pieces replay and the worker share."""

from __future__ import annotations

import base64

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from schemas.validation import InvalidEvent
from streams.pipeline import (
    DEAD_LETTER_PREVIEW_BYTES,
    Detector,
    dead_letter,
    decode,
    partition_for,
    redact_prompt_text,
)

GOOD = {"event_id": "e1", "ts": 1767571200.0, "api_key": "k1", "prompt_tokens": 12,
        "completion_tokens": 340, "status": 200}


def test_partition_matches_kafka_default_partitioner():
    parts = list(range(6))
    for i in range(200):
        key = f"ak_{i:04x}".encode()
        assert partition_for(key, 6) == DefaultPartitioner()(key, parts, parts)


def test_prompt_text_derives_fields_and_never_survives_decoding():
    raw = orjson.dumps({**GOOD, "prompt_text": "Solve step by step: prove that sqrt(2) is irrational."})
    event = decode(raw)
    assert "prompt_text" not in event
    assert len(event["prompt_simhash"]) == 16
    assert event["topic"] in ("math", "reasoning")
    assert event["cot_request"] is True


def test_producer_fields_win_over_derived_ones():
    raw = orjson.dumps({**GOOD, "prompt_text": "step by step", "topic": "chat", "cot_request": False,
                        "prompt_simhash": "00000000000000ff"})
    event = decode(raw)
    assert (event["topic"], event["cot_request"], event["prompt_simhash"]) == ("chat", False, "00000000000000ff")


@pytest.mark.parametrize("raw", [
    b'{"prompt_text":"top secret","ts":"x"}',
    b'{"prompt_text" : "top \\"secret\\" text", "a": [',
    b'{"prompt_text":"top secret',
])
def test_redaction_removes_prompt_text_even_from_broken_json(raw):
    out = redact_prompt_text(raw)
    assert b"secret" not in out
    assert b"redacted" in out


def test_dead_letter_record_keeps_reason_source_and_bounded_original():
    raw = b"x" * (DEAD_LETTER_PREVIEW_BYTES * 3)
    rec = dead_letter(raw, InvalidEvent("invalid_json", "nope"),
                      source={"topic": "t", "partition": 1, "offset": 7}, detected_at=1.0)
    assert rec["reason"] == "invalid_json" and rec["source"]["offset"] == 7
    assert rec["truncated"] and rec["original_bytes"] == len(raw)
    assert len(base64.b64decode(rec["original_base64"])) == DEAD_LETTER_PREVIEW_BYTES
    orjson.dumps(rec)  # serialisable as is


def test_detector_partitions_and_redelivery():
    det = Detector(partitions=4)
    ev = dict(GOOD)
    det.process(ev, seq=5)
    p = det.partition_of("k1")
    assert list(det.cores) == [p]
    before = det.stats()
    assert det.process(dict(GOOD), seq=5) == []   # redelivered offset: skipped
    assert det.stats()["duplicates_total"] == before["duplicates_total"] + 1
    det.drop(p)
    assert det.cores == {}


def test_housekeeping_clock_ignores_a_lone_jump_but_follows_a_confirmed_gap():
    from streams.pipeline import MAX_CLOCK_JUMP_S, EventTimeClock

    c = EventTimeClock()
    assert c.due(1000.0) is None
    assert c.due(1006.0) == 1005.0
    assert c.due(1e12) is None                          # lone outlier: ignored
    assert c.due(1012.0) == 1010.0                      # the real stream goes on
    gap = 1012.0 + MAX_CLOCK_JUMP_S * 3
    assert c.due(gap) is None                            # first event after a long gap: held
    assert c.due(gap + 1.0) == (gap + 1.0) // 5 * 5       # confirmed by the next one


def test_partition_state_record_round_trips_the_clock_and_rejects_garbage():
    from streams.app import _pack_shared, _unpack_shared

    blob = _pack_shared((1005.0, None), b"core-bytes", 12)
    assert _unpack_shared(blob) == ((1005.0, None), b"core-bytes", 12)
    assert _unpack_shared(_pack_shared((None, 7.0), b"")) == ((None, 7.0), b"", 0)
    with pytest.raises(ValueError):
        _unpack_shared(b"\x09garbage-garbage-garbage")


def test_detector_clock_restore_makes_advance_points_match():
    det = Detector(1)
    det.process(dict(GOOD, ts=1000.0))
    det.process(dict(GOOD, ts=1003.0, event_id="e2"))
    clock = det.clock_of(0)
    fresh = Detector(1)
    fresh.set_clock(0, *clock)
    assert fresh.clock_of(0) == clock == (1005.0, None)
