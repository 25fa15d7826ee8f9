"""``moatwatch demo``: the whole flow on this machine, live.

Starts the local Kafka (infra/kafka/local-kafka), a worker in a child process, simulates a few
hours of labelled traffic with attacks in it, sends it to the input topic, and prints alerts as
they arrive with their reasons. Then it waits until the worker has taken every event, saves every
alert the worker published and prints their evaluation against the simulation's truth. Stops the
worker at the end (the broker keeps running; stop it with ``infra/kafka/local-kafka stop``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson

from streams.settings import KAFKA_LOG, Settings

__all__ = ["client_log_to", "finished_events", "run_demo"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start_kafka(settings: Settings) -> str:
    script = os.path.join(REPO, "infra", "kafka", "local-kafka")
    out = subprocess.run([script, "start"], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"local Kafka did not start:\n{out.stderr.strip()}")
    return out.stdout.strip().splitlines()[0]


@contextlib.contextmanager
def client_log_to(path: str) -> Iterator[logging.FileHandler]:
    """Send the Kafka clients' log (``moatwatch.kafka``) to the file ``path`` only, for the block;
    the logger's handlers and propagation are as they were afterwards."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    propagate = KAFKA_LOG.propagate
    KAFKA_LOG.addHandler(handler)
    KAFKA_LOG.propagate = False
    try:
        yield handler
    finally:
        KAFKA_LOG.removeHandler(handler)
        KAFKA_LOG.propagate = propagate
        handler.close()


