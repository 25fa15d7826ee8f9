"""Record every evaluation point of the per-key core, then rescore the outlier boost offline.

How key-0.8's ``population_support`` was chosen, and key-0.13's (docs/detection-history.md, "key-0.8",
"key-0.13"): one pass of the per-key core over each seed records, at every key evaluation, the
direction vector, the direction score ``s_dir``, the HalfSpaceTrees outlier score and the
threshold, exactly as the engine computed them (by wrapping the calls, not by recomputing).
Rescoring then rebuilds the score for other support strengths in seconds instead of a replay
per variant::

    .venv/bin/python bench/rescore_boost.py record --sim-dir /tmp/mwsim --seeds 1 2 3 --rec-dir /tmp/rec
    .venv/bin/python bench/rescore_boost.py rescore --sim-dir /tmp/mwsim --seeds 1 2 3 --rec-dir /tmp/rec \
        --support 0 0.05 0.1 0.2 --base-tells

For each strength (and, with ``--base-tells``, for support counted from logprobs / n > 1 and
temperature spread only, as before key-0.13) it prints, over the seeds, how many pass the
per-key part of the issue 3 targets (every single-key attack key caught, benign FPR <= 0.3%,
median time to detect <= 10 min), the benign keys alerted, the attack keys missed and the
seeds whose median is over 10 min.

What the offline rescoring cannot see (so confirm a choice with ``bench/evaluate_seeds.py``):
campaign alerts (a single-key attacker named by a campaign is a miss here, so counts differ
from the product's), and the feedback of flagging on the population model (a key that now
fires would have stopped teaching the population; thresholds are replayed as recorded). The
first evaluation at or above the threshold after warm-up counts as the key's first alert
(``confirm_evals`` is 1). Records are numpy ``.npz`` files written by this script; only
numbers are read back (``allow_pickle=False``). A benchmark: it always exits 0 unless it
cannot run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models import engine as E  # noqa: E402
from models.engine import DetectionCore, DetectorConfig  # noqa: E402
from models.features import FEATURES  # noqa: E402
from models.policy import opening_bar, population_score  # noqa: E402
from schemas import decode_event  # noqa: E402

SINGLE = ("bulk_distiller", "drifter", "low_and_slow", "mimicry")


def record(events_path: Path, out_path: Path, cfg: DetectorConfig) -> int:
    """One pass of the per-key core; writes the evaluation points of every key to ``out_path``."""
    core = DetectionCore(cfg)
    rows: dict[str, list] = {n: [] for n in ("key", "ts", "events", "first", "vec", "s_dir", "hst", "thr", "ratio")}
    names: dict[str, int] = {}
    cur: dict[str, object] = {}
    real_score, real_learn, real_thr = E.scrape_score, core.population.score_then_learn, core._threshold

    def score_spy(vec, *a):
        out = real_score(vec, *a)
        cur["vec"], cur["s_dir"] = list(vec), out[0]
        return out

    def thr_spy(ks, ts, s_dir):
        thr = real_thr(ks, ts, s_dir)
        cur.setdefault("thr", thr)  # the first call of an evaluation is the one it used
        return thr

    def learn_spy(vec, hint, learn):
        hst = real_learn(vec, hint, learn)
        cur["hst"] = hst
        return hst

    orig_eval = core._evaluate

    def eval_spy(k, ks, event, out):
        cur.clear()
        orig_eval(k, ks, event, out)
        if "hst" not in cur:
            return
        rows["key"].append(names.setdefault(k, len(names)))
        rows["ts"].append(ks.f[E.F.F_LAST])
        rows["events"].append(ks.events)
        rows["first"].append(ks.f[E.F.F_FIRST])
        rows["vec"].append(cur["vec"])
        rows["s_dir"].append(cur["s_dir"])
        rows["hst"].append(cur["hst"])
        rows["thr"].append(cur["thr"])
        rows["ratio"].append(E.F.length_ratio(ks))

    E.scrape_score = score_spy
    core.population.score_then_learn = learn_spy  # type: ignore[method-assign]
    core._threshold = thr_spy  # type: ignore[method-assign]
    core._evaluate = eval_spy  # type: ignore[method-assign]
    try:
        next_adv = None
        with open(events_path, "rb") as fh:
            for seq, line in enumerate(fh):
                try:
                    ev = decode_event(line)
                except ValueError:
                    continue
                ts = ev["ts"]
                if next_adv is None:
                    next_adv = ts + 5.0
                elif ts >= next_adv:
                    core.advance(ts)
                    next_adv = ts + 5.0
                core.process(ev, seq)
                if seq % 4096 == 0:
                    core.drain_member_snapshots()
    finally:
        E.scrape_score = real_score
    keys = sorted(names, key=names.__getitem__)
    np.savez_compressed(
        out_path,
        keys=np.array(keys),
        key=np.array(rows["key"], np.int32),
        ts=np.array(rows["ts"]),
        events=np.array(rows["events"], np.int64),
        first=np.array(rows["first"]),
        vec=np.array(rows["vec"], np.float64).reshape(-1, len(FEATURES)),
        s_dir=np.array(rows["s_dir"]),
        hst=np.array(rows["hst"]),
        thr=np.array(rows["thr"]),
        ratio=np.array(rows["ratio"]),
    )
    return len(rows["key"])


def alert_times(rec: dict[str, np.ndarray], cfg: DetectorConfig, support: float,
                all_tells: bool = True) -> dict[str, list[float]]:
    """Event times of every recorded evaluation at or above the opening bar after warm-up, per
    key, with the boost gated at ``support`` (the engine's own score when it is the config's).
    The bar is the recorded threshold plus the content-only margin (key-0.22,
    :func:`models.policy.opening_bar`).

    ``all_tells`` counts every extraction tell of the score as support (whole sampled answers
    and templated prompts at the config's weights, key-0.13); False counts only logprobs / n > 1
    and temperature spread, as key-0.8 to key-0.12 did."""
    w = cfg.population_weight
    cw, tw = (cfg.collect_weight, cfg.template_weight) if all_tells else (0.0, 0.0)
    # records written before key-0.21 have no length ratio: the vector's output_ratio stands in
    ratios = rec["ratio"] if "ratio" in rec else np.full(len(rec["s_dir"]), np.nan)
    score = np.array([population_score(float(sd), float(h), list(v), w, support, cw, tw,
                                       cfg.population_harvest, float(r))[0]
                      for sd, h, v, r in zip(rec["s_dir"], rec["hst"], rec["vec"], ratios, strict=True)])
    warm = (rec["events"] >= cfg.warmup_events) & (rec["ts"] - rec["first"] >= cfg.warmup_seconds)
    # the content-only margin (key-0.22); the engine waives it for a key whose score drifted
    # up, which the records do not hold
    bar = rec["thr"].copy()
    for i in np.flatnonzero(warm & (score >= bar)):
        bar[i] = opening_bar(float(bar[i]), list(rec["vec"][i]), cfg.content_only_margin,
                             cfg.population_support, cfg.collect_weight, cfg.template_weight)
    keys = rec["keys"]
    out: dict[str, list[float]] = {}
    for i in np.flatnonzero(warm & (score >= bar)):
        out.setdefault(str(keys[rec["key"][i]]), []).append(float(rec["ts"][i]))
    return out


def rescore(rec: dict[str, np.ndarray], truth: dict, cfg: DetectorConfig, support: float,
            all_tells: bool = True) -> dict:
    """Per-key verdicts of one recorded seed with the boost gated at ``support``."""
    first: dict[str, float] = {}
    for k, times in alert_times(rec, cfg, support, all_tells).items():
        info = truth["keys"].get(k)
        if info is None:
            continue
        # an alert before the attack starts does not catch it
        start = (info.get("attack_start") or 0.0) - 1e-6 if info["label"] == "attack" else -np.inf
        after = [t for t in times if t >= start]
        if after:
            first[k] = after[0]
    fp, missed, ttd, n_benign = [], [], [], 0
    for k, info in truth["keys"].items():
        if info["label"] == "benign":
            n_benign += 1
            if k in first:
                fp.append(info["persona"])
        elif info["persona"] in SINGLE:
            if k in first:
                ttd.append((first[k] - info["attack_start"]) / 60.0)
            else:
                missed.append(info["persona"])
    med = statistics.median(ttd) if ttd else None
    ok = not missed and len(fp) <= 0.003 * n_benign and med is not None and med <= 10.0
    return {"ok": ok, "fp": fp, "missed": missed, "median_min": med}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("record", "rescore"), help="record evaluation points, or rescore them")
    ap.add_argument("--sim-dir", required=True, help="folder with seed{S}.jsonl and seed{S}.truth.json")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--rec-dir", required=True, help="where the seed{S}.npz records go / are read from")
    ap.add_argument("--support", type=float, nargs="+", default=[0.0, 0.05, 0.15],
                    help="population_support strengths to rescore (0 = the boost ungated)")
    ap.add_argument("--base-tells", action="store_true",
                    help="also rescore with support from logprobs / n>1 and temperature spread only "
                         "(key-0.8 to key-0.12), beside every extraction tell of the score (key-0.13)")
    args = ap.parse_args(argv)
    sim, recd = Path(args.sim_dir), Path(args.rec_dir)
    cfg = DetectorConfig()
    if args.mode == "record":
        recd.mkdir(parents=True, exist_ok=True)
        for s in args.seeds:
            src = sim / f"seed{s}.jsonl"
            if not src.exists():
                ap.error(f"{src} does not exist: simulate it first (moatwatch simulate --seed {s} ...)")
            n = record(src, recd / f"seed{s}.npz", cfg)
            print(f"seed {s}: {n} evaluation points -> {recd / f'seed{s}.npz'}", flush=True)
        return 0
    data = {}
    for s in args.seeds:
        path = recd / f"seed{s}.npz"
        if not path.exists():
            ap.error(f"{path} does not exist: run the record mode for seed {s} first")
        with np.load(path, allow_pickle=False) as z:
            data[s] = ({k: z[k] for k in z.files}, orjson.loads((sim / f"seed{s}.truth.json").read_bytes()))
    print(f"{'tells':>5} {'support':>8} {'pass':>7} {'benign':>6} {'missed':>6}  seeds with a median over 10 min")
    variants = [(t, sup) for t in ((False, True) if args.base_tells else (True,)) for sup in args.support]
    for all_tells, sup in variants:
        res = {s: rescore(rec, truth, cfg, sup, all_tells) for s, (rec, truth) in data.items()}
        slow = [s for s, r in res.items() if r["median_min"] is None or r["median_min"] > 10.0]
        print(f"{'all' if all_tells else 'base':>5} {sup:>8.3f} {sum(r['ok'] for r in res.values()):>3}/{len(res):<3} "
              f"{sum(len(r['fp']) for r in res.values()):>6} {sum(len(r['missed']) for r in res.values()):>6}  "
              f"{' '.join(map(str, slow)) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
