"""Crash safety: SIGKILL the worker mid-stream, restart it, lose nothing, decide the same.

Issue 7 §1. A worker is killed with SIGKILL (no shutdown, no final commit) three times at
seeded random points of the stream and restarted each time. Per-key state must come back from
the ``key-state`` / ``partition-state`` changelogs, so the final set of per-key alert_ids
equals an uninterrupted run of the same file (replay with the same partition count; replay ==
live is proven by test_replay_equals_live). Redelivered events are fine (at-least-once);
changed decisions are not.

No event is lost: at the end the consumer group's committed offset of every input partition
is the partition's end offset (everything was processed and acknowledged), the last run
consumed at least everything after the offsets the previous runs had committed, and every
bad line injected into the input is in the DLQ with its reason and source offset.
"""

from __future__ import annotations

import base64
import random
import time

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.kafka_io import end_offsets, ensure_topics, produce_file

from .conftest import read_topic
from .helpers import key_alert_ids, metric, replay_alerts, simulate_file

pytestmark = pytest.mark.kafka

#: Bad lines mixed into the input (each must end in the DLQ with this reason).
BAD_LINES = [
    (b"{not json", "invalid_json"),
    (b'{"event_id":"b","ts":1767571300,"api_key":"","prompt_tokens":1,'
     b'"completion_tokens":1,"status":200}', "out_of_range"),
    (b'[1,2,3]', "not_object"),
    (b'{"event_id":"b","ts":"noon","api_key":"k","prompt_tokens":1,'
     b'"completion_tokens":1,"status":200}', "wrong_type"),
    (b'{"event_id":"b","api_key":"k","prompt_tokens":1,"completion_tokens":1}', "missing_field"),
]

#: Worker knobs for the tests: a dead member leaves the group in seconds, not Faust's 60 s.
FAST_GROUP = {"MOATWATCH_SESSION_TIMEOUT": "6"}


def input_with_bad_lines(events, tmp_path, seed: int):
    """The simulated file with BAD_LINES spliced in at seeded positions."""
    rng = random.Random(seed)
    lines = events.read_bytes().splitlines()
    for bad, _reason in BAD_LINES:
        lines.insert(rng.randrange(len(lines)), bad)
    out = tmp_path / "events-with-bad.jsonl"
    out.write_bytes(b"\n".join(lines) + b"\n")
    return out


