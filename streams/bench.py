"""``moatwatch bench``: throughput, latency and memory, side by side with the limit and a naive peer.

One run measures, on the same simulated events (issue 6, results in docs/benchmarks.md):

1. **the limit**: in-process ``orjson`` decode of the events (what replay cannot beat), and raw
   batch consume + ``orjson`` decode from the local Kafka with confluent-kafka (what a Python
   worker cannot beat);
2. **a naive peer**: one River ``MinMaxScaler | HalfSpaceTrees`` pipeline per api_key, score
   then learn per event, over a handful of per-event features;
3. **moatwatch replay** in process and **moatwatch worker** (one and two processes) on Kafka;
4. **end-to-end latency**: event produced with ``ts = now`` to its alert read from the alerts
   topic, at ~20/50/80% of the measured one-worker maximum, next to the worker's
   processing-time histogram;
5. **memory**: resident bytes per tracked key at 10k/100k/1M keys (subprocess RSS delta and
   tracemalloc), and the serialized per-key state size.

Throughput numbers are medians of ``repeats`` rounds; each round measures the limit, the peer
and moatwatch back to back, so the ratios (the targets) compare numbers taken under the same
machine load. ``--smoke`` runs the same code at tiny sizes: its numbers mean nothing.

Nothing here tunes anything: it reports.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import gc
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from models.engine import DetectorConfig

__all__ = ["SIZES", "BenchSizes", "naive_peer", "run_bench", "latency_stream", "targets"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class BenchSizes:
    """How big each part of the benchmark is."""

    sim_hours: float          # simulated traffic shared by every throughput measurement
    sim_scale: float
    repeats: int              # rounds of the throughput measurements (medians reported)
    mem_keys: tuple[int, ...]
    trace_keys: tuple[int, ...]   # sizes also measured under tracemalloc (slow)
    partitions: int
    lat_phase_s: float        # minimum seconds of each offered-load phase
    lat_attack_keys: int      # keys per phase that are built to alert
    lat_attack_events: int    # events each of them sends in its phase
    lat_loads: tuple[float, ...]
    profile_worker_s: float   # py-spy sampling of one worker (0: skip)
    peer_events: int          # the naive peer (slow) runs over this prefix of the events


SIZES = {
    "full": BenchSizes(sim_hours=4.0, sim_scale=1.0, repeats=3,
                       mem_keys=(10_000, 100_000, 1_000_000), trace_keys=(10_000, 100_000),
                       partitions=4, lat_phase_s=20.0, lat_attack_keys=150,
                       lat_attack_events=48, lat_loads=(0.2, 0.5, 0.8), profile_worker_s=12.0,
                       peer_events=20_000),
    "smoke": BenchSizes(sim_hours=0.05, sim_scale=0.3, repeats=1, mem_keys=(2_000,),
                        trace_keys=(2_000,), partitions=2, lat_phase_s=2.0, lat_attack_keys=4,
                        lat_attack_events=48, lat_loads=(0.5,), profile_worker_s=0.0,
                        peer_events=1_000),
}


def _say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: the value some event really had)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100.0 * len(s)) - 1))]


# ------------------------------------------------------------------------------ machine
def code_version() -> dict[str, Any]:
    """The commit measured, and any uncommitted change to the measured packages."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], capture_output=True, text=True, cwd=REPO,
                                  timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""
    dirty = [ln[3:] for ln in git("status", "--porcelain", "--", "streams", "models",
                                  "schemas").splitlines() if ln]
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted": dirty}


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"nproc": os.cpu_count(), "cpu": model, "mem_bytes": mem,
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_at_start": [round(x, 2) for x in load]}


# ------------------------------------------------------------------------------ events
def make_events(workdir: str, sizes: BenchSizes, seed: int = 6) -> dict[str, Any]:
    from streams.simulator import simulate

    path = os.path.join(workdir, "events.jsonl")
    truth = os.path.join(workdir, "truth.json")
    summary = simulate(sizes.sim_hours, seed, path, truth, scale=sizes.sim_scale, progress=False)
    with open(path, "rb") as fh:
        lines = [ln.rstrip(b"\n") for ln in fh if ln.strip()]
    return {"path": path, "lines": lines, "keys": summary["keys"], "seed": seed,
            "attack_keys": summary["attack_keys"], "hours": sizes.sim_hours,
            "scale": sizes.sim_scale}


# ------------------------------------------------------------------------------ the limit
def decode_limit(lines: list[bytes]) -> float:
    """events/s of bare ``orjson.loads`` over the lines (replay's ceiling)."""
    loads = orjson.loads
    t0 = time.perf_counter()
    for ln in lines:
        loads(ln)
    return len(lines) / (time.perf_counter() - t0)


def validated_decode_rate(lines: list[bytes]) -> float:
    """events/s of moatwatch's own decode (orjson + QueryEvent v1 validation)."""
    from streams.pipeline import decode

    t0 = time.perf_counter()
    for ln in lines:
        decode(ln)
    return len(lines) / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------ naive peer
_TOPIC_CODE = {"chat": 0.0, "writing": 1.0, "code": 2.0, "math": 3.0, "science": 4.0,
               "reasoning": 5.0, "other": 6.0}


def naive_features(ev: dict[str, Any]) -> dict[str, float]:
    """What a developer writes first: a handful of numbers straight off one event."""
    p = ev["prompt_tokens"]
    c = ev["completion_tokens"]
    return {
        "log_prompt": math.log1p(p),
        "log_completion": math.log1p(c),
        "ratio": c / (p + 1.0),
        "cot": 1.0 if ev.get("cot_request") else 0.0,
        "turn": float(ev.get("turn") or 1),
        "temperature": float(ev.get("temperature", 1.0)),
        "logprobs": 1.0 if ev.get("logprobs") else 0.0,
        "topic": _TOPIC_CODE.get(ev.get("topic") or "other", 6.0),
    }


def naive_peer(lines: list[bytes]) -> dict[str, Any]:
    """One River ``MinMaxScaler | HalfSpaceTrees`` per api_key, score then learn per event.

    Returns events/s (decode included, as in replay) and how many pipelines it built.

    Examples
    --------
    >>> ev = b'{"event_id":"1","ts":1.0,"api_key":"k","prompt_tokens":3,"completion_tokens":9,"status":200}'
    >>> naive_peer([ev, ev])["keys"]
    1
    """
    from river import anomaly, preprocessing

    proto = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=42)
    models: dict[str, Any] = {}
    loads = orjson.loads
    scored = 0.0
    t0 = time.perf_counter()
    for ln in lines:
        ev = loads(ln)
        m = models.get(ev["api_key"])
        if m is None:
            m = models[ev["api_key"]] = copy.deepcopy(proto)
        x = naive_features(ev)
        scored += m.score_one(x)
        m.learn_one(x)
    dt = time.perf_counter() - t0
    return {"events_per_s": len(lines) / dt, "keys": len(models), "seconds": dt}


