"""``moatwatch grafana provision|annotate``: push dashboards and alert annotations to Grafana.

``provision`` creates or updates, through Grafana's HTTP API (grafana-client), the Prometheus
datasource the dashboards use (name and uid ``moatwatch-prometheus``, the same as
``infra/grafana/provisioning/datasources/moatwatch.yaml``), a folder, and every dashboard in
``infra/grafana/dashboards/`` (overwriting the previous version).

``annotate`` reads Alert v1 JSON lines from the alerts topic (or ``--file``) and writes each as
a Grafana annotation tagged ``moatwatch``, entity_type, severity and detector; the overview
dashboard shows annotations tagged ``moatwatch``.

The token is a Grafana service-account token (Bearer); ``user:password@`` in ``--url`` works
too. Datasources need the Admin role, folders and dashboards Editor, annotations Editor.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "DATASOURCE_NAME",
    "DATASOURCE_UID",
    "GrafanaError",
    "add_parser",
    "annotation_for",
    "main",
]

DATASOURCE_NAME = "moatwatch-prometheus"
DATASOURCE_UID = "moatwatch-prometheus"
FOLDER_UID = "moatwatch"
DEFAULT_DASHBOARDS = Path(__file__).resolve().parents[1] / "infra" / "grafana" / "dashboards"


class GrafanaError(RuntimeError):
    """A Grafana request failed; the message says what to fix."""


def _api(url: str, token: str | None, timeout: float = 10.0) -> Any:
    from grafana_client import GrafanaApi

    return GrafanaApi.from_url(url=url.rstrip("/"), credential=token or None, timeout=timeout)


def _call(what: str, url: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one grafana-client call, turning its exceptions into a :class:`GrafanaError`."""
    import niquests
    from grafana_client.client import (
        GrafanaClientError,
        GrafanaException,
        GrafanaServerError,
        GrafanaTimeoutError,
        GrafanaUnauthorizedError,
    )

    try:
        return fn(*args, **kwargs)
    except GrafanaUnauthorizedError:
        raise GrafanaError(
            f"{what}: Grafana at {url} answered 401 Unauthorized: pass a valid service-account "
            "token with --token (or user:password@ in --url)") from None
    except GrafanaClientError as exc:
        if exc.status_code == 403:
            raise GrafanaError(
                f"{what}: Grafana at {url} answered 403 Forbidden: the token's role is too low "
                "(datasources need Admin; folders, dashboards and annotations need Editor)"
            ) from None
        raise
    except GrafanaTimeoutError as exc:
        raise GrafanaError(f"{what}: Grafana at {url} did not answer in time ({exc})") from None
    except GrafanaServerError as exc:
        raise GrafanaError(f"{what}: Grafana at {url} failed: {exc.message}") from None
    except (niquests.exceptions.RequestException, GrafanaException, OSError) as exc:
        raise GrafanaError(
            f"{what}: cannot reach Grafana at {url} ({exc.__class__.__name__}: {exc}); "
            "check --url and that Grafana is running") from None


def _status(exc: Exception) -> int | None:
    return getattr(exc, "status_code", None)


def datasource_body(prometheus_url: str) -> dict[str, Any]:
    return {
        "name": DATASOURCE_NAME,
        "uid": DATASOURCE_UID,
        "type": "prometheus",
        "access": "proxy",
        "url": prometheus_url,
        "isDefault": False,
        "jsonData": {"timeInterval": "5s", "httpMethod": "POST"},
    }


def load_dashboards(folder: Path) -> list[dict[str, Any]]:
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise GrafanaError(
            f"no dashboards in {folder}: run `python infra/grafana/build_dashboards.py` or pass "
            "--dashboards DIR")
    out = []
    for path in paths:
        try:
            board = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise GrafanaError(f"cannot read dashboard {path}: {exc}") from None
        if not isinstance(board, dict) or not board.get("uid") or not board.get("title"):
            raise GrafanaError(f"{path} is not a Grafana dashboard (needs uid and title)")
        out.append(board)
    return out


