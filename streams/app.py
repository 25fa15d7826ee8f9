"""The Faust app: topics, tables and agents of ``moatwatch worker``.

Flow (see docs/architecture.md)::

    query-events ──► detect agent ──► alerts
         │  (mis-keyed events are re-keyed through <app>-events-rekeyed)
         ├──► dlq (invalid events, with reason and source offset)
         └──► <app>-member-snapshots (1 partition) ──► campaign agent ──► alerts

Per-key state is the ``key-state`` table (changelog ``<app>-key-state-changelog``), one compact
binary blob per api_key written by :meth:`models.engine.DetectionCore.export_key`; the
population model of each partition is the ``partition-state`` table. Both are raw bytes on the
wire with a versioned format of our own: nothing read from a topic is ever unpickled.

Processing is at-least-once. Each key's blob records the input offset it has applied, so a
redelivered event is recognised and skipped; alerts are delivered (acknowledged by the broker)
before the state that produced them is written, and both before the input offsets commit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import faust
import orjson

from models.engine import MODEL_VERSION
from schemas.validation import InvalidEvent
from streams.metrics import Metrics
from streams.pipeline import (
    CampaignRunner,
    Detector,
    dead_letter,
    decode,
    encode_alert,
    partition_for,
)
from streams.settings import Settings
from streams.statelog import committed_version, pack_key_record, unpack_key_record
from streams.web import install_web, readiness, recovery_complete, web_app_options

__all__ = ["Worker", "create_worker", "faust_app_options"]

log = logging.getLogger("moatwatch.worker")

_SHARED_KEY = b"__partition__/%d"
#: Seconds between commits of the input offsets (the worker commits them itself).
COMMIT_EVERY_S = 1.0
# partition-state value: version byte, the housekeeping clock (next grid time, unconfirmed jump;
# NaN = none), the state-write epoch it completes (streams/statelog.py), then
# DetectionCore.export_shared(). The clock lives beside the state it drives so a restarted
# worker advances (resolves, evicts) at the same event times as an uninterrupted one.
_SHARED_HEADER = struct.Struct("<BddQ")
_SHARED_VERSION = 2
_SHARED_HEADER_V1 = struct.Struct("<Bdd")   # before epochs: read as epoch 0
#: Member snapshots per record of the snapshot topic (a record stays far below 1 MiB).
_SNAPSHOTS_PER_RECORD = 256
#: Wall seconds without an event before a caught-up input partition is reported idle to the
#: campaign runner's event-time merge, which then stops waiting for it (streams.pipeline.SnapshotMerge).
IDLE_PARTITION_S = 5.0


def _pack_shared(clock: tuple[float | None, float | None], shared: bytes, epoch: int = 0) -> bytes:
    nan = float("nan")
    nxt, pending = clock
    return _SHARED_HEADER.pack(_SHARED_VERSION, nan if nxt is None else nxt,
                               nan if pending is None else pending, epoch) + shared


def _is_absent(record: bytes) -> bool:
    """Whether a key-state value is a "no such key" marker (streams/statelog.py)."""
    try:
        return not unpack_key_record(record).cur
    except ValueError:
        return False   # unreadable: overwritten by a marker, which cleans it up


def _unpack_shared(blob: bytes) -> tuple[tuple[float | None, float | None], bytes, int]:
    """(clock, DetectionCore shared state, epoch the record completes) of a partition-state
    record; a record from before epochs completes epoch 0."""
    if len(blob) >= _SHARED_HEADER.size and blob[0] == _SHARED_VERSION:
        _, nxt, pending, epoch = _SHARED_HEADER.unpack_from(blob)
        head = _SHARED_HEADER.size
    elif len(blob) >= _SHARED_HEADER_V1.size and blob[0] == 1:
        _, nxt, pending = _SHARED_HEADER_V1.unpack_from(blob)
        epoch, head = 0, _SHARED_HEADER_V1.size
    else:
        raise ValueError("partition-state record has an unknown format")
    clock = (None if math.isnan(nxt) else nxt, None if math.isnan(pending) else pending)
    return clock, blob[head:], epoch


def _credentials(settings: Settings) -> dict[str, Any]:
    """Faust (aiokafka) security settings mirroring :meth:`Settings.confluent_config`."""
    proto = settings.security_protocol
    if proto == "PLAINTEXT":
        return {}
    ssl_context = None
    if proto.endswith("SSL"):
        import ssl

        ssl_context = ssl.create_default_context(cafile=settings.ssl_cafile or None)
        if settings.ssl_certfile:
            ssl_context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile or None)
    if proto.startswith("SASL"):
        return {"broker_credentials": faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            mechanism=settings.sasl_mechanism,
            ssl_context=ssl_context,
        )}
    return {"broker_credentials": faust.SSLCredentials(ssl_context)}


def _exit_for_restart(msg: str, *args: Any) -> None:
    """Log ``msg`` as critical and exit 75 at once, without Faust's shutdown (which would ack
    and could commit offsets whose alerts or state never reached the broker)."""
    log.critical(msg, *args)
    logging.shutdown()
    os._exit(75)


def faust_app_options(s: Settings, partitions: int) -> dict[str, Any]:
    """Keyword arguments of the worker's :class:`faust.App` (also used by the benchmark's
    Faust-only probe, so that it measures the very same consumer configuration)."""
    return dict(
        broker=",".join(f"kafka://{b}" for b in s.bootstrap.split(",")),
        store="memory://",
        autodiscover=False,
        datadir=s.data_dir,
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=partitions,
        topic_replication_factor=1,
        table_standby_replicas=0,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # a batch's sends are awaited together: 5 ms of linger packs them into fewer
        # requests (bench: 5-8% less CPU per event) and stays far inside the latency budget
        producer_linger_ms=5,
        # aiokafka's default fetch (1 MiB per request) starves the agent between fetches:
        # a no-op agent consumed 1.4x more with 16 MiB (docs/benchmarks.md)
        consumer_max_fetch_size=16 * 1024 * 1024,
        broker_commit_every=s.batch_max,
        broker_commit_interval=1.0,
        # a SIGKILLed worker's partitions move to the survivors after this long
        broker_session_timeout=s.session_timeout,
        broker_heartbeat_interval=min(3.0, s.session_timeout / 3.0),
        stream_wait_empty=False,
        **web_app_options(s),
        **_credentials(s),
    )


class Worker:
    """Builds the Faust app around a :class:`~streams.pipeline.Detector` and runs it.

    Parameters
    ----------
    settings
        The frozen settings (every ``MOATWATCH_*`` variable).
    partitions
        Partition count of the input topic (tables and internal topics must match it).
    feedback
        Analyst verdicts shared by the key and campaign detectors.
    config
        The per-key detector's :class:`~models.engine.DetectorConfig` (None: the defaults).
    """

    def __init__(self, settings: Settings, partitions: int, *, feedback: Any = None,
                 metrics: Metrics | None = None, config: Any = None) -> None:
        self.settings = settings
        self.partitions = partitions
        self.metrics = metrics or Metrics()
        self.detector = Detector(partitions, config=config, feedback=feedback)
        self.campaigns = CampaignRunner(feedback, partitions=partitions)
        # per input partition: wall time (monotonic) of its last processed event, for idle marks
        self._data_seen: dict[int, float] = {}
        self._started = time.monotonic()
        self._loaded_shared: set[int] = set()
        self._evicted_seen: dict[int, int] = {}
        self._last_offsets: dict[tuple[str, int], int] = {}
        # per assigned input partition: (last processed offset, wall time it last changed, or
        # the assignment's time while nothing was processed): moatwatch_partition_progress_*
        self._progress: dict[tuple[str, int], tuple[int | None, float]] = {}
        self._last_totals: dict[str, int] = {}
        self._pending_commit: dict[Any, int] = {}
        self._unwritten: set[int] = set()   # partitions whose state changed since the last write
        # per partition: the last state-write epoch written or seen (streams/statelog.py), and
        # the keys whose "no such key" marker is committed and may now be tombstoned
        self._epoch: dict[int, int] = {}
        self._tombstone_due: dict[int, set[bytes]] = {}
        # what the consumer group gives this worker now; events of anything else are left to
        # their owner (Faust's take() buffer can still hold them after a revoke)
        self._owned: set[Any] = set()
        # Held for a whole batch, and by the commit timer and the revoke handler: a batch's core
        # changes must not be written (timer) or dropped (revoke) while its alerts are in flight
        self._batch_lock = asyncio.Lock()
        self._last_commit = 0.0
        self.metrics.set_build_info(model_version=MODEL_VERSION)
        self.app = self._build_app()

    # ------------------------------------------------------------------ app
    def _build_app(self) -> faust.App:
        s = self.settings
        os.makedirs(s.data_dir, exist_ok=True)   # Faust creates only the last level
        app = faust.App(s.app_id, **faust_app_options(s, self.partitions))
        self.events_topic = app.topic(s.events_topic, key_serializer="raw",
                                      value_serializer="raw", partitions=self.partitions)
        self.rekeyed_topic = app.topic(f"{s.app_id}-events-rekeyed", key_serializer="raw",
                                       value_serializer="raw", partitions=self.partitions,
                                       internal=True)
        self.snapshot_topic = app.topic(f"{s.app_id}-member-snapshots", key_serializer="raw",
                                        value_serializer="raw", partitions=1, internal=True)
        self.alerts_topic = app.topic(s.alerts_topic, key_serializer="raw", value_serializer="raw")
        self.dlq_topic = app.topic(s.dlq_topic, key_serializer="raw", value_serializer="raw")
        raw = faust.Schema(key_serializer="raw", value_serializer="raw")
        # key_type/value_type bytes make Faust use the raw codec for the changelog; with only
        # schema=raw it writes raw bytes but recovery decodes them as JSON and never finishes.
        self.key_state = app.Table("key-state", schema=raw, key_type=bytes, value_type=bytes,
                                   partitions=self.partitions, default=None)
        self.partition_state = app.Table("partition-state", schema=raw, key_type=bytes,
                                         value_type=bytes, partitions=self.partitions,
                                         default=None)
        # acks=False: the worker commits these offsets itself (see _commit_pending), after the
        # batch's alerts and state are on the broker. Faust's ack-gap bookkeeping could stall a
        # partition's commits for good after repeated rebalances (seen in the crash and failover
        # tests: committed offset frozen while processing went on).
        both = app.topic(s.events_topic, f"{s.app_id}-events-rekeyed", key_serializer="raw",
                         value_serializer="raw", partitions=self.partitions, acks=False)
        app.agent(both, name="detect")(self._detect_agent)
        app.agent(self.snapshot_topic, name="campaigns")(self._campaign_agent)
        app.timer(5.0)(self._report_stats)
        app.timer(COMMIT_EVERY_S)(self._commit_timer)
        if self.partitions > 1:
            app.timer(1.0)(self._idle_timer)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)
        app.on_rebalance_complete.connect(self._seek_uncommitted)
        install_web(app, metrics=self.metrics, ready=lambda: readiness(app), token=s.web_token)
        return app

    async def _on_revoked(self, sender: Any, revoked: Iterable[Any], **kwargs: Any) -> None:
        self.metrics.rebalances.inc()
        self._owned.difference_update(revoked)
        async with self._batch_lock:   # after the batch in flight, if any, has finished
            try:   # hand over what is done; a failed commit only means re-reading (deduplicated)
                await self._commit_pending()
            except Exception as exc:  # noqa: BLE001
                log.warning("commit before rebalance failed (%r); the next owner re-reads those "
                            "events and skips what the key state already holds", exc)
            for tp in revoked:
                self._pending_commit.pop(tp, None)   # the next owner commits from here
                if tp.topic == self.settings.events_topic:
                    # its lag and progress are the next owner's to report
                    self._progress.pop((tp.topic, tp.partition), None)
                    self.metrics.forget_partition(tp.topic, tp.partition)
                    self.detector.drop(tp.partition)
                    self._loaded_shared.discard(tp.partition)
                    self._evicted_seen.pop(tp.partition, None)
                    self._epoch.pop(tp.partition, None)
                    self._tombstone_due.pop(tp.partition, None)
                    self._unwritten.discard(tp.partition)

    async def _on_assigned(self, sender: Any, assigned: Iterable[Any], **kwargs: Any) -> None:
        self._owned = set(assigned)
        topic = self.settings.events_topic
        n = 0
        now = time.time()
        for tp in self._owned:
            if tp.topic == topic:
                n += 1
                # the progress clock of a partition starts when it is assigned (every rebalance
                # revokes all first), so one never read since then ages from here
                key = (tp.topic, tp.partition)
                self._progress[key] = (self._last_offsets.get(key), now)
        self.metrics.partitions_assigned.set(n)

    async def _seek_uncommitted(self, sender: Any, **kwargs: Any) -> None:
        """Read input partitions that have no committed offset from their beginning.

        Faust seeks the assigned partitions to their committed offsets when a rebalance ends,
        and leaves the others where the fetcher happens to be. A partition whose previous owner
        died before its first commit was then read from the middle, or not at all, by its next
        owner (seen in the failover test: a partition never committed, decisions missing).
        Nothing of such a partition was committed, so its owner must read all of it.
        """
        try:
            await self._seek_uncommitted_inputs()
        except Exception as exc:  # noqa: BLE001 - a new rebalance may have begun meanwhile
            log.warning("could not check the input partitions for committed offsets (%r); "
                        "the next rebalance checks again", exc)

    async def _seek_uncommitted_inputs(self) -> None:
        consumer = self.app.consumer
        inputs = {self.settings.events_topic, f"{self.settings.app_id}-events-rekeyed"}
        mine = [tp for tp in consumer.assignment() if tp.topic in inputs]
        if not mine:
            return
        committed = {(tp.topic, tp.partition): off
                     for tp, off in (await consumer.seek_to_committed()).items()}
        fresh = [tp for tp in mine if committed.get((tp.topic, tp.partition)) is None]
        if not fresh:
            return
        earliest = await consumer.earliest_offsets(*fresh)
        start = {tp: max(0, earliest.get(tp) or 0) for tp in fresh}
        for tp in fresh:
            was = await consumer.position(tp)
            if was != start[tp]:
                log.info("%s[%d] has no committed offset: reading it from offset %d (the "
                         "consumer stood at %s)", tp.topic, tp.partition, start[tp], was)
        await consumer.seek_wait(start)

    # ------------------------------------------------------------ detection
    def _core_for(self, partition: int) -> Any:
        core = self.detector.core(partition)
        if partition not in self._loaded_shared:
            self._loaded_shared.add(partition)
            blob = self.partition_state.data.get(_SHARED_KEY % partition)
            complete: int | None = 0   # no record: no write of this partition completed
            if blob:
                try:
                    clock, shared, complete = _unpack_shared(blob)
                    core.import_shared(shared)
                    self.detector.set_clock(partition, *clock)
                except ValueError as exc:
                    log.error("partition-state of partition %d is unreadable (%s); its population "
                              "model starts fresh and its key records are taken as they are",
                              partition, exc)
                    complete = None
            self._restore_keys(partition, core, complete)
            self._evicted_seen[partition] = core.evicted_total
        return core

    def _partition_keys(self, partition: int) -> list[bytes]:
        """Keys of the ``key-state`` table that belong to ``partition``."""
        store = self.key_state.data
        # the memory store remembers the changelog partition of every key it recovered
        recovered = getattr(store, "_key_partition", {})
        n = self.partitions
        return [kb for kb in list(store.keys())
                if recovered.get(kb, partition_for(kb, n) if n > 1 else 0) == partition]

    def _restore_keys(self, partition: int, core: Any, complete: int | None) -> None:
        """Load all of a partition's keys from the recovered table when it is first used.

        Loading a key only at its next event is not enough: a key that went silent with an
        open episode must still be resolved by :meth:`DetectionCore.advance` (and an idle one
        evicted) at the same event time as in an uninterrupted run, or a restart or a
        rebalance loses the resolution.

        ``complete`` is the last state-write epoch whose partition-state record is on the
        broker: a key record from a later (interrupted) write is rolled back to the key's
        version at that epoch and written again at the next write (streams/statelog.py).
        None (the partition-state record is unreadable) takes every key record as complete.
        """
        store = self.key_state.data
        loaded = rolled = 0
        top = complete or 0
        due = self._tombstone_due.setdefault(partition, set())
        for kb in self._partition_keys(partition):
            raw = store.get(kb)
            key = kb.decode("utf-8", "replace")
            if not raw or core.has_key(key):
                continue
            try:
                rec = unpack_key_record(raw)
                top = max(top, rec.epoch)
                blob, back = committed_version(rec, rec.epoch if complete is None else complete)
                if blob:
                    core.import_key(key, blob)
            except ValueError as exc:
                log.error("key-state of %r on partition %d is unreadable (%s); the key starts "
                          "fresh. Its changelog record is kept for inspection.", key, partition, exc)
                continue
            # keep only the version in use (the previous one is needed only on the wire)
            version_epoch = rec.prev_epoch if back else rec.epoch
            if blob:
                store[kb] = pack_key_record(version_epoch, blob)
                loaded += 1
                if back:
                    core.mark_dirty(key)
            else:
                store[kb] = pack_key_record(version_epoch, b"")
                due.add(kb)   # no such key as of `complete`: tombstone it
            rolled += back
        self._epoch[partition] = top
        if rolled or due:
            self._unwritten.add(partition)
        if rolled:
            log.warning("partition %d: %d key records came from a state write that did not "
                        "complete (the previous owner stopped during it); they are back at "
                        "epoch %d and are written again", partition, rolled, complete)
        if loaded:
            log.info("partition %d: restored %d keys from the key-state changelog", partition, loaded)

    async def _detect_agent(self, stream: Any) -> None:
        s = self.settings
        async for events in stream.take_events(s.batch_max, within=s.batch_within):
            try:
                async with self._batch_lock:
                    await self._handle_batch(events)
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError):
                    raise   # shutdown or rebalance: Faust handles it
                # Sends or state writes failed after the producer's own retries. Faust would
                # ack the batch on the way out and could commit offsets whose alerts or state
                # never reached the broker; exiting at once keeps at-least-once: a restart
                # re-reads from the last committed offset.
                _exit_for_restart("batch of %d events failed (%r): exiting without committing "
                                  "so that a restart re-reads them; restart the worker (a "
                                  "supervisor such as systemd does it by itself)", len(events), exc)

    async def _handle_batch(self, events: list[Any]) -> None:
        m = self.metrics
        started = time.perf_counter()
        owned = self._owned
        if any(ev.message.tp not in owned for ev in events):
            # left in the take() buffer across a rebalance: the partition's owner (this worker
            # again, if it got it back) re-reads them from the committed offset. Processing them
            # here would write state and commit offsets for a partition another worker holds.
            kept = [ev for ev in events if ev.message.tp in owned]
            log.info("skipped %d buffered events of partitions no longer assigned here",
                     len(events) - len(kept))
            events = kept
            if not events:
                return
        events_topic = self.settings.events_topic
        alerts: list[dict[str, Any]] = []
        dead: list[tuple[bytes | None, bytes]] = []
        forwards: list[tuple[bytes, bytes]] = []
        now = time.time()
        process = self.detector.process
        perf = time.perf_counter
        observe = m.processing_seconds.observe
        lag_observe = m.event_lag_seconds.observe
        valid = 0
        max_ts = 0.0
        # per partition with valid events in this batch: the latest event time processed
        marks: dict[int, float] = {}
        for ev in events:
            msg = ev.message
            raw = ev.value
            t0 = perf()
            self._last_offsets[(msg.topic, msg.partition)] = msg.offset
            try:
                event = decode(raw if raw is not None else b"")
            except InvalidEvent as exc:
                m.events_invalid.labels(exc.reason).inc()
                rec = dead_letter(raw or b"", exc, detected_at=now, source={
                    "topic": msg.topic, "partition": msg.partition, "offset": msg.offset})
                dead.append((msg.key, orjson.dumps(rec)))
                continue
            key = event["api_key"]
            kb = key.encode("utf-8")
            if msg.topic == events_topic and msg.key != kb:
                # re-key: all of a key's events on one partition. The decoded event goes, not
                # the raw bytes: prompt_text (already folded into the derived fields) must not
                # leave the process, and decoding it again gives the same event.
                forwards.append((kb, orjson.dumps(event)))
                continue
            part = msg.partition
            self._core_for(part)   # restores the partition's state when first used
            try:
                # no lazy load from key_state here: _core_for restored every key of the
                # partition, so a key missing from the core is new or was evicted (and its
                # table entry awaits its tombstone at the next state write)
                seq = msg.offset if msg.topic == events_topic else None
                alerts.extend(process(event, partition=part, seq=seq))
            except Exception as exc:  # noqa: BLE001 - one event must never stop a partition
                log.exception("detector failed on %s[%d]@%d (api_key %r); the event is "
                              "dead-lettered as processing_error: report this as a bug",
                              msg.topic, msg.partition, msg.offset, key)
                m.events_invalid.labels("processing_error").inc()
                err = InvalidEvent("processing_error", f"{type(exc).__name__}: {exc}"[:500])
                rec = dead_letter(orjson.dumps(event), err, detected_at=now, source={
                    "topic": msg.topic, "partition": msg.partition, "offset": msg.offset})
                dead.append((msg.key, orjson.dumps(rec)))
                continue
            valid += 1
            ts = event["ts"]
            if ts > max_ts:
                max_ts = ts
            if ts > marks.get(part, -math.inf):
                marks[part] = ts
            lag_observe(max(0.0, now - ts))
            observe(perf() - t0)
        m.events_consumed.inc(len(events))
        m.events_processed.inc(valid)
        if max_ts:
            m.last_event_timestamp.set(max_ts)

        snaps = self.detector.take_snapshots()
        pending = []
        for key, value in dead:
            pending.append(await self.dlq_topic.send(key=key, value=value))
        for key, value in forwards:
            pending.append(await self.rekeyed_topic.send(key=key, value=value))
        if snaps:
            score_observe = m.score.observe
            for snap in snaps:
                score_observe(snap["score"])   # every key evaluation, not only alerting ones
        if marks:
            seen = time.monotonic()
            for part in marks:
                self._data_seen[part] = seen
        # a few records per batch (JSON objects, in order) instead of one per evaluation: the
        # topic has one partition, so the campaign agent sees them in order. The last one
        # carries the partitions' marks (how far each has got), for the runner's merge.
        if snaps or (marks and self.partitions > 1):
            last = max(0, len(snaps) - 1) // _SNAPSHOTS_PER_RECORD * _SNAPSHOTS_PER_RECORD
            for i in range(0, max(len(snaps), 1), _SNAPSHOTS_PER_RECORD):
                rec: dict[str, Any] = {"snapshots": snaps[i:i + _SNAPSHOTS_PER_RECORD]}
                if i == last and self.partitions > 1:
                    rec["marks"] = {str(p): t for p, t in marks.items()}
                pending.append(await self.snapshot_topic.send(key=None, value=orjson.dumps(rec)))
        pending.extend(await self._send_alerts(alerts))
        # alerts, dead letters and forwards are on the broker before the state that made them
        for fut in pending:
            await fut
        m.dlq_published.inc(len(dead))
        # state is written once per commit interval (see _commit_pending), not per batch: a
        # busy key changes in many batches a second but needs one changelog record per commit
        self._unwritten |= marks.keys()
        pending = self._pending_commit
        for ev in events:
            tp = ev.message.tp
            nxt = ev.message.offset + 1
            if nxt > pending.get(tp, -1):
                pending[tp] = nxt
        m.batch_seconds.observe(time.perf_counter() - started)
        if time.monotonic() - self._last_commit >= COMMIT_EVERY_S:
            await self._commit_pending()

    async def _commit_timer(self) -> None:
        try:
            async with self._batch_lock:   # never between a batch's detection and its sends
                await self._commit_pending()
        except Exception as exc:  # noqa: BLE001
            # state writes or the flush failed after the producer's own retries: committing
            # later could skip events whose state never reached the broker
            _exit_for_restart("writing state / committing offsets failed (%r): exiting "
                              "without committing so that a restart re-reads the uncommitted "
                              "events", exc)

    async def _commit_pending(self) -> None:
        """Commit the input offsets of finished batches, after everything they sent is acked.

        Batches record their next offsets only after their alerts, dead letters and re-keyed
        events were acknowledged and their state changelog records were queued; the producer
        flush here makes those records durable before the offsets that they cover commit.
        """
        self._last_commit = time.monotonic()
        if not self._pending_commit and not self._unwritten:
            return
        offsets, self._pending_commit = self._pending_commit, {}
        # the state of everything these offsets cover is durable before the offsets that let
        # a restart skip its events
        touched, self._unwritten = self._unwritten, set()
        await self._write_state(touched)
        if not offsets:
            return
        # Faust's own commit path minus its ack bookkeeping (acks are off for these topics)
        consumer = self.app.consumer
        ok = await consumer._commit(offsets)
        self._retry_later(offsets, ok, consumer.assignment())

    def _retry_later(self, offsets: dict[Any, int], ok: bool, owned: Iterable[Any]) -> None:
        """Put back the offsets a commit did not take, for the next commit to retry.

        Faust's commit returns False during a rebalance ("already rebalanced") and silently
        skips partitions that are not in the assignment at that moment. Dropping them would
        leave a partition whose last events have been processed uncommitted for good (nothing
        new arrives to commit past them). Partitions that are really taken away are removed
        by :meth:`_on_revoked`, so a stale offset never rewinds another owner's progress.
        """
        owned = set(owned)
        pending = self._pending_commit
        for tp, off in offsets.items():
            if (not ok or tp not in owned) and off > pending.get(tp, -1):
                pending[tp] = off

    async def _send_alerts(self, alerts: list[dict[str, Any]]) -> list[Any]:
        out = []
        now = time.time()
        for a in alerts:
            a["detected_at"] = now
            self.metrics.observe_alert(a)
            out.append(await self.alerts_topic.send(key=a["entity"].encode("utf-8"),
                                                    value=encode_alert(a)))
        return out

    async def _write_state(self, partitions: Iterable[int]) -> None:
        """Write the changed state of ``partitions`` as one epoch each (streams/statelog.py).

        Key records (with each key's previous version) first; once the broker has them all,
        the partition-state records that complete the epochs. A worker that dies in between
        leaves records that a restore recognises as incomplete and rolls back.
        """
        table = self.key_state
        data = table.data
        keys_sent: list[Any] = []
        completes: list[tuple[int, bytes]] = []
        for part in sorted(partitions):
            core = self.detector.cores.get(part)
            if core is None:
                continue
            epoch = self._epoch.get(part, 0) + 1
            self._epoch[part] = epoch
            # "no such key" markers of a complete epoch: tombstone them for compaction
            due = self._tombstone_due.pop(part, set())
            for kb in sorted(due):
                old = data.get(kb)
                if old is not None and not _is_absent(old):
                    continue   # the key came back and was written since
                data.pop(kb, None)
                keys_sent.append(table.send_changelog(part, kb, None, value_serializer="raw"))
            absent: set[bytes] = set()
            for key in sorted(core.dirty_keys()):
                kb = key.encode("utf-8")
                blob = core.export_key(key) or b""   # None: evicted since it changed
                keys_sent.append(self._send_key(part, kb, epoch, blob))
                if not blob:
                    absent.add(kb)
            core.clear_dirty()
            if core.evicted_total != self._evicted_seen.get(part, core.evicted_total):
                # evicted keys are gone from the core; mark them gone so that neither a restart
                # nor the key's return after the idle TTL brings back their stale state
                self._evicted_seen[part] = core.evicted_total
                for kb in self._partition_keys(part):
                    if kb in absent or core.has_key(kb.decode("utf-8", "replace")):
                        continue
                    old = data.get(kb)
                    if old is not None and not _is_absent(old):
                        keys_sent.append(self._send_key(part, kb, epoch, b""))
                        absent.add(kb)
            if absent:
                self._tombstone_due[part] = absent
            completes.append((part, _pack_shared(self.detector.clock_of(part),
                                                 core.export_shared(), epoch)))
        await self._acked(keys_sent)
        shared_sent = []
        for part, shared in completes:
            sk = _SHARED_KEY % part
            self.partition_state.data[sk] = shared
            shared_sent.append(self.partition_state.send_changelog(part, sk, shared))
        await self._acked(shared_sent)

    def _send_key(self, part: int, kb: bytes, epoch: int, blob: bytes) -> Any:
        """Send one key record of ``epoch`` carrying the key's previous version."""
        data = self.key_state.data
        old = data.get(kb)
        prev_epoch, prev = 0, b""
        if old is not None:
            try:
                rec = unpack_key_record(old)
                prev_epoch, prev = rec.epoch, rec.cur
            except ValueError:
                pass   # unreadable (logged at restore): no previous version to fall back to
        data[kb] = pack_key_record(epoch, blob)
        return self.key_state.send_changelog(
            part, kb, pack_key_record(epoch, blob, prev_epoch, prev))

    async def _acked(self, sent: list[Any]) -> None:
        if not sent:
            return
        await self.app.producer.flush()
        # Faust's flush gives up on its send buffer after 0.1 s without progress, so it does
        # not prove the records are on the broker: each record's own ack does
        for fut in sent:
            await fut

    async def _idle_timer(self) -> None:
        """Report input partitions with nothing to process as idle to the campaign merge.

        A partition is idle when no event of it was processed for ``IDLE_PARTITION_S`` and, if
        the consumer knows its high watermark, nothing is waiting on the broker. Repeated every
        second, so a campaign agent that restarted learns it again.
        """
        try:
            async with self._batch_lock:   # after a batch's records, never between them
                now = time.monotonic()
                topic = self.settings.events_topic
                try:
                    highwater = self.app.consumer.highwater
                except Exception:  # noqa: BLE001 - no consumer yet
                    return
                idle = []
                for tp in self._owned:
                    if tp.topic != topic:
                        continue
                    part = tp.partition
                    if now - self._data_seen.get(part, self._started) < IDLE_PARTITION_S:
                        continue
                    hw = highwater(tp)
                    last = self._last_offsets.get((topic, part))
                    if hw is not None and last is not None and last + 1 < hw:
                        continue   # events are waiting: not idle, only slow
                    idle.append(part)
                if idle:
                    await self.snapshot_topic.send(key=None, value=orjson.dumps({"idle": idle}))
        except Exception as exc:  # noqa: BLE001 - a missed idle mark only delays campaigns
            log.debug("idle marks not sent: %r", exc)

    async def _campaign_agent(self, stream: Any) -> None:
        async for values in stream.take(self.settings.batch_max, within=self.settings.batch_within):
            alerts = []
            for v in values:
                try:
                    got = orjson.loads(v)
                except orjson.JSONDecodeError:
                    log.warning("skipping an unreadable member snapshot record (%d bytes)",
                                len(v or b""))
                    continue
                if isinstance(got, dict) and ("snapshots" in got or "marks" in got or "idle" in got):
                    # a batch's snapshots with its partitions' marks, or an idle mark
                    snaps, idle = got.get("snapshots"), got.get("idle")
                    alerts.extend(self.campaigns.offer(
                        [x for x in snaps if isinstance(x, dict)] if isinstance(snaps, list) else [],
                        got.get("marks"), idle if isinstance(idle, list) else ()))
                # older records: a bare list of snapshots, or one snapshot
                elif isinstance(got, list):
                    alerts.extend(self.campaigns.observe(x for x in got if isinstance(x, dict)))
                elif isinstance(got, dict):
                    alerts.extend(self.campaigns.observe([got]))
            for fut in await self._send_alerts(alerts):
                await fut

    async def _report_stats(self) -> None:
        m = self.metrics
        st = self.detector.stats()
        camp = self.campaigns.stats()
        m.tracked_keys.set(st["tracked_keys"])
        # the cores and the merge count cumulatively (a revoked partition takes its counts with
        # it): the counters get the increase since the last report
        for name, total, counter in (
            ("evicted_total", st["evicted_total"], m.keys_evicted),
            ("duplicates_total", st["duplicates_total"], m.duplicates),
            ("merge_late", camp.get("merge_late", 0), m.merge_out_of_order.labels("late")),
            ("merge_forced", camp.get("merge_forced", 0), m.merge_out_of_order.labels("forced")),
        ):
            delta = total - self._last_totals.get(name, 0)
            if delta > 0:
                counter.inc(delta)
            self._last_totals[name] = total
        m.state_bytes.set(st["state_bytes"] + camp.get("state_bytes", 0))
        m.merge_buffered.set(camp.get("merge_buffered", 0))
        m.open_episodes.set(st["open_episodes"] + camp.get("open_episodes", 0))
        m.recovery_complete.set(1 if recovery_complete(self.app) else 0)
        consumer = self.app.consumer
        try:
            # Faust's record of the committed offsets it sought to at the last rebalance
            committed = getattr(consumer, "_committed_offset", None) or {}
            self._report_partitions(consumer.highwater, committed, time.time())
        except Exception as exc:  # noqa: BLE001 - metrics must never stop the worker
            log.debug("consumer lag not available: %r", exc)

    def _report_partitions(self, highwater: Callable[[Any], int | None],
                           committed: Mapping[Any, int | None], now: float) -> None:
        """Per input partition the group gives this worker now (``_owned``, kept by
        ``_on_assigned`` / ``_on_revoked``; the consumer's own assignment can still list revoked
        partitions mid-rebalance, and a series re-created for one of those would stay behind and
        age into a false page): its consumer lag and when it last made progress.

        The lag counts from the next offset to read: after the last event this worker processed,
        or where the group had committed when it was assigned, whichever is further (a
        partition taken over at its end, or handed back after another worker read on, has
        nothing waiting); from 0 when neither is known. Progress is the wall time the last
        processed offset last changed, or the assignment's while nothing was processed:
        ``MoatwatchPartitionStalled`` pages when events wait and it stops moving (faust-streaming
        can leave a partition assigned but never fetched after a rebalance).
        """
        m = self.metrics
        topic = self.settings.events_topic
        for tp in self._owned:
            if tp.topic != topic:
                continue
            key = (tp.topic, tp.partition)
            last = self._last_offsets.get(key)
            seen = self._progress.get(key)
            if seen is None or seen[0] != last:
                seen = self._progress[key] = (last, now)
            part = str(tp.partition)
            m.partition_progress.labels(tp.topic, part).set(seen[1])
            hw = highwater(tp)
            if hw is None:
                continue
            done = last + 1 if last is not None else 0
            c = committed.get(tp)
            if c is not None and c > done:
                done = c
            m.consumer_lag.labels(tp.topic, part).set(max(0, hw - done))


def create_worker(settings: Settings, *, feedback: Any = None, config: Any = None) -> Worker:
    """Create topics if missing, read the input partition count, build the worker.

    ``config`` is the per-key detector's :class:`~models.engine.DetectorConfig` (None: the
    defaults; ``moatwatch worker`` reads MOATWATCH_DETECTOR_CONFIG)."""
    from streams.kafka_io import ensure_topics

    counts = ensure_topics(settings, {
        settings.events_topic: settings.partitions,
        settings.alerts_topic: settings.partitions,
        settings.dlq_topic: 1,
        settings.feedback_topic: 1,
    })
    partitions = counts[settings.events_topic]
    # the re-key topic must match the input's partition count (co-partitioned with the tables);
    # creating it up front also spares the "missing topic" warnings at the first subscription
    ensure_topics(settings, {f"{settings.app_id}-events-rekeyed": partitions})
    return Worker(settings, partitions, feedback=feedback, config=config)
