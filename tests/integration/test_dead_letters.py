"""Bad input never stops a partition: every invalid event is dead-lettered with its reason.

Issue 2 "Done when": invalid JSON, wrong types, missing fields, non-UTF-8 bytes, multi-megabyte
lines, NaN, arrays instead of objects -- zero crashes, every bad event in the DLQ with its
reason and source offset, and the good events' alerts unchanged.
"""

from __future__ import annotations

import base64

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from .conftest import read_topic
from .helpers import key_alert_ids, metric, replay_alerts, simulate_file, wait_consumed

pytestmark = pytest.mark.kafka

GOOD = {"event_id": "x", "ts": 1767571200.0, "api_key": "k", "prompt_tokens": 1,
        "completion_tokens": 1, "status": 200}


def bad_events() -> list[tuple[bytes, str]]:
    """(message value, expected reason) for every kind of bad input."""
    big = orjson.dumps({**GOOD, "user_agent": "a" * (3 * 1024 * 1024)})
    return [
        (b"{not json", "invalid_json"),
        (orjson.dumps({**GOOD, "prompt_tokens": "ten"}), "wrong_type"),
        (orjson.dumps({**GOOD, "status": True}), "wrong_type"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "api_key"}), "missing_field"),
        (b"\xff\xfe\x00garbage", "not_utf8"),
        (big, "too_large"),
        (b'{"event_id":"x","ts":NaN,"api_key":"k","prompt_tokens":1,"completion_tokens":1,"status":200}', "invalid_json"),
        (b"[1, 2, 3]", "not_object"),
        (orjson.dumps({**GOOD, "api_key": ""}), "out_of_range"),
        (orjson.dumps({**GOOD, "completion_tokens": -5}), "out_of_range"),
        (orjson.dumps({**GOOD, "prompt_text": "my secret prompt", "ts": "yesterday"}), "wrong_type"),
        (b"", "invalid_json"),
    ]


def test_every_bad_event_is_dead_lettered_and_good_alerts_unchanged(names, worker_factory, tmp_path):
    names.partitions = 2
    events, _ = simulate_file(tmp_path, hours=2.0, seed=5, scale=0.3)
    good_lines = events.read_bytes().splitlines()
    expected = replay_alerts(events, tmp_path, partitions=2)

    admin = AdminClient({"bootstrap.servers": names.bootstrap})
    cfg = {"max.message.bytes": str(8 * 1024 * 1024)}
    for fut in admin.create_topics([NewTopic(names.events, 2, 1, config=cfg),
                                    NewTopic(names.alerts, 2, 1)]).values():
        fut.result()
    worker = worker_factory().start()
    worker.wait_ready()

    producer = Producer({"bootstrap.servers": names.bootstrap, "partitioner": "murmur2_random",
                         "message.max.bytes": 8 * 1024 * 1024, "enable.idempotence": True})
    bad = bad_events()
    step = max(1, len(good_lines) // (len(bad) + 1))
    sent = 0
    bad_iter = iter(bad)
    for i, line in enumerate(good_lines):
        if i and i % step == 0:
            nxt = next(bad_iter, None)
            if nxt is not None:
                producer.produce(names.events, value=nxt[0], key=b"bad")
                sent += 1
        key = orjson.loads(line)["api_key"].encode()
        producer.produce(names.events, value=line, key=key)
        sent += 1
        if i % 500 == 0:
            producer.poll(0)
    for value, _reason in bad_iter:
        producer.produce(names.events, value=value, key=b"bad")
        sent += 1
    assert producer.flush(60) == 0

    wait_consumed(worker, sent)
    dead = read_topic(names, names.dlq, expect=len(bad), idle=8.0)
    assert sorted(d["reason"] for d in dead) == sorted(r for _, r in bad)
    for d in dead:
        assert d["detail"] and d["source"]["topic"] == names.events
        assert isinstance(d["source"]["offset"], int) and d["source"]["partition"] in (0, 1)
        original = base64.b64decode(d["original_base64"])
        assert b"my secret prompt" not in original, "prompt text must be redacted in dead letters"
        assert len(original) <= 64 * 1024
        assert d["truncated"] == (d["original_bytes"] > 64 * 1024)
    assert metric(worker, "moatwatch_events_invalid_total") == len(bad)
    assert worker.proc.poll() is None, "the worker must survive bad input"

    live = read_topic(names, names.alerts, expect=len(expected), idle=8.0)
    assert key_alert_ids(live) == key_alert_ids(expected)
