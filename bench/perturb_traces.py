"""Build a perturbed copy of the real traces, the stand-in for "other production traces".

The detection targets are checked on traffic built from traces the project has not tuned on.
Two perturbations of ``../shared/data`` are used in docs/detection-history.md; this script writes
either one so a new machine can rebuild them (the simulator is deterministic per seed, scale,
start and traces folder):

- ``swapped``: the two Azure traces swapped (the code trace drives the conversational
  background and the other way round), Mooncake prompt lengths x1.6 and answer lengths x0.7.
- ``long-answers``: every prompt length x0.7 and every answer length x1.4, in both Azure
  files and in Mooncake (benign traffic with longer answers to shorter prompts).

Lengths are rounded to the nearest token and kept at 1 or more; timestamps and Mooncake's
prefix blocks (``hash_ids``) are copied unchanged.

Two more modes change the layout instead of the numbers, for the simulator's trace discovery
(``streams.simulator.trace_roles``) and a background of another shape:

- ``mooncake-only``: Mooncake's trace alone, under its upstream name ``conversation_trace.jsonl``
  (every part of the background from one chat service with long prompts; its timestamps are
  stamped to the second).
- ``burstgpt-layout``: the Azure conversational trace alone, rewritten in BurstGPT's layout
  (``Timestamp`` in seconds from the start, ``Model``, ``Request tokens``, ``Response tokens``,
  ``Total tokens``, ``Log Type``): no code-service trace and no prefix sharing.

    python bench/perturb_traces.py --mode swapped --out /tmp/alt-traces
    python bench/perturb_traces.py --mode long-answers --out /tmp/alt2-traces
    moatwatch simulate --hours 12 --seed 301 --traces /tmp/alt2-traces --out ... --truth ...
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SRC = os.environ.get("MOATWATCH_TRACES") or str(ROOT.parent / "shared" / "data")

AZURE = ("azure_llm_2023_code.csv", "azure_llm_2023_conv.csv")
MOONCAKE = "mooncake_conversation_trace.jsonl"

# mode -> (swap the Azure files, Azure prompt x, Azure answer x, Mooncake prompt x, answer x)
MODES: dict[str, tuple[bool, float, float, float, float]] = {
    "swapped": (True, 1.0, 1.0, 1.6, 0.7),
    "long-answers": (False, 0.7, 1.4, 0.7, 1.4),
}


#: modes that rewrite the layout: mode -> the files the copy holds
LAYOUTS: dict[str, tuple[str, ...]] = {
    "mooncake-only": ("conversation_trace.jsonl",),
    "burstgpt-layout": ("BurstGPT_conv.csv",),
}


def _scaled(value: str | int, factor: float) -> int:
    return max(1, round(int(value) * factor))


def _copy_azure(src: Path, dst: Path, prompt_x: float, answer_x: float) -> int:
    with src.open(newline="") as fin, dst.open("w", newline="") as fout:
        rows = csv.reader(fin)
        out = csv.writer(fout, lineterminator="\n")
        out.writerow(next(rows))
        n = 0
        for ts, ctx, gen in rows:
            out.writerow([ts, _scaled(ctx, prompt_x), _scaled(gen, answer_x)])
            n += 1
    return n


def _copy_mooncake(src: Path, dst: Path, prompt_x: float, answer_x: float) -> int:
    n = 0
    with src.open("rb") as fin, dst.open("wb") as fout:
        for line in fin:
            if not line.strip():
                continue
            rec = orjson.loads(line)
            rec["input_length"] = _scaled(rec["input_length"], prompt_x)
            rec["output_length"] = _scaled(rec["output_length"], answer_x)
            fout.write(orjson.dumps(rec) + b"\n")
            n += 1
    return n


def _burstgpt_layout(src: Path, dst: Path) -> int:
    with src.open(newline="") as fin, dst.open("w", newline="") as fout:
        rows = csv.reader(fin)
        next(rows)
        out = csv.writer(fout, lineterminator="\n")
        out.writerow(["Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens",
                      "Log Type"])
        first = None
        n = 0
        for ts, ctx, gen in rows:
            t = datetime.fromisoformat(ts[:26]).replace(tzinfo=UTC).timestamp()
            first = t if first is None else first
            out.writerow([f"{t - first:.3f}", "ChatGPT", ctx, gen, int(ctx) + int(gen),
                          "Conversation log"])
            n += 1
    return n


def perturb(src: Path, out: Path, mode: str) -> dict[str, int]:
    """Write the perturbed copy of ``src`` into ``out``; returns rows written per file."""
    missing = [name for name in (*AZURE, MOONCAKE) if not (src / name).exists()]
    if missing:
        raise FileNotFoundError(f"{src} lacks {', '.join(missing)}: pass --src with the real traces")
    out.mkdir(parents=True, exist_ok=True)
    if mode == "mooncake-only":
        (name,) = LAYOUTS[mode]
        return {name: _copy_mooncake(src / MOONCAKE, out / name, 1.0, 1.0)}
    if mode == "burstgpt-layout":
        (name,) = LAYOUTS[mode]
        return {name: _burstgpt_layout(src / AZURE[1], out / name)}
    swap, a_in, a_out, m_in, m_out = MODES[mode]
    code, conv = AZURE
    sources = {code: conv, conv: code} if swap else {code: code, conv: conv}
    counts = {dst: _copy_azure(src / s, out / dst, a_in, a_out) for dst, s in sources.items()}
    counts[MOONCAKE] = _copy_mooncake(src / MOONCAKE, out / MOONCAKE, m_in, m_out)
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=sorted((*MODES, *LAYOUTS)), required=True)
    ap.add_argument("--out", required=True, help="folder to write (created)")
    ap.add_argument("--src", default=DEFAULT_SRC, help="real traces folder (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        counts = perturb(Path(args.src), Path(args.out), args.mode)
    except FileNotFoundError as exc:
        print(f"perturb_traces: {exc}", file=sys.stderr)
        return 2
    for name, n in counts.items():
        print(f"{args.out}/{name}: {n} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