# ------------------------------------------------------------------------------ replay
def replay_rate(path: str, workdir: str, partitions: int) -> dict[str, Any]:
    from streams.replay import replay

    out = os.path.join(workdir, "replay.alerts.jsonl")
    s = replay(path, out, partitions=partitions, progress=False)
    return {"events_per_s": s.events_per_s, "events": s.events, "alerts": s.alerts,
            "seconds": s.seconds}


def profile_replay(path: str, workdir: str, partitions: int, top: int = 14) -> list[dict[str, Any]]:
    """cProfile of one replay: the functions with the most own time."""
    import cProfile
    import pstats

    from streams.replay import replay

    prof = cProfile.Profile()
    out = os.path.join(workdir, "replay-prof.alerts.jsonl")
    prof.enable()
    replay(path, out, partitions=partitions, progress=False)
    prof.disable()
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values()) or 1.0  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{os.path.relpath(file, REPO) if file.startswith(REPO) else os.path.basename(file)}:{line}({func})",
                     "calls": nc, "own_s": round(tt, 4), "own_share": round(tt / total, 4),
                     "cum_s": round(ct, 4)})
    rows.sort(key=lambda r: -r["own_s"])
    return rows[:top]


# ------------------------------------------------------------------------------ memory
def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _synthetic_event(i: int, n: int, ts: float) -> dict[str, Any]:
    h = (i * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    return {"event_id": f"m{n}-{i}", "ts": ts, "api_key": f"ak_{h:016x}",
            "prompt_tokens": 20 + (h & 511), "completion_tokens": 50 + ((h >> 9) & 1023),
            "status": 200, "turn": 1 + ((h >> 20) & 3),
            "topic": ("chat", "code", "math", "writing")[(h >> 24) & 3],
            "prompt_simhash": f"{(h * 31) & 0xFFFFFFFFFFFFFFFF:016x}",
            "cot_request": bool((h >> 30) & 1), "temperature": 0.7}


def memory_child(n: int, trace: bool) -> dict[str, Any]:
    """Feed ``n`` synthetic keys (2 events each) through one DetectionCore; bytes per key.

    ``core``: the detection state alone (KeyState, key string, dict slot; dirty set cleared
    every 500 events as the worker does per batch). ``with_table``: plus one exported blob per
    key in a dict, which is what the worker's in-memory Faust table (``key-state``) holds.
    """
    import tracemalloc

    from models.engine import DetectionCore

    core = DetectionCore()
    core.process(_synthetic_event(-1, n, 1.0), seq=None)   # first-use allocations
    gc.collect()
    if trace:
        tracemalloc.start()
    t_base = tracemalloc.get_traced_memory()[0] if trace else 0
    r_base = _rss()
    t0 = time.perf_counter()
    proc = core.process
    for rnd in range(2):
        for i in range(n):
            proc(_synthetic_event(i, n, 1.7e9 + rnd * 30.0 + i * 1e-4))
            if not (i % 500):
                core.clear_dirty()
    core.clear_dirty()
    feed_s = time.perf_counter() - t0
    gc.collect()
    r_core = _rss()
    t_core = tracemalloc.get_traced_memory()[0] if trace else 0
    table = {}
    lens = []
    for k in core.keys:
        blob = core.export_key(k)
        table[k.encode("utf-8")] = blob
        lens.append(len(blob))  # type: ignore[arg-type]
    gc.collect()
    r_table = _rss()
    t_table = tracemalloc.get_traced_memory()[0] if trace else 0
    out: dict[str, Any] = {
        "keys": len(core.keys), "feed_s": round(feed_s, 2),
        "rss_core_per_key": (r_core - r_base) / n,
        "rss_with_table_per_key": (r_table - r_base) / n,
        "state_bytes_estimate_per_key": core.stats()["state_bytes"] / n,
        "blob_median": _median(lens), "blob_p99": _pct(lens, 99),
    }
    if trace:
        out["traced_core_per_key"] = (t_core - t_base) / n
        out["traced_with_table_per_key"] = (t_table - t_base) / n
    return out


def measure_memory(n: int, trace: bool) -> dict[str, Any]:
    """Run :func:`memory_child` in a fresh interpreter (clean RSS baseline)."""
    cmd = [sys.executable, "-m", "streams.bench", "_memory", str(n), "1" if trace else "0"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"memory child for {n} keys failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def realistic_blob_sizes(path: str, partitions: int) -> dict[str, Any]:
    """export_key sizes of the keys of the simulated traffic (varied histories)."""
    from streams.pipeline import Detector, decode

    det = Detector(partitions)
    with open(path, "rb") as fh:
        for ln in fh:
            if ln.strip():
                det.process(decode(ln.rstrip(b"\n")))
    lens = [len(core.export_key(k) or b"") for core in det.cores.values() for k in core.keys]
    return {"keys": len(lens), "median": _median(lens), "p99": _pct(lens, 99), "max": max(lens)}


# ------------------------------------------------------------------------------ Kafka side
class _Names:
    """Unique topics and app id for one worker run (deleted at the end of the bench)."""

    def __init__(self, prefix: str, tag: str, partitions: int) -> None:
        self.app_id = f"{prefix}-{tag}"
        self.events = f"{prefix}.{tag}.events"
        self.alerts = f"{prefix}.{tag}.alerts"
        self.dlq = f"{prefix}.{tag}.dlq"
        self.feedback = f"{prefix}.{tag}.feedback"
        self.partitions = partitions

    def env(self, bootstrap: str, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "MOATWATCH_BOOTSTRAP": bootstrap, "MOATWATCH_APP_ID": self.app_id,
            "MOATWATCH_EVENTS_TOPIC": self.events, "MOATWATCH_ALERTS_TOPIC": self.alerts,
            "MOATWATCH_DLQ_TOPIC": self.dlq, "MOATWATCH_FEEDBACK_TOPIC": self.feedback,
            "MOATWATCH_PARTITIONS": str(self.partitions), "MOATWATCH_LOG_LEVEL": "warning",
            "MOATWATCH_FEEDBACK_FILE": "", "PYTHONUNBUFFERED": "1",
        })
        env.update(extra)
        return env

    def settings(self, bootstrap: str) -> Any:
        from streams.settings import load_settings

        return load_settings(self.env(bootstrap))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    """Every sample of a worker's /metrics as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


def _metric(sample: dict[str, float], name: str) -> float:
    return sum(v for k, v in sample.items() if k == name or k.startswith(name + "{"))


class _Worker:
    """One ``moatwatch worker`` child process (its own web port and data dir)."""

    def __init__(self, names: _Names, bootstrap: str, workdir: str, tag: str) -> None:
        self.port = _free_port()
        self.log_path = os.path.join(workdir, f"worker-{names.app_id}-{tag}.log")
        self.env = names.env(bootstrap, MOATWATCH_WEB_PORT=str(self.port),
                             MOATWATCH_DATA_DIR=os.path.join(workdir, f"data-{names.app_id}-{tag}"))
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=self.env,
                                     cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def metrics(self) -> dict[str, float]:
        return _scrape(self.port)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}: see {self.log_path}\n"
                               + self.tail())
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return r.status == 200
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def tail(self) -> str:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as fh:
            return fh.read()[-3000:].decode("utf-8", "replace")
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def _wait_assigned(workers: list[_Worker], partitions: int, timeout: float = 120.0) -> None:
    """Until every worker is ready and the input partitions are all assigned, each to one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(w.ready() for w in workers):
            try:
                got = [_metric(w.metrics(), "moatwatch_partitions_assigned") for w in workers]
            except OSError:
                got = []
            if got and sum(got) == partitions and all(g > 0 for g in got):
                return
        time.sleep(0.2)
    raise RuntimeError("workers not ready/assigned in time:\n" + "\n".join(w.tail() for w in workers))


def _wait_consumed(workers: list[_Worker], n: int, timeout: float) -> dict[str, float]:
    """Poll /metrics until the workers consumed ``n`` messages; rate between first and last."""
    deadline = time.monotonic() + timeout
    base: float | None = None
    t_zero = time.perf_counter()
    last_c = 0.0
    while time.monotonic() < deadline:
        t = time.perf_counter()
        try:
            c = sum(_metric(w.metrics(), "moatwatch_events_consumed_total") for w in workers)
        except OSError:
            time.sleep(0.05)
            continue
        if base is None:
            base = c   # consumed before this wait (earlier phases)
        if c <= base:
            t_zero = t   # the first new message is consumed after the last poll that saw none
        last_c = c
        if c >= n:
            # first to last consumed, to within one poll (0.1 s) of the start
            return {"events_per_s": (c - base) / max(t - t_zero, 1e-9), "seconds": t - t_zero,
                    "consumed": c}
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"worker died: {w.tail()}")
        time.sleep(0.1)
    raise RuntimeError(f"workers consumed {last_c:.0f} of {n} in {timeout:.0f}s")


