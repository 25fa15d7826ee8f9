"""Replay and the Kafka worker make the same decisions on the same events.

Issue 2 §4: for the same events both drivers produce the same set of per-key alert_ids,
through the real broker, on a multi-partition input (replay mirrors the partitioning). Issue 4
§1: they agree on which campaigns exist too. With several partitions the worker's batches
interleave them differently from the file, and the campaign runner's event-time merge
(streams.pipeline.SnapshotMerge) is what makes its campaign alerts equal replay's.
"""

from __future__ import annotations

import pytest

from schemas.validation import validate_alert
from streams.kafka_io import ensure_topics, produce_file

from .conftest import read_topic
from .helpers import key_alert_ids, replay_alerts, simulate_file, wait_consumed

pytestmark = pytest.mark.kafka


def _updates(alerts: list[dict]) -> set[tuple[str, str, str, str]]:
    return {(a["entity_type"], a["entity"], a["alert_id"], a["status"]) for a in alerts}


@pytest.mark.parametrize("partitions", [1, 3])
def test_replay_and_worker_emit_the_same_alerts(names, worker_factory, tmp_path, partitions):
    names.partitions = partitions
    events, _truth = simulate_file(tmp_path, hours=3.0, seed=21, scale=0.35)
    expected = replay_alerts(events, tmp_path, partitions=partitions)
    expected_ids = key_alert_ids(expected)
    assert expected_ids, "the simulated traffic must make replay alert, or the test proves nothing"
    assert any(a["entity_type"] != "api_key" for a in expected), "and make a campaign alert"

    settings = names.settings()
    ensure_topics(settings, {names.events: partitions, names.alerts: partitions})
    worker = worker_factory().start()
    worker.wait_ready()
    sent = produce_file(settings, str(events), progress=False)["events"]
    wait_consumed(worker, sent)
    # every alert the worker wrote: 15 s of silence before giving up, for a shared 2-core
    # machine (the campaign runner releases its last snapshots once the input partitions have
    # been idle for IDLE_PARTITION_S, 5 s)
    live = read_topic(names, names.alerts, idle=15.0)
    for a in live:
        validate_alert(a)
    assert key_alert_ids(live) == expected_ids
    assert _updates(live) == _updates(expected), "campaign alerts differ between replay and live"
