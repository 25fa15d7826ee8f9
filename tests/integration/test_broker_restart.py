"""Broker restart under load: the worker reconnects and resumes with no manual step.

Issue 7 §3. A private broker (own state folder and ports, shared jar cache; the shared broker on
19092 is never touched) is stopped while a producer sends events at a steady rate and a worker
processes them, then started again with its data. The worker must resume by itself; the test
measures the time from the broker accepting clients again to the first event the worker
processes after it, prints it, and checks nothing was lost and the per-key decisions equal
replay.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from streams.kafka_io import ensure_topics, produce_file

from .conftest import KAFKA, REPO, Names, WorkerProcess, read_topic
from .helpers import key_alert_ids, metric, replay_alerts, simulate_file
from .test_crash_recovery import FAST_GROUP, key_decisions, wait_committed_to_end
from .test_sasl_worker import _free_base

pytestmark = pytest.mark.kafka


def test_worker_resumes_after_the_broker_restarts(tmp_path, bootstrap):
    home = tmp_path / "kafka"
    env = dict(os.environ, MOATWATCH_KAFKA_HOME=str(home), MOATWATCH_KAFKA_PORT=str(_free_base()),
               MOATWATCH_KAFKA_LIBS=os.path.join(REPO, ".local", "kafka", "libs"),
               MOATWATCH_KAFKA_HEAP="384m")

    def broker(cmd: str) -> str:
        out = subprocess.run([KAFKA, cmd], env=env, capture_output=True, text=True, timeout=150)
        assert out.returncode == 0, f"local-kafka {cmd} failed:\n{out.stderr[-3000:]}"
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""

    addr = broker("start")
    worker = None
    try:
        names = Names(addr, partitions=2)
        events, _ = simulate_file(tmp_path, hours=3.0, seed=21, scale=0.3)
        expected = replay_alerts(events, tmp_path, partitions=2)
        settings = names.settings()
        ensure_topics(settings, {names.events: 2, names.alerts: 2})
        worker = WorkerProcess(names, tmp_path, extra_env=FAST_GROUP).start()
        worker.wait_ready()

        result: dict = {}

        def send() -> None:
            try:
                result.update(produce_file(settings, str(events), rate=500.0, progress=False))
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                result["error"] = exc

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        time.sleep(4.0)
        before = metric(worker, "moatwatch_events_consumed_total")
        assert before > 0, "the worker must be processing when the broker goes away"
        broker("stop")
        down_at = time.monotonic()
        time.sleep(5.0)
        broker("start")
        up_at = time.monotonic()
        during = metric(worker, "moatwatch_events_consumed_total")
        recovered = None
        while time.monotonic() - up_at < 120:
            assert worker.proc.poll() is None, f"worker died:\n{worker.log()[-4000:]}"
            if metric(worker, "moatwatch_events_consumed_total") > during:
                recovered = time.monotonic() - up_at
                break
            time.sleep(0.05)
        assert recovered is not None, f"worker did not resume in 120 s:\n{worker.log()[-4000:]}"
        print(f"\nbroker down {up_at - down_at:.1f}s (stop + 5 s + start); worker processed its "
              f"first event {recovered:.2f}s after the broker accepted clients again")
        sender.join(180)
        assert "error" not in result, result.get("error")
        wait_committed_to_end(names, names.events, worker, timeout=180)
        live = read_topic(names, names.alerts, idle=6.0, total=120.0)
        assert key_alert_ids(live) == key_alert_ids(expected)
        got, exp = key_decisions(live), key_decisions(expected)
        assert got == exp, f"missing {sorted(exp - got)}, extra {sorted(got - exp)}"
    finally:
        if worker is not None:
            worker.stop()
        subprocess.run([KAFKA, "stop"], env=env, capture_output=True, timeout=60)