def _produce_lines(settings: Any, topic: str, lines: list[bytes]) -> dict[str, float]:
    """Keyed by api_key (as ``moatwatch produce``), as fast as the producer goes."""
    from streams.kafka_io import make_producer

    prod = make_producer(settings)
    loads = orjson.loads
    t0 = time.perf_counter()
    for i, ln in enumerate(lines):
        key = loads(ln)["api_key"].encode()
        while True:
            try:
                prod.produce(topic, value=ln, key=key)
                break
            except BufferError:
                prod.poll(0.01)
        if not (i & 1023):
            prod.poll(0)
    left = prod.flush(60)
    if left:
        raise RuntimeError(f"{left} messages not delivered to {topic}")
    dt = time.perf_counter() - t0
    return {"events_per_s": len(lines) / dt, "seconds": dt}


def raw_consume(settings: Any, topic: str, n: int, batch: int = 1000, *,
                detect_partitions: int = 0) -> dict[str, float]:
    """confluent-kafka batch consume + orjson decode of ``n`` messages (the worker's limit).

    With ``detect_partitions`` it also runs moatwatch's ``decode`` and the
    :class:`~streams.pipeline.Detector` on each message (no state writes, no alerts sent):
    what the detection costs on top of the limit, without Faust.
    """
    from confluent_kafka import Consumer

    from streams.pipeline import Detector, decode

    det = Detector(detect_partitions) if detect_partitions else None

    conf = settings.confluent_config()
    conf.update({"group.id": f"mwbench-raw-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
                 "enable.auto.commit": False})
    c = Consumer(conf)
    c.subscribe([topic])
    loads = orjson.loads
    got = 0
    t_first = None
    deadline = time.monotonic() + 120
    try:
        while got < n and time.monotonic() < deadline:
            t_call = time.perf_counter()
            msgs = c.consume(num_messages=min(batch, n - got), timeout=0.5)
            if not msgs:
                continue
            if t_first is None:
                t_first = t_call   # includes the fetch of the first batch
            if det is None:
                for m in msgs:
                    if m.error():
                        continue
                    loads(m.value())
                    got += 1
            else:
                process = det.process
                for m in msgs:
                    if m.error():
                        continue
                    process(decode(m.value()), partition=m.partition(), seq=m.offset())
                    got += 1
        t_end = time.perf_counter()
    finally:
        c.close()
    if got < n or t_first is None:
        raise RuntimeError(f"raw consume read {got} of {n} messages from {topic}")
    return {"events_per_s": got / max(t_end - t_first, 1e-9),
            "seconds": t_end - t_first}


def faust_noop_child(n: int) -> None:
    """Child process of :func:`faust_ceiling`: the worker's Faust app without the work.

    The app is built with the worker's own :func:`streams.app.faust_app_options` (broker, fetch
    size, linger, commit settings), one agent on ``MOATWATCH_EVENTS_TOPIC`` takes batches exactly
    as the detect agent does (``take_events(batch_max, within=batch_within)``, no acks) and only
    ``orjson.loads`` each value. It prints events/s from its first batch to its ``n``-th event.
    """
    import faust

    from streams.app import faust_app_options
    from streams.settings import load_settings

    s = load_settings()
    app = faust.App(s.app_id, **faust_app_options(s, s.partitions))
    topic = app.topic(s.events_topic, key_serializer="raw", value_serializer="raw", acks=False)
    state: dict[str, Any] = {"got": 0, "t0": None}

    async def noop(stream: Any) -> None:
        loads = orjson.loads
        async for events in stream.take_events(s.batch_max, within=s.batch_within):
            if state["t0"] is None:
                state["t0"] = time.perf_counter()
            for e in events:
                loads(e.value)
            state["got"] += len(events)
            if state["got"] >= n:
                dt = time.perf_counter() - state["t0"]
                print(json.dumps({"events_per_s": state["got"] / max(dt, 1e-9), "seconds": dt,
                                  "consumed": state["got"]}), flush=True)
                os._exit(0)

    app.agent(topic, name="noop")(noop)
    faust.Worker(app, loglevel="warning", quiet=True, override_logging=False
                 ).execute_from_commandline()


