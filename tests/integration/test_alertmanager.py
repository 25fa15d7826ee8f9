"""The Alertmanager bridge against a real Alertmanager (Debian prometheus-alertmanager)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from streams.alertmanager import ALERTNAME_GROUP, ALERTNAME_KEY, AlertmanagerBridge, main

try:
    from tests.integration.servers import (
        ALERTMANAGER_CONFIG,
        alertmanager_server,
        binary,
        free_port,
        http_json,
    )
except ImportError:
    from servers import ALERTMANAGER_CONFIG, alertmanager_server, binary, free_port, http_json  # type: ignore[no-redef]


def alert(entity: str = "key-1", status: str = "firing", severity: str = "warning",
          entity_type: str = "api_key", score: float = 0.82, **extra: Any) -> dict[str, Any]:
    a = {
        "alert_id": (entity.encode().hex() + "0" * 32)[:32],
        "schema_version": 1,
        "entity_type": entity_type,
        "entity": entity,
        "status": status,
        "severity": severity,
        "score": score,
        "event_ts": 1_700_000_000.0,
        "detected_at": 1_700_000_001.0,
        "window": {"first_ts": 1_699_999_000.0, "last_ts": 1_700_000_000.0, "events": 420},
        "reasons": [
            {"feature": "cot_share", "observed": 0.93, "baseline": 0.08, "contribution": 0.6,
             "explanation": "93% of prompts ask for step-by-step reasoning (population 8%)"},
            {"feature": "topic_coverage", "observed": 0.97, "baseline": 0.3, "contribution": 0.4,
             "explanation": "prompts sweep 7 of 7 topics evenly"},
        ],
        "detector": "key_drift",
        "model_version": "test-1",
        "related_entities": [],
        "related_total": 0,
    }
    a.update(extra)
    return a


class Clock:
    """A settable wall clock. Alertmanager compares endsAt with its own (real) clock, so the
    fake one starts in the past and never runs ahead of real time: a resolve (endsAt = now)
    is then really in the past, and firing alerts (endsAt = now + 3 x resend) still ahead."""

    def __init__(self, offset: float = 0.0) -> None:
        import time
        self.now = time.time() + offset

    def __call__(self) -> float:
        return self.now


def am_alerts(url: str, **params: str) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return list(http_json(f"{url}/api/v2/alerts" + (f"?{query}" if query else "")))


def active(url: str) -> list[dict[str, Any]]:
    return [a for a in am_alerts(url) if a["status"]["state"] == "active"]


def test_amtool_checks_config() -> None:
    out = subprocess.run([binary("amtool"), "check-config", str(ALERTMANAGER_CONFIG)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_bridge_fires_resends_without_duplicates_escalates_and_resolves(tmp_path: Path) -> None:
    with alertmanager_server(tmp_path) as am:
        clock = Clock(offset=-75)  # 2.5 resend intervals in the past
        bridge = AlertmanagerBridge(am.url, resend_interval=30, clock=clock)

        bridge.handle(alert("key-1"))
        bridge.handle(alert("acct-9", entity_type="account", detector="campaign",
                            related_entities=["k1", "k2"], related_total=37))
        listed = active(am.url)
        assert len(listed) == 2
        by_entity = {a["labels"]["entity"]: a for a in listed}
        key = by_entity["key-1"]
        assert key["labels"] == {"alertname": ALERTNAME_KEY, "entity_type": "api_key",
                                 "entity": "key-1", "severity": "warning",
                                 "detector": "key_drift"}
        assert key["annotations"]["score"] == "0.820"
        assert "step-by-step" in key["annotations"]["reasons"]
        assert key["annotations"]["alert_id"] == alert("key-1")["alert_id"]
        assert "prompt" not in " ".join(key["labels"])  # no prompt text field anywhere
        group = by_entity["acct-9"]
        assert group["labels"]["alertname"] == ALERTNAME_GROUP
        assert "37 keys" in group["annotations"]["summary"]
        first_ends = key["endsAt"]

        # Re-sends (timer and repeated firing updates) keep ONE alert per label set and push
        # endsAt forward.
        for _ in range(2):
            clock.now += 30
            assert bridge.tick() == 2
        bridge.handle(alert("key-1", score=0.85))
        listed = active(am.url)
        assert sorted(a["labels"]["entity"] for a in listed) == ["acct-9", "key-1"]
        key = next(a for a in listed if a["labels"]["entity"] == "key-1")
        assert key["endsAt"] > first_ends
        assert key["annotations"]["score"] == "0.850"
        assert bridge.tick() == 0  # nothing due right after a send

        # Escalation: the warning label set is resolved, the critical one fires.
        bridge.handle(alert("key-1", severity="critical", score=0.97))
        listed = active(am.url)
        sev = sorted(a["labels"]["severity"] for a in listed if a["labels"]["entity"] == "key-1")
        assert sev == ["critical"], listed

        # Resolve: the episode ends, Alertmanager no longer lists it as active.
        bridge.handle(alert("key-1", status="resolved", severity="critical", score=0.3))
        listed = active(am.url)
        assert [a["labels"]["entity"] for a in listed] == ["acct-9"]
        assert bridge.errors == 0


def test_bridge_keeps_alerts_while_alertmanager_is_down_and_delivers_later(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here yet
    clock = Clock()
    bridge = AlertmanagerBridge(f"http://127.0.0.1:{port}", resend_interval=30, clock=clock)
    bridge.handle(alert("key-7"))
    assert bridge.errors == 1 and bridge._pending
    with alertmanager_server(tmp_path) as am:
        bridge.url, bridge.endpoint = am.url, f"{am.url}/api/v2/alerts"
        assert bridge.flush()
        assert [a["labels"]["entity"] for a in active(am.url)] == ["key-7"]


def test_cli_fails_clearly_when_alertmanager_is_unreachable(capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    from argparse import Namespace

    from streams.settings import load_settings

    url = f"http://127.0.0.1:{free_port()}"
    args = Namespace(url=url, from_beginning=False, resend_interval=60.0, max_idle=1.0)
    assert main(args, load_settings({})) == 1
    err = capsys.readouterr().err
    assert "cannot reach Alertmanager" in err and url in err and "--url" in err


@pytest.mark.kafka
def test_moatwatch_alertmanager_forwards_the_alerts_topic(names, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:  # type: ignore[no-untyped-def]
    """`moatwatch alertmanager` end to end: real broker -> bridge -> real Alertmanager."""
    import json as _json
    from argparse import Namespace

    from confluent_kafka import Producer

    from streams.kafka_io import ensure_topics

    settings = names.settings()
    ensure_topics(settings, {names.alerts: 1})
    producer = Producer({"bootstrap.servers": names.bootstrap})
    for a in (alert("key-1"), alert("key-2", severity="critical"),
              alert("key-2", status="resolved", severity="critical"),
              alert("key-3", score=0.7)):
        producer.produce(names.alerts, key=a["entity"].encode(), value=_json.dumps(a).encode())
    producer.produce(names.alerts, value=b"not an alert")
    assert producer.flush(10) == 0

    with alertmanager_server(tmp_path) as am:
        args = Namespace(url=am.url, from_beginning=True, resend_interval=60.0, max_idle=4.0)
        assert main(args, settings) == 0
        listed = active(am.url)
        assert sorted(a["labels"]["entity"] for a in listed) == ["key-1", "key-3"]
        assert all(a["labels"]["alertname"] == ALERTNAME_KEY for a in listed)
        assert "forwarded 4 alerts" in capsys.readouterr().err
