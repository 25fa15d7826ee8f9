"""The worker's commits: timing against batches in flight, and offsets a commit did not take.

The commit timer and the revoke handler wait for the batch in flight.

A batch changes the detection cores first and then awaits its alert sends. State written by
the commit timer in between would let a crash skip events whose alerts never left (state ahead
of alerts); cores dropped by a rebalance in between would lose the batch's changes while its
offsets still commit. Both must run only between batches. No broker is needed: the Faust app is
built but never started, and the batch and the commit are stand-ins that record their order.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson

from streams.app import Worker
from streams.settings import load_settings

_EVENT = {"event_id": "e1", "api_key": "k1", "prompt_tokens": 12, "completion_tokens": 340,
          "status": 200}


class _Stream:
    def __init__(self, batches):
        self.batches = batches

    async def take_events(self, n, within):
        for b in self.batches:
            yield b


def _worker(tmp_path, order):
    w = Worker(load_settings({"MOATWATCH_DATA_DIR": str(tmp_path / "data")}), 2)

    async def slow_batch(events):
        order.append("batch start")
        await asyncio.sleep(0.05)   # the alert sends of a real batch
        order.append("batch end")

    async def commit():
        order.append("commit")

    w._handle_batch = slow_batch
    w._commit_pending = commit
    w.detector.drop = lambda partition: order.append(f"drop {partition}")
    return w


def test_commit_timer_waits_for_the_batch_in_flight(tmp_path):
    order: list[str] = []
    w = _worker(tmp_path, order)

    async def main():
        agent = asyncio.create_task(w._detect_agent(_Stream([["e1"]])))
        await asyncio.sleep(0.01)   # the batch is awaiting its sends
        await w._commit_timer()
        await agent

    asyncio.run(main())
    assert order == ["batch start", "batch end", "commit"]


def test_revoke_waits_for_the_batch_in_flight(tmp_path):
    order: list[str] = []
    w = _worker(tmp_path, order)
    tp = _tp(w.settings.events_topic, 1)

    async def main():
        agent = asyncio.create_task(w._detect_agent(_Stream([["e1"]])))
        await asyncio.sleep(0.01)
        await w._on_revoked(None, [tp])
        await agent

    asyncio.run(main())
    assert order == ["batch start", "batch end", "commit", "drop 1"]


def _tp(topic, partition):
    from faust.types import TP

    return TP(topic, partition)


def test_offsets_a_commit_did_not_take_are_retried(tmp_path):
    w = _worker(tmp_path, [])
    t = w.settings.events_topic
    p0, p1 = _tp(t, 0), _tp(t, 1)
    # a commit refused during a rebalance: everything comes back
    w._retry_later({p0: 10, p1: 20}, False, {p0, p1})
    assert w._pending_commit == {p0: 10, p1: 20}
    # a later batch's higher offset wins over the returned one
    w._pending_commit = {p0: 15}
    w._retry_later({p0: 10, p1: 20}, False, {p0, p1})
    assert w._pending_commit == {p0: 15, p1: 20}
    # accepted, but partition 1 was not in the assignment at that moment: only it comes back
    w._pending_commit = {}
    w._retry_later({p0: 10, p1: 20}, True, {p0})
    assert w._pending_commit == {p1: 20}
    # accepted for every owned partition: nothing to retry
    w._pending_commit = {}
    w._retry_later({p0: 10, p1: 20}, True, {p0, p1})
    assert w._pending_commit == {}


def test_revoked_partitions_leave_no_offset_to_retry(tmp_path):
    order: list[str] = []
    w = _worker(tmp_path, order)
    t = w.settings.events_topic
    p0, p1 = _tp(t, 0), _tp(t, 1)
    w._pending_commit = {p0: 10, p1: 20}   # as if the commit before the hand-over failed
    asyncio.run(w._on_revoked(None, [p1]))
    assert w._pending_commit == {p0: 10}   # the new owner of partition 1 commits from its own reads
    assert order == ["commit", "drop 1"]


def test_offsets_commit_only_after_every_state_record_is_acked(tmp_path):
    """Faust's producer flush can return with records still in its send buffer; the commit must
    wait for each state record's own ack, or a crash leaves state behind committed offsets. The
    partition record that completes the write goes only after every key record is acked."""
    w = Worker(load_settings({"MOATWATCH_DATA_DIR": str(tmp_path / "data")}), 2)
    order: list[str] = []
    tp = _tp(w.settings.events_topic, 0)

    class Producer:
        async def flush(self):
            order.append("flush returned")   # as when the buffer wait times out

    class Consumer:
        async def _commit(self, offsets):
            order.append("commit")
            return True

        def assignment(self):
            return {tp}

    w.app.producer, w.app.consumer = Producer(), Consumer()

    async def main():
        loop = asyncio.get_running_loop()
        acks = []

        def sender(table):
            def send_changelog(part, key, value, **kw):
                order.append(f"{table} sent")
                fut = loop.create_future()
                acks.append((table, fut))
                return fut
            return send_changelog

        w.key_state.send_changelog = sender("key")
        w.partition_state.send_changelog = sender("partition")
        w._core_for(0)
        w.detector.process({**_EVENT, "ts": 1000.0}, partition=0, seq=9)

        async def broker():
            for _ in range(2):
                while not acks:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.05)
                table, fut = acks.pop(0)
                order.append(f"{table} acked")
                fut.set_result(None)

        w._pending_commit = {tp: 10}
        w._unwritten = {0}
        await asyncio.gather(w._commit_pending(), broker())

    asyncio.run(main())
    assert order == ["key sent", "flush returned", "key acked", "partition sent",
                     "flush returned", "partition acked", "commit"]


def test_events_left_buffered_across_a_rebalance_are_left_to_the_new_owner(tmp_path):
    """Faust's take() buffer can hand over events of a partition after its revoke; processing
    them would write state and commit offsets for a partition that another worker now holds."""
    w = Worker(load_settings({"MOATWATCH_DATA_DIR": str(tmp_path / "data")}), 2)
    p0, p1 = _tp(w.settings.events_topic, 0), _tp(w.settings.events_topic, 1)
    asyncio.run(w._on_assigned(None, {p0, p1}))
    w._commit_pending = _no_commit
    asyncio.run(w._on_revoked(None, {p1}))

    def event(tp, offset):
        msg = SimpleNamespace(tp=tp, topic=tp.topic, partition=tp.partition, offset=offset,
                              key=b"k1")
        raw = orjson.dumps({**_EVENT, "ts": 1000.0 + offset})
        return SimpleNamespace(message=msg, value=raw)

    sent = []

    async def send(key, value):   # the snapshot topic, without a broker
        sent.append(orjson.loads(value))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    w.snapshot_topic.send = send
    asyncio.run(w._handle_batch([event(p1, 7)]))
    assert w._pending_commit == {} and not w.detector.cores and sent == []
    asyncio.run(w._handle_batch([event(p1, 8), event(p0, 3)]))
    assert w._pending_commit == {p0: 4}
    assert set(w.detector.cores) == {0}
    # the campaign merge hears how far partition 0 got, and nothing of the revoked partition 1
    assert sent == [{"snapshots": [], "marks": {"0": 1003.0}}]


async def _no_commit():
    return None


def test_input_partitions_never_committed_are_read_from_their_beginning(tmp_path):
    """Faust seeks only partitions that have a committed offset when a rebalance ends; the
    failover test saw a survivor read a partition its dead owner never committed from the end
    (events never processed) or the middle (decisions changed)."""
    w = Worker(load_settings({"MOATWATCH_DATA_DIR": str(tmp_path / "data")}), 2)
    p0, p1 = _tp(w.settings.events_topic, 0), _tp(w.settings.events_topic, 1)
    other = _tp("some-changelog", 1)
    seeks = []

    class Consumer:
        def assignment(self):
            return {p0, p1, other}

        async def seek_to_committed(self):
            return {p0: 120, p1: None, other: None}

        async def earliest_offsets(self, *tps):
            return {tp: 0 for tp in tps}

        async def position(self, tp):
            return 3066

        async def seek_wait(self, offsets):
            seeks.append(dict(offsets))

    w.app.consumer = Consumer()
    asyncio.run(w._seek_uncommitted(None))
    assert seeks == [{p1: 0}]