def faust_ceiling(bootstrap: str, prefix: str, tag: str, topic: str, n: int, partitions: int,
                  timeout: float = 300.0) -> dict[str, Any]:
    """What the Faust consumer alone delivers on ``topic`` (already loaded with ``n`` events).

    The ceiling of any worker built on faust-streaming's Kafka transport: the same app
    configuration and batch loop as ``moatwatch worker``, a fresh consumer group, no
    detection, no state, no sends.
    """
    names = _Names(prefix, tag, partitions)
    env = names.env(bootstrap, MOATWATCH_EVENTS_TOPIC=topic, MOATWATCH_WEB_PORT=str(_free_port()))
    out = subprocess.run([sys.executable, "-m", "streams.bench", "_faust_noop", str(n)],
                         env=env, cwd=REPO, capture_output=True, timeout=timeout, check=False)
    for line in reversed(out.stdout.decode("utf-8", "replace").splitlines()):
        at = line.find('{"events_per_s"')   # Faust may put terminal escapes before it
        if at >= 0:
            return json.loads(line[at:])
    raise RuntimeError(f"the Faust-only probe exited {out.returncode} without a result:\n"
                       + (out.stdout + out.stderr).decode("utf-8", "replace")[-3000:])


def _proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        vals = [int(x) for x in fh.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


def _delete_topics(bootstrap: str, prefix: str) -> int:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=10).topics
             if t.startswith(prefix + "-") or t.startswith(prefix + ".")]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                fut.result()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(
                t in admin.list_topics(timeout=10).topics for t in names):
            time.sleep(0.3)
    return len(names)


def worker_run(bootstrap: str, prefix: str, tag: str, workdir: str, lines: list[bytes],
               n_workers: int, partitions: int, profile_s: float = 0.0) -> dict[str, Any]:
    """Start ``n_workers`` on a fresh input topic, wait until they own every partition, then
    produce the events as fast as possible and time first-to-last consumed via /metrics."""
    from streams.kafka_io import ensure_topics

    names = _Names(prefix, tag, partitions)
    settings = names.settings(bootstrap)
    ensure_topics(settings, {names.events: partitions, names.alerts: partitions,
                             names.dlq: 1, names.feedback: 1})
    workers = [_Worker(names, bootstrap, workdir, f"w{i}") for i in range(n_workers)]
    prof = None
    try:
        _wait_assigned(workers, partitions)
        if profile_s > 0:
            prof = _start_pyspy(workers[0], workdir, profile_s)
        cpu0 = [_proc_cpu(w.proc.pid) for w in workers]
        busy0 = _machine_busy()
        t0 = time.perf_counter()
        prod = _produce_lines(settings, names.events, lines)
        rate = _wait_consumed(workers, len(lines), timeout=600)
        wall = time.perf_counter() - t0
        busy1 = _machine_busy()
        # CPU seconds per wall second of each worker (1.0 = one core saturated), and the
        # whole machine's busy share (all cores) over the same window: is anything idle?
        rate["worker_cpu"] = [round((_proc_cpu(w.proc.pid) - c) / wall, 3)
                              for w, c in zip(workers, cpu0, strict=True)]
        rate["machine_busy"] = round((busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1), 3)
        rate["produce_events_per_s"] = prod["events_per_s"]
        if prof is not None:
            rate["profile"] = _finish_pyspy(prof)
        per = [_metric(w.metrics(), "moatwatch_events_consumed_total") for w in workers]
        rate["per_worker_consumed"] = per
        return {**rate, "topic": names.events, "settings": settings}
    finally:
        for w in workers:
            w.stop()


# ------------------------------------------------------------------------------ profiling
def _pyspy() -> str | None:
    cand = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return cand if os.path.exists(cand) else shutil.which("py-spy")


