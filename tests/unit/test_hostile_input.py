"""Hostile input: nothing crashes the decoder or the detector, memory stays bounded, every reject
is dead-lettered with its reason.

Issue 7 §4. Goes beyond tests/unit/test_schemas.py's properties: oversized and deeply nested
messages, huge numbers, unicode edge cases (lone surrogates, NUL, bidi overrides, emoji),
timestamps far in the past and future, out-of-order streams, and a flood of distinct api_keys
through :class:`streams.pipeline.Detector` with its event-time housekeeping.
"""

from __future__ import annotations

import base64
import math
import random

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.validation import (
    INVALID_REASONS,
    MAX_EVENT_BYTES,
    InvalidEvent,
    decode_event,
    validate_alert,
)
from streams.pipeline import ADVANCE_EVERY_S, Detector, decode

GOOD = {"event_id": "e1", "ts": 1767571200.5, "api_key": "k1", "prompt_tokens": 12,
        "completion_tokens": 340, "status": 200}

NASTY_STRINGS = [
    "", "\x00", "a\x00b", "\u202eevil\u202c", "\u200f\u200e", "\ufeff", "\U0001F600" * 50,
    "👩‍👩‍👧‍👦", "\u0301" * 100, "𝕏" * 64, "\\", '"', "\n\r\t", "null", "NaN", "1e999",
    "ǅ", "ﷺ", "\uffff", "x" * 300, "\ud7ff",
]
HUGE_NUMBERS = [10**400, -(10**400), 2**63, 2**64, -(2**63) - 1, 1e308, -1e308, 5e-324, -0.0,
                1.7976931348623157e308, 10**18, 0.1 + 0.2]
FAR_TIMES = [0, 0.0, 1e-9, -1, -1e9, 1e12, 32503680000, 32503680001, 1e18, 1e300,
             253402300800, 86400 * 365 * 3000, 1767571200.123456789]


def classify(raw: bytes | str) -> str:
    """'ok' or the InvalidEvent reason; any other exception fails the test."""
    try:
        for fn in (decode_event, decode):
            event = fn(raw)
            assert type(event) is dict and "prompt_text" not in event or fn is decode_event
        return "ok"
    except InvalidEvent as exc:
        assert exc.reason in INVALID_REASONS, exc.reason
        assert b"PROMPT-MARKER" not in exc.detail.encode("utf-8", "surrogatepass")
        return exc.reason


def json_values(depth: int = 3):
    leaves = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
              | st.text() | st.sampled_from(NASTY_STRINGS) | st.sampled_from(HUGE_NUMBERS))
    return st.recursive(leaves, lambda c: st.lists(c, max_size=4)
                        | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash(raw):
    classify(raw)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(sorted(GOOD) + ["prompt_text", "turn", "topic", "asn",
                                                         "prompt_simhash", "n", "temperature",
                                                         "client_ip", "x"]),
                       json_values(), max_size=12))
def test_hostile_field_values_are_accepted_or_rejected_with_a_reason(fields):
    obj = {**GOOD, **fields}
    if isinstance(obj.get("prompt_text"), str):
        obj["prompt_text"] = "PROMPT-MARKER " + obj["prompt_text"]
    try:
        raw = orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):   # ints beyond 64 bits: write them by hand
        raw = repr(obj).encode("utf-8", "surrogatepass")
    verdict = classify(raw)
    if verdict == "ok":
        det = Detector(2)
        det.process(decode(raw))


@pytest.mark.parametrize("value", HUGE_NUMBERS)
@pytest.mark.parametrize("field", ["ts", "prompt_tokens", "completion_tokens", "status", "asn",
                                   "max_tokens", "latency_ms", "turn", "n", "temperature",
                                   "top_logprobs"])
def test_huge_numbers_in_every_numeric_field(field, value):
    raw = b'{"event_id":"e","ts":1767571200,"api_key":"k","prompt_tokens":1,' \
          b'"completion_tokens":1,"status":200,"' + field.encode() + b'":' + \
          str(value).encode() + b"}"
    verdict = classify(raw)
    if verdict == "ok":
        ev = decode(raw)
        assert all(not isinstance(v, float) or math.isfinite(v) for v in ev.values())
        Detector().process(ev)