def provision(api: Any, url: str, *, prometheus_url: str, folder_title: str,
              dashboards: list[dict[str, Any]]) -> list[str]:
    """Create or update datasource, folder and dashboards; return a line per action."""
    from grafana_client.client import GrafanaClientError

    report: list[str] = []
    body = datasource_body(prometheus_url)
    try:
        existing = _call("read datasource", url, api.datasource.get_datasource_by_name,
                         DATASOURCE_NAME)
    except GrafanaClientError as exc:
        if _status(exc) != 404:
            raise GrafanaError(f"read datasource: {exc}") from None
        existing = None
    if existing:
        uid = existing.get("uid") or DATASOURCE_UID
        body["uid"] = uid
        _call("update datasource", url, api.datasource.update_datasource_by_uid, uid, body)
        report.append(f"datasource {DATASOURCE_NAME}: updated ({prometheus_url})")
    else:
        _call("create datasource", url, api.datasource.create_datasource, body)
        report.append(f"datasource {DATASOURCE_NAME}: created ({prometheus_url})")

    try:
        folder = _call("read folder", url, api.folder.get_folder, FOLDER_UID)
    except GrafanaClientError as exc:
        if _status(exc) != 404:
            raise GrafanaError(f"read folder: {exc}") from None
        folder = None
    if folder is None:
        try:
            folder = _call("create folder", url, api.folder.create_folder, folder_title,
                           uid=FOLDER_UID)
        except GrafanaClientError as exc:
            raise GrafanaError(
                f"create folder {folder_title!r}: {exc} (a folder with this title but another "
                "uid may exist: rename it, or pass --folder with another name)") from None
        report.append(f"folder {folder_title!r}: created")
    elif folder.get("title") != folder_title:
        folder = _call("rename folder", url, api.folder.update_folder, FOLDER_UID,
                       title=folder_title, overwrite=True)
        report.append(f"folder {folder_title!r}: renamed")
    else:
        report.append(f"folder {folder_title!r}: exists")
    folder_uid = (folder or {}).get("uid") or FOLDER_UID

    for board in dashboards:
        payload = {
            "dashboard": {**board, "id": None},
            "folderUid": folder_uid,
            "overwrite": True,
            "message": "moatwatch grafana provision",
        }
        try:
            out = _call(f"save dashboard {board['uid']}", url,
                        api.dashboard.update_dashboard, payload)
        except GrafanaClientError as exc:
            raise GrafanaError(f"save dashboard {board['uid']}: {exc}") from None
        report.append(f"dashboard {board['title']!r}: saved {out.get('url', '')} "
                      f"(version {out.get('version', '?')})")
    return report


# -- annotations ----------------------------------------------------------------------------
def annotation_for(alert: dict[str, Any]) -> dict[str, Any]:
    """The Grafana annotation of one Alert v1 (time in ms, tags, readable HTML-safe text).

    Examples
    --------
    >>> a = annotation_for({"status": "firing", "entity_type": "api_key", "entity": "k<1>",
    ...     "severity": "warning", "detector": "key_drift", "score": 0.8, "event_ts": 1.5,
    ...     "alert_id": "ab", "reasons": [{"explanation": "cot 90%"}]})
    >>> a["time"], a["tags"]
    (1500, ['moatwatch', 'api_key', 'warning', 'key_drift'])
    >>> "k&lt;1&gt;" in a["text"]
    True
    """
    ts = float(alert.get("event_ts") or alert.get("detected_at") or time.time())
    esc = html.escape
    who = f"{alert['entity_type']} {alert['entity']}"
    if alert.get("related_total"):
        who += f" ({alert['related_total']} keys)"
    reasons = "; ".join(str(r.get("explanation", "")) for r in alert.get("reasons") or ()
                        if r.get("explanation"))
    text = (f"<b>{esc(str(alert.get('status', 'firing')))}</b> {esc(who)}: score "
            f"{float(alert.get('score', 0)):.2f} ({esc(str(alert['severity']))}, "
            f"{esc(str(alert['detector']))})<br>{esc(reasons)}<br>"
            f"alert_id {esc(str(alert.get('alert_id', '')))}")
    return {
        "time": int(ts * 1000),
        "tags": ["moatwatch", str(alert["entity_type"]), str(alert["severity"]),
                 str(alert["detector"])],
        "text": text,
    }


