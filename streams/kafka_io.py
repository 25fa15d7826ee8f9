"""confluent-kafka clients for the commands around the worker: topics, produce, alerts, feedback.

The worker itself consumes through Faust; these are the fast, plain clients for moving files in
and alerts out, sharing :meth:`streams.settings.Settings.confluent_config` (bootstrap, SASL, TLS).
"""

from __future__ import annotations

import gzip
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.progress import Progress
from streams.settings import Settings

__all__ = [
    "KafkaUnavailable",
    "consume_json",
    "ensure_topics",
    "produce_file",
    "topic_partitions",
]


class KafkaUnavailable(RuntimeError):
    """The cluster cannot be reached or refused us; the message says what to check."""


def _explain(settings: Settings, err: Any) -> str:
    text = str(err)
    hint = f"check MOATWATCH_BOOTSTRAP={settings.bootstrap}"
    if "auth" in text.lower() or "sasl" in text.lower():
        hint = "check MOATWATCH_SASL_USERNAME / MOATWATCH_SASL_PASSWORD / MOATWATCH_SASL_MECHANISM"
    elif "ssl" in text.lower():
        hint = "check MOATWATCH_SSL_* files and MOATWATCH_SECURITY_PROTOCOL"
    return f"{text} ({hint}; infra/kafka/local-kafka status shows the local broker)"


class _ErrorTrap:
    """librdkafka ``error_cb``: remembers errors that retrying cannot fix (bad credentials, TLS).

    librdkafka retries an authentication failure forever and only logs it; without this a
    wrong password looked like "broker transport failure" after the full timeout.
    """

    _FATAL = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
              KafkaError._SSL, KafkaError.TOPIC_AUTHORIZATION_FAILED,
              KafkaError.CLUSTER_AUTHORIZATION_FAILED}

    def __init__(self) -> None:
        self.fatal: Any = None

    def __call__(self, err: Any) -> None:
        if self.fatal is None and (err.code() in self._FATAL or err.fatal()):
            self.fatal = err


def _with_trap(settings: Settings) -> tuple[dict[str, Any], _ErrorTrap]:
    trap = _ErrorTrap()
    conf = settings.confluent_config()
    conf["error_cb"] = trap
    return conf, trap


def admin(settings: Settings) -> AdminClient:
    return AdminClient(settings.confluent_config())


def _metadata(settings: Settings, topic: str | None, timeout: float) -> Any:
    """Cluster metadata, failing at once (not after ``timeout``) when Kafka refuses us."""
    conf, trap = _with_trap(settings)
    cli = AdminClient(conf)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            return cli.list_topics(topic=topic, timeout=max(0.1, min(1.0, left)))
        except KafkaException as exc:
            cli.poll(0)   # serves error_cb
            if trap.fatal is not None:
                raise KafkaUnavailable(_explain(settings, trap.fatal)) from None
            if left <= 1.0:
                raise KafkaUnavailable(_explain(settings, exc.args[0] if exc.args else exc)) from None


def topic_partitions(settings: Settings, topic: str, timeout: float = 10.0) -> int | None:
    """Partition count of ``topic``, None if it does not exist. Raises KafkaUnavailable."""
    md = _metadata(settings, topic, timeout)
    t = md.topics.get(topic)
    if t is None or t.error is not None and t.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
        return None
    if t.error is not None:
        raise KafkaUnavailable(_explain(settings, t.error))
    return len(t.partitions)


def ensure_topics(settings: Settings, topics: dict[str, int], timeout: float = 15.0) -> dict[str, int]:
    """Create missing topics with the given partition counts; return every topic's real count."""
    md = _metadata(settings, None, timeout)   # fails fast on bad credentials
    cli = admin(settings)
    missing = [NewTopic(t, num_partitions=n, replication_factor=1)
               for t, n in topics.items() if t not in md.topics]
    if missing:
        for fut in cli.create_topics(missing, operation_timeout=timeout).values():
            try:
                fut.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise KafkaUnavailable(_explain(settings, exc.args[0])) from None
    counts: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    for t in topics:
        while True:
            n = topic_partitions(settings, t)
            if n is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if n is None:
            raise KafkaUnavailable(f"topic {t} was not created in {timeout:.0f}s")
        counts[t] = n
    return counts


def _lines(path: str) -> Iterator[bytes]:
    opener: Callable[..., Any] = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        for line in fh:
            line = line.rstrip(b"\r\n")
            if line:
                yield line


