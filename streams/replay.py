"""``moatwatch replay``: the detection core over a file of events, in process, in event time.

The embedded default and the forensic tool. Same decisions as the worker: the same
:class:`~streams.pipeline.Detector`, fed in file order (per partition, the order Kafka keeps).
"""

from __future__ import annotations

import gzip
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from schemas.validation import InvalidEvent
from streams.pipeline import CampaignRunner, Detector, dead_letter, decode, encode_alert
from streams.progress import Progress

__all__ = ["ReplayError", "ReplaySummary", "replay"]

class ReplayError(Exception):
    """The replay could not run (missing input, unwritable output): the message says what to fix."""


@dataclass
class ReplaySummary:
    events: int = 0
    invalid: int = 0
    alerts: int = 0
    firing: int = 0
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"replay: {self.events} events, {self.invalid} invalid (dead-lettered), "
            f"{self.alerts} alerts ({self.firing} firing) in {self.seconds:.1f}s "
            f"= {self.events_per_s:,.0f} events/s"
        )


def _open_input(path: str) -> tuple[BinaryIO, int]:
    if not os.path.exists(path):
        raise ReplayError(f"input file {path!r} does not exist: pass a JSON-lines file of QueryEvent v1 (.jsonl or .jsonl.gz)")
    if os.path.isdir(path):
        raise ReplayError(f"input {path!r} is a directory: pass a JSON-lines file")
    try:
        size = os.path.getsize(path)
        if path.endswith(".gz"):
            return gzip.open(path, "rb"), size  # type: ignore[return-value]
        return open(path, "rb"), size
    except OSError as exc:
        raise ReplayError(f"cannot read {path!r}: {exc.strerror}") from None


def _open_output(path: str, what: str) -> BinaryIO:
    try:
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        return open(path, "wb")
    except OSError as exc:
        raise ReplayError(f"cannot write the {what} file {path!r}: {exc.strerror}") from None


def replay(
    events_path: str,
    out_path: str,
    *,
    dlq_path: str | None = None,
    partitions: int = 1,
    feedback: Any = None,
    progress: bool | None = None,
    campaigns: bool = True,
    config: Any = None,
) -> ReplaySummary:
    """Replay ``events_path`` through the detector; write alerts and dead letters as JSON lines.

    Malformed lines go to ``dlq_path`` (default: ``<out>.dlq.jsonl`` beside ``out_path``) with
    their reason and line number; nothing stops the replay. ``config`` is the per-key
    detector's :class:`~models.engine.DetectorConfig` (None: the defaults).
    """
    if dlq_path is None:
        base = out_path[:-6] if out_path.endswith(".jsonl") else out_path
        dlq_path = base + ".dlq.jsonl"
    src, size = _open_input(events_path)
    detector = Detector(partitions, config=config, feedback=feedback)
    runner = CampaignRunner(feedback, partitions=partitions) if campaigns else None
    # with several partitions, snapshots go through the runner's event-time merge, as they do
    # in the worker: each event marks how far its partition has got
    merge = runner.merge if runner is not None else None
    partition_of = detector.partition_of
    summary = ReplaySummary()
    bar = Progress(size, "replay", enabled=progress)
    raw_size = not events_path.endswith(".gz")
    started = time.perf_counter()
    with src, _open_output(out_path, "alerts") as out, _open_output(dlq_path, "dead-letter") as dlq:
        write_alert = out.write

        def emit(alerts: list[dict[str, Any]]) -> None:
            now = time.time()
            for a in alerts:
                a["detected_at"] = now
                write_alert(encode_alert(a) + b"\n")
                summary.alerts += 1
                if a["status"] == "firing":
                    summary.firing += 1

        process = detector.process
        for lineno, line in enumerate(src, 1):
            if not line.strip():
                continue
            try:
                event = decode(line.rstrip(b"\r\n"))
            except InvalidEvent as exc:
                summary.invalid += 1
                rec = dead_letter(line.rstrip(b"\r\n"), exc,
                                  source={"file": events_path, "line": lineno},
                                  detected_at=time.time())
                dlq.write(orjson.dumps(rec) + b"\n")
                continue
            summary.events += 1
            try:
                alerts = process(event)
            except Exception as exc:  # noqa: BLE001 - one event must never stop a replay
                summary.invalid += 1
                err = InvalidEvent("processing_error", f"{type(exc).__name__}: {exc}"[:500])
                rec = dead_letter(orjson.dumps(event), err,
                                  source={"file": events_path, "line": lineno},
                                  detected_at=time.time())
                dlq.write(orjson.dumps(rec) + b"\n")
                continue
            if alerts:
                emit(alerts)
            if merge is not None:
                merge.mark(partition_of(event["api_key"]), event["ts"])
                if detector.snapshots or len(merge):
                    emit(runner.offer(detector.take_snapshots()))
            elif runner is not None and detector.snapshots:
                emit(runner.observe(detector.take_snapshots()))
            if bar.enabled and not (summary.events & 1023):
                bar.update(src.tell() if raw_size else size * 0.5, f"{summary.events:,} ev")
        if runner is not None:
            emit(runner.flush())   # end of input: every partition is done
    bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


def main_replay(args: Any, feedback: Any = None, config: Any = None) -> int:
    try:
        summary = replay(args.events, args.out, dlq_path=args.dlq, partitions=args.partitions,
                         feedback=feedback, progress=None if not args.no_progress else False,
                         campaigns=not args.no_campaigns, config=config)
    except ReplayError as exc:
        print(f"moatwatch replay: error: {exc}", file=sys.stderr)
        return 2
    print(summary.line(), file=sys.stderr)
    return 0
