"""Small helpers for integration tests: simulate a file, replay it, wait for a worker."""

from __future__ import annotations

import re
import time
import urllib.request

import orjson


def simulate_file(tmp_path, *, hours: float = 2.0, seed: int = 11, scale: float = 0.3):
    from streams.simulator import simulate

    events = tmp_path / f"events-{seed}.jsonl"
    truth = tmp_path / f"truth-{seed}.json"
    simulate(hours, seed, str(events), str(truth), scale=scale, progress=False)
    return events, truth


def replay_alerts(events_path, tmp_path, *, partitions: int = 1, tag: str = "replay") -> list[dict]:
    from streams.replay import replay

    out = tmp_path / f"{tag}.alerts.jsonl"
    replay(str(events_path), str(out), partitions=partitions, progress=False)
    return [orjson.loads(line) for line in out.read_bytes().splitlines() if line]


def metric(worker, name: str) -> float:
    with urllib.request.urlopen(worker.url("/metrics"), timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name) and re.match(re.escape(name) + r"(\{|\s)", line):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    if not found:
        raise AssertionError(f"metric {name} not exposed")
    return total


def wait_consumed(worker, n: int, timeout: float = 180.0) -> None:
    """Wait until the worker has consumed n input messages (valid or not)."""
    deadline = time.monotonic() + timeout
    seen = -1.0
    while time.monotonic() < deadline:
        if worker.proc is not None and worker.proc.poll() is not None:
            raise AssertionError(f"worker exited ({worker.proc.returncode}):\n{worker.log()[-4000:]}")
        try:
            seen = metric(worker, "moatwatch_events_consumed_total")
            if seen >= n:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"worker consumed {seen} of {n} messages in {timeout}s:\n{worker.log()[-3000:]}")


def key_alert_ids(alerts: list[dict]) -> set[str]:
    return {a["alert_id"] for a in alerts if a["entity_type"] == "api_key"}
