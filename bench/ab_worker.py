"""A/B two checkouts of moatwatch's worker on the local Kafka, alternating, under the same load.

Each checkout (a directory with this repo's layout, e.g. a ``git worktree`` of another commit,
sharing this venv) runs its own ``streams.bench`` functions, so its own worker code is what
is measured. Rounds alternate A, B, A, B... so both see the same neighbours.

    git worktree add /tmp/mw-old <commit>
    .venv/bin/python bench/ab_worker.py --repos . /tmp/mw-old --rounds 4
    .venv/bin/python bench/ab_worker.py --repos . /tmp/mw-old --latency 6700

Throughput mode prints, per round, events/s and worker CPU µs per event (``worker_run`` with one
worker on 4 partitions); latency mode prints the p50/p99/max produce-to-alert of the bench's
20/50/80% phases of ``--latency`` events/s. Events: the first ``--events`` lines of
``--sim`` (a ``moatwatch simulate`` file).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import json, sys, tempfile, uuid
repo, mode, sim, n, rate, bootstrap = sys.argv[1:7]
sys.path.insert(0, repo)
from streams import bench
lines = open(sim, "rb").read().splitlines()[:int(n)]
wd = tempfile.mkdtemp(prefix="mwab-")
prefix = "ab" + uuid.uuid4().hex[:6]
try:
    if mode == "throughput":
        r = bench.worker_run(bootstrap, prefix, "a", wd, lines, 1, 4)
        out = {"events_per_s": r["events_per_s"], "cpu_us_per_event":
               r["worker_cpu"][0] / r["events_per_s"] * 1e6, "machine_busy": r["machine_busy"]}
    else:
        r = bench.latency_run(bootstrap, prefix, wd, lines, float(rate), bench.SIZES["full"])
        out = {"phases": [{k: p[k] for k in ("load", "alerts", "p50_ms", "p99_ms", "max_ms")}
                          for p in r["phases"]]}
    print("RESULT " + json.dumps(out))
finally:
    bench._delete_topics(bootstrap, prefix)
"""


def _run(repo: str, args: argparse.Namespace) -> dict:
    mode = "latency" if args.latency else "throughput"
    out = subprocess.run([sys.executable, "-c", _CHILD, os.path.abspath(repo), mode, args.sim,
                          str(args.events), str(args.latency or 0), args.bootstrap],
                         capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise SystemExit(f"ab_worker: the run in {repo} failed:\n{out.stderr[-3000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repos", nargs=2, required=True, metavar=("A", "B"),
                    help="two checkouts of this repository")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--sim", default=os.path.expanduser("~/mwsim/seed6.jsonl"),
                    help="QueryEvent v1 lines (moatwatch simulate output)")
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--latency", type=float, default=0.0, metavar="EVENTS_PER_S",
                    help="measure produce-to-alert latency at 20/50/80%% of this rate instead")
    ap.add_argument("--bootstrap", default=os.environ.get("MOATWATCH_BOOTSTRAP", "127.0.0.1:19092"))
    args = ap.parse_args()
    if not os.path.exists(args.sim):
        ap.error(f"--sim {args.sim}: no such file; make one with `moatwatch simulate`")
    results: list[list[dict]] = [[], []]
    for i in range(args.rounds):
        for side, repo in enumerate(args.repos):
            res = _run(repo, args)
            results[side].append(res)
            print(f"round {i + 1} {'AB'[side]} {repo}: {json.dumps(res)}", flush=True)
    if not args.latency:
        for side, rs in enumerate(results):
            eps = statistics.median(r["events_per_s"] for r in rs)
            cpu = statistics.median(r["cpu_us_per_event"] for r in rs)
            print(f"{'AB'[side]} {args.repos[side]}: median {eps:,.0f} events/s, "
                  f"{cpu:.0f} µs CPU per event")
    return 0


if __name__ == "__main__":
    sys.exit(main())
