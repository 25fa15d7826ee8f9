"""Bridge moatwatch alerts to Prometheus Alertmanager: ``moatwatch alertmanager``.

Reads Alert v1 JSON from the alerts topic (its own consumer group, ``<app_id>-alertmanager``)
and POSTs them to Alertmanager's ``/api/v2/alerts`` the way Prometheus does:

* labels identify the episode's subject and stay stable while it fires:
  ``alertname`` (``MoatwatchDistillation`` for an api_key, ``MoatwatchCampaign`` for a group of
  keys), ``entity_type``, ``entity``, ``severity``, ``detector``;
* annotations carry what changes: ``summary``, ``score``, ``reasons`` (the explanations),
  ``alert_id``;
* a firing alert is sent with ``endsAt = now + 3 x resend_interval`` and re-sent every
  ``resend_interval`` seconds, so Alertmanager keeps it active while the bridge runs and lets it
  lapse on its own if the bridge dies;
* a ``resolved`` alert is sent with ``endsAt = now``; an escalation (new severity, so a new
  label set) resolves the old label set at once.

Alerts carry no prompt text (Alert v1 has no such field), so none can reach Alertmanager.

Examples
--------
>>> sent = []
>>> bridge = AlertmanagerBridge("http://am:9093", clock=lambda: 1000.0, post=sent.extend)
>>> bridge.handle({"alert_id": "a" * 32, "status": "firing", "entity_type": "api_key",
...                "entity": "key-1", "severity": "warning", "detector": "key_drift",
...                "score": 0.81, "reasons": [{"explanation": "cot share 0.9 vs 0.1"}]})
>>> sent[0]["labels"]["alertname"], sent[0]["endsAt"]
('MoatwatchDistillation', '1970-01-01T00:19:40Z')
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AlertmanagerBridge",
    "AlertmanagerError",
    "add_parser",
    "labels_for",
    "main",
]

log = logging.getLogger(__name__)

ALERTNAME_KEY = "MoatwatchDistillation"
ALERTNAME_GROUP = "MoatwatchCampaign"
#: Re-sends an alert may miss before Alertmanager considers it resolved (Prometheus uses 4).
ENDS_AFTER_RESENDS = 3
#: Longest ``reasons`` annotation; Alertmanager has no hard limit but notifications do.
MAX_REASONS_CHARS = 2000


class AlertmanagerError(RuntimeError):
    """Alertmanager could not be reached or refused the request (message says what to do)."""


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def labels_for(alert: dict[str, Any]) -> dict[str, str]:
    """Alertmanager labels of an Alert v1: identity only, never the changing score."""
    entity_type = str(alert["entity_type"])
    return {
        "alertname": ALERTNAME_KEY if entity_type == "api_key" else ALERTNAME_GROUP,
        "entity_type": entity_type,
        "entity": str(alert["entity"]),
        "severity": str(alert["severity"]),
        "detector": str(alert["detector"]),
    }


def annotations_for(alert: dict[str, Any]) -> dict[str, str]:
    score = float(alert.get("score", 0.0))
    who = f"{alert['entity_type']} {alert['entity']}"
    if alert.get("related_total"):
        who += f" ({alert['related_total']} keys)"
    kind = "distillation-style scraping" if alert["entity_type"] == "api_key" \
        else "a coordinated distillation campaign"
    reasons = "; ".join(str(r.get("explanation", "")) for r in alert.get("reasons") or ()
                        if r.get("explanation"))
    if len(reasons) > MAX_REASONS_CHARS:
        reasons = reasons[: MAX_REASONS_CHARS - 1] + "…"
    out = {
        "summary": f"{who} looks like {kind} (score {score:.2f}, {alert['severity']}, "
                   f"{alert['detector']})",
        "score": f"{score:.3f}",
        "reasons": reasons,
        "alert_id": str(alert.get("alert_id", "")),
    }
    if alert.get("related_entities"):
        out["related_entities"] = ", ".join(map(str, alert["related_entities"][:20]))
    return out


def http_post(url: str, alerts: list[dict[str, Any]], timeout: float = 5.0) -> None:
    """POST a list of alerts; raise :class:`AlertmanagerError` saying what to fix."""
    req = urllib.request.Request(url, data=json.dumps(alerts).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")[:500]
        raise AlertmanagerError(
            f"Alertmanager at {url} answered HTTP {exc.code}: {body.strip()} "
            "(a 400 is a bug in moatwatch's payload; report it with this message)") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AlertmanagerError(
            f"cannot reach Alertmanager at {url}: {reason}. Start it "
            "(prometheus-alertmanager --config.file=infra/alertmanager/alertmanager.yml) or "
            "point --url / MOATWATCH_ALERTMANAGER_URL at it") from None


@dataclass
class _Firing:
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    last_sent: float


class AlertmanagerBridge:
    """Turns Alert v1 updates into Alertmanager ``/api/v2/alerts`` posts (state machine).

    Parameters
    ----------
    url
        Alertmanager base URL, e.g. ``http://127.0.0.1:9093``.
    resend_interval
        Seconds between re-sends of a firing alert; its ``endsAt`` is set
        ``3 x resend_interval`` ahead, so one or two lost re-sends do not resolve it.
    clock
        Wall clock in Unix seconds (tests pass a fake one).
    post
        ``post(list_of_alerts)``; default POSTs to ``<url>/api/v2/alerts``.
    """

    def __init__(self, url: str, *, resend_interval: float = 60.0,
                 clock: Callable[[], float] = time.time,
                 post: Callable[[list[dict[str, Any]]], None] | None = None,
                 generator_url: str = "") -> None:
        if not resend_interval > 0:
            raise ValueError(f"resend_interval={resend_interval!r}: use seconds > 0")
        self.url = url.rstrip("/")
        self.endpoint = f"{self.url}/api/v2/alerts"
        self.resend_interval = float(resend_interval)
        self.clock = clock
        self._post = post if post is not None else (lambda a: http_post(self.endpoint, a))
        self.generator_url = generator_url
        #: (entity_type, entity, detector) -> what is firing for it now.
        self.firing: dict[tuple[str, str, str], _Firing] = {}
        #: label-set key -> payload waiting to be (re)sent after a failed POST.
        self._pending: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        self.posts = 0
        self.errors = 0

    # -- payloads ---------------------------------------------------------------------------
    def _payload(self, labels: dict[str, str], annotations: dict[str, str], starts_at: float,
                 ends_at: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "labels": labels,
            "annotations": annotations,
            "startsAt": _iso(starts_at),
            "endsAt": _iso(ends_at),
        }
        if self.generator_url:
            out["generatorURL"] = self.generator_url
        return out

    def _queue(self, payload: dict[str, Any]) -> None:
        self._pending[tuple(sorted(payload["labels"].items()))] = payload

    # -- public API -------------------------------------------------------------------------
    def handle(self, alert: dict[str, Any]) -> None:
        """Apply one Alert v1 (firing or resolved) and send what Alertmanager must know."""
        now = self.clock()
        ident = (str(alert["entity_type"]), str(alert["entity"]), str(alert["detector"]))
        labels = labels_for(alert)
        annotations = annotations_for(alert)
        current = self.firing.get(ident)
        if alert["status"] == "resolved":
            if current is not None and current.labels != labels:
                # Resolve what is actually firing (it may carry another severity).
                self._queue(self._payload(current.labels, current.annotations,
                                          current.starts_at, now))
            self._queue(self._payload(labels, annotations,
                                      current.starts_at if current else now, now))
            self.firing.pop(ident, None)
        elif alert["status"] == "firing":
            starts_at = now
            if current is not None:
                starts_at = current.starts_at
                if current.labels != labels:  # escalation: old label set ends now
                    self._queue(self._payload(current.labels, current.annotations,
                                              current.starts_at, now))
            self.firing[ident] = _Firing(labels, annotations, starts_at, now)
            self._queue(self._payload(labels, annotations, starts_at,
                                      now + ENDS_AFTER_RESENDS * self.resend_interval))
        else:
            raise ValueError(f"alert {alert.get('alert_id')}: status {alert['status']!r} is "
                             "neither firing nor resolved")
        self.flush()

    def tick(self) -> int:
        """Re-send firing alerts whose last send is ``resend_interval`` old; returns how many."""
        now = self.clock()
        due = 0
        for f in self.firing.values():
            if now - f.last_sent >= self.resend_interval:
                f.last_sent = now
                self._queue(self._payload(f.labels, f.annotations, f.starts_at,
                                          now + ENDS_AFTER_RESENDS * self.resend_interval))
                due += 1
        self.flush()
        return due

    def flush(self) -> bool:
        """POST every pending alert in one request; keep them for the next try on failure."""
        if not self._pending:
            return True
        batch = list(self._pending.values())
        try:
            self._post(batch)
        except AlertmanagerError as exc:
            self.errors += 1
            log.warning("%s; %d alerts kept to retry", exc, len(batch))
            return False
        self._pending.clear()
        self.posts += 1
        return True

    def resolve_all(self) -> None:
        """Nothing to do: firing alerts lapse at their endsAt if the bridge stops for good.

        They are deliberately *not* resolved on shutdown: a restart of the bridge must not
        page "resolved" for episodes that are still open.
        """


# -- command line ---------------------------------------------------------------------------
def add_parser(subparsers: Any) -> None:
    """Add ``moatwatch alertmanager`` to the CLI."""
    from streams.settings import describe

    p = subparsers.add_parser(
        "alertmanager",
        help="send alerts from the alerts topic to Prometheus Alertmanager",
        description="Consume Alert v1 from the alerts topic (consumer group "
                    "<MOATWATCH_APP_ID>-alertmanager) and POST them to Alertmanager's "
                    "/api/v2/alerts, re-sending firing alerts and resolving ended episodes.",
        epilog=describe(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None,
                   help="Alertmanager base URL (default: MOATWATCH_ALERTMANAGER_URL)")
    p.add_argument("--from-beginning", action="store_true",
                   help="read the alerts topic from its start, ignoring committed offsets")
    p.add_argument("--resend-interval", type=float, default=60.0, metavar="S",
                   help="seconds between re-sends of firing alerts (default 60)")
    p.add_argument("--max-idle", type=float, default=0.0, metavar="S",
                   help="exit after S seconds without a new alert, counted from partition assignment "
                        "(default 0: run until stopped)")


def check_reachable(url: str, timeout: float = 5.0) -> None:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/v2/status", timeout=timeout) as r:
            r.read()
    except urllib.error.HTTPError as exc:
        raise AlertmanagerError(
            f"{url}/api/v2/status answered HTTP {exc.code}: is {url} an Alertmanager "
            "(v0.16 or later)?") from None
    except (urllib.error.URLError, OSError) as exc:
        raise AlertmanagerError(
            f"cannot reach Alertmanager at {url}: {getattr(exc, 'reason', exc)}. Start it "
            "(prometheus-alertmanager --config.file=infra/alertmanager/alertmanager.yml) or "
            "point --url / MOATWATCH_ALERTMANAGER_URL at it") from None


def _decode(raw: bytes | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    if not all(k in obj for k in ("entity_type", "entity", "detector", "severity", "status")):
        return None
    return obj


#: Yielded by the message source when partitions get assigned: the idle clock starts there, so
#: a slow consumer-group join does not count as "no alerts".
ASSIGNED = object()


def run_bridge(bridge: AlertmanagerBridge, messages: Iterable[Any], *,
               max_idle: float = 0.0, should_stop: Callable[[], bool] = lambda: False) -> int:
    """Feed decoded alerts to the bridge, ticking between them. ``None`` items mean "idle"."""
    handled = 0
    last = time.monotonic()
    for raw in messages:
        if should_stop():
            break
        if raw is ASSIGNED:
            last = time.monotonic()
        elif raw is not None:
            last = time.monotonic()
            alert = _decode(raw)
            if alert is None:
                log.warning("skipped a message that is not an Alert v1 JSON object")
            else:
                bridge.handle(alert)
                handled += 1
        bridge.tick()
        if max_idle and time.monotonic() - last >= max_idle:
            break
    return handled


def main(args: Any, settings: Any) -> int:
    """``moatwatch alertmanager``: run the bridge until stopped (or --max-idle)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError

    url = args.url or settings.alertmanager_url
    try:
        check_reachable(url)
        bridge = AlertmanagerBridge(url, resend_interval=args.resend_interval)
    except (AlertmanagerError, ValueError) as exc:
        print(f"moatwatch alertmanager: error: {exc}", file=sys.stderr)
        return 1

    conf = settings.confluent_config()
    conf.update({
        "group.id": f"{settings.app_id}-alertmanager",
        "auto.offset.reset": "earliest" if args.from_beginning else "latest",
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,  # store only after Alertmanager has the alert
    })
    consumer = Consumer(conf)
    stop = {"flag": False}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["flag"] = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    assigned: list[bool] = []

    def on_assign(c: Any, parts: list[Any]) -> None:
        assigned.append(True)
        if args.from_beginning:
            for p in parts:
                p.offset = OFFSET_BEGINNING
            c.assign(parts)

    consumer.subscribe([settings.alerts_topic], on_assign=on_assign)
    print(f"moatwatch alertmanager: {settings.alerts_topic} -> {bridge.endpoint} "
          f"(group {conf['group.id']}, re-send every {bridge.resend_interval:g}s)",
          file=sys.stderr)

    def messages() -> Any:
        while not stop["flag"]:
            msg = consumer.poll(0.5)
            if assigned:
                assigned.clear()
                yield ASSIGNED
            if msg is None:
                yield None
                continue
            if msg.error():
                err = msg.error()
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal() or err.code() in (KafkaError._AUTHENTICATION,
                                                 KafkaError.SASL_AUTHENTICATION_FAILED,
                                                 KafkaError.TOPIC_AUTHORIZATION_FAILED):
                    raise AlertmanagerError(
                        f"Kafka: {err.str()} (check MOATWATCH_BOOTSTRAP and the SASL/TLS "
                        "settings)")
                log.warning("kafka: %s", err.str())
                continue
            yield msg.value()
            if not bridge._pending:  # delivered: safe to commit this offset
                consumer.store_offsets(message=msg)

    try:
        n = run_bridge(bridge, messages(), max_idle=args.max_idle,
                       should_stop=lambda: stop["flag"])
    except AlertmanagerError as exc:
        print(f"moatwatch alertmanager: error: {exc}", file=sys.stderr)
        return 1
    finally:
        consumer.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"moatwatch alertmanager: forwarded {n} alerts in {bridge.posts} posts "
          f"({bridge.errors} failed posts retried)", file=sys.stderr)
    return 0
