"""Why did (or did not) a key fire? Every evaluation point of chosen keys, as the engine saw it.

Runs a file of QueryEvent v1 lines through the per-key detector the way ``moatwatch replay``
does (one partition, event-time housekeeping; no campaigns) and, for each evaluation of the
keys asked for, prints what the engine computed there: the key's event count, minutes since
its first event, the direction score ``s_dir``, the score after the population's outlier
modulation, the HalfSpaceTrees outlier score, the threshold, the key's slow baseline, its
Page-Hinkley state (evaluations since the last reset and their running mean), minutes since
its last upward drift, the pre-change level the change path measures from (key-0.19), the
change counter, and the alert the evaluation emitted, if any. ``--vector`` adds the direction
features (``models.features.FEATURES``; ``nan`` = unknown: the gateway does not send the field).

    .venv/bin/python bench/trace_key.py --events /tmp/mwsim/seed3.jsonl --key ak_0123 --every 10
    .venv/bin/python bench/trace_key.py --events E.jsonl --key ak_a --key ak_b --json trace.jsonl

The values are the engine's own, captured by wrapping its calls (``_direction``,
``_threshold``, the population's ``score_then_learn``), not recomputed after the fact: the
population learns at each evaluation, so a recomputation would differ. ``--every N`` prints
one evaluation in N plus every one that emitted an alert or saw an upward drift; ``--json``
writes every evaluation. Invalid lines are skipped and counted (``moatwatch replay`` writes
them to its dead-letter file). A diagnostic script: it exits 0 unless it cannot run, and 1
when none of the keys has an event in the file.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models import features as F  # noqa: E402
from models.engine import DetectionCore  # noqa: E402
from schemas.validation import InvalidEvent  # noqa: E402
from streams.pipeline import Detector, decode  # noqa: E402
from streams.progress import Progress  # noqa: E402
from streams.replay import _open_input  # noqa: E402


class _TracingCore(DetectionCore):
    """A detection core that records each evaluation of the traced keys."""

    def __init__(self, config: Any, *, feedback: Any, keys: frozenset[str], rows: list[dict]) -> None:
        super().__init__(config, feedback=feedback)
        self._trace_keys = keys
        self._rows = rows
        self._seen: tuple | None = None
        self._thr: float | None = None
        self._hst: float | None = None
        learn = self.population.score_then_learn

        def score_then_learn(vec, score_hint, do_learn):
            self._hst = learn(vec, score_hint, do_learn)
            return self._hst

        self.population.score_then_learn = score_then_learn

    def _direction(self, ks):
        out = super()._direction(ks)
        if self._seen is None:  # the evaluation's own call (the first)
            self._seen = out
        return out

    def _threshold(self, ks, ts, s_dir):
        self._thr = super()._threshold(ks, ts, s_dir)
        return self._thr

    def _evaluate(self, k, ks, event, out):
        if k not in self._trace_keys:
            super()._evaluate(k, ks, event, out)
            return
        self._seen, self._thr, self._hst = None, None, None
        n0 = len(out)
        super()._evaluate(k, ks, event, out)
        vec, s_dir, _ = self._seen
        f = ks.f
        ts = f[F.F_LAST]
        drift = f[F.F_DRIFT_TS]
        alert = out[-1] if len(out) > n0 else None
        self._rows.append({
            "api_key": k,
            "events": ks.events,
            "ts": ts,
            "minutes": (ts - f[F.F_FIRST]) / 60.0,
            "s_dir": s_dir,
            "score": f[F.F_SCORE],
            "outlier": self._hst,
            "threshold": self._thr,
            "baseline": f[F.F_BASE],
            "ph_n": int(f[F.F_PH_N]),
            "ph_mean": f[F.F_PH_MEAN],
            "drift_minutes_ago": (ts - drift) / 60.0 if drift > 0 else None,
            "change_ref": f[F.F_CHANGE_REF],
            "change_evals": int(f[F.F_CHANGE]),
            "alert": None if alert is None else {"status": alert["status"], "detector": alert["detector"],
                                                 "severity": alert["severity"], "score": alert["score"]},
            "features": {n: (None if v != v else round(v, 4)) for n, v in zip(F.FEATURES, vec, strict=True)},
        })


def trace(events_path: str, keys: list[str], progress: bool | None = None) -> tuple[list[dict], dict]:
    """Every evaluation of ``keys`` over the events file; returns (rows, counts)."""
    rows: list[dict] = []
    wanted = frozenset(keys)
    det = Detector(1, core_factory=lambda config, feedback: _TracingCore(
        config, feedback=feedback, keys=wanted, rows=rows))
    counts = {"events": 0, "invalid": 0, "key_events": dict.fromkeys(keys, 0)}
    src, size = _open_input(events_path)  # replay's: plain or gzip, a clear error if unreadable
    raw_size = not events_path.endswith(".gz")
    bar = Progress(size, "trace", enabled=progress)
    with src:
        for line in src:
            if not line.strip():
                continue
            try:
                ev = decode(line.rstrip(b"\r\n"))
            except InvalidEvent:
                counts["invalid"] += 1
                continue
            counts["events"] += 1
            if ev["api_key"] in counts["key_events"]:
                counts["key_events"][ev["api_key"]] += 1
            det.process(ev)
            if bar.enabled and not (counts["events"] & 1023):
                bar.update(src.tell() if raw_size else size * 0.5, f"{counts['events']:,} ev")
    bar.close()
    return rows, counts


def _num(x: float | None, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{nd}f}"


def format_rows(rows: list[dict], every: int, vector: bool) -> str:
    head = (f"{'events':>6} {'min':>7} {'s_dir':>6} {'score':>6} {'hst':>5} {'thr':>5} {'base':>6} "
            f"{'ph_n':>5} {'ph_mean':>7} {'drift':>6} {'ref':>6} {'chg':>3}  alert")
    out: list[str] = []
    by_key: dict[str, list[dict]] = {}
    for r in rows:
        by_key.setdefault(r["api_key"], []).append(r)
    for key, rs in by_key.items():
        out.append(f"{key}: {len(rs)} evaluations")
        out.append(head + ("  " + " ".join(F.FEATURES) if vector else ""))
        for i, r in enumerate(rs):
            recent = r["drift_minutes_ago"] is not None and r["ph_n"] == 0
            if i % every and r["alert"] is None and not recent:
                continue
            a = r["alert"]
            line = (f"{r['events']:>6} {r['minutes']:>7.1f} {_num(r['s_dir']):>6} {_num(r['score']):>6} "
                    f"{_num(r['outlier'], 2):>5} {_num(r['threshold'], 2):>5} {_num(r['baseline']):>6} "
                    f"{r['ph_n']:>5} {_num(r['ph_mean']):>7} {_num(r['drift_minutes_ago'], 1):>6} "
                    f"{_num(r['change_ref']):>6} {r['change_evals']:>3}  "
                    + (f"{a['status']} {a['detector']} ({a['severity']})" if a else ""))
            if vector:
                line += "  " + " ".join(_num(v, 2) for v in r["features"].values())
            out.append(line)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", required=True, help="QueryEvent v1 JSON lines (.jsonl or .jsonl.gz)")
    ap.add_argument("--key", action="append", required=True, help="api_key to trace (repeatable)")
    ap.add_argument("--every", type=int, default=1,
                    help="print one evaluation in N, plus every alert and upward drift (default 1)")
    ap.add_argument("--vector", action="store_true", help="also print the direction features")
    ap.add_argument("--json", metavar="FILE", help="write every evaluation as JSON lines")
    args = ap.parse_args(argv)
    if args.every < 1:
        ap.error(f"--every must be >= 1, got {args.every}")
    if not os.path.isfile(args.events):
        ap.error(f"--events {args.events!r} is not a file: pass a JSON-lines file of QueryEvent v1")
    rows, counts = trace(args.events, args.key)
    absent = [k for k, n in counts["key_events"].items() if n == 0]
    for k in absent:
        print(f"trace_key: {k} has no valid event in {args.events}", file=sys.stderr)
    if args.json:
        with open(args.json, "wb") as fh:
            for r in rows:
                fh.write(orjson.dumps(r) + b"\n")
    if rows:
        print(format_rows(rows, args.every, args.vector))
    print(f"{counts['events']:,} events read, {counts['invalid']:,} invalid lines skipped; "
          + ", ".join(f"{k}: {n} events" for k, n in counts["key_events"].items()))
    return 1 if len(absent) == len(args.key) else 0


if __name__ == "__main__":
    sys.exit(main())
