"""The campaign runner's event-time merge: replay and the worker feed it the same sequence.

The worker's batches interleave input partitions however its fetcher served them (one
partition can run minutes of event time ahead of another); replay reads the file in order.
Campaign decisions depend on the order snapshots arrive, so the runner merges them by the
partitions' marks (streams.pipeline.SnapshotMerge).
"""

from __future__ import annotations

import copy
import math
import random

import orjson
import pytest

from streams.pipeline import CampaignRunner, Detector, SnapshotMerge, decode
from streams.replay import replay
from streams.simulator import simulate


def snap(ts: float, key: str) -> dict:
    return {"ts": ts, "api_key": key}


def test_merge_releases_in_event_time_order_whatever_the_interleaving():
    rng = random.Random(5)
    streams = {p: sorted(rng.uniform(0, 1000) for _ in range(200)) for p in range(3)}
    want = sorted((ts, p) for p, tss in streams.items() for ts in tss)
    for trial in range(5):
        merge = SnapshotMerge(3)
        pos = {p: 0 for p in streams}
        got = []
        while any(pos[p] < len(streams[p]) for p in streams):
            p = rng.choice([q for q in streams if pos[q] < len(streams[q])])
            k = rng.randint(1, 40)
            chunk = streams[p][pos[p]:pos[p] + k]
            pos[p] += k
            for ts in chunk:
                merge.push(snap(ts, f"k{p}"), p)
            merge.mark(p, chunk[-1])
            got.extend(merge.release())
        got.extend(merge.flush())
        assert [(s["ts"], int(s["api_key"][1:])) for s in got] == want, trial
        assert merge.late == merge.forced == 0


def test_merge_waits_for_every_partition_until_it_reports_or_is_idle():
    merge = SnapshotMerge(3)
    merge.push(snap(10.0, "a"), 0)
    merge.mark(0, 50.0)
    merge.mark(1, 50.0)
    assert merge.release() == [], "partition 2 has not reported: it may still send earlier ones"
    merge.mark(2, 10.0)
    assert merge.release() == [], "a mark equal to the time is not past it"
    merge.mark(2, 10.5)
    assert [s["api_key"] for s in merge.release()] == ["a"]
    merge.push(snap(20.0, "b"), 1)
    merge.mark(2, math.inf)   # idle: nothing to wait for
    assert [s["api_key"] for s in merge.release()] == ["b"]
    # the idle partition wakes up with a finite mark again, and holds back what comes after it
    merge.mark(2, 30.0)
    merge.push(snap(40.0, "c"), 0)
    assert merge.release() == []
    merge.mark(2, 45.0)
    assert [s["api_key"] for s in merge.release()] == ["c"]


def test_merge_releases_late_snapshots_at_once_and_bounds_its_buffer():
    merge = SnapshotMerge(2)
    merge.push(snap(100.0, "a"), 0)
    merge.mark(0, 200.0)
    merge.mark(1, 200.0)
    assert len(merge.release()) == 1
    merge.push(snap(90.0, "late"), 1)   # a late event's snapshot: behind what was released
    assert [s["api_key"] for s in merge.release()] == ["late"]
    assert merge.late == 1

    small = SnapshotMerge(2, max_buffer=3)
    for i in range(5):
        small.push(snap(float(i), f"k{i}"), 0)
    small.mark(0, 10.0)   # partition 1 never reports
    out = small.release()
    assert [s["api_key"] for s in out] == ["k0", "k1"] and len(small) == 3
    assert small.forced == 2

    with pytest.raises(ValueError, match="partitions"):
        SnapshotMerge(0)


def test_runner_with_one_partition_passes_snapshots_straight_through():
    runner = CampaignRunner()
    assert runner.merge is None and runner.flush() == []
    assert CampaignRunner(partitions=3).merge is not None


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    d = tmp_path_factory.mktemp("merge")
    events = d / "events.jsonl"
    simulate(3.0, 21, str(events), str(d / "truth.json"), scale=0.35, progress=False)
    return events


def _group_alerts(alerts):
    out = []
    for a in alerts:
        if a["entity_type"] != "api_key":
            a = dict(a)
            a.pop("detected_at", None)
            out.append(orjson.dumps(a, option=orjson.OPT_SORT_KEYS))
    return sorted(out)


def test_campaign_alerts_do_not_depend_on_how_partitions_interleave(traffic, tmp_path):
    """Worker-like batches (a random partition, a random number of its events) give exactly
    replay's campaign alerts at 3 partitions."""
    parts = 3
    out_path = tmp_path / "replay.alerts.jsonl"
    replay(str(traffic), str(out_path), partitions=parts, progress=False)
    want = _group_alerts(orjson.loads(line) for line in out_path.read_bytes().splitlines())
    assert want, "the traffic must make campaign alerts, or the test proves nothing"

    events = [decode(line) for line in traffic.read_bytes().splitlines() if line.strip()]
    router = Detector(parts)
    by_part: list[list[dict]] = [[] for _ in range(parts)]
    for e in events:
        by_part[router.partition_of(e["api_key"])].append(e)
    for trial in range(3):
        rng = random.Random(trial)
        det, runner = Detector(parts), CampaignRunner(partitions=parts)
        pos = [0] * parts
        got: list[dict] = []
        lead = 0.0   # how far one partition ran ahead of the slowest, in event time
        while any(pos[p] < len(by_part[p]) for p in range(parts)):
            p = rng.choice([q for q in range(parts) if pos[q] < len(by_part[q])])
            chunk = by_part[p][pos[p]:pos[p] + rng.randint(1, 3000)]
            pos[p] += len(chunk)
            for e in chunk:
                det.process(copy.deepcopy(e), partition=p)
            heads = [by_part[q][min(pos[q], len(by_part[q])) - 1]["ts"] for q in range(parts) if pos[q]]
            lead = max(lead, max(heads) - min(heads))
            got.extend(runner.offer(det.take_snapshots(), {p: chunk[-1]["ts"]}))
            if pos[p] >= len(by_part[p]):
                got.extend(runner.offer([], idle=[p]))
        got.extend(runner.flush())
        assert lead > 600, "the interleaving must put partitions minutes apart"
        assert _group_alerts(got) == want, trial


@pytest.mark.parametrize("parts", [1, 3])
def test_runner_drops_snapshots_without_a_usable_time(parts):
    """Snapshot records come from a topic: a record without a finite ``ts`` is dropped and
    counted, never a crash of the campaign agent."""
    runner = CampaignRunner(partitions=parts)
    bad = [{"api_key": "a"}, {"api_key": "b", "ts": "soon"}, {"api_key": "c", "ts": float("nan")},
           {"api_key": "d", "ts": None}, "not a dict"]
    good = {"api_key": "e", "ts": 100.0, "partition": 0}
    runner.offer([b for b in bad if isinstance(b, dict)] + [good], {p: 200.0 for p in range(parts)})
    runner.observe([{"api_key": "f", "ts": [1]}])
    assert runner.stats()["snapshots_dropped"] == 5
    runner.flush()


def test_runner_ignores_malformed_marks_from_a_topic():
    runner = CampaignRunner(partitions=2)
    runner.offer([{"api_key": "a", "ts": 10.0, "partition": "1"}],
                 {"0": 50.0, "x": 60.0, "1": "late", "2": float("inf")}, idle=["a", -1, None])
    assert runner.merge.marks == [50.0, -math.inf]
    assert len(runner.merge) == 1   # partition 1 has not reported a usable mark
    runner.offer([], {1: 20})
    assert len(runner.merge) == 0
