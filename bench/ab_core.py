"""A/B the per-key core's throughput between two source trees, in alternating rounds.

Each run is a fresh process that imports ``models`` from one tree, reads the first ``--events``
events of a QueryEvent JSON-lines file into memory (not timed), and times
``DetectionCore.process`` over them with ``advance`` every 5 s of event time, as the engine's
own tests drive it. Rounds alternate which tree goes first, so a neighbour's load on this
shared machine falls on both sides. It prints every run, each tree's median and the median of
the per-round ratios B / A (the number to quote: measured in the same round).

    git worktree add /tmp/old <commit>   # or: git archive <commit> | tar -x -C /tmp/old
    python bench/ab_core.py --events-file /tmp/sets/mwsim/seed1.jsonl /tmp/old .

A benchmark, not a test: it reports numbers and exits 0 unless a run fails.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

_RUN = r"""
import itertools, sys, time
sys.path.insert(0, sys.argv[1])
import orjson
from models.engine import MODEL_VERSION, DetectionCore
with open(sys.argv[2], "rb") as fh:
    evs = [orjson.loads(line) for line in itertools.islice(fh, int(sys.argv[3]))]
core = DetectionCore()
nxt = None
alerts = 0
t0 = time.perf_counter()
for i, ev in enumerate(evs):
    if nxt is None:
        nxt = ev["ts"] + 5.0
    elif ev["ts"] >= nxt:
        alerts += len(core.advance(ev["ts"]))
        nxt = ev["ts"] + 5.0
    alerts += len(core.process(ev, i))
dt = time.perf_counter() - t0
print(MODEL_VERSION, len(evs) / dt, alerts)
"""


def run_once(tree: str, events_file: str, n: int) -> tuple[str, float, int]:
    """One timed pass of ``tree``'s core: (model version, events/s, alerts emitted)."""
    out = subprocess.run([sys.executable, "-c", _RUN, tree, events_file, str(n)],
                         capture_output=True, text=True, cwd=tree)
    if out.returncode != 0:
        raise RuntimeError(f"run in {tree} failed:\n{out.stderr.strip()}")
    version, eps, alerts = out.stdout.split()
    return version, float(eps), int(alerts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tree_a", help="source tree A (a folder with models/), the baseline")
    ap.add_argument("tree_b", help="source tree B, the change")
    ap.add_argument("--events-file", required=True, help="QueryEvent v1 JSON lines (not .gz)")
    ap.add_argument("--events", type=int, default=120_000, help="events per run (default 120000)")
    ap.add_argument("--rounds", type=int, default=6, help="alternating rounds (default 6)")
    args = ap.parse_args(argv)
    for t in (args.tree_a, args.tree_b):
        if not (Path(t) / "models" / "engine.py").exists():
            ap.error(f"{t} has no models/engine.py: pass the root of a moatwatch source tree")
    if not Path(args.events_file).is_file():
        ap.error(f"no such events file: {args.events_file}")
    if args.events < 1 or args.rounds < 1:
        ap.error("--events and --rounds must be at least 1")

    res: dict[str, list[float]] = {"A": [], "B": []}
    trees = {"A": args.tree_a, "B": args.tree_b}
    for r in range(args.rounds):
        for side in ("A", "B") if r % 2 == 0 else ("B", "A"):
            version, eps, alerts = run_once(trees[side], args.events_file, args.events)
            res[side].append(eps)
            print(f"round {r + 1} {side} {version:<10} {eps:>10,.0f} events/s  {alerts} alerts", flush=True)
    ratios = [b / a for a, b in zip(res["A"], res["B"], strict=True)]
    for side in ("A", "B"):
        runs = ", ".join(f"{x:,.0f}" for x in res[side])
        print(f"{side} {trees[side]}: median {statistics.median(res[side]):,.0f} events/s ({runs})")
    print(f"B / A per round: {', '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