def _start_pyspy(worker: _Worker, workdir: str, seconds: float) -> Any:
    exe = _pyspy()
    if exe is None:
        return None
    out = os.path.join(workdir, f"pyspy-{worker.port}.txt")
    p = subprocess.Popen([exe, "record", "--pid", str(worker.proc.pid), "--duration",
                          str(int(seconds)), "--rate", "250", "--format", "raw", "--nonblocking",
                          "-o", out], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return (p, out)


def _finish_pyspy(handle: Any, top: int = 14) -> dict[str, Any]:
    p, out = handle
    try:
        p.wait(120)
    except subprocess.TimeoutExpired:
        p.kill()
        return {"error": "py-spy did not finish"}
    if not os.path.exists(out):
        return {"error": (p.stderr.read() or b"").decode()[-500:] if p.stderr else "no output"}
    return summarize_collapsed(out, top)


def summarize_collapsed(path: str, top: int = 14) -> dict[str, Any]:
    """Own (leaf) and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            stack, _, cnt = line.rstrip("\n").rpartition(" ")
            try:
                n = int(cnt)
            except ValueError:
                continue
            frames = [_short_frame(f) for f in stack.split(";") if f]
            if not frames:
                continue
            total += n
            own[frames[-1]] = own.get(frames[-1], 0) + n
            for f in set(frames):
                incl[f] = incl.get(f, 0) + n
    total = total or 1
    top_own = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    interesting = [f for f in incl if any(s in f for s in (
        "_handle_batch", "decode_event", "pipeline.py", "engine.py", "_write_state",
        "send_changelog", "_send_alerts", "aiokafka", "faust", "observe"))]
    top_incl = sorted(((f, incl[f]) for f in interesting), key=lambda kv: -kv[1])[:top]
    return {"samples": total,
            "own": [{"function": f, "share": round(c / total, 4)} for f, c in top_own],
            "inclusive": [{"function": f, "share": round(c / total, 4)} for f, c in top_incl]}


def _short_frame(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"; py-spy --format raw
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    file = loc.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    else:
        file = os.path.basename(file)
    return f"{name} ({file})"


# ------------------------------------------------------------------------------ latency
_CORE_TOPICS = ("code", "math", "science", "reasoning")


def attack_event(phase: int, j: int, i: int) -> dict[str, Any]:
    """An event of a key built to alert: short prompts, long CoT answers, unique prompts,
    logprobs, capability topics (the engine docstring's harvesting bot)."""
    h = ((phase * 1_000_003 + j) * 7919 + i) * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
    return {"event_id": f"bench-{phase}-{j}-{i}", "ts": 0.0,
            "api_key": f"ak_bench{phase:02d}{j:06d}", "prompt_tokens": 40,
            "completion_tokens": 900, "status": 200, "turn": 1, "cot_request": True,
            "topic": _CORE_TOPICS[i % 4], "prompt_simhash": f"{h:016x}", "logprobs": True,
            "temperature": (0.2, 0.7, 1.0)[i % 3]}


#: History each latency attack key gets before its measured events: one event short of the
#: detector's warm-up, so no key can fire before the measured phase.
WARM_EVENTS = DetectorConfig().warmup_events - 1


def latency_stream(background: list[dict[str, Any]], phase: int, n_total: int, n_keys: int,
                   per_key: int) -> list[dict[str, Any]]:
    """One phase: ``n_total`` events, of which ``n_keys * per_key`` come from attack keys whose
    starts are staggered over the first 70% of the phase (so alerts spread over it); the rest
    cycles through the simulated background. Timestamps are set at send time.

    Examples
    --------
    >>> bg = [{"api_key": "b", "ts": 0.0}]
    >>> s = latency_stream(bg, 0, 100, 2, 10)
    >>> len(s), sum(1 for e in s if e["api_key"].startswith("ak_bench"))
    (100, 20)
    """
    n_attack = n_keys * per_key
    if n_attack > n_total:
        raise ValueError(f"{n_attack} attack events do not fit in {n_total}")
    slots: list[tuple[float, int, dict[str, Any]]] = []
    span = 0.3
    for j in range(n_keys):
        start = 0.7 * j / max(n_keys, 1)
        for i in range(per_key):
            pos = start + span * (i + 0.5) / per_key
            slots.append((pos, 0, attack_event(phase, j, WARM_EVENTS + i)))
    slots.sort(key=lambda s: s[0])
    out: list[dict[str, Any]] = []
    bi = 0
    si = 0
    nb = len(background)
    for k in range(n_total):
        pos = (k + 0.5) / n_total
        if si < len(slots) and (slots[si][0] <= pos or n_total - k <= len(slots) - si):
            out.append(dict(slots[si][2]))
            si += 1
        else:
            out.append(dict(background[bi % nb]))
            bi += 1
    return out


class _AlertReader(threading.Thread):
    """Reads the alerts topic from the start, stamping each alert with its arrival time."""

    def __init__(self, settings: Any, topic: str) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Consumer

        conf = settings.confluent_config()
        conf.update({"group.id": f"mwbench-alerts-{uuid.uuid4().hex}",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False,
                     "fetch.wait.max.ms": 10})
        self.consumer = Consumer(conf)
        self.assigned = threading.Event()
        self.consumer.subscribe([topic], on_assign=lambda c, p: self.assigned.set())
        self.got: list[tuple[float, dict[str, Any]]] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        c = self.consumer
        while not self.stop_flag.is_set():
            msg = c.poll(0.05)
            if msg is None or msg.error():
                continue
            now = time.time()
            with contextlib.suppress(orjson.JSONDecodeError):
                self.got.append((now, orjson.loads(msg.value())))
        c.close()


def _hist(sample: dict[str, float], name: str) -> dict[float, float]:
    out = {}
    for k, v in sample.items():
        if k.startswith(name + "_bucket{"):
            le = k.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = v
    return out


def hist_delta(before: dict[str, float], after: dict[str, float], name: str) -> dict[str, Any]:
    """Count, mean and bucket-bound p50/p99 of a histogram between two scrapes."""
    b, a = _hist(before, name), _hist(after, name)
    n = a.get(float("inf"), 0.0) - b.get(float("inf"), 0.0)
    s = _metric(after, name + "_sum") - _metric(before, name + "_sum")
    res: dict[str, Any] = {"count": n, "mean": s / n if n else float("nan")}
    for q in (0.5, 0.99):
        bound = float("nan")
        for le in sorted(a):
            if a[le] - b.get(le, 0.0) >= q * n and n:
                bound = le
                break
        res[f"p{int(q * 100)}_le"] = bound
    return res


def latency_run(bootstrap: str, prefix: str, workdir: str, lines: list[bytes], max_rate: float,
                sizes: BenchSizes) -> dict[str, Any]:
    """One worker; offered loads of ``sizes.lat_loads`` x ``max_rate`` in sequence."""
    from streams.kafka_io import ensure_topics, make_producer

    parts = sizes.partitions
    names = _Names(prefix, "latency", parts)
    settings = names.settings(bootstrap)
    ensure_topics(settings, {names.events: parts, names.alerts: parts, names.dlq: 1,
                             names.feedback: 1})
    background = [orjson.loads(ln) for ln in lines]
    worker = _Worker(names, bootstrap, workdir, "lat")
    reader = _AlertReader(settings, names.alerts)
    reader.start()
    prod = make_producer(settings)
    phases: list[dict[str, Any]] = []
    try:
        _wait_assigned([worker], parts)
        if not reader.assigned.wait(30):
            raise RuntimeError("alert reader got no assignment")
        # Warm-up history of every phase's attack keys, in the past (not measured): each key is
        # older than the detector's warm-up age when its measured events start.
        now = time.time()
        warm = 0
        for p in range(len(sizes.lat_loads)):
            for j in range(sizes.lat_attack_keys):
                for i in range(WARM_EVENTS):
                    ev = attack_event(p, j, i)
                    ev["ts"] = now - 600.0 + 150.0 * i
                    prod.produce(names.events, value=orjson.dumps(ev), key=ev["api_key"].encode())
                    warm += 1
        prod.flush(30)
        _wait_consumed([worker], warm, timeout=120)
        for p, frac in enumerate(sizes.lat_loads):
            rate = max(frac * max_rate, 50.0)
            n_attack = sizes.lat_attack_keys * sizes.lat_attack_events
            # attack events are at most 30% of the phase, and the phase lasts >= lat_phase_s
            dur = max(sizes.lat_phase_s, n_attack / (0.3 * rate))
            n_total = int(rate * dur)
            stream = latency_stream(background, p, n_total, sizes.lat_attack_keys,
                                    sizes.lat_attack_events)
            before = worker.metrics()
            consumed0 = _metric(before, "moatwatch_events_consumed_total")
            _say(f"latency phase {p}: {frac:.0%} load = {rate:,.0f} ev/s for {dur:.0f}s "
                 f"({n_total:,} events, {n_attack:,} from {sizes.lat_attack_keys} alerting keys)")
            t_start = time.time()
            t0 = time.perf_counter()
            dumps = orjson.dumps
            clock = time.time
            for i, ev in enumerate(stream):
                ahead = i / rate - (time.perf_counter() - t0)
                if ahead > 0.001:
                    time.sleep(ahead)
                ev["ts"] = clock()
                while True:
                    try:
                        prod.produce(names.events, value=dumps(ev), key=ev["api_key"].encode())
                        break
                    except BufferError:
                        prod.poll(0.005)
                if not (i & 63):
                    prod.poll(0)
            prod.flush(30)
            sent_s = time.perf_counter() - t0
            t_end = time.time()
            _wait_consumed([worker], int(consumed0 + n_total), timeout=300)
            time.sleep(1.5)  # the last alerts' trip through the broker
            after = worker.metrics()
            lat = [(recv - a["event_ts"]) for recv, a in list(reader.got)
                   if a.get("entity_type") == "api_key" and t_start <= a.get("event_ts", 0) <= t_end]
            other = [a for recv, a in list(reader.got)
                     if a.get("entity_type") != "api_key" and t_start <= a.get("detected_at", 0) <= t_end + 2]
            bench_keys = sum(1 for recv, a in list(reader.got) if t_start <= a.get("event_ts", 0) <= t_end
                             and str(a.get("entity", "")).startswith(f"ak_bench{p:02d}"))
            phases.append({
                "load": frac, "offered_events_per_s": rate, "achieved_events_per_s": n_total / sent_s,
                "events": n_total, "seconds": sent_s, "alerts": len(lat),
                "alerts_from_attack_keys": bench_keys, "group_alerts": len(other),
                "p50_ms": _pct(lat, 50) * 1e3, "p99_ms": _pct(lat, 99) * 1e3,
                "max_ms": max(lat) * 1e3 if lat else float("nan"),
                "processing_seconds": hist_delta(before, after, "moatwatch_processing_seconds"),
                "batch_seconds": hist_delta(before, after, "moatwatch_batch_seconds"),
            })
            ph = phases[-1]
            _say(f"  {ph['alerts']} key alerts: p50 {ph['p50_ms']:.0f} ms, p99 {ph['p99_ms']:.0f} ms, "
                 f"max {ph['max_ms']:.0f} ms (achieved {ph['achieved_events_per_s']:,.0f} ev/s)")
    finally:
        reader.stop_flag.set()
        reader.join(5)
        worker.stop()
    return {"max_rate_basis": max_rate, "phases": phases}


# ------------------------------------------------------------------------------ targets
def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Pass/fail per issue-6 target from a results dict (missing parts are 'not measured')."""
    out = []
    tp = r.get("throughput", {})

    def add(name: str, value: float | None, goal: str, ok: bool | None) -> None:
        out.append({"target": name, "value": value, "goal": goal,
                    "result": "not measured" if ok is None else ("PASS" if ok else "FAIL")})

    ratio = tp.get("replay_over_peer")
    add("replay >= 10x naive peer", ratio, ">= 10", None if ratio is None else ratio >= 10)
    wr = tp.get("worker1_over_raw")
    add("worker (1 proc) >= 50% of raw consume", wr, ">= 0.5", None if wr is None else wr >= 0.5)
    # the same target for the best the Faust transport can do with no work at all: when this
    # fails too, no worker built on faust-streaming can pass the one above
    fr = tp.get("faust_noop_over_raw")
    add("(ceiling) Faust no-op agent >= 50% of raw consume", fr, ">= 0.5",
        None if fr is None else fr >= 0.5)
    lat = {round(p["load"], 2): p for p in r.get("latency", {}).get("phases", [])}
    p50 = lat.get(0.5)
    v = p50["p99_ms"] if p50 and p50["alerts"] else None
    add("p99 produce->alert at 50% load", v, "<= 250 ms", None if v is None else v <= 250)
    p80 = lat.get(0.8)
    v = p80["p99_ms"] if p80 and p80["alerts"] else None
    add("p99 produce->alert at 80% load", v, "< 1000 ms", None if v is None else v < 1000)
    mem = r.get("memory", {}).get("sizes", [])
    if mem:
        worst = max(m["rss_with_table_per_key"] for m in mem)
        add("resident bytes per tracked key (worker: core + table)", worst, "<= 2048",
            worst <= 2048)
    else:
        add("resident bytes per tracked key", None, "<= 2048", None)
    return out


# ------------------------------------------------------------------------------ report
def _fmt(v: Any, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}{unit}"
        return f"{v:.2f}{unit}"
    return f"{v}{unit}"


def format_report(r: dict[str, Any]) -> str:
    lines = []
    m = r["machine"]
    lines.append(f"moatwatch bench ({r['mode']}) {r['date']} on {m['nproc']} cores {m['cpu']}, "
                 f"Python {m['python']}, load avg at start {m['loadavg_at_start']}")
    code = r.get("code", {})
    lines.append(f"code: {code.get('commit', '?')}"
                 + (f" + uncommitted {', '.join(code['uncommitted'])}" if code.get("uncommitted") else ""))
    ev = r["events"]
    lines.append(f"events: {ev['count']:,} simulated ({ev['hours']} h, scale {ev['scale']}, "
                 f"{ev['keys']} keys, seed {ev['seed']})")
    tp = r.get("throughput", {})
    lines.append("")
    lines.append(f"{'throughput (events/s)':44} {'median':>10} {'runs':>32}")
    lines.append(f"  (* = the first {ev.get('peer_events', 0):,} events: the peer is slow)")
    for key, label in (("decode_limit", "limit: orjson decode in process"),
                       ("validated_decode", "moatwatch decode (orjson + validation)"),
                       ("naive_peer", "naive peer: River MinMax|HST per key *"),
                       ("replay_peer_subset", "moatwatch replay, the peer's events *"),
                       ("replay", "moatwatch replay (in process), all events"),
                       ("raw_consume", "limit: confluent batch consume + orjson"),
                       ("raw_consume_detect", "confluent consume + decode + Detector"),
                       ("faust_noop", "Faust ceiling: worker's app, no-op agent"),
                       ("worker1", "moatwatch worker, 1 process"),
                       ("worker2", "moatwatch worker, 2 processes")):
        runs = tp.get(key)
        if runs:
            lines.append(f"{label:44} {_fmt(_median(runs)):>10} "
                         f"{' '.join(_fmt(x) for x in runs):>32}")
    if tp.get("worker1_cpu"):
        lines.append(f"{'worker CPU, cores busy (x1 / x2 total)':44} "
                     f"{_fmt(_median(tp['worker1_cpu'])):>10} / {_fmt(_median(tp['worker2_cpu']))}"
                     f"   machine busy {_median(tp['machine_busy_w1']):.0%} / "
                     f"{_median(tp['machine_busy_w2']):.0%}")
    for key, label in (("replay_over_peer", "replay / naive peer"),
                       ("replay_over_decode_limit", "replay / decode limit"),
                       ("worker1_over_raw", "worker(1) / raw consume"),
                       ("worker2_over_raw", "worker(2) / raw consume"),
                       ("faust_noop_over_raw", "Faust no-op agent / raw consume"),
                       ("worker1_over_faust_noop", "worker(1) / Faust no-op agent")):
        if key in tp:
            lines.append(f"{label:44} {_fmt(tp[key]):>10}  (median of per-round ratios)")
    lat = r.get("latency", {}).get("phases", [])
    if lat:
        lines.append("")
        lines.append(f"{'load':>5} {'offered/s':>10} {'achieved/s':>10} {'alerts':>7} {'p50 ms':>8} "
                     f"{'p99 ms':>8} {'max ms':>8} | {'proc/event mean us':>18} {'p99<= us':>8} "
                     f"{'batch p99<= ms':>11}")
        for p in lat:
            ps, bs = p["processing_seconds"], p["batch_seconds"]
            lines.append(f"{p['load']:>5.0%} {_fmt(p['offered_events_per_s']):>10} "
                         f"{_fmt(p['achieved_events_per_s']):>10} {p['alerts']:>7} "
                         f"{_fmt(p['p50_ms']):>8} {_fmt(p['p99_ms']):>8} {_fmt(p['max_ms']):>8} | "
                         f"{_fmt(ps['mean'] * 1e6):>18} {_fmt(ps['p99_le'] * 1e6):>8} {_fmt(bs['p99_le'] * 1e3):>11}")
    mem = r.get("memory", {})
    if mem.get("sizes"):
        lines.append("")
        lines.append(f"{'keys':>10} {'RSS core B/key':>15} {'RSS +table B/key':>17} "
                     f"{'traced core':>12} {'traced +table':>14} {'stats() est':>12} {'blob med/p99':>13}")
        for s in mem["sizes"]:
            lines.append(f"{s['keys']:>10,} {_fmt(s['rss_core_per_key']):>15} "
                         f"{_fmt(s['rss_with_table_per_key']):>17} "
                         f"{_fmt(s.get('traced_core_per_key')):>12} "
                         f"{_fmt(s.get('traced_with_table_per_key')):>14} "
                         f"{_fmt(s['state_bytes_estimate_per_key']):>12} "
                         f"{_fmt(s['blob_median'])}/{_fmt(s['blob_p99']):>6}")
        rb = mem.get("realistic_blobs")
        if rb:
            lines.append(f"export_key on the simulated keys ({rb['keys']}): median {rb['median']:.0f} B, "
                         f"p99 {rb['p99']:.0f} B, max {rb['max']} B")
    prof = r.get("profile_replay")
    if prof:
        lines.append("")
        lines.append("replay profile (cProfile, own time):")
        for row in prof[:8]:
            lines.append(f"  {row['own_share']:6.1%}  {row['function']}")
    pw = r.get("profile_worker")
    if pw and pw.get("own"):
        lines.append(f"worker profile (py-spy, {pw['samples']} samples): own / inclusive")
        for a, b in zip(pw["own"][:8], pw["inclusive"][:8], strict=False):
            lines.append(f"  {a['share']:6.1%}  {a['function']:58} {b['share']:6.1%}  {b['function']}")
    elif pw:
        lines.append(f"worker profile: {pw.get('error')}")
    lines.append("")
    lines.append("targets:")
    for t in r.get("targets", []):
        lines.append(f"  {t['result']:12} {t['target']:52} {_fmt(t['value']):>10} (goal {t['goal']})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main
def run_bench(settings: Any, args: Any) -> int:
    """Entry point of ``moatwatch bench``: print the table, write JSON to ``--out``."""
    mode = "smoke" if getattr(args, "smoke", False) else "full"
    sizes = SIZES[mode]
    skip_kafka = bool(getattr(args, "skip_kafka", False))
    began = time.perf_counter()
    r: dict[str, Any] = {
        "mode": mode, "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": "moatwatch bench" + (" --smoke" if mode == "smoke" else "")
                   + (" --skip-kafka" if skip_kafka else ""),
        "machine": machine_info(), "code": code_version(), "sizes": asdict(sizes),
    }
    workdir = tempfile.mkdtemp(prefix="mwbench-")
    prefix = f"mwbench-{uuid.uuid4().hex[:8]}"
    r["prefix"] = prefix
    try:
        _say(f"simulating {sizes.sim_hours} h at scale {sizes.sim_scale} (workdir {workdir})")
        ev = make_events(workdir, sizes)
        lines = ev["lines"]
        r["events"] = {"count": len(lines), "keys": ev["keys"], "hours": ev["hours"],
                       "scale": ev["scale"], "seed": ev["seed"], "attack_keys": ev["attack_keys"]}
        peer_lines = lines[:sizes.peer_events]
        peer_path = os.path.join(workdir, "events-peer.jsonl")
        with open(peer_path, "wb") as fh:
            fh.write(b"\n".join(peer_lines) + b"\n")
        r["events"]["peer_events"] = len(peer_lines)
        tp: dict[str, Any] = {k: [] for k in ("decode_limit", "validated_decode", "naive_peer",
                                              "replay_peer_subset", "replay")}
        ratios: dict[str, list[float]] = {"replay_over_peer": [], "replay_over_decode_limit": []}
        if not skip_kafka:
            tp.update({"raw_consume": [], "raw_consume_detect": [], "faust_noop": [],
                       "worker1": [], "worker2": [], "produce": []})
            ratios.update({"worker1_over_raw": [], "worker2_over_raw": [],
                           "faust_noop_over_raw": [], "worker1_over_faust_noop": []})
        bootstrap = settings.bootstrap
        for rnd in range(sizes.repeats):
            _say(f"round {rnd + 1}/{sizes.repeats}: in-process")
            dl = decode_limit(lines)
            vd = validated_decode_rate(lines)
            peer = naive_peer(peer_lines)
            rep_sub = replay_rate(peer_path, workdir, sizes.partitions)
            rep = replay_rate(ev["path"], workdir, sizes.partitions)
            tp["decode_limit"].append(dl)
            tp["validated_decode"].append(vd)
            tp["naive_peer"].append(peer["events_per_s"])
            tp["replay_peer_subset"].append(rep_sub["events_per_s"])
            tp["replay"].append(rep["events_per_s"])
            # the target ratio compares the two on the very same events (the peer's prefix)
            ratios["replay_over_peer"].append(rep_sub["events_per_s"] / peer["events_per_s"])
            ratios["replay_over_decode_limit"].append(rep["events_per_s"] / dl)
            _say(f"  decode {dl:,.0f}/s, validated {vd:,.0f}/s, peer {peer['events_per_s']:,.0f}/s "
                 f"({peer['keys']} pipelines), replay {rep['events_per_s']:,.0f}/s "
                 f"({rep['alerts']} alerts)")
            if skip_kafka:
                continue
            _say(f"round {rnd + 1}/{sizes.repeats}: Kafka")
            w1 = worker_run(bootstrap, prefix, f"w1r{rnd}", workdir, lines, 1, sizes.partitions)
            raw = raw_consume(w1["settings"], w1["topic"], len(lines))
            raw_det = raw_consume(w1["settings"], w1["topic"], len(lines),
                                  detect_partitions=sizes.partitions)
            noop = faust_ceiling(bootstrap, prefix, f"noop{rnd}", w1["topic"], len(lines),
                                 sizes.partitions)
            w2 = worker_run(bootstrap, prefix, f"w2r{rnd}", workdir, lines, 2, sizes.partitions)
            tp["raw_consume"].append(raw["events_per_s"])
            tp["raw_consume_detect"].append(raw_det["events_per_s"])
            tp["faust_noop"].append(noop["events_per_s"])
            ratios["faust_noop_over_raw"].append(noop["events_per_s"] / raw["events_per_s"])
            ratios["worker1_over_faust_noop"].append(w1["events_per_s"] / noop["events_per_s"])
            tp["worker1"].append(w1["events_per_s"])
            tp["worker2"].append(w2["events_per_s"])
            tp["produce"].append(w1["produce_events_per_s"])
            tp.setdefault("worker1_cpu", []).append(w1["worker_cpu"][0])
            tp.setdefault("worker2_cpu", []).append(sum(w2["worker_cpu"]))
            tp.setdefault("machine_busy_w1", []).append(w1["machine_busy"])
            tp.setdefault("machine_busy_w2", []).append(w2["machine_busy"])
            ratios["worker1_over_raw"].append(w1["events_per_s"] / raw["events_per_s"])
            ratios["worker2_over_raw"].append(w2["events_per_s"] / raw["events_per_s"])
            _say(f"  raw consume {raw['events_per_s']:,.0f}/s (+ decode + detect "
                 f"{raw_det['events_per_s']:,.0f}/s), Faust no-op agent "
                 f"{noop['events_per_s']:,.0f}/s, worker x1 {w1['events_per_s']:,.0f}/s, "
                 f"worker x2 {w2['events_per_s']:,.0f}/s (split {w2['per_worker_consumed']}), "
                 f"producer {w1['produce_events_per_s']:,.0f}/s; worker CPU x1 {w1['worker_cpu']}, "
                 f"x2 {w2['worker_cpu']} (cores); machine busy {w1['machine_busy']:.0%}/"
                 f"{w2['machine_busy']:.0%}")
        tp.update({k: _median(v) for k, v in ratios.items()})
        tp["peer_keys"] = peer["keys"]
        r["throughput"] = tp

        _say("memory: synthetic keys through DetectionCore, one subprocess per size")
        mem_sizes = []
        for n in sizes.mem_keys:
            res = measure_memory(n, trace=False)
            if n in sizes.trace_keys:
                tr = measure_memory(n, trace=True)
                res["traced_core_per_key"] = tr["traced_core_per_key"]
                res["traced_with_table_per_key"] = tr["traced_with_table_per_key"]
            mem_sizes.append(res)
            _say(f"  {n:,} keys: RSS {res['rss_core_per_key']:.0f} B/key core, "
                 f"{res['rss_with_table_per_key']:.0f} B/key with table copy ({res['feed_s']} s)")
        r["memory"] = {"sizes": mem_sizes,
                       "realistic_blobs": realistic_blob_sizes(ev["path"], sizes.partitions)}

        _say("profile: cProfile of one replay")
        r["profile_replay"] = profile_replay(ev["path"], workdir, sizes.partitions)

        if not skip_kafka:
            max1 = _median(tp["worker1"])
            _say(f"latency: offered loads {sizes.lat_loads} of {max1:,.0f} ev/s (1 worker)")
            r["latency"] = latency_run(bootstrap, prefix, workdir, lines, max1, sizes)
            if sizes.profile_worker_s > 0 and _pyspy():
                _say(f"profile: py-spy on one worker for {sizes.profile_worker_s:.0f}s")
                n_prof = min(len(lines), int(max1 * (sizes.profile_worker_s + 4)))
                pr = worker_run(bootstrap, prefix, "prof", workdir, lines[:n_prof] if n_prof else lines,
                                1, sizes.partitions, profile_s=sizes.profile_worker_s)
                r["profile_worker"] = pr.get("profile", {"error": "no py-spy output"})
            elif sizes.profile_worker_s > 0:
                r["profile_worker"] = {"error": "py-spy not installed (pip install py-spy)"}
        r["targets"] = targets(r)
        r["seconds"] = round(time.perf_counter() - began, 1)
    finally:
        if not skip_kafka:
            with contextlib.suppress(Exception):
                _delete_topics(settings.bootstrap, prefix)
        if os.environ.get("MOATWATCH_BENCH_KEEP"):
            _say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(format_report(r))
    _say(f"done in {r['seconds']} s")
    if getattr(args, "out", None):
        clean = {k: v for k, v in r.items()}
        with open(args.out, "wb") as fh:
            fh.write(orjson.dumps(clean, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY,
                                  default=str))
        _say(f"results written to {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover - subprocess entry for the memory measurement
    if len(sys.argv) == 3 and sys.argv[1] == "_faust_noop":
        faust_noop_child(int(sys.argv[2]))
        sys.exit(1)   # the child exits 0 itself once it has consumed everything
    if len(sys.argv) == 4 and sys.argv[1] == "_memory":
        print(json.dumps(memory_child(int(sys.argv[2]), sys.argv[3] == "1")))
        sys.exit(0)
    sys.exit("usage: python -m streams.bench _memory N TRACE(0|1); the benchmark is `moatwatch bench`")