def _key_of(line: bytes) -> bytes | None:
    """The api_key of a line, for the message key; None when the line is not an event."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is dict:
        k = obj.get("api_key")
        if type(k) is str and k:
            return k.encode("utf-8")
    return None


def make_producer(settings: Settings, **extra: Any) -> Producer:
    conf = settings.confluent_config()
    conf.update({
        # murmur2 like the Java client and aiokafka, so replay can place keys on partitions
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "enable.idempotence": True,
        "message.max.bytes": 8 * 1024 * 1024,
    })
    conf.update(extra)
    return Producer(conf)


def produce_file(settings: Settings, path: str, *, topic: str | None = None,
                 rate: float = 0.0, restamp: bool = False, progress: bool | None = None,
                 limit: int = 0) -> dict[str, Any]:
    """Send a JSON-lines file to the input topic keyed by api_key; return counts and rate.

    Lines that are not events are sent as they are (unkeyed): the worker dead-letters them.
    ``rate`` > 0 paces sending to that many events/s; ``restamp`` rewrites ``ts`` to now
    (for live demos and latency measurement) while keeping the file's relative spacing out.
    """
    topic = topic or settings.events_topic
    producer = make_producer(settings)
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    import os
    total = os.path.getsize(path)
    bar = Progress(total, "produce", enabled=progress)
    sent = 0
    done_bytes = 0
    started = time.perf_counter()
    for line in _lines(path):
        if restamp:
            try:
                obj = orjson.loads(line)
                if type(obj) is dict:
                    obj["ts"] = time.time()
                    line = orjson.dumps(obj)
            except orjson.JSONDecodeError:
                pass
        key = _key_of(line)
        while True:
            try:
                producer.produce(topic, value=line, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        done_bytes += len(line) + 1
        if not (sent & 255):
            producer.poll(0)
            bar.update(done_bytes, f"{sent:,} ev")
        if rate > 0:
            ahead = sent / rate - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
        if errors:
            break
        if limit and sent >= limit:
            break
    remaining = producer.flush(60)
    bar.close()
    elapsed = time.perf_counter() - started
    if errors:
        raise KafkaUnavailable(_explain(settings, errors[0]))
    if remaining:
        raise KafkaUnavailable(_explain(settings, f"{remaining} messages not delivered in 60s"))
    return {"events": sent, "seconds": elapsed, "events_per_s": sent / elapsed if elapsed else 0.0,
            "topic": topic}


def consume_json(settings: Settings, topic: str, *, from_beginning: bool = False,
                 max_messages: int = 0, timeout: float = 10.0,
                 group_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Yield JSON objects from ``topic`` until ``max_messages`` or ``timeout`` s without one.

    Without ``group_id`` it reads with a throw-away group and commits nothing.
    """
    conf, trap = _with_trap(settings)
    conf.update({
        "group.id": group_id or f"moatwatch-reader-{time.time_ns()}",
        "enable.auto.commit": bool(group_id),
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "enable.partition.eof": False,
    })
    consumer = Consumer(conf)
    try:
        assigned: list[bool] = []
        consumer.subscribe([topic], on_assign=lambda c, parts: assigned.append(True))
        seen = 0
        last = time.monotonic()
        while True:
            msg = consumer.poll(0.2)
            if trap.fatal is not None:
                raise KafkaUnavailable(_explain(settings, trap.fatal))
            if msg is None:
                if time.monotonic() - last > timeout:
                    return
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                if msg.error().fatal() or msg.error().code() in (
                    KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
                    KafkaError.TOPIC_AUTHORIZATION_FAILED,
                ):
                    raise KafkaUnavailable(_explain(settings, msg.error()))
                print(f"moatwatch: kafka: {msg.error()}", file=sys.stderr)
                continue
            last = time.monotonic()
            try:
                obj = orjson.loads(msg.value())
            except orjson.JSONDecodeError:
                continue
            yield obj
            seen += 1
            if max_messages and seen >= max_messages:
                return
    finally:
        consumer.close()


def end_offsets(settings: Settings, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """High watermark of each partition of ``topic``."""
    conf = settings.confluent_config()
    conf.update({"group.id": f"moatwatch-offsets-{time.time_ns()}", "enable.auto.commit": False})
    c = Consumer(conf)
    try:
        md = c.list_topics(topic, timeout=timeout)
        out = {}
        for p in md.topics[topic].partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            out[p] = hi
        return out
    finally:
        c.close()