def _alerts_from_file(path: str, limit: int) -> Iterator[dict[str, Any]]:
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise GrafanaError(f"cannot read {path}: {exc.strerror}") from None
    n = 0
    with fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                print(f"moatwatch grafana annotate: {path}:{lineno}: not JSON, skipped",
                      file=sys.stderr)
                continue
            yield obj
            n += 1
            if limit and n >= limit:
                return


def annotate(api: Any, url: str, alerts: Iterable[dict[str, Any]]) -> int:
    n = 0
    for alert in alerts:
        if not isinstance(alert, dict) or not all(
                k in alert for k in ("entity_type", "entity", "severity", "detector")):
            print("moatwatch grafana annotate: skipped a record that is not an Alert v1",
                  file=sys.stderr)
            continue
        a = annotation_for(alert)
        _call("add annotation", url, api.annotations.add_annotation,
              time_from=a["time"], time_to=a["time"], tags=a["tags"], text=a["text"])
        n += 1
    return n


# -- command line ---------------------------------------------------------------------------
def add_parser(subparsers: Any) -> None:
    """Add ``moatwatch grafana provision|annotate`` to the CLI."""
    from streams.settings import describe

    g = subparsers.add_parser(
        "grafana", help="provision Grafana (datasource, folder, dashboards) or annotate alerts",
        description="Talk to a Grafana server through its HTTP API.", epilog=describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = g.add_subparsers(dest="grafana_command", metavar="ACTION")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", required=True,
                       help="Grafana base URL, e.g. http://127.0.0.1:3000")
        p.add_argument("--token", default=os.environ.get("GRAFANA_TOKEN"),
                       help="service-account token (default: $GRAFANA_TOKEN)")

    p = sub.add_parser("provision", help="create/update the datasource, folder and dashboards")
    common(p)
    p.add_argument("--folder", default="moatwatch", help="folder title (default moatwatch)")
    p.add_argument("--prometheus-url", default="http://127.0.0.1:9090",
                   help="URL Grafana uses to reach Prometheus (default http://127.0.0.1:9090)")
    p.add_argument("--dashboards", type=Path, default=DEFAULT_DASHBOARDS,
                   help="folder of dashboard JSON (default: infra/grafana/dashboards)")

    a = sub.add_parser("annotate", help="write alerts as Grafana annotations")
    common(a)
    a.add_argument("--file", default=None, metavar="ALERTS.jsonl",
                   help="read alerts from this file instead of the alerts topic")
    a.add_argument("--from-beginning", action="store_true",
                   help="read the alerts topic from its start")
    a.add_argument("--max", type=int, default=0, help="stop after N alerts (0 = no limit)")
    a.add_argument("--timeout", type=float, default=30.0,
                   help="stop after S seconds without a new alert (topic only)")


def main(args: Any, settings: Any) -> int:
    cmd = getattr(args, "grafana_command", None)
    url = args.url
    try:
        api = _api(url, args.token)
        if cmd == "provision":
            for line in provision(api, url, prometheus_url=args.prometheus_url,
                                  folder_title=args.folder,
                                  dashboards=load_dashboards(args.dashboards)):
                print(f"grafana: {line}", file=sys.stderr)
            return 0
        if cmd == "annotate":
            if args.max < 0:
                raise GrafanaError("--max must be 0 or more")
            # Fail on a bad URL/token before reading anything from Kafka.
            _call("check credentials", url, api.annotations.find_annotations, limit=1,
                  tags=["moatwatch"])
            if args.file:
                alerts: Iterable[dict[str, Any]] = _alerts_from_file(args.file, args.max)
            else:
                from streams.kafka_io import KafkaUnavailable, consume_json

                alerts = consume_json(settings, settings.alerts_topic,
                                      from_beginning=args.from_beginning,
                                      max_messages=args.max, timeout=args.timeout)
                try:
                    n = annotate(api, url, alerts)
                except KafkaUnavailable as exc:
                    raise GrafanaError(str(exc)) from None
                print(f"grafana: {n} annotations written", file=sys.stderr)
                return 0
            n = annotate(api, url, alerts)
            print(f"grafana: {n} annotations written", file=sys.stderr)
            return 0
        print("moatwatch grafana: error: choose an action: provision or annotate",
              file=sys.stderr)
        return 2
    except GrafanaError as exc:
        print(f"moatwatch grafana {cmd}: error: {exc}", file=sys.stderr)
        return 1
