"""Prometheus metrics of a moatwatch worker.

One :class:`Metrics` object owns every metric the worker exports, registered in one
:class:`~prometheus_client.CollectorRegistry`: the worker's own by default, the test's when one
is passed (``registry.get_sample_value(...)`` then reads values through the public path).

Names follow Prometheus conventions: base units (seconds, bytes), ``_total`` counters, and
only bounded labels (reason, detector, severity, entity_type, status, feature, topic,
partition). No api_key, entity or other unbounded value is ever a label.

Examples
--------
>>> from prometheus_client import CollectorRegistry
>>> m = Metrics(CollectorRegistry())
>>> m.observe_alert({"detector": "key_drift", "severity": "warning", "entity_type": "api_key",
...                  "status": "firing", "reasons": [{"feature": "cot_share"}]})
>>> m.registry.get_sample_value("moatwatch_alerts_total", {"detector": "key_drift",
...     "severity": "warning", "entity_type": "api_key", "status": "firing"})
1.0
>>> m.registry.get_sample_value("moatwatch_events_invalid_total", {"reason": "invalid_json"})
0.0
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from schemas.validation import INVALID_REASONS

#: The classic text exposition (0.0.4): what :func:`generate_latest` writes, and what every
#: Prometheus 2.x parses (prometheus_client's own HTTP handler falls back to it too).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

__all__ = [
    "BATCH_BUCKETS",
    "CONTENT_TYPE",
    "EVENT_LAG_BUCKETS",
    "MAX_FEATURE_LABELS",
    "PROCESSING_BUCKETS",
    "SCORE_BUCKETS",
    "Metrics",
]

#: Per-event processing time: from 5 µs (a cheap key update) to 1 s (a pathological event).
PROCESSING_BUCKETS = (
    5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
    1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)
#: Per-batch processing time (a batch is up to MOATWATCH_BATCH_MAX events).
BATCH_BUCKETS = (1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Event-time lag (wall clock minus event ``ts``): 10 ms to one hour.
EVENT_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
#: Key score distribution, 0..1 in steps of 0.05.
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))

#: Distinct ``feature`` label values kept; later ones are counted as ``other``. The engine's
#: feature set is small and fixed, so reaching this cap means a bug, not a busy day, and a
#: cap keeps such a bug from turning into a cardinality explosion in Prometheus.
MAX_FEATURE_LABELS = 64

_ALERT_LABELS = ("detector", "severity", "entity_type", "status")


def _package_version() -> str:
    try:
        return metadata.version("moatwatch")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


class Metrics:
    """Every metric a moatwatch worker exports.

    Parameters
    ----------
    registry
        Where to register the metrics. ``None`` creates a fresh registry owned by this object
        (never the process-global default, so two workers or two tests never collide).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        r = self.registry

        self.events_consumed = Counter(
            "moatwatch_events_consumed", "Messages read from the input topic.", registry=r)
        self.events_invalid = Counter(
            "moatwatch_events_invalid",
            "Input messages rejected by the QueryEvent v1 contract and dead-lettered, by reason.",
            ["reason"], registry=r)
        for reason in INVALID_REASONS:
            # So rate() over a reason that never happened is 0, not "no data".
            self.events_invalid.labels(reason=reason)
        self.events_processed = Counter(
            "moatwatch_events_processed", "Valid events run through detection.", registry=r)
        self.duplicates = Counter(
            "moatwatch_events_duplicate",
            "Redelivered events skipped because their key had already processed them.",
            registry=r)
        self.processing_seconds = Histogram(
            "moatwatch_processing_seconds", "Detection time per event, in seconds.",
            buckets=PROCESSING_BUCKETS, registry=r)
        self.batch_seconds = Histogram(
            "moatwatch_batch_seconds", "Processing time per batch of events, in seconds.",
            buckets=BATCH_BUCKETS, registry=r)
        self.event_lag_seconds = Histogram(
            "moatwatch_event_time_lag_seconds",
            "Wall clock minus event ts when the event is processed, in seconds.",
            buckets=EVENT_LAG_BUCKETS, registry=r)
        self.consumer_lag = Gauge(
            "moatwatch_consumer_lag_messages",
            "Messages between the committed/processed offset and the high watermark.",
            ["topic", "partition"], registry=r)
        self.partition_progress = Gauge(
            "moatwatch_partition_progress_timestamp_seconds",
            "Unix time (wall clock) this worker last processed an event of the input partition, "
            "or was assigned it when it has processed none since.",
            ["topic", "partition"], registry=r)
        self.alerts = Counter(
            "moatwatch_alerts", "Alerts published, by detector, severity, entity type and status.",
            list(_ALERT_LABELS), registry=r)
        self.alert_reasons = Counter(
            "moatwatch_alert_reason_features",
            "Features named as reasons in firing alerts (how often each contributes).",
            ["feature"], registry=r)
        self.open_episodes = Gauge(
            "moatwatch_open_episodes", "Alert episodes currently open (firing).", registry=r)
        self.tracked_keys = Gauge(
            "moatwatch_tracked_keys", "Entities (API keys and groups) with state in memory.",
            registry=r)
        self.state_bytes = Gauge(
            "moatwatch_state_bytes", "Estimated bytes of per-key detection state in memory.",
            registry=r)
        self.keys_evicted = Counter(
            "moatwatch_keys_evicted", "Idle keys evicted from state to bound memory.", registry=r)
        self.score = Histogram(
            "moatwatch_key_score", "Distillation score of a key after each update, 0..1.",
            buckets=SCORE_BUCKETS, registry=r)
        self.merge_buffered = Gauge(
            "moatwatch_campaign_snapshots_buffered",
            "Member snapshots the campaign runner holds until every input partition has passed "
            "their event time.", registry=r)
        self.merge_out_of_order = Counter(
            "moatwatch_campaign_snapshots_out_of_order",
            "Member snapshots fed to the campaign detector out of event-time order: late (behind "
            "what was already fed) or forced (the merge buffer was full).", ["reason"], registry=r)
        for reason in ("late", "forced"):
            self.merge_out_of_order.labels(reason)
        self.recovery_complete = Gauge(
            "moatwatch_table_recovery_complete",
            "1 when table state recovery from changelogs is complete, else 0.", registry=r)
        self.partitions_assigned = Gauge(
            "moatwatch_partitions_assigned",
            "Input topic partitions assigned to this worker.", registry=r)
        self.rebalances = Counter(
            "moatwatch_rebalances", "Consumer group rebalances this worker went through.",
            registry=r)
        self.dlq_published = Counter(
            "moatwatch_dlq_published", "Dead letters published to the DLQ topic.", registry=r)
        self.build_info = Info(
            "moatwatch_build", "moatwatch package and detection model version.", registry=r)
        self.last_event_timestamp = Gauge(
            "moatwatch_last_event_timestamp_seconds",
            "Unix time (wall clock) the last event was processed.", registry=r)

        self._features: set[str] = set()
        self.set_build_info()

    def set_build_info(self, model_version: str = "unknown", version: str | None = None) -> None:
        """Set ``moatwatch_build_info{version, model_version} 1``."""
        self.build_info.info({
            "version": version if version is not None else _package_version(),
            "model_version": model_version,
        })

    def observe_alert(self, alert: Mapping[str, Any]) -> None:
        """Count one published Alert v1: by its labels, and (when firing) its reasons' features.

        Raises
        ------
        KeyError
            When the alert lacks detector, severity, entity_type or status: alerts are
            validated before publishing, so this is a bug to surface, not to paper over.
        """
        self.alerts.labels(*(str(alert[k]) for k in _ALERT_LABELS)).inc()
        if alert["status"] != "firing":
            return
        for reason in alert.get("reasons") or ():
            feature = str(reason.get("feature", "")) or "unknown"
            if feature not in self._features:
                if len(self._features) >= MAX_FEATURE_LABELS:
                    feature = "other"
                else:
                    self._features.add(feature)
            self.alert_reasons.labels(feature=feature).inc()

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop a partition's lag and progress series (it was revoked: another worker reports it).

        Examples
        --------
        >>> from prometheus_client import CollectorRegistry
        >>> m = Metrics(CollectorRegistry())
        >>> m.consumer_lag.labels("events", "1").set(5)
        >>> m.forget_partition("events", 1)
        >>> m.registry.get_sample_value("moatwatch_consumer_lag_messages",
        ...                             {"topic": "events", "partition": "1"}) is None
        True
        >>> m.forget_partition("events", 1)   # never reported, or already dropped: nothing to do
        """
        for gauge in (self.consumer_lag, self.partition_progress):
            gauge.remove(topic, str(partition))   # a label set it does not hold is ignored

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (serve with :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)