@pytest.mark.parametrize("s", NASTY_STRINGS + ["\ud800", "\udfff", "\ud800\udc00x"])
@pytest.mark.parametrize("field", ["api_key", "event_id", "user_agent", "model", "prompt_text",
                                   "conversation_id", "client_ip", "account_id"])
def test_unicode_edge_cases_in_every_string_field(field, s):
    # JSON escapes, so lone surrogates arrive as the wire would carry them
    escaped = orjson.dumps(s) if not any(0xD800 <= ord(c) <= 0xDFFF for c in s) else \
        ('"' + "".join(f"\\u{ord(c):04x}" for c in s) + '"').encode()
    raw = (b'{"event_id":"e","ts":1767571200,"api_key":"k","prompt_tokens":1,'
           b'"completion_tokens":1,"status":200,"' + field.encode() + b'":' + escaped + b"}")
    verdict = classify(raw)
    if verdict == "ok":
        ev = decode(raw)
        for a in Detector().process(ev):
            validate_alert(a)
    # the raw bytes themselves, unescaped, including invalid UTF-8 of a surrogate
    classify(raw.replace(escaped, b'"' + s.encode("utf-8", "surrogatepass") + b'"'))


def test_oversized_and_deeply_nested_messages_are_rejected_not_crashing():
    assert classify(b"{" + b'"a":' * 10 + b"1" + b"}" * 10) != "ok"
    assert classify(b"[" * 100_000 + b"]" * 100_000) in INVALID_REASONS
    deep = b'{"x":' * 5000 + b"1" + b"}" * 5000
    assert classify(deep[:-1]) in INVALID_REASONS
    nested_unknown = orjson.dumps(GOOD)[:-1] + b',"extra":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    assert classify(nested_unknown) in INVALID_REASONS
    big = orjson.dumps({**GOOD, "user_agent": "u" * (MAX_EVENT_BYTES + 1)})
    assert classify(big) == "too_large"
    assert classify(b" " * (MAX_EVENT_BYTES + 1)) == "too_large"
    assert classify(orjson.dumps({**GOOD, "x": list(range(50_000))})) == "ok"


@pytest.mark.parametrize("ts", FAR_TIMES)
def test_timestamps_far_in_the_past_and_future(ts):
    raw = orjson.dumps({**GOOD, "ts": ts})
    verdict = classify(raw)
    if verdict == "ok":
        det = Detector()
        alerts = det.process(decode(raw))
        alerts += det.process({**GOOD, "event_id": "e2", "ts": 1767571300.0})
        for a in alerts:
            validate_alert(a)