def committed_offsets(names, topic: str, partitions: int) -> dict[int, int]:
    """The worker group's committed offset per partition (-1001 = nothing committed yet)."""
    c = Consumer({"bootstrap.servers": names.bootstrap, "group.id": names.app_id,
                  "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def wait_committed_to_end(names, topic: str, worker=None, timeout: float = 120.0) -> dict[int, int]:
    """Wait until the group committed every partition of ``topic`` up to its end offset."""
    ends = end_offsets(names.settings(), topic)
    deadline = time.monotonic() + timeout
    got: dict[int, int] = {}
    while time.monotonic() < deadline:
        if worker is not None and worker.proc.poll() is not None:
            raise AssertionError(f"worker exited ({worker.proc.returncode}):\n{worker.log()[-4000:]}")
        got = committed_offsets(names, topic, len(ends))
        if all(got.get(p, -1) >= end for p, end in ends.items()):
            return got
        time.sleep(0.5)
    tail = f"\nworker log (tail):\n{worker.log()[-4000:]}" if worker is not None else ""
    raise AssertionError(f"committed offsets {got} never reached the end offsets {ends} "
                         f"in {timeout:.0f}s: events were lost or never acknowledged{tail}")


def wait_metric_at_least(worker, name: str, n: float, timeout: float = 120.0) -> float:
    deadline = time.monotonic() + timeout
    seen = -1.0
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited ({worker.proc.returncode}):\n{worker.log()[-4000:]}")
        try:
            seen = metric(worker, name)
            if seen >= n:
                return seen
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{name} reached {seen}, not {n}, in {timeout}s:\n{worker.log()[-3000:]}")


def key_decisions(alerts: list[dict]) -> set[tuple[str, str, str, float]]:
    """What each per-key alert decided: (alert_id, status, severity, event_ts).

    alert_id alone is per episode (firing, escalation and resolution share it), so comparing
    ids only would not see a lost resolution; the decisions must match too."""
    return {(a["alert_id"], a["status"], a["severity"], a["event_ts"])
            for a in alerts if a["entity_type"] == "api_key"}


def check_dead_letters(names, expect_reasons: list[str]) -> None:
    """Every injected bad line is in the DLQ (once per source offset) with its reason."""
    dlq = read_topic(names, names.dlq, expect=None, idle=4.0, total=60.0)
    by_offset = {}
    for rec in dlq:
        src = rec["source"]
        by_offset[(src["partition"], src["offset"])] = rec
    reasons = sorted(r["reason"] for r in by_offset.values())
    assert reasons == sorted(expect_reasons), f"dead letters {reasons} != injected {expect_reasons}"
    originals = {base64.b64decode(r["original_base64"]) for r in by_offset.values()}
    assert originals == {bad for bad, _ in BAD_LINES}


def test_sigkill_three_times_then_same_alerts_and_nothing_lost(names, worker_factory, tmp_path):
    partitions = 2
    names.partitions = partitions
    rng = random.Random(7007)
    sim, _ = simulate_file(tmp_path, hours=8.0, seed=3, scale=0.2)
    events = input_with_bad_lines(sim, tmp_path, seed=7007)
    expected_alerts = replay_alerts(events, tmp_path, partitions=partitions)
    expected = key_alert_ids(expected_alerts)
    assert len(expected) >= 5, "the traffic must make replay alert, or the test proves nothing"

    settings = names.settings()
    ensure_topics(settings, {names.events: partitions, names.alerts: partitions})
    sent = produce_file(settings, str(events), progress=False)["events"]
    ends = end_offsets(settings, names.events)
    assert sum(ends.values()) == sent

    kills = []
    for _run in range(3):
        worker = worker_factory(extra_env=FAST_GROUP).start()
        worker.wait_ready()
        # a seeded random point of the stream: after this many events of this run
        point = rng.randrange(800, sent // 4)
        consumed = wait_metric_at_least(worker, "moatwatch_events_consumed_total", point)
        worker.kill()   # SIGKILL: no flush, no commit, no goodbye to the group
        kills.append((point, consumed, committed_offsets(names, names.events, partitions)))
    before_last = kills[-1][2]
    assert sum(max(0, off) for off in before_last.values()) < sent, \
        "the kills happened after everything was committed: they tested nothing"

    final = worker_factory(extra_env=FAST_GROUP).start()
    final.wait_ready()
    wait_committed_to_end(names, names.events, final)
    # the last run read at least every offset the killed runs had not committed
    remaining = sum(ends[p] - max(0, before_last.get(p, 0)) for p in ends)
    consumed = metric(final, "moatwatch_events_consumed_total")
    assert consumed >= remaining, f"last run consumed {consumed} < {remaining} uncommitted"
    restored = metric(final, "moatwatch_events_duplicate_total")
    print(f"\ncrash points (events into the run, consumed at kill, committed): {kills}; "
          f"last run consumed {consumed:.0f} of {remaining} remaining; duplicates {restored:.0f}")

    live = read_topic(names, names.alerts, idle=6.0, total=120.0)
    got = key_alert_ids(live)
    missing, extra = expected - got, got - expected
    assert not missing and not extra, (
        f"after 3 SIGKILLs the key alert ids differ from an uninterrupted run: "
        f"missing {sorted(missing)}, extra {sorted(extra)}")
    got_d, exp_d = key_decisions(live), key_decisions(expected_alerts)
    assert got_d == exp_d, (f"after 3 SIGKILLs the per-key decisions differ: missing "
                            f"{sorted(exp_d - got_d)}, extra {sorted(got_d - exp_d)}")
    check_dead_letters(names, [r for _, r in BAD_LINES])


def test_restart_while_an_idle_key_has_an_open_episode(names, worker_factory, tmp_path):
    """A key whose episode is open goes silent; the worker restarts before the episode's quiet
    timeout. The restarted worker must still resolve it (replay does), although that key never
    sends another event: its state has to be loaded from the changelog, not only on its next
    event."""
    names.partitions = 1
    events, _ = simulate_file(tmp_path, hours=8.0, seed=3, scale=0.2)
    lines = events.read_bytes().splitlines()
    expected_alerts = replay_alerts(events, tmp_path, partitions=1)
    last_index: dict[str, int] = {}
    last_ts: dict[str, float] = {}
    for i, line in enumerate(lines):
        ev = orjson.loads(line)
        last_index[ev["api_key"]] = i
        last_ts[ev["api_key"]] = ev["ts"]
    quiet = [a for a in expected_alerts if a["entity_type"] == "api_key"
             and a["status"] == "resolved" and a["event_ts"] == last_ts[a["entity"]]]
    assert quiet, "the traffic must have an episode resolved by silence, or the test proves nothing"
    split = last_index[quiet[0]["entity"]] + 1
    first, rest = tmp_path / "first.jsonl", tmp_path / "rest.jsonl"
    first.write_bytes(b"\n".join(lines[:split]) + b"\n")
    rest.write_bytes(b"\n".join(lines[split:]) + b"\n")

    settings = names.settings()
    ensure_topics(settings, {names.events: 1, names.alerts: 1})
    produce_file(settings, str(first), progress=False)
    worker = worker_factory(extra_env=FAST_GROUP).start()
    worker.wait_ready()
    wait_committed_to_end(names, names.events, worker)
    worker.kill()
    produce_file(settings, str(rest), progress=False)
    again = worker_factory(extra_env=FAST_GROUP).start()
    again.wait_ready()
    wait_committed_to_end(names, names.events, again)
    live = read_topic(names, names.alerts, idle=6.0, total=120.0)
    assert key_alert_ids(live) == key_alert_ids(expected_alerts)
    got, expected = key_decisions(live), key_decisions(expected_alerts)
    assert got == expected, (f"restart at offset {split} (after {quiet[0]['entity']}'s last event): "
                             f"missing {sorted(expected - got)}, extra {sorted(got - expected)}")
