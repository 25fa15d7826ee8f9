"""Epoch-stamped state records: a worker killed in the middle of a state write loses nothing.

A commit writes many changelog records: one per changed key (``key-state``), then one per
partition (``partition-state``: housekeeping clock, population model). Kafka makes each record
atomic, not the set, so a worker SIGKILLed half-way leaves some keys of the new write on the
broker and others (or the partition record) at the previous one. Restored as it stands, such a
mix diverges from an uninterrupted run: a key ahead of its partition's population model, a
clock ahead of a key that still needs its resolution. That was the failover test's flake.

Each write of a partition gets the next *epoch*. A key record carries its epoch, the key blob,
and the key's previous committed version (its epoch and blob); the partition record is sent
only after every key record of the write is acknowledged, and carries the epoch it completes.
On restore the partition record names the last complete epoch ``E``; a key record newer than
``E`` belongs to a write that never completed and its previous version, which is the key's
state as of ``E``, is used instead. The restored partition is then exactly its state after
epoch ``E``, and the committed input offsets are at or before it (they commit after the
partition record), so re-read events are either re-applied or recognised by their sequence
numbers. Rolled-back keys are written again in the next epoch, so a stale record can never
be taken for a complete one later.

Layout of a key record (little endian)::

    b"MWE" | version 1 | epoch u64 | cur_len u32 | cur | prev_epoch u64 | prev

An empty ``cur`` (or ``prev``) means "no such key at that epoch": an evicted key is written as
such a marker first and tombstoned (a null record, for compaction) one epoch later. A record
without the ``MWE`` magic is a key blob from before epochs, read as committed at epoch 0.
"""

from __future__ import annotations

import struct

__all__ = ["KeyRecord", "committed_version", "pack_key_record", "unpack_key_record"]

_MAGIC = b"MWE"
_VERSION = 1
_HEAD = struct.Struct("<3sBQI")
_PREV = struct.Struct("<Q")


class KeyRecord:
    """One parsed key record: ``(epoch, cur)`` and the previous version ``(prev_epoch, prev)``.

    ``cur`` / ``prev`` are ``b""`` when the key did not exist at that epoch.
    """

    __slots__ = ("cur", "epoch", "prev", "prev_epoch")

    def __init__(self, epoch: int, cur: bytes, prev_epoch: int = 0, prev: bytes = b"") -> None:
        self.epoch = epoch
        self.cur = cur
        self.prev_epoch = prev_epoch
        self.prev = prev


def pack_key_record(epoch: int, cur: bytes, prev_epoch: int = 0, prev: bytes = b"") -> bytes:
    """Encode a key record.

    Examples
    --------
    >>> rec = unpack_key_record(pack_key_record(7, b"MWK-new", 5, b"MWK-old"))
    >>> rec.epoch, rec.cur, rec.prev_epoch, rec.prev
    (7, b'MWK-new', 5, b'MWK-old')
    """
    if epoch < 0 or prev_epoch < 0:
        raise ValueError("epochs are non-negative")
    return b"".join((_HEAD.pack(_MAGIC, _VERSION, epoch, len(cur)), cur,
                     _PREV.pack(prev_epoch), prev))


def unpack_key_record(blob: bytes) -> KeyRecord:
    """Parse a key record; a bare key blob (no ``MWE`` magic) is committed at epoch 0.

    Raises ``ValueError`` on a record that does not match the layout.

    >>> unpack_key_record(b"MWK\\x03legacy").epoch
    0
    """
    blob = bytes(blob)
    if not blob.startswith(_MAGIC):
        return KeyRecord(0, blob)
    if len(blob) < _HEAD.size + _PREV.size:
        raise ValueError("key record is truncated")
    _, version, epoch, n = _HEAD.unpack_from(blob)
    if version != _VERSION:
        raise ValueError(f"key record has unknown version {version}")
    end = _HEAD.size + n
    if end + _PREV.size > len(blob):
        raise ValueError("key record is truncated")
    (prev_epoch,) = _PREV.unpack_from(blob, end)
    if prev_epoch > epoch:
        raise ValueError("key record's previous version is newer than the record")
    return KeyRecord(epoch, blob[_HEAD.size:end], prev_epoch, blob[end + _PREV.size:])


def committed_version(rec: KeyRecord, complete: int) -> tuple[bytes, bool]:
    """The key's blob as of the last complete epoch ``complete`` (``b""`` = no such key), and
    whether the record had to be rolled back (it came from a write that never completed).

    Examples
    --------
    >>> rec = KeyRecord(8, b"new", 6, b"old")
    >>> committed_version(rec, 8)
    (b'new', False)
    >>> committed_version(rec, 7)
    (b'old', True)
    """
    if rec.epoch <= complete:
        return rec.cur, False
    if rec.prev_epoch > complete:
        # only the last write of a partition can be incomplete, and a record's previous
        # version is the key's version at the start of that write
        raise ValueError(f"key record of epoch {rec.epoch} has no version at or before "
                         f"epoch {complete} (its previous one is {rec.prev_epoch})")
    return rec.prev, True
