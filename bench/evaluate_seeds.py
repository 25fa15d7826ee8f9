"""Check the issue 3 and issue 4 targets seed by seed, the way a user would: replay, then evaluate.

For each seed: ``moatwatch replay`` (in process: per-key detection *and* campaigns, one
partition, event time) over ``DIR/seed{S}.jsonl`` (or ``.jsonl.gz``), then
:func:`streams.evaluation.evaluate` against ``DIR/seed{S}.truth.json``. It prints one row per
seed with every target of both issues (the same checks ``moatwatch evaluate`` prints), the
attack keys missed and the benign keys named, and a closing line with how many seeds pass each
issue. ``--generate`` simulates the missing seeds first (12 h by default). Seeds are replayed
in parallel worker processes (``--jobs``).

``--perturb MODE`` scores the same seeds with part of their benign people-facing keys given a
habit the simulator's benign personas lack (``bench/perturb_benign.py``: changing temperatures,
whole answers, occasional logprobs, conversations that change the subject; ``--perturb-share``,
``--perturb-change``). Each seed's copy is written under ``OUT_DIR/perturbed``, replayed and
deleted (its truth, listing the changed keys, is kept), and the rows count how many of the
changed keys were named. So one tell can be priced on both benches, unchanged and perturbed,
from the same seed files.

    python bench/evaluate_seeds.py --sim-dir ~/mwsim --seeds 1 2 3
    python bench/evaluate_seeds.py --sim-dir /tmp/fresh --seeds 101 102 103 --generate --json out.json
    python bench/evaluate_seeds.py --sim-dir ~/mwsim --seeds 1 2 3 --perturb temperature --perturb-share 0.1

``bench/tune_detector.py`` (per-key core only) and ``bench/tune_campaign.py`` (cached per-key
pass, campaign settings) are the tuning loops; this script measures the product as shipped.
A benchmark, not a test: it reports numbers and always exits 0 unless it cannot run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "bench"):  # the package root, and perturb_benign beside this script
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from perturb_benign import CHANGE_HELP, MODES, fraction  # noqa: E402
from perturb_benign import perturb as perturb_copy  # noqa: E402


def _events_path(sim_dir: Path, seed: int) -> Path | None:
    for name in (f"seed{seed}.jsonl", f"seed{seed}.jsonl.gz"):
        p = sim_dir / name
        if p.exists():
            return p
    return None


def generate(sim_dir: Path, seed: int, hours: float) -> None:
    """Simulate one seed as ``moatwatch simulate`` does (a progress bar on a terminal)."""
    from streams.simulator import simulate

    sim_dir.mkdir(parents=True, exist_ok=True)
    simulate(hours, seed, str(sim_dir / f"seed{seed}.jsonl"), str(sim_dir / f"seed{seed}.truth.json"))


def run_seed(sim_dir: str, seed: int, out_dir: str,
             perturb: tuple[str, float, float] | None = None) -> dict[str, Any]:
    """Replay one seed and evaluate it; returns a compact row (runs in a worker process).

    With ``perturb`` (mode, share, change) the seed is first copied with that habit given to
    part of its benign keys (``bench/perturb_benign.py``) and the copy is what is replayed."""
    from streams.evaluation import evaluate
    from streams.replay import replay

    sd, od = Path(sim_dir), Path(out_dir)
    events = _events_path(sd, seed)
    if events is None:
        raise FileNotFoundError(f"no seed{seed}.jsonl[.gz] in {sim_dir}")
    if perturb is not None:
        mode, share, change = perturb
        sd = od / "perturbed"
        perturb_copy(events, sd, share, change, mode=mode)
        events = sd / events.name
    alerts = od / f"seed{seed}.alerts.jsonl"
    t0 = time.perf_counter()
    try:
        summary = replay(str(events), str(alerts), dlq_path=str(od / f"seed{seed}.dlq.jsonl"),
                         progress=False)
    finally:
        if perturb is not None:
            events.unlink()  # the copy is as large as the seed; its truth stays
    elapsed = time.perf_counter() - t0
    truth = sd / f"seed{seed}.truth.json"
    res = evaluate(str(truth), str(alerts))
    changed = set(orjson.loads(truth.read_bytes()).get("perturbed_keys", ()))
    t = res["targets"]
    c3, c4 = t["issue3"]["checks"], t["issue4"]["checks"]
    s = res["summary"]
    return {
        "seed": seed,
        "events": summary.events,
        "replay_s": round(elapsed, 1),
        "issue3_pass": t["issue3"]["pass"],
        "issue4_pass": t["issue4"]["pass"],
        "single_key_caught": c3["single_key_attacks_caught"]["value"],
        "benign_fpr": c3["benign_fpr"]["value"],
        "hard_negatives_flagged": c3["hard_negative_keys_flagged"]["value"],
        "ttd_median_s": c3["ttd_median_s"]["value"],
        "campaign_keys_named": c4["campaign_keys_named"]["value"],
        "campaigns_in_time": c4["campaigns_detected_in_time"]["value"],
        "campaigns": {cid: {"kind": c["kind"], "named_fraction": c["named_fraction"],
                            "ttd_min": c.get("ttd_min")} for cid, c in res["campaigns"].items()},
        "benign_keys": s["benign_keys"],
        "missed": sorted(k["persona"] for k in res["missed_attack_keys"]
                         if not k["persona"].startswith("campaign")),
        "missed_campaign_keys": sum(1 for k in res["missed_attack_keys"]
                                    if k["persona"].startswith("campaign")),
        "flagged_benign": sorted(k["persona"] for k in res["flagged_benign_keys"]),
        "perturbed_keys": len(changed),
        "perturbed_named": sum(1 for k in res["flagged_benign_keys"] if k["key"] in changed),
    }


def _fmt(x: float | None, scale: float = 1.0, nd: int = 1) -> str:
    return "-" if x is None else f"{x * scale:.{nd}f}"


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = (f"{'seed':>5} {'i3':>4} {'caught':>6} {'FPR%':>5} {'hn':>2} {'ttd50':>6} | "
            f"{'i4':>4} {'camp.rec':>8} {'in 30m':>6}  campaigns (min to first alert)  missed / benign named")
    out = [head, "-" * len(head)]
    for r in rows:
        camps = " ".join(f"{c['kind']}:{_fmt(c['ttd_min'])}" for c in r["campaigns"].values())
        notes = ",".join(r["missed"]) or "-"
        if r["flagged_benign"]:
            notes += " / " + ",".join(r["flagged_benign"])
        out.append(
            f"{r['seed']:>5} {'PASS' if r['issue3_pass'] else 'FAIL':>4} {r['single_key_caught']:>6.3f} "
            f"{_fmt(r['benign_fpr'], 100, 2):>5} {r['hard_negatives_flagged']:>2} "
            f"{_fmt(r['ttd_median_s'], 1 / 60):>5}m | {'PASS' if r['issue4_pass'] else 'FAIL':>4} "
            f"{r['campaign_keys_named']:>8.3f} {r['campaigns_in_time']:>3}/{len(r['campaigns'])}   {camps:<30} {notes}"
        )
    n = len(rows)
    if n:
        ttds = [r["ttd_median_s"] for r in rows if r["ttd_median_s"] is not None]
        out.append(
            f"issue 3 passes on {sum(r['issue3_pass'] for r in rows)}/{n} seeds, issue 4 on "
            f"{sum(r['issue4_pass'] for r in rows)}/{n}; median of the per-seed TTD medians "
            f"{_fmt(statistics.median(ttds) if ttds else None, 1 / 60)} min; single-key attacks missed: "
            f"{sum(len(r['missed']) for r in rows)}; benign keys named: {sum(len(r['flagged_benign']) for r in rows)}"
        )
        changed = sum(r.get("perturbed_keys", 0) for r in rows)
        if changed:
            out.append(f"benign keys given a habit (perturbed): {changed:,}, of them named: "
                       f"{sum(r.get('perturbed_named', 0) for r in rows):,}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", required=True, help="seed numbers to evaluate")
    ap.add_argument("--sim-dir", required=True, help="folder with seed{S}.jsonl[.gz] and seed{S}.truth.json")
    ap.add_argument("--out-dir", help="where alert files go (default: SIM_DIR/eval)")
    ap.add_argument("--generate", action="store_true", help="simulate seeds that are missing first")
    ap.add_argument("--hours", type=float, default=12.0, help="hours to simulate with --generate (default 12)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="seeds replayed at once (default: min(2, cores))")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ap.add_argument("--perturb", choices=MODES, metavar="MODE",
                    help=f"give part of the benign people-facing keys a habit first: {', '.join(MODES)} "
                         "(bench/perturb_benign.py)")
    ap.add_argument("--perturb-share", type=fraction, default=0.3,
                    help="with --perturb: share of those keys changed (default 0.3)")
    ap.add_argument("--perturb-change", type=fraction, default=1.0,
                    help=f"with --perturb: {CHANGE_HELP}")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.hours <= 0:
        ap.error(f"--hours must be > 0, got {args.hours}")
    sim_dir = Path(os.path.expanduser(args.sim_dir))
    out_dir = Path(os.path.expanduser(args.out_dir)) if args.out_dir else sim_dir / "eval"
    missing = [s for s in args.seeds
               if _events_path(sim_dir, s) is None or not (sim_dir / f"seed{s}.truth.json").exists()]
    if missing and not args.generate:
        ap.error(f"no events/truth for seed(s) {missing} in {sim_dir}: add --generate to simulate them")
    for s in missing:
        generate(sim_dir, s, args.hours)
    perturb = None
    if args.perturb:
        gz = [s for s in args.seeds if _events_path(sim_dir, s).name.endswith(".gz")]
        if gz:
            ap.error(f"--perturb reads plain seed{{S}}.jsonl files; seed(s) {gz} are gzip-compressed "
                     f"in {sim_dir}: gunzip them first")
        if (out_dir / "perturbed").resolve() == sim_dir.resolve():
            ap.error("--perturb writes its copies to OUT_DIR/perturbed, which is --sim-dir here: "
                     "choose another --out-dir so the seeds are not overwritten")
        perturb = (args.perturb, args.perturb_share, args.perturb_change)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = Path(os.path.expanduser(args.json)) if args.json else None
    if json_path is not None:  # its folder made now, not after an hour of replays
        json_path.parent.mkdir(parents=True, exist_ok=True)
    n = len(args.seeds)
    if args.jobs == 1:
        rows = [run_seed(str(sim_dir), s, str(out_dir), perturb) for s in args.seeds]
    else:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            rows = list(pool.map(run_seed, [str(sim_dir)] * n, args.seeds, [str(out_dir)] * n,
                                 [perturb] * n))
    print(format_rows(rows))
    if json_path is not None:
        json_path.write_bytes(orjson.dumps({"sim_dir": str(sim_dir), "rows": rows},
                                           option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
