"""Soak: one worker at a steady event rate for a long time; memory and lag over time.

Not part of CI. Runs against the broker in MOATWATCH_BOOTSTRAP (default the local one) with
fresh topic names, so it never disturbs other users of the broker::

    .venv/bin/python bench/soak.py --minutes 30 --rate 1000 --json soak.json

It simulates traffic once (streams.simulator), then loops those events at ``--rate`` events/s,
restamping ``ts`` to the wall clock (so keys stay active, event-time housekeeping runs, and the
event-time lag metric is meaningful) and suffixing api_keys per loop (``--new-keys-per-loop``)
to make the key population churn like real traffic. Every ``--every`` seconds it samples the
worker's RSS (from /proc), consumer lag (end offsets minus the group's committed offsets),
events consumed and tracked keys, prints a row, and at the end writes all samples as JSON.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from streams.kafka_io import end_offsets, ensure_topics  # noqa: E402
from streams.settings import load_settings  # noqa: E402
from streams.simulator import simulate  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        except ValueError:
            pass
    return out


def committed_lag(settings, group: str, topic: str) -> int:
    conf = settings.confluent_config()
    conf.update({"group.id": group, "enable.auto.commit": False})
    c = Consumer(conf)
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        tps = c.committed([TopicPartition(topic, p) for p in parts], timeout=10)
    finally:
        c.close()
    ends = end_offsets(settings, topic)   # after the commits, so lag is never negative
    return sum(ends[tp.partition] - max(tp.offset, 0) for tp in tps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=1000.0, help="events per second")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--new-keys-per-loop", action="store_true", default=True)
    ap.add_argument("--json", default="soak.json", help="where to write the samples")
    args = ap.parse_args(argv)

    run = uuid.uuid4().hex[:8]
    env = dict(os.environ)
    env.update({
        "MOATWATCH_APP_ID": f"soak-{run}", "MOATWATCH_EVENTS_TOPIC": f"soak.{run}.events",
        "MOATWATCH_ALERTS_TOPIC": f"soak.{run}.alerts", "MOATWATCH_DLQ_TOPIC": f"soak.{run}.dlq",
        "MOATWATCH_FEEDBACK_TOPIC": f"soak.{run}.feedback",
        "MOATWATCH_PARTITIONS": str(args.partitions), "MOATWATCH_LOG_LEVEL": "warning",
        "MOATWATCH_WEB_PORT": str(free_port()),
    })
    settings = load_settings(env)
    ensure_topics(settings, {settings.events_topic: args.partitions,
                             settings.alerts_topic: args.partitions})
    tmp = tempfile.mkdtemp(prefix="moatwatch-soak-")
    env["MOATWATCH_DATA_DIR"] = os.path.join(tmp, "data")
    simulate(2.0, 17, os.path.join(tmp, "e.jsonl"), os.path.join(tmp, "t.json"), scale=0.3,
             progress=False)
    events = [orjson.loads(x) for x in open(os.path.join(tmp, "e.jsonl"), "rb")]
    log = open(os.path.join(tmp, "worker.log"), "ab")
    worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env, cwd=REPO,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stop = threading.Event()
    sent = [0]

    def produce() -> None:
        p = Producer({**settings.confluent_config(), "partitioner": "murmur2_random",
                      "linger.ms": 20})
        started = time.monotonic()
        loop = 0
        while not stop.is_set():
            for ev in events:
                if stop.is_set():
                    break
                ev = dict(ev, ts=time.time(), event_id=f"{loop}-{ev['event_id']}")
                if args.new_keys_per_loop and loop:
                    ev["api_key"] = f"{ev['api_key']}~{loop}"
                while True:
                    try:
                        p.produce(settings.events_topic, key=ev["api_key"].encode(),
                                  value=orjson.dumps(ev))
                        break
                    except BufferError:
                        p.poll(0.05)
                sent[0] += 1
                ahead = sent[0] / args.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
                if not sent[0] & 1023:
                    p.poll(0)
            loop += 1
        p.flush(30)

    print(f"soak: {args.minutes} min at {args.rate:.0f} ev/s, worker pid {worker.pid}, "
          f"logs in {tmp}", file=sys.stderr)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except Exception:  # noqa: BLE001
            time.sleep(0.5)
    t = threading.Thread(target=produce, daemon=True)
    t.start()
    samples = []
    t0 = time.monotonic()
    print(f"{'t_s':>6} {'rss_mib':>8} {'lag_msgs':>9} {'sent':>9} {'consumed':>9} {'keys':>7} "
          f"{'evicted':>8} {'alerts':>7}")
    try:
        while time.monotonic() - t0 < args.minutes * 60:
            time.sleep(args.every)
            if worker.poll() is not None:
                print(f"worker exited with {worker.returncode}; see {tmp}/worker.log")
                return 1
            m = scrape(settings.web_port)
            s = {"t_s": round(time.monotonic() - t0, 1), "rss_mib": round(rss_mib(worker.pid), 1),
                 "lag_msgs": committed_lag(settings, settings.app_id, settings.events_topic),
                 "sent": sent[0], "consumed": m.get("moatwatch_events_consumed_total", 0),
                 "tracked_keys": m.get("moatwatch_tracked_keys", 0),
                 "evicted": m.get("moatwatch_keys_evicted_total", 0),
                 "alerts": m.get("moatwatch_alerts_total", 0)}
            samples.append(s)
            print(f"{s['t_s']:>6.0f} {s['rss_mib']:>8.1f} {s['lag_msgs']:>9} {s['sent']:>9} "
                  f"{s['consumed']:>9.0f} {s['tracked_keys']:>7.0f} {s['evicted']:>8.0f} "
                  f"{s['alerts']:>7.0f}", flush=True)
    finally:
        stop.set()
        t.join(40)
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
    summary = {"minutes": args.minutes, "rate": args.rate, "partitions": args.partitions,
               "samples": samples}
    if samples:
        rss = [s["rss_mib"] for s in samples]
        lag = [s["lag_msgs"] for s in samples]
        half = samples[len(samples) // 2:]
        summary.update({"rss_first_mib": rss[0], "rss_max_mib": max(rss), "rss_last_mib": rss[-1],
                        "lag_max": max(lag), "lag_p50_second_half": sorted(
                            x["lag_msgs"] for x in half)[len(half) // 2]})
    with open(args.json, "wb") as fh:
        fh.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    print(f"soak: wrote {args.json}: " + ", ".join(f"{k}={v}" for k, v in summary.items()
                                                  if k != "samples"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
