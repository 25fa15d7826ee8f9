"""Evaluate the detection core on simulated traffic: simulate -> DetectionCore -> evaluate.

Usage::

    .venv/bin/python bench/tune_detector.py --seeds 1 2 3 [--hours 12] [--sim-dir /tmp/sim]
        [--set threshold_floor=0.5 ...] [--dump /tmp/keys.json]

For each seed it reuses ``<sim-dir>/seed<N>.jsonl`` and its truth file when they exist
(``seed<N>.truth.json`` or ``seed<N>_truth.json``), otherwise simulates them, then runs every
event through one :class:`models.engine.DetectionCore` (with ``advance`` every 5 s of event
time, as the drivers do), writes the alerts to ``<sim-dir>/seed<N>.alerts.jsonl``, evaluates
them (``streams.evaluation`` when present, else a built-in evaluator with the same rules) and
prints a table per seed and a summary, plus the core's events/s (decode excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import features as F  # noqa: E402
from models.engine import DetectionCore, DetectorConfig  # noqa: E402
from schemas import decode_event  # noqa: E402

SINGLE = ("bulk_distiller", "drifter", "low_and_slow", "mimicry")


def _paths(sim_dir: Path, seed: int) -> tuple[Path, Path]:
    ev = sim_dir / f"seed{seed}.jsonl"
    for name in (f"seed{seed}.truth.json", f"seed{seed}_truth.json", f"truth{seed}.json"):
        if (sim_dir / name).exists():
            return ev, sim_dir / name
    return ev, sim_dir / f"seed{seed}.truth.json"


def ensure_sim(sim_dir: Path, seed: int, hours: float) -> tuple[Path, Path]:
    ev, tr = _paths(sim_dir, seed)
    if ev.exists() and tr.exists():
        return ev, tr
    from streams.simulator import simulate

    sim_dir.mkdir(parents=True, exist_ok=True)
    simulate(hours, seed, str(ev), str(tr), progress=False)
    return ev, tr


def run_core(events: list[dict], cfg: DetectorConfig, track: bool) -> tuple[list[dict], float, dict]:
    core = DetectionCore(cfg)
    alerts: list[dict] = []
    peak: dict[str, float] = {}
    if track:
        orig = core._evaluate

        def spy(k, ks, event, out):
            orig(k, ks, event, out)
            s = ks.f[F.F_SCORE]
            if ks.events >= cfg.warmup_events and s > peak.get(k, 0.0):
                peak[k] = s

        core._evaluate = spy  # type: ignore[method-assign]
    t0 = time.perf_counter()
    next_adv = None
    for seq, ev in enumerate(events):
        ts = ev["ts"]
        if next_adv is None:
            next_adv = ts + 5.0
        elif ts >= next_adv:
            alerts += core.advance(ts)
            next_adv = ts + 5.0
        alerts += core.process(ev, seq)
        core.drain_member_snapshots() if seq % 4096 == 0 else None
    alerts += core.advance(events[-1]["ts"] + 1e6) if events else []
    dt = time.perf_counter() - t0
    return alerts, len(events) / dt, {"peak": peak, "stats": core.stats()}


def builtin_evaluate(truth: dict, alerts: list[dict]) -> dict:
    keys = truth["keys"]
    first_fire: dict[str, float] = {}
    for a in alerts:
        if a["status"] != "firing":
            continue
        for k in [a["entity"], *a.get("related_entities", [])]:
            if k in keys:
                first_fire.setdefault(k, a["event_ts"])
                first_fire[k] = min(first_fire[k], a["event_ts"])
    rows: dict[str, dict] = {}
    ttd: list[float] = []
    fp = 0
    hn_fp = 0
    n_benign = 0
    single_total = single_caught = 0
    for k, info in keys.items():
        p = info["persona"]
        r = rows.setdefault(p, {"keys": 0, "alerted": 0, "ttd": []})
        r["keys"] += 1
        if info["label"] == "benign":
            n_benign += 1
            if k in first_fire:
                r["alerted"] += 1
                fp += 1
                hn_fp += 1 if info.get("hard_negative") else 0
        else:
            start = info.get("attack_start")
            if start is None:
                start = truth["start_ts"] if info.get("campaign") is None else None
            caught = k in first_fire and (start is None or first_fire[k] >= start - 1e-6)
            if caught:
                r["alerted"] += 1
                if start is not None:
                    r["ttd"].append(first_fire[k] - start)
            if p in SINGLE:
                single_total += 1
                single_caught += 1 if caught else 0
                if caught and start is not None:
                    ttd.append(first_fire[k] - start)
    return {
        "rows": rows,
        "benign_keys": n_benign,
        "false_positives": fp,
        "hard_negative_fp": hn_fp,
        "fpr": fp / max(n_benign, 1),
        "single_total": single_total,
        "single_caught": single_caught,
        "ttd": ttd,
        "ttd_median": statistics.median(ttd) if ttd else None,
        "ttd_max": max(ttd) if ttd else None,
    }


def attack_start_of(info: dict, truth: dict) -> float:
    s = info.get("attack_start")
    return truth["start_ts"] if s is None else s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--hours", type=float, default=12.0)
    ap.add_argument("--sim-dir", default=os.environ.get("MOATWATCH_SIM_DIR", "/tmp/sim"))
    ap.add_argument("--set", nargs="*", default=[], help="DetectorConfig overrides, name=value")
    ap.add_argument("--out-dir", default="/tmp/moatwatch-tune", help="where alert files go")
    ap.add_argument("--dump", help="write per-key peak scores and personas to this JSON file")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    over = {}
    for kv in args.set:
        name, _, val = kv.partition("=")
        over[name] = json.loads(val) if not val.startswith("(") else tuple(json.loads("[" + val[1:-1] + "]"))
    cfg = DetectorConfig(**over)
    sim_dir = Path(args.sim_dir)
    summary = []
    dump = {}
    pooled = {"ttd": [], "caught": 0, "total": 0, "fp": 0, "benign": 0, "hn": 0, "eps": []}
    for seed in args.seeds:
        ev_path, tr_path = ensure_sim(sim_dir, seed, args.hours)
        truth = json.loads(tr_path.read_text())
        events = []
        with open(ev_path, "rb") as fh:
            for line in fh:
                ev = decode_event(line)
                ev.pop("prompt_text", None)
                events.append(ev)
        alerts, eps, info = run_core(events, cfg, track=bool(args.dump) or not args.quiet)
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        out = Path(args.out_dir) / f"seed{seed}.alerts.jsonl"
        with open(out, "wb") as fh:
            for a in alerts:
                fh.write(orjson.dumps(a) + b"\n")
        res = builtin_evaluate(truth, alerts)
        ext = None
        try:
            from streams.evaluation import evaluate, format_table  # type: ignore

            ext = evaluate(str(tr_path), str(out))
        except Exception:  # noqa: BLE001 - the evaluator may not exist yet
            ext = None
        peak = info["peak"]
        if not args.quiet:
            print(f"\n== seed {seed}: {len(events)} events, {len(alerts)} alerts, core {eps:,.0f} ev/s")
            print(f"{'persona':20s} {'keys':>5s} {'alerted':>7s} {'ttd_med_s':>9s} {'peak p50':>8s} {'peak max':>8s}")
            for p, r in sorted(res["rows"].items()):
                pk = sorted(peak.get(k, 0.0) for k, i in truth["keys"].items() if i["persona"] == p)
                med = statistics.median(r["ttd"]) if r["ttd"] else float("nan")
                print(f"{p:20s} {r['keys']:5d} {r['alerted']:7d} {med:9.0f} {pk[len(pk)//2]:8.3f} {pk[-1]:8.3f}")
            if ext is not None:
                try:
                    print(format_table(ext))
                except Exception:  # noqa: BLE001
                    pass
        s = {
            "seed": seed,
            "events": len(events),
            "events_per_s": round(eps),
            "single_caught": f"{res['single_caught']}/{res['single_total']}",
            "benign_fp": res["false_positives"],
            "hard_negative_fp": res["hard_negative_fp"],
            "fpr": round(res["fpr"], 4),
            "ttd_median_s": None if res["ttd_median"] is None else round(res["ttd_median"]),
            "ttd_p90_s": round(sorted(res["ttd"])[int(0.9 * (len(res["ttd"]) - 1))]) if res["ttd"] else None,
            "ttd_max_s": None if res["ttd_max"] is None else round(res["ttd_max"]),
            "campaign_keys_caught": sum(r["alerted"] for p, r in res["rows"].items() if p.startswith("campaign")),
            "missed": sorted(
                truth["keys"][k]["persona"] for k in truth["keys"]
                if truth["keys"][k]["persona"] in SINGLE
                and not any(a["entity"] == k and a["status"] == "firing" for a in alerts)
            ),
            "fp_personas": sorted(
                {truth["keys"][a["entity"]]["persona"] for a in alerts
                 if a["status"] == "firing" and truth["keys"].get(a["entity"], {}).get("label") == "benign"}
            ),
        }
        summary.append(s)
        pooled["ttd"] += res["ttd"]
        pooled["caught"] += res["single_caught"]
        pooled["total"] += res["single_total"]
        pooled["fp"] += res["false_positives"]
        pooled["benign"] += res["benign_keys"]
        pooled["hn"] += res["hard_negative_fp"]
        pooled["eps"].append(eps)
        if args.dump:
            dump[str(seed)] = {k: {"persona": i["persona"], "peak": peak.get(k, 0.0)} for k, i in truth["keys"].items()}
    print("\n== summary")
    for s in summary:
        print(json.dumps(s))
    t = sorted(pooled["ttd"])
    print(json.dumps({
        "pooled_seeds": args.seeds,
        "single_key_caught": f"{pooled['caught']}/{pooled['total']}",
        "benign_fp": f"{pooled['fp']}/{pooled['benign']}",
        "max_seed_fpr": max(x["fpr"] for x in summary) if summary else None,
        "hard_negative_fp": pooled["hn"],
        "ttd_median_s": round(statistics.median(t)) if t else None,
        "ttd_p90_s": round(t[int(0.9 * (len(t) - 1))]) if t else None,
        "core_events_per_s_median": round(statistics.median(pooled["eps"])) if pooled["eps"] else None,
    }))
    if args.dump:
        Path(args.dump).write_text(json.dumps(dump))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
