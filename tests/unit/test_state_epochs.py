"""A worker killed in the middle of a state write: the next owner's decisions do not change.

The worker's real state-write and restore code runs (``Worker._write_state`` and
``Worker._core_for``); what the broker would hold is the list of records the first worker sent
before it "died", replayed into the second worker's tables the way Faust's changelog recovery
fills them (the latest record per key). No broker is needed: the Faust apps are built but never
started. tests/integration/test_failover.py kills a real worker on a real broker.
"""

from __future__ import annotations

import asyncio

import pytest

from streams.app import Worker, _unpack_shared
from streams.pipeline import decode
from streams.settings import load_settings
from streams.statelog import (
    KeyRecord,
    committed_version,
    pack_key_record,
    unpack_key_record,
)


class _Died(Exception):
    pass


class _Broker:
    """The changelog records that reached the broker, in order."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes | None]] = []

    def view(self, table: str) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for name, key, value in self.records:
            if name != table:
                continue
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return out


def _worker(tmp_path, tag: str, broker: _Broker) -> Worker:
    """A worker whose changelog sends go to ``broker``. Setting ``w.land_keys`` to n makes its
    next state write die after n key records reached the broker (none of its partition
    records: those go only after every key record is acknowledged)."""
    w = Worker(load_settings({"MOATWATCH_DATA_DIR": str(tmp_path / f"data-{tag}")}), 1)
    w.land_keys = None

    def sender(table):
        def send_changelog(part, key, value, **kw):
            if table == "key-state" and w.land_keys is not None:
                if w.land_keys <= 0:
                    raise _Died()
                w.land_keys -= 1
            broker.records.append((table, key, value))
        return send_changelog

    async def acked(sent):
        return None

    w.key_state.send_changelog = sender("key-state")
    w.partition_state.send_changelog = sender("partition-state")
    w._acked = acked
    return w


def _run(w: Worker, events: list[tuple[int, dict]]) -> list[dict]:
    alerts: list[dict] = []
    for offset, ev in events:
        w._core_for(0)
        alerts.extend(w.detector.process(ev, partition=0, seq=offset))
        w._unwritten.add(0)
    return alerts


def _decisions(alerts):
    return {(a["alert_id"], a["status"], a["severity"], a["event_ts"]) for a in alerts}


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    from streams.simulator import simulate

    d = tmp_path_factory.mktemp("sim")
    simulate(6.0, 3, str(d / "ev.jsonl"), str(d / "truth.json"), scale=0.15, progress=False)
    lines = (d / "ev.jsonl").read_bytes().splitlines()
    return [(i, decode(line)) for i, line in enumerate(lines)]


@pytest.mark.parametrize("land_fraction", [0.0, 0.5, 0.9])
def test_a_worker_killed_mid_write_changes_no_decision(tmp_path, events, land_fraction):
    n = len(events)
    first, second = int(n * 0.35), int(n * 0.6)
    expected = _decisions(_run(_worker(tmp_path, "ref", _Broker()), events))

    broker = _Broker()
    a = _worker(tmp_path, "a", broker)
    sent = _run(a, events[:first])
    asyncio.run(a._write_state({0}))          # epoch 1 complete; offsets commit at `first`
    sent += _run(a, events[first:second])     # its alerts reached the topic before the kill
    a.land_keys = int(len(a.detector.cores[0].dirty_keys()) * land_fraction)
    with pytest.raises(_Died):
        asyncio.run(a._write_state({0}))        # killed part-way through epoch 2

    b = _worker(tmp_path, "b", broker)
    b.key_state.data.update(broker.view("key-state"))
    b.partition_state.data.update(broker.view("partition-state"))
    resumed = _run(b, events[first:])         # re-reads from the committed offset
    got = _decisions(sent) | _decisions(resumed)
    assert got == expected, f"missing {sorted(expected - got)}, extra {sorted(got - expected)}"

    # the rolled-back keys go out again with b's first write, before its partition record,
    # under an epoch no record on the broker carries yet
    before = len(broker.records)
    seen = max(unpack_key_record(v).epoch for t, _, v in broker.records if t == "key-state" and v)
    asyncio.run(b._write_state({0}))
    written = broker.records[before:]
    assert written[-1][0] == "partition-state"
    _, _, epoch = _unpack_shared(written[-1][2])
    assert epoch > seen
    for table, _key, value in written[:-1]:
        assert table == "key-state"
        assert value is None or unpack_key_record(value).epoch == epoch


def test_partition_record_of_an_old_worker_reads_as_epoch_zero():
    import struct

    old = struct.pack("<Bdd", 1, 1005.0, float("nan")) + b"core"
    assert _unpack_shared(old) == ((1005.0, None), b"core", 0)
    with pytest.raises(ValueError):
        _unpack_shared(b"\x09garbage-garbage-garbage")


def test_key_records_pick_the_version_of_the_last_complete_epoch():
    rec = unpack_key_record(pack_key_record(4, b"MWKnew", 2, b"MWKold"))
    assert committed_version(rec, 4) == (b"MWKnew", False)
    assert committed_version(rec, 3) == (b"MWKold", True)
    # a key first written by the interrupted write did not exist before it
    assert committed_version(unpack_key_record(pack_key_record(4, b"MWKnew")), 3) == (b"", True)
    # a bare key blob from before epochs is complete
    assert committed_version(unpack_key_record(b"MWK\x03body"), 0) == (b"MWK\x03body", False)
    with pytest.raises(ValueError):
        committed_version(KeyRecord(5, b"x", 4, b"y"), 3)   # two writes cannot both be open
    for bad in (b"MWE", b"MWE\x09" + bytes(20), pack_key_record(3, b"abc")[:-9]):
        with pytest.raises(ValueError):
            unpack_key_record(bad)

