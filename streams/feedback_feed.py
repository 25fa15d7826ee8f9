"""Keeps a worker's :class:`~models.feedback.FeedbackBook` current from the feedback topic.

Every worker needs every verdict (a verdict on a group or key may matter on any partition), so
this is a plain confluent-kafka reader of all partitions from the beginning, outside the
consumer group, in a daemon thread. Records are JSON validated by
:func:`models.feedback.validate_feedback`; anything else is logged and skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from models.feedback import validate_feedback
from streams.settings import Settings

log = logging.getLogger("moatwatch.feedback")


class FeedbackFeed:
    def __init__(self, settings: Settings, book: Any) -> None:
        self.settings = settings
        self.book = book
        self.applied = 0
        self.rejected = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="moatwatch-feedback", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        conf = self.settings.confluent_config()
        conf.update({"group.id": f"{self.settings.app_id}-feedback-{time.time_ns()}",
                     "enable.auto.commit": False})
        consumer = Consumer(conf)
        topic = self.settings.feedback_topic
        try:
            while not self._stop.is_set():
                try:
                    md = consumer.list_topics(topic, timeout=5)
                    parts = md.topics[topic].partitions
                    if parts:
                        break
                except Exception:  # noqa: BLE001 - retried until the topic exists
                    pass
                self._stop.wait(2.0)
            else:
                return
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
            while not self._stop.is_set():
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                try:
                    record = validate_feedback(orjson.loads(msg.value()))
                except (orjson.JSONDecodeError, ValueError) as exc:
                    self.rejected += 1
                    log.warning("feedback record at %s[%d]@%d rejected: %s", topic,
                                msg.partition(), msg.offset(), exc)
                    continue
                self.book.apply(record)
                self.applied += 1
        finally:
            consumer.close()
