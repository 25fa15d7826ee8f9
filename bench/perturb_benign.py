"""Give part of a simulation's benign, people-facing keys a habit real ones have and no
simulated benign key shows, to price the engine's tells against it.

The engine reads a temperature sweep, sampling options and whole (non-streamed) sampled answers
as signs of harvesting (docs/detection.md). No simulated benign key sends two temperatures, the
people-facing ones ask for logprobs or n > 1 on under 1% of their requests, and the products
among them (chat and reasoning apps) stream, so the bench cannot measure what those tells cost
on such traffic. This script rewrites a simulated events file so that a share (``--share``) of
the benign light users, reseller users, chat apps and reasoning apps do one of:

- ``temperature``: send a temperature from a slider's usual stops (0, 0.2, 0.5, 0.7, 0.8, 1.0,
  1.2), keeping one value and moving to a new one with probability ``--change`` per request
  (1 = a new draw every request, as a product passing on many users' settings; 0.1 = a person
  who now and then moves the slider);
- ``whole-answers``: never stream (a backend that takes whole answers and shows them itself);
  ``--change`` is unused;
- ``logprobs``: ask for logprobs on a share ``--change`` of requests (a product that scores
  its answers' confidence, or a developer trying the option);
- ``subject-changes``: on a follow-up turn (``turn`` > 1 of a conversation), with probability
  ``--change``, move the conversation to a new topic (drawn from the other six), which its
  later turns keep (people who change the subject mid-conversation more often than the
  simulated ones: the engine reads follow-ups on a new subject as fabricated beyond 0.3 of a
  key's follow-ups, key-0.25). Requests without a ``topic`` or a ``conversation_id`` are left
  as they are.

Attack keys, the other personas and every other field are left as they are. The copy and its
truth (which lists the changed keys under ``perturbed_keys``) go to ``--out`` under the same
names, so ``bench/evaluate_seeds.py --sim-dir OUT`` scores it:

    python bench/perturb_benign.py --mode temperature --events /tmp/sets/fresh-121/seed128.jsonl --out /tmp/temp30 --share 0.3
    python bench/evaluate_seeds.py --sim-dir /tmp/temp30 --seeds 128

Keys are chosen by a hash of their name and values drawn from ``--seed``: the same input gives
the same copy.
"""

from __future__ import annotations

import argparse
import random
import sys
import zlib
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.features import TOPICS  # noqa: E402  (the QueryEvent topics, schema order)

#: benign personas with people (or a product passing on people's settings) behind the key
PEOPLE_FACING = ("light_user", "light_user_cgnat", "reseller_user", "chat_app", "reasoning_app")
#: a playground slider's usual stops
SLIDER = (0.0, 0.2, 0.5, 0.7, 0.8, 1.0, 1.2)
MODES = ("temperature", "whole-answers", "logprobs", "subject-changes")
#: what --change means per mode (evaluate_seeds' --perturb-change says the same)
CHANGE_HELP = ("temperature: chance per request of a new value; logprobs: share of requests "
               "asking for them; subject-changes: chance per follow-up turn of a new subject "
               "(default 1)")


def chosen_keys(truth: dict, share: float) -> list[str]:
    """The benign people-facing keys whose name hashes into the first ``share`` of 1000 slots."""
    return sorted(k for k, v in truth["keys"].items()
                  if v.get("label") == "benign" and v.get("persona") in PEOPLE_FACING
                  and zlib.crc32(k.encode()) % 1000 < share * 1000)


def truth_of(events: Path) -> Path:
    """The truth file ``moatwatch simulate`` writes beside ``seed{S}.jsonl``."""
    return events.with_name(events.name.removesuffix(".jsonl") + ".truth.json")


def _apply(mode: str, ev: dict, k: str, change: float, rng: random.Random,
           current: dict[str, float], subjects: dict[tuple[str, str], str]) -> None:
    if mode == "temperature":
        if k not in current or rng.random() < change:
            current[k] = rng.choice(SLIDER)
        ev["temperature"] = current[k]
    elif mode == "whole-answers":
        ev["stream"] = False
    elif mode == "subject-changes":
        conv, topic = ev.get("conversation_id"), ev.get("topic")
        if conv is None or topic is None:
            return
        held = subjects.get((k, conv))
        if held is not None:
            topic = held
        turn = ev.get("turn")
        if isinstance(turn, int) and turn > 1 and rng.random() < change:
            topic = rng.choice([t for t in TOPICS if t != topic])
        if held is not None or topic != ev["topic"]:
            subjects[(k, conv)] = topic
        ev["topic"] = topic
    elif rng.random() < change:  # logprobs
        ev["logprobs"] = True


def perturb(events: Path, out_dir: Path, share: float, change: float, seed: int = 5,
            mode: str = "temperature") -> dict:
    """Write the perturbed events and truth to ``out_dir``; return what was changed."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: one of {', '.join(MODES)}")
    truth_path = truth_of(events)
    truth = orjson.loads(truth_path.read_bytes())
    keys = set(chosen_keys(truth, share))
    rng = random.Random(seed)
    current: dict[str, float] = {}
    subjects: dict[tuple[str, str], str] = {}  # (key, conversation) -> the subject it moved to
    changed = 0
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(events, "rb") as src, open(out_dir / events.name, "wb") as dst:
        for line in src:
            if keys:
                ev = orjson.loads(line)
                k = ev.get("api_key")
                if k in keys:
                    _apply(mode, ev, k, change, rng, current, subjects)
                    line = orjson.dumps(ev) + b"\n"
                    changed += 1
            dst.write(line)
    truth["perturbed_keys"] = sorted(keys)
    truth["perturbation"] = {"mode": mode, "share": share, "change": change, "seed": seed}
    (out_dir / truth_path.name).write_bytes(orjson.dumps(truth))
    return {"keys": len(keys), "events_changed": changed}


def fraction(text: str) -> float:
    """A command-line number in [0, 1], or an argparse error that says what is wrong."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--mode", choices=MODES, default="temperature", help="the habit to give them")
    ap.add_argument("--events", required=True, type=Path, help="a simulated seed{S}.jsonl, its truth beside it")
    ap.add_argument("--out", required=True, type=Path, help="folder for the copy and its truth")
    ap.add_argument("--share", type=fraction, default=0.3,
                    help="share of the benign people-facing keys changed (default 0.3)")
    ap.add_argument("--change", type=fraction, default=1.0, help=CHANGE_HELP)
    ap.add_argument("--seed", type=int, default=5, help="seed of the temperature draws")
    args = ap.parse_args(argv)
    if not args.events.name.endswith(".jsonl"):
        ap.error(f"--events {args.events}: expected a seed{{S}}.jsonl file from moatwatch simulate")
    for p in (args.events, truth_of(args.events)):
        if not p.exists():
            ap.error(f"{p} does not exist")
    if args.out.resolve() == args.events.parent.resolve():
        ap.error("--out must be another folder: the copy keeps the file names")
    res = perturb(args.events, args.out, args.share, args.change, args.seed, args.mode)
    print(f"{args.events.name}: {res['keys']} keys ({args.mode}); their "
          f"{res['events_changed']:,} events rewritten -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
