"""Per-partition lag and progress of the worker: what MoatwatchPartitionStalled reads.

faust-streaming can leave a partition assigned but never fetched after a rebalance (seen once in
the failover test: the survivor held the partition and never committed it). The worker reports,
per input partition it holds, the messages waiting and the wall time it last processed one (or
was assigned the partition); a revoked partition's series go with it. No broker: the Faust app
is built but never started, and the consumer's highwater and committed offsets are stand-ins.
"""

from __future__ import annotations

import asyncio

from faust.types import TP

from streams.app import Worker
from streams.settings import load_settings


def _worker(tmp_path) -> Worker:
    return Worker(load_settings({"MOATWATCH_DATA_DIR": str(tmp_path / "data")}), 3)


def _sample(w: Worker, name: str, tp: TP) -> float | None:
    return w.metrics.registry.get_sample_value(name, {"topic": tp.topic, "partition": str(tp.partition)})


def _lag(w, tp):
    return _sample(w, "moatwatch_consumer_lag_messages", tp)


def _progress(w, tp):
    return _sample(w, "moatwatch_partition_progress_timestamp_seconds", tp)


def test_lag_counts_from_the_further_of_processed_and_committed(tmp_path):
    w = _worker(tmp_path)
    t = w.settings.events_topic
    p0, p1, p2 = TP(t, 0), TP(t, 1), TP(t, 2)
    rekeyed = TP(f"{w.settings.app_id}-events-rekeyed", 0)
    asyncio.run(w._on_assigned(None, [p0, p1, p2, rekeyed]))
    w._last_offsets[(t, 0)] = 49                     # processed up to offset 49
    w._last_offsets[(t, 1)] = 10                     # read long ago, before another owner went on
    hw = {p0: 100, p1: 80, p2: 30, rekeyed: 7}
    committed = {p0: 20, p1: 80}                      # 1 was committed to its end; 2 never was
    w._report_partitions(hw.get, committed, 1000.0)
    assert _lag(w, p0) == 50          # 50..99 wait
    assert _lag(w, p1) == 0           # nothing waits: the group committed it to the end
    assert _lag(w, p2) == 30          # never committed: all of it waits
    assert _lag(w, rekeyed) is None   # only the input topic is reported
    assert w.metrics.registry.get_sample_value("moatwatch_partitions_assigned") == 3


def test_progress_moves_only_when_an_event_is_processed(tmp_path):
    w = _worker(tmp_path)
    t = w.settings.events_topic
    p0, p1 = TP(t, 0), TP(t, 1)
    asyncio.run(w._on_assigned(None, [p0, p1]))
    assigned_at = w._progress[(t, 1)][1]   # the wall time of the assignment
    hw = {p0: 500, p1: 500}.get
    w._report_partitions(hw, {}, assigned_at + 600.0)
    # nothing processed since the assignment: both age from it, with 500 events waiting
    assert _progress(w, p0) == _progress(w, p1) == assigned_at
    assert _lag(w, p1) == 500
    w._last_offsets[(t, 0)] = 99
    w._report_partitions(hw, {}, assigned_at + 605.0)
    assert _progress(w, p0) == assigned_at + 605.0    # partition 0 moved
    assert _progress(w, p1) == assigned_at            # partition 1 did not: it is stalled
    w._report_partitions(hw, {}, assigned_at + 900.0)
    assert _progress(w, p0) == assigned_at + 605.0    # no new event since: the clock stays
    # a rebalance hands partition 1 back: its clock restarts at the new assignment
    asyncio.run(w._on_revoked(None, [p0, p1]))
    asyncio.run(w._on_assigned(None, [p1]))
    assert w._progress[(t, 1)][1] >= assigned_at


def test_a_revoked_partition_leaves_no_series_behind(tmp_path):
    w = _worker(tmp_path)
    t = w.settings.events_topic
    p0, p1 = TP(t, 0), TP(t, 1)
    asyncio.run(w._on_assigned(None, [p0, p1]))
    w._report_partitions({p0: 5, p1: 9}.get, {}, 1000.0)
    assert _lag(w, p1) == 9 and _progress(w, p1) is not None
    asyncio.run(w._on_revoked(None, [p1]))
    # the next owner reports partition 1; a stale series here would be summed into the lag
    # panels twice and could page as a stalled partition nobody holds
    assert _lag(w, p1) is None and _progress(w, p1) is None
    assert _lag(w, p0) == 5 and _progress(w, p0) is not None
    # a later report (the consumer may still list partition 1 mid-rebalance) does not bring it back
    w._report_partitions({p0: 5, p1: 9}.get, {}, 1005.0)
    assert _lag(w, p1) is None and _progress(w, p1) is None
