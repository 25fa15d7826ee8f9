"""Rebuild the evaluation seeds recorded in ``bench/seed_sets.json`` on a new machine.

Every seed of docs/detection.md, docs/detection-history.md and docs/campaigns.md is a ``moatwatch simulate --hours 12``
run with its own seed, scale, start time and traces folder; the simulator is deterministic in
those, so the manifest is the data. This script simulates each unambiguous entry into
``ROOT/GROUP/seed{S}.jsonl`` (+ ``.truth.json``), builds the perturbed traces folders it needs
with ``bench/perturb_traces.py``, skips seeds already there, and prints the
``bench/evaluate_seeds.py`` command for each group. Entries marked ``ambiguous`` (their start
or traces were not recorded exactly) are skipped unless ``--include-ambiguous``; they are then
simulated as the manifest reads, which is not necessarily the data measured then.

    python bench/make_seed_sets.py --root /tmp/sets
    python bench/make_seed_sets.py --root /tmp/sets --groups mwsim mwfresh18 --jobs 2
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.perturb_traces import DEFAULT_SRC, LAYOUTS, MODES, perturb  # noqa: E402

MANIFEST = ROOT / "bench" / "seed_sets.json"


def _traces_dir(kind: str, root: Path, src: str) -> str | None:
    """The traces folder for a manifest ``traces`` value; None when it cannot be rebuilt."""
    if kind == "bundled":
        return src
    if kind in MODES or kind in LAYOUTS:
        out = root / "traces" / kind
        files = LAYOUTS.get(kind, ("mooncake_conversation_trace.jsonl",))
        if not all((out / name).exists() for name in files):
            perturb(Path(src), out, kind)
        return str(out)
    return None


def _simulate(entry: dict[str, Any], out_dir: str, traces: str) -> str:
    from streams.simulator import simulate

    seed = int(entry["seed"])
    simulate(12.0, seed, f"{out_dir}/seed{seed}.jsonl", f"{out_dir}/seed{seed}.truth.json",
             scale=float(entry.get("scale") or 1.0), traces_dir=traces, start_ts=entry.get("start_ts"),
             progress=False)
    return f"{out_dir}/seed{seed}.jsonl"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="folder to simulate into (one subfolder per group)")
    ap.add_argument("--manifest", default=str(MANIFEST), help="seed manifest (default: %(default)s)")
    ap.add_argument("--groups", nargs="+", help="only these groups (default: all)")
    ap.add_argument("--include-ambiguous", action="store_true",
                    help="also simulate entries whose parameters were not recorded exactly")
    ap.add_argument("--src", default=DEFAULT_SRC, help="real traces folder (default: %(default)s)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="seeds simulated at once")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    try:
        entries = orjson.loads(Path(args.manifest).read_bytes())["seeds"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        ap.error(f"cannot read the manifest {args.manifest}: {exc}")
    groups = {e["group"] for e in entries}
    unknown = sorted(set(args.groups or ()) - groups)
    if unknown:
        ap.error(f"no group {', '.join(unknown)} in {args.manifest}; it has: {', '.join(sorted(groups))}")
    root = Path(args.root)
    todo: list[tuple[dict[str, Any], str, str]] = []
    skipped: list[str] = []
    by_group: dict[str, list[int]] = {}
    for e in entries:
        if args.groups and e["group"] not in args.groups:
            continue
        label = f"{e['group']}/{e['seed']}"
        if "ambiguous" in e and not args.include_ambiguous:
            skipped.append(f"{label} (ambiguous: {e['ambiguous']})")
            continue
        traces = _traces_dir(e["traces"], root, args.src)
        if traces is None:
            skipped.append(f"{label} (traces {e['traces']!r} cannot be rebuilt)")
            continue
        out = root / e["group"]
        out.mkdir(parents=True, exist_ok=True)
        by_group.setdefault(e["group"], []).append(int(e["seed"]))
        if not (out / f"seed{e['seed']}.truth.json").exists():
            todo.append((e, str(out), traces))
    print(f"simulating {len(todo)} seeds ({sum(map(len, by_group.values())) - len(todo)} already there)",
          file=sys.stderr)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for i, path in enumerate(pool.map(_simulate, *zip(*todo, strict=True)) if todo else (), 1):
            print(f"[{i}/{len(todo)}] {path}", file=sys.stderr)
    for label in skipped:
        print(f"skipped {label}", file=sys.stderr)
    for group, seeds in by_group.items():
        print(f"python bench/evaluate_seeds.py --sim-dir {root / group} --seeds {' '.join(map(str, seeds))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
