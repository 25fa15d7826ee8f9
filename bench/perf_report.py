"""Render a `moatwatch bench --out RESULTS.json` file as the Markdown tables of docs/benchmarks.md.

    python bench/perf_report.py RESULTS.json [MORE.json ...]

With several files (runs of the same command), each throughput row shows every run's median.
"""

from __future__ import annotations

import math
import statistics
import sys

import orjson


def _f(v, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}"


ROWS = (
    ("decode_limit", "limit: `orjson.loads` in process"),
    ("validated_decode", "moatwatch `decode` (orjson + QueryEvent v1 validation)"),
    ("naive_peer", r"naive peer: River `MinMaxScaler \| HalfSpaceTrees` per key (*)"),
    ("replay_peer_subset", "moatwatch replay on the peer's events (*)"),
    ("replay", "moatwatch replay, all events"),
    ("raw_consume", "limit: confluent-kafka `consume(1000)` + `orjson.loads`"),
    ("raw_consume_detect", "reference: confluent-kafka consume + moatwatch `decode` + `Detector` (no Faust, no state writes)"),
    ("faust_noop", "ceiling: the worker's Faust app with a no-op agent (orjson only; no detection, state or sends)"),
    ("worker1", "moatwatch worker, 1 process"),
    ("worker2", "moatwatch worker, 2 processes"),
    ("produce", "(producer loading the topic, confluent-kafka)"),
)


def render(runs: list[dict]) -> str:
    r = runs[0]
    out = []
    tp = [x["throughput"] for x in runs]
    head = " | ".join(f"run {i + 1}: median (rounds)" for i in range(len(runs)))
    out.append(f"| events/s | {head} |")
    out.append("|---|" + "---|" * len(runs))
    for key, label in ROWS:
        if key not in tp[0]:
            continue
        cells = []
        for t in tp:
            vals = t.get(key) or []
            cells.append(f"**{_f(statistics.median(vals))}** ({', '.join(_f(v) for v in vals)})")
        out.append(f"| {label} | {' | '.join(cells)} |")
    for key, label in (("worker1_cpu", "worker CPU (cores), 1 process"),
                       ("worker2_cpu", "worker CPU (cores), 2 processes together"),
                       ("machine_busy_w1", "whole machine busy, 1-worker runs"),
                       ("machine_busy_w2", "whole machine busy, 2-worker runs")):
        if key in tp[0]:
            cells = [f"{statistics.median(t[key]):.2f} ({', '.join(f'{v:.2f}' for v in t[key])})"
                     for t in tp]
            out.append(f"| {label} | {' | '.join(cells)} |")
    out.append("")
    out.append("| ratio (median of per-round ratios) | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " |")
    out.append("|---|" + "---|" * len(runs))
    for key, label in (("replay_over_peer", "replay / naive peer (same events)"),
                       ("replay_over_decode_limit", "replay / orjson decode limit"),
                       ("worker1_over_raw", "worker x1 / raw consume limit"),
                       ("worker2_over_raw", "worker x2 / raw consume limit"),
                       ("faust_noop_over_raw", "Faust no-op agent / raw consume limit"),
                       ("worker1_over_faust_noop", "worker x1 / Faust no-op agent")):
        if key in tp[0]:
            out.append(f"| {label} | {' | '.join(f'{t[key]:.3f}' for t in tp)} |")
    out.append("")
    for i, x in enumerate(runs):
        lat = x.get("latency", {}).get("phases", [])
        if not lat:
            continue
        out.append(f"Run {i + 1}, one worker, offered load relative to {x['latency']['max_rate_basis']:,.0f} events/s:")
        out.append("")
        out.append("| load | offered ev/s | achieved ev/s | key alerts | p50 ms | p99 ms | max ms "
                   "| processing/event mean µs | processing p99 ≤ µs | batch p99 ≤ ms | batches |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for p in lat:
            ps, bs = p["processing_seconds"], p["batch_seconds"]
            out.append(f"| {p['load']:.0%} | {_f(p['offered_events_per_s'])} | {_f(p['achieved_events_per_s'])} "
                       f"| {p['alerts']} | {_f(p['p50_ms'])} | {_f(p['p99_ms'])} | {_f(p['max_ms'])} "
                       f"| {_f(ps['mean'] * 1e6, 1)} | {_f(ps['p99_le'] * 1e6)} | {_f(bs['p99_le'] * 1e3, 1)} "
                       f"| {_f(bs['count'])} |")
        out.append("")
    mem = r.get("memory", {})
    if mem.get("sizes"):
        out.append("| tracked keys | RSS B/key, core | RSS B/key, core + table copy | tracemalloc B/key, core "
                   "| tracemalloc B/key, + table | `stats()` estimate B/key | `export_key` median / p99 B |")
        out.append("|---|---|---|---|---|---|---|")
        for s in mem["sizes"]:
            out.append(f"| {s['keys'] - 1:,} | {_f(s['rss_core_per_key'])} | {_f(s['rss_with_table_per_key'])} "
                       f"| {_f(s.get('traced_core_per_key'))} | {_f(s.get('traced_with_table_per_key'))} "
                       f"| {_f(s['state_bytes_estimate_per_key'])} | {_f(s['blob_median'])} / {_f(s['blob_p99'])} |")
        rb = mem.get("realistic_blobs")
        if rb:
            out.append("")
            out.append(f"`export_key` over the {rb['keys']} keys of the simulated traffic (real histories): "
                       f"median {rb['median']:.0f} B, p99 {rb['p99']:.0f} B, max {rb['max']} B.")
    out.append("")
    out.append("| target | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | goal |")
    out.append("|---|" + "---|" * len(runs) + "---|")
    for j, t in enumerate(r.get("targets", [])):
        cells = []
        for x in runs:
            tt = x["targets"][j]
            v = tt["value"]
            cells.append(f"{tt['result']} ({_f(v, 2) if isinstance(v, float) and v < 10 else _f(v)})")
        out.append(f"| {t['target']} | {' | '.join(cells)} | {t['goal']} |")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(render([orjson.loads(open(p, "rb").read()) for p in sys.argv[1:]]))