def _stream(n: int, keys: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    t = 1767571200.0
    for i in range(n):
        t += rng.expovariate(2.0)
        k = f"k{rng.randrange(keys)}"
        bot = k in ("k0", "k1")
        out.append({"event_id": str(i), "ts": t, "api_key": k,
                    "prompt_tokens": rng.randrange(20, 60) if bot else rng.randrange(10, 3000),
                    "completion_tokens": rng.randrange(800, 1200) if bot else rng.randrange(5, 400),
                    "status": 200, "turn": 1 if bot else rng.randrange(1, 6),
                    "cot_request": bot, "logprobs": bot,
                    "topic": rng.choice(("code", "math", "reasoning") if bot else ("chat", "writing")),
                    "prompt_simhash": f"{rng.getrandbits(64):016x}"})
    return out


def test_out_of_order_events_do_not_crash_the_detector():
    events = _stream(6000, 30, seed=4)
    rng = random.Random(5)
    # local disorder (gateways flushing late), reversed runs, and stragglers from an hour ago
    shuffled = list(events)
    for i in range(0, len(shuffled) - 50, 50):
        chunk = shuffled[i:i + 50]
        rng.shuffle(chunk)
        shuffled[i:i + 50] = chunk
    for i in range(0, len(shuffled), 997):
        shuffled[i] = {**shuffled[i], "ts": shuffled[i]["ts"] - 3600}
    shuffled[3000:3200] = reversed(shuffled[3000:3200])
    det = Detector(3)
    for ev in shuffled:
        for a in det.process(ev):
            validate_alert(a)
    assert det.stats()["tracked_keys"] <= 30


def test_one_event_from_the_far_future_does_not_wipe_or_freeze_a_partition():
    """A schema-valid ts in the year 3000 must not move the partition's event-time clock there:
    that would evict every key at once and stop all later housekeeping (no more eviction, no
    more quiet resolutions) for the life of the partition."""
    det = Detector(1)
    events = _stream(3000, 40, seed=9)
    for ev in events[:1500]:
        det.process(ev)
    before = det.stats()["tracked_keys"]
    hostile = {**GOOD, "api_key": "time-traveller", "ts": 32503680000.0}
    try:
        det.process(decode(orjson.dumps(hostile)))
    except InvalidEvent:
        pass   # rejecting it is fine too
    assert det.stats()["tracked_keys"] >= before, "one future event evicted the partition's keys"
    # housekeeping still runs on the partition's real event time afterwards
    t = events[1499]["ts"]
    evicted = det.stats()["evicted_total"]
    for i in range(2000):
        t += 30.0
        det.process({**GOOD, "event_id": f"f{i}", "api_key": f"later-{i}", "ts": t})
    assert det.stats()["evicted_total"] > evicted, "eviction stopped after the future event"


def test_a_flood_of_distinct_keys_is_evicted_and_memory_stays_bounded():
    """200k distinct api_keys over 25 hours of event time: idle keys are evicted, the number of
    keys held stays bounded by the key rate times the idle TTL (plus one sweep interval)."""
    from models.engine import DetectorConfig

    cfg = DetectorConfig()
    n, span = 200_000, 25 * 3600.0
    det = Detector(2)
    rate = n / span
    bound = rate * (cfg.idle_ttl + max(cfg.idle_ttl / 8.0, 60.0) + 2 * ADVANCE_EVERY_S) * 1.05
    peak = 0
    for i in range(n):
        det.process({"event_id": str(i), "ts": 1767571200.0 + i * span / n, "api_key": f"flood-{i}",
                     "prompt_tokens": 10, "completion_tokens": 100, "status": 200}, seq=i)
        if not i % 2000:
            peak = max(peak, det.stats()["tracked_keys"])
    st_ = det.stats()
    assert st_["evicted_total"] >= n - bound, st_
    assert peak <= bound, f"{peak} keys held, bound {bound:.0f}"
    per_key = st_["state_bytes"] / max(1, st_["tracked_keys"])
    assert per_key < 2048, f"{per_key:.0f} bytes per key"


def test_every_reject_lands_in_the_replay_dlq_with_its_reason(tmp_path):
    from streams.replay import replay

    rng = random.Random(3)
    good = [orjson.dumps(e) for e in _stream(400, 10, seed=2)]
    bad = [b"{", b"[]", b"\xff\xfe", b'{"ts":NaN}', orjson.dumps({**GOOD, "api_key": ""}),
           orjson.dumps({**GOOD, "status": "200"}), orjson.dumps({**GOOD, "ts": 1e300}),
           orjson.dumps({**GOOD, "prompt_text": "SECRET-MARKER-1", "prompt_tokens": -1}),
           b'{"x":' * 3000 + b"1" + b"}" * 3000, b"\x00" * 10,
           orjson.dumps({**GOOD, "user_agent": "u" * (MAX_EVENT_BYTES + 10)})]
    bad += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64))).replace(b"\n", b"")
            for _ in range(200)]
    lines = good + bad
    rng.shuffle(lines)
    src = tmp_path / "hostile.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    expected = []
    for lineno, line in enumerate(src.read_bytes().split(b"\n"), 1):
        if line.strip():
            r = classify(line)
            if r != "ok":
                expected.append((lineno, r))
    summary = replay(str(src), str(tmp_path / "a.jsonl"), dlq_path=str(tmp_path / "dlq.jsonl"),
                     progress=False)
    dlq = [orjson.loads(x) for x in (tmp_path / "dlq.jsonl").read_bytes().splitlines()]
    assert sorted((d["source"]["line"], d["reason"]) for d in dlq) == sorted(expected)
    assert summary.invalid == len(expected) and summary.events == len(good)
    text = (tmp_path / "dlq.jsonl").read_bytes()
    assert b"SECRET-MARKER-1" not in text
    for d in dlq:
        assert b"SECRET-MARKER-1" not in base64.b64decode(d["original_base64"])
