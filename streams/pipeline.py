"""The one detection pipeline both drivers run: decode, detect, dead-letter.

``moatwatch replay`` (a file, in process) and ``moatwatch worker`` (Kafka) differ only in where
bytes come from and where alerts go. Everything that decides *what* is alerted lives here and in
:mod:`models`, so for the same events (in the same per-partition order) both drivers produce
the same per-key ``alert_id`` set; with the campaign runner's event-time merge
(:class:`SnapshotMerge`), the same campaign alerts too, however the worker's batches interleave
the partitions.

Partitioning is part of that contract: the population model is per input partition, so replay
assigns keys to partitions with Kafka's own default partitioner (murmur2 of the key, the
Java client's and aiokafka's choice, and the one ``moatwatch produce`` asks librdkafka for).
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import math
import re
from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka.partitioner import murmur2

from models.engine import DetectionCore, DetectorConfig
from models.prompt import derive_prompt_fields
from schemas.validation import InvalidEvent, decode_event

__all__ = [
    "ADVANCE_EVERY_S",
    "CampaignRunner",
    "EventTimeClock",
    "SnapshotMerge",
    "DEAD_LETTER_PREVIEW_BYTES",
    "MAX_CLOCK_JUMP_S",
    "Detector",
    "encode_alert",
    "dead_letter",
    "decode",
    "partition_for",
    "redact_prompt_text",
]

#: Dead letters keep at most this many bytes of the original message (the source
#: topic/partition/offset, or file line, locates the full original).
DEAD_LETTER_PREVIEW_BYTES = 64 * 1024

_DERIVED = ("prompt_simhash", "topic", "cot_request")

#: A jump of a partition's event time by more than this is believed only when the next event
#: confirms it. One schema-valid event from the year 3000 would otherwise move the partition's
#: housekeeping clock there: every key evicted at once, and no housekeeping (eviction, quiet
#: resolution) ever again. A real gap (a producer down for hours) is confirmed by the event after
#: it. Event time only: replay gives the same answer whenever it runs.
MAX_CLOCK_JUMP_S = 3600.0


def partition_for(key: bytes, partitions: int) -> int:
    """Partition Kafka's default partitioner puts ``key`` in (murmur2, positive, modulo).

    Examples
    --------
    >>> partition_for(b"key-1", 1)
    0
    >>> [partition_for(k, 4) for k in (b"a", b"b", b"c")] == [partition_for(k, 4) for k in (b"a", b"b", b"c")]
    True
    """
    if partitions == 1:
        return 0
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def decode(raw: bytes | str) -> dict[str, Any]:
    """Decode and validate one message; derive prompt fields from ``prompt_text`` and drop it.

    The prompt text never leaves this function: the returned event has no ``prompt_text``.
    Raises :class:`~schemas.validation.InvalidEvent` for anything that is not a QueryEvent v1.
    """
    event = decode_event(raw)
    text = event.pop("prompt_text", None)
    if text is not None and any(f not in event for f in _DERIVED):
        for name, value in derive_prompt_fields(text).items():
            event.setdefault(name, value)
    return event


_PROMPT_TEXT = re.compile(rb'"prompt_text"\s*:\s*"(?:[^"\\]|\\.)*("|$)', re.DOTALL)


def redact_prompt_text(raw: bytes) -> bytes:
    """Replace any ``prompt_text`` value in raw JSON-ish bytes with its SHA-256.

    Works on bytes that are not valid JSON too (a truncated value is redacted to the end).

    Examples
    --------
    >>> _doctest_friendly(redact_prompt_text(b'{"a":1,"prompt_text":"secret \\\\"stuff\\\\"","b":2}'))
    b'{"a":1,"prompt_text":"<redacted sha256:...>","b":2}'
    """
    def sub(m: re.Match[bytes]) -> bytes:
        digest = hashlib.sha256(m.group(0)).hexdigest()[:16]
        tail = b'"' if m.group(1) else b""
        return b'"prompt_text":"<redacted sha256:' + digest.encode() + b'>' + tail

    if b"prompt_text" not in raw:
        return raw
    out = _PROMPT_TEXT.sub(sub, raw)
    if b"prompt_text" in out and b"<redacted" not in out:
        # "prompt_text" in some shape the pattern did not recognise: keep nothing after it.
        out = out[: out.index(b"prompt_text")] + b'prompt_text<redacted>'
    return out


def _doctest_friendly(b: bytes) -> bytes:  # pragma: no cover - doctest helper
    return re.sub(rb"sha256:[0-9a-f]+", b"sha256:...", b)


def dead_letter(
    raw: bytes | str,
    error: InvalidEvent,
    *,
    source: dict[str, Any],
    detected_at: float,
) -> dict[str, Any]:
    """The dead-letter record for an invalid message: reason, detail, source, original bytes.

    The original bytes are kept as base64 (prompt text redacted), truncated to
    :data:`DEAD_LETTER_PREVIEW_BYTES` with the full length and SHA-256 recorded, so the record
    always fits in a Kafka message and the source offset still locates the full original.
    """
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else bytes(raw)
    digest = hashlib.sha256(data).hexdigest()
    redacted = redact_prompt_text(data)
    truncated = len(redacted) > DEAD_LETTER_PREVIEW_BYTES
    kept = redacted[:DEAD_LETTER_PREVIEW_BYTES]
    return {
        "schema": "moatwatch.dead_letter/v1",
        "reason": error.reason,
        "detail": error.detail,
        "source": source,
        "original_base64": base64.b64encode(kept).decode("ascii"),
        "original_bytes": len(data),
        "original_sha256": digest,
        "truncated": truncated,
        "redacted": redacted != data,
        "detected_at": detected_at,
    }


#: Event-time seconds between housekeeping calls (episode resolution, eviction). The calls fall
#: on a fixed grid of event time, so they happen at the same points in replay, live, and after a
#: restart, whatever the batch boundaries.
ADVANCE_EVERY_S = 5.0


class EventTimeClock:
    """Event-time housekeeping grid for one stream of events (one partition, or snapshots)."""

    __slots__ = ("next_at", "pending")

    def __init__(self) -> None:
        self.next_at: float | None = None
        self.pending: float | None = None

    def due(self, ts: float) -> float | None:
        """The grid time to advance to before an event at ``ts``, or None."""
        nxt = self.next_at
        if nxt is None:
            self.next_at = (ts // ADVANCE_EVERY_S) * ADVANCE_EVERY_S + ADVANCE_EVERY_S
            return None
        if ts < nxt:
            return None
        if ts - nxt > MAX_CLOCK_JUMP_S:
            pending = self.pending
            if pending is None or abs(ts - pending) > MAX_CLOCK_JUMP_S:
                self.pending = ts        # a lone outlier moves nothing until confirmed
                return None
        self.pending = None
        grid = (ts // ADVANCE_EVERY_S) * ADVANCE_EVERY_S
        self.next_at = grid + ADVANCE_EVERY_S
        return grid


class Detector:
    """Per-partition detection cores, as both drivers use them.

    Each partition has its own :class:`~models.engine.DetectionCore` (per-key state plus the
    population model of the partition's keys) and its own event-time housekeeping clock, so the
    alerts of a partition depend only on that partition's events, in order.

    Parameters
    ----------
    partitions
        How many input partitions the keys are spread over (replay must use the input topic's
        partition count to match live).
    config
        Detector hyperparameters (:class:`models.engine.DetectorConfig`).
    feedback
        Analyst verdicts (:class:`models.feedback.FeedbackBook`), or None.
    core_factory
        Builds a partition's core from ``(config, feedback=...)``; default
        :class:`~models.engine.DetectionCore` (``bench/trace_key.py`` passes a recording one).
    """

    def __init__(self, partitions: int = 1, *, config: DetectorConfig | None = None,
                 feedback: Any = None, core_factory: Any = DetectionCore) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.partitions = partitions
        self.config = config
        self.feedback = feedback
        self._core_factory = core_factory
        self.cores: dict[int, DetectionCore] = {}
        self._clocks: dict[int, EventTimeClock] = {}
        self._part_cache: dict[str, int] = {}
        self.snapshots: list[dict[str, Any]] = []

    def core(self, partition: int) -> DetectionCore:
        core = self.cores.get(partition)
        if core is None:
            core = self.cores[partition] = self._core_factory(self.config, feedback=self.feedback)
            self._clocks[partition] = EventTimeClock()
        return core

    def clock_of(self, partition: int) -> tuple[float | None, float | None]:
        """The partition's housekeeping clock (next grid time, unconfirmed jump), to persist."""
        c = self._clocks.get(partition)
        return (c.next_at, c.pending) if c is not None else (None, None)

    def set_clock(self, partition: int, next_at: float | None, pending: float | None) -> None:
        """Restore a persisted clock, so a restarted worker advances at the same points."""
        self.core(partition)
        c = self._clocks[partition]
        c.next_at, c.pending = next_at, pending

    def drop(self, partition: int) -> None:
        """Forget a partition (revoked in a rebalance; its state lives on in the changelog)."""
        self.cores.pop(partition, None)
        self._clocks.pop(partition, None)

    def partition_of(self, api_key: str) -> int:
        if self.partitions == 1:
            return 0
        part = self._part_cache.get(api_key)
        if part is None:
            if len(self._part_cache) > 1_000_000:
                self._part_cache.clear()
            part = self._part_cache[api_key] = partition_for(api_key.encode("utf-8"), self.partitions)
        return part

    def process(self, event: dict[str, Any], *, partition: int | None = None,
                seq: int | None = None) -> list[dict[str, Any]]:
        """Run one decoded event through its partition's core; return the key alerts."""
        if partition is None:
            partition = self.partition_of(event["api_key"])
        core = self.core(partition)
        grid = self._clocks[partition].due(event["ts"])
        if grid is not None:
            alerts = core.advance(grid)
            alerts.extend(core.process(event, seq))
        else:
            alerts = core.process(event, seq)
        snaps = core.drain_member_snapshots()
        if snaps:
            for snap in snaps:
                snap["partition"] = partition   # for the campaign runner's event-time merge
            self.snapshots.extend(snaps)
        return alerts

    def take_snapshots(self) -> list[dict[str, Any]]:
        """Member snapshots the cores emitted since the last call (for the campaign detector)."""
        snaps, self.snapshots = self.snapshots, []
        return snaps

    def stats(self) -> dict[str, Any]:
        total: dict[str, Any] = {"tracked_keys": 0, "state_bytes": 0, "open_episodes": 0,
                                 "evicted_total": 0, "duplicates_total": 0}
        for core in self.cores.values():
            s = core.stats()
            for k in total:
                total[k] += s.get(k, 0)
        return total


def _partition_number(p: Any) -> int | None:
    """A partition number from a snapshot record (an int, or a decimal string as a JSON key)."""
    if type(p) is str and p.isdigit() and len(p) < 7:
        return int(p)
    return p if type(p) is int and 0 <= p < 1_000_000 else None


def _finite_time(ts: Any) -> bool:
    """An event time from a topic record: a finite int or float (not a bool, not a string)."""
    return type(ts) in (int, float) and math.isfinite(ts)


def _snapshot_time_ok(snap: Any) -> bool:
    return isinstance(snap, dict) and _finite_time(snap.get("ts"))


class SnapshotMerge:
    """Member snapshots of several partitions, released in one event-time order.

    Each partition's snapshots arrive in that partition's order, but the partitions interleave
    differently in each driver: replay reads the file in order, the worker sends whatever its
    batches held (one partition can run minutes of event time ahead of another while it catches
    up). The campaign detector is order-sensitive (group evaluation times, member expiry, its
    housekeeping grid), so without a merge the same events could make different campaigns.

    A *mark* says "partition p has sent every snapshot it will make before time t". A snapshot
    at ``ts`` is released once every partition's mark is past ``ts`` (strictly: a later event of
    the partition at exactly its mark could still make one), in ``(ts, partition, arrival)``
    order. So as long as each partition's events are in time order, every driver releases the
    same sequence, whatever the interleaving. A partition marked *idle* (no data, caught up)
    holds nothing back; a snapshot that arrives after the release has passed its time (a late
    event, or an idle partition waking up) is released at once, in arrival order.

    The buffer is bounded (``max_buffer``): past it the oldest snapshots are released without
    waiting (counted in ``forced``), so a partition that never reports (its owner gone, no
    rebalance yet) delays campaign detection but cannot exhaust memory.
    """

    __slots__ = ("marks", "max_buffer", "forced", "late", "released_to", "_heap", "_seq")

    def __init__(self, partitions: int, max_buffer: int = 200_000) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.marks = [-math.inf] * partitions
        self.max_buffer = max_buffer
        self.forced = 0
        self.late = 0
        self.released_to = -math.inf
        self._heap: list[tuple[float, int, int, dict[str, Any]]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, snap: dict[str, Any], partition: int) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (snap["ts"], partition, self._seq, snap))

    def mark(self, partition: int, ts: float) -> None:
        """Partition ``partition`` has processed its events up to ``ts`` (``inf``: idle)."""
        marks = self.marks
        if partition >= len(marks):
            marks.extend([-math.inf] * (partition + 1 - len(marks)))
        cur = marks[partition]
        if ts > cur or cur == math.inf:
            marks[partition] = ts

    def release(self) -> list[dict[str, Any]]:
        """The buffered snapshots every partition has passed, in event-time order."""
        heap = self._heap
        if not heap:
            return []
        upto = min(self.marks)
        out = []
        pop = heapq.heappop
        while heap and (heap[0][0] < upto or heap[0][0] <= self.released_to
                        or len(heap) > self.max_buffer):
            ts = heap[0][0]
            if ts < self.released_to:
                self.late += 1      # behind what was already released: out of order, at once
            elif not ts < upto:
                self.forced += 1    # the buffer is full: released without waiting
            out.append(pop(heap)[3])
            if ts > self.released_to:
                self.released_to = ts
        return out

    def flush(self) -> list[dict[str, Any]]:
        """Everything still buffered, in order (end of input)."""
        heap = self._heap
        out = [heapq.heappop(heap)[3] for _ in range(len(heap))]
        if out:
            self.released_to = max(self.released_to, out[-1]["ts"])
        return out