def run_demo(settings: Settings, args: Any) -> int:
    from streams.cli import format_alert
    from streams.kafka_io import consume_json, ensure_topics, produce_file
    from streams.simulator import format_summary, simulate

    say = lambda msg: print(f"demo: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    say("starting the local Kafka ...")
    try:
        bootstrap = _start_kafka(settings)
    except RuntimeError as exc:
        say(str(exc))
        return 1
    run = time.strftime("%Y%m%d%H%M%S")
    settings = dataclasses.replace(
        settings, bootstrap=bootstrap, app_id=f"moatwatch-demo-{run}",
        events_topic=f"moatwatch.demo-{run}.query-events",
        alerts_topic=f"moatwatch.demo-{run}.alerts", dlq_topic=f"moatwatch.demo-{run}.dlq",
        feedback_topic=f"moatwatch.demo-{run}.feedback", partitions=2)
    env = dict(os.environ, MOATWATCH_BOOTSTRAP=bootstrap, MOATWATCH_APP_ID=settings.app_id,
               MOATWATCH_EVENTS_TOPIC=settings.events_topic,
               MOATWATCH_ALERTS_TOPIC=settings.alerts_topic,
               MOATWATCH_DLQ_TOPIC=settings.dlq_topic,
               MOATWATCH_FEEDBACK_TOPIC=settings.feedback_topic,
               MOATWATCH_PARTITIONS=str(settings.partitions),
               MOATWATCH_DATA_DIR=os.path.join(REPO, ".local", "demo", run))
    work = tempfile.mkdtemp(prefix="moatwatch-demo-")
    # the Kafka clients' own chatter (a broker still loading its coordinator, a retry) goes to
    # a file here, not between the alerts on the terminal
    with client_log_to(os.path.join(work, "kafka-client.log")) as client_log:
        ensure_topics(settings, {settings.events_topic: settings.partitions,
                                 settings.alerts_topic: settings.partitions})
        events = os.path.join(work, "events.jsonl")
        truth = os.path.join(work, "truth.json")
        say(f"simulating {args.hours:g} h of traffic (seed {args.seed}) into {events} ...")
        summary = simulate(args.hours, args.seed, events, truth, scale=args.scale,
                           start_ts=time.time() - args.hours * 3600)
        say(f"simulated {format_summary(summary)}")
        log_path = os.path.join(work, "worker.log")
        say(f"starting a worker (web on 127.0.0.1:{settings.web_port}, log {log_path}; "
            f"Kafka client log {client_log.baseFilename}) ...")
        with open(log_path, "wb") as log:
            worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env,
                                      stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        shown = 0
        scored: str | None = None
        done = threading.Event()

        def show() -> None:
            nonlocal shown
            for alert in consume_json(settings, settings.alerts_topic, from_beginning=True,
                                      timeout=120.0):
                print(format_alert(alert), flush=True)
                shown += 1
                if shown >= args.show:
                    break
            done.set()

        reader = threading.Thread(target=show, daemon=True)
        reader.start()
        try:
            say(f"sending events to {settings.events_topic} ...")
            res = produce_file(settings, events, rate=args.rate)
            say(f"sent {res['events']:,} events at {res['events_per_s']:,.0f}/s; alerts as they arrive:")
            deadline = time.monotonic() + 300
            while not done.wait(timeout=1.0) and time.monotonic() < deadline:
                if worker.poll() is not None:
                    with open(log_path, "rb") as fh:
                        tail = fh.read()[-3000:].decode("utf-8", "replace")
                    say(f"the worker exited with status {worker.returncode}; its log ends:\n{tail}")
                    return 1
            if worker.poll() is None and args.score:
                scored = _scorecard(settings, say, res["events"], truth, work)
        except KeyboardInterrupt:
            pass
        finally:
            worker.terminate()
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
        say(f"{shown} alerts shown.")
        if scored is None:
            say("Evaluate the whole run offline with:\n"
                f"  moatwatch replay {events} --out {work}/alerts.jsonl --partitions {settings.partitions}\n"
                f"  moatwatch evaluate --truth {truth} --alerts {work}/alerts.jsonl")
        return 0 if shown else 1


def _processed(settings: Settings) -> int | None:
    """Events the worker has finished with (run through detection, dead-lettered or skipped as
    redelivered), read from its ``/metrics``; None while it does not answer."""
    url = f"http://127.0.0.1:{settings.web_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return finished_events(resp.read().decode("utf-8", "replace"))
    except OSError:
        return None


#: Counters whose sum is every input message the worker is done with.
_FINISHED = ("moatwatch_events_processed_total", "moatwatch_events_invalid_total",
             "moatwatch_events_duplicate_total")


def finished_events(exposition: str) -> int:
    """Sum of the finished-event counters (every label set) in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return int(sum(s.value for fam in text_string_to_metric_families(exposition)
                   for s in fam.samples if s.name in _FINISHED))


def _scorecard(settings: Settings, say: Any, sent: int, truth: str, work: str,
               timeout: float = 600.0) -> str | None:
    """Wait until the live worker has taken every sent event, save every alert it published
    to ``<work>/alerts.jsonl`` and print the evaluation of those alerts against the truth.

    Returns the alerts file, or None when the worker did not finish within ``timeout`` s.
    """
    from streams.evaluation import evaluate, format_table
    from streams.kafka_io import consume_json
    from streams.progress import Progress

    say("waiting for the worker to take every event, to score its alerts ...")
    bar = Progress(sent, "worker", unit="events")
    deadline = time.monotonic() + timeout
    done = _processed(settings) or 0
    while done < sent:
        if time.monotonic() > deadline:
            bar.close()
            say(f"the worker took {done:,} of {sent:,} events in {timeout:.0f} s; not scored")
            return None
        time.sleep(0.5)
        done = _processed(settings) or done
        bar.update(done)
    bar.close()
    alerts = os.path.join(work, "alerts.jsonl")
    n = 0
    with open(alerts, "wb") as out:
        # quiet for 5 s: the worker's producer has flushed what the last events raised
        for alert in consume_json(settings, settings.alerts_topic, from_beginning=True, timeout=5.0):
            out.write(orjson.dumps(alert) + b"\n")
            n += 1
    say(f"the worker took all {sent:,} events and published {n:,} alert updates ({alerts}); "
        "scored against the simulation's truth:")
    # the issues' targets are defined on 12-hour runs; a short demo is not held to them
    print(format_table(evaluate(truth, alerts), targets=False), flush=True)
    return alerts