class CampaignRunner:
    """The group-level campaign detector over member snapshots, with its own event-time clock.

    It sees every partition's snapshots, so its groups span the whole key space: in replay from
    the one process, in the worker through one single-partition snapshot topic. With more than
    one input partition they pass through a :class:`SnapshotMerge` first (:meth:`offer` with the
    partitions' marks), so replay and the worker feed the detector the same sequence; with one
    partition the order is already the partition's own and :meth:`observe` takes them directly.
    """

    def __init__(self, feedback: Any = None, config: Any = None, *, partitions: int = 1) -> None:
        from models.campaign import CampaignDetector

        self.detector = CampaignDetector(config, feedback=feedback)
        self._clock = EventTimeClock()
        self.merge = SnapshotMerge(partitions) if partitions > 1 else None
        self.dropped = 0   # snapshots without a finite event time (malformed topic records)

    def observe(self, snapshots: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Feed snapshots to the detector now, in the order given."""
        out: list[dict[str, Any]] = []
        det = self.detector
        for snap in snapshots:
            if not _snapshot_time_ok(snap):
                self.dropped += 1   # from a topic: no time, no place in event time
                continue
            grid = self._clock.due(snap["ts"])
            if grid is not None:
                out.extend(det.advance(grid))
            out.extend(det.observe(snap))
        return out

    def offer(self, snapshots: Iterable[dict[str, Any]], marks: Any = None,
              idle: Iterable[int] = ()) -> list[dict[str, Any]]:
        """Buffer snapshots, apply the partitions' marks, feed what the merge releases.

        ``marks`` maps partition (an int, or its decimal string as in a JSON record) -> the
        event time it has processed up to; ``idle`` lists partitions with nothing to send. Both
        may come from a topic: entries that are not a partition number and a finite time are
        ignored. Without a merge (one partition) snapshots go straight to :meth:`observe`.
        """
        merge = self.merge
        if merge is None:
            return self.observe(snapshots)
        for snap in snapshots:
            if not _snapshot_time_ok(snap):
                self.dropped += 1
                continue
            p = _partition_number(snap.get("partition"))
            merge.push(snap, 0 if p is None else p)
        if isinstance(marks, dict):
            for p, ts in marks.items():
                p = _partition_number(p)
                if p is not None and _finite_time(ts):
                    merge.mark(p, float(ts))
        for p in idle:
            p = _partition_number(p)
            if p is not None:
                merge.mark(p, math.inf)
        return self.observe(merge.release())

    def flush(self) -> list[dict[str, Any]]:
        """End of input: feed everything the merge still holds."""
        return self.observe(self.merge.flush()) if self.merge is not None else []

    def stats(self) -> dict[str, Any]:
        out = dict(self.detector.stats())
        out["snapshots_dropped"] = self.dropped
        if self.merge is not None:
            out["merge_buffered"] = len(self.merge)
            out["merge_forced"] = self.merge.forced
            out["merge_late"] = self.merge.late
        return out


def encode_alert(alert: dict[str, Any]) -> bytes:
    """Alerts on the wire and in files: compact JSON, keys sorted for stable bytes."""
    return orjson.dumps(alert, option=orjson.OPT_SORT_KEYS)
