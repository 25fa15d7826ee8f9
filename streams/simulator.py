"""Labelled QueryEvent v1 traffic: a benign background shaped by real traces, plus attacks.

``simulate`` writes one JSON event per line, sorted by ``ts``, and a truth file naming every
key's label, persona and attack start. It is the ground truth the evaluation harness scores
alerts against, so two rules shape everything here:

* The benign background is not invented where real data exists. Inter-arrival gaps are block-
  bootstrapped from the Azure LLM inference traces (so bursts look like production bursts),
  prompt/completion lengths are drawn from the Azure and Mooncake traces, and prompt
  near-duplicates follow Mooncake's shared-prefix blocks (how often real prompts share a
  prefix, and how much of it). Other traces can take their place (``--traces DIR``): any CSV
  or JSON-lines trace with prompt- and answer-length columns, recognised by its columns, not
  its file name (:func:`trace_roles`), so the detector can be checked on backgrounds it was
  never tuned on.
* Nothing an attacker does is a constant. Every attack parameter (rate, CoT share, template
  count and tightness, token lengths, timing regularity, sampling options, network, user agent,
  which optional fields its gateway sends) is drawn per key and per seed from a range that
  overlaps some benign persona. A detector that keys on a simulator constant will not
  generalise, and the project's targets are also checked on traffic this module never made.

Pure Python + numpy + orjson; no Faust or Kafka imports (``moatwatch simulate`` runs offline).

``prompt_simhash`` models a SimHash of the request's *new* prompt content (system prompt,
template and latest user message; conversation history excluded). Prompts that share a
fraction ``s`` of their weighted content get simhashes whose bits differ with probability
close to ``arccos(s) / pi`` (Charikar's bound), so templated prompts land a few bits apart,
shared long prefixes ten or so bits apart, and unrelated prompts ~32 bits apart.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import orjson

__all__ = [
    "ATTACK_PERSONAS",
    "BENIGN_PERSONAS",
    "DEFAULT_START_TS",
    "HARD_NEGATIVE_PERSONAS",
    "TOPICS",
    "TRUTH_SCHEMA",
    "TracesNotFoundError",
    "format_summary",
    "resolve_traces_dir",
    "simulate",
    "trace_roles",
]

#: Schema tag of the truth file.
TRUTH_SCHEMA = "moatwatch.truth/v1"
#: 2026-01-05T00:00:00Z, a Monday: the default start of simulated time.
DEFAULT_START_TS = 1767571200.0
#: Topic labels of QueryEvent v1, in a fixed order (indices are used internally).
TOPICS = ("chat", "writing", "code", "math", "science", "reasoning", "other")
_T = {name: i for i, name in enumerate(TOPICS)}
_CORE = np.array([_T["code"], _T["math"], _T["science"], _T["reasoning"]])

BENIGN_PERSONAS = (
    "light_user",
    "light_user_cgnat",
    "reseller_user",
    "chat_app",
    "coding_agent",
    "rag_batch",
    "eval_harness",
    "ci_suite",
    "reasoning_app",
)
ATTACK_PERSONAS = (
    "bulk_distiller",
    "drifter",
    "low_and_slow",
    "mimicry",
    "campaign_template",
    "campaign_infra",
)
#: Benign personas that share surface traits with distillation (issue 3's hard negatives).
HARD_NEGATIVE_PERSONAS = frozenset({"rag_batch", "eval_harness", "ci_suite", "coding_agent"})

#: The bundled traces' file names. A folder that holds them uses exactly these, each in its
#: usual part, so every documented seed stays byte-identical.
_CANONICAL = {
    "conv": "azure_llm_2023_conv.csv",
    "code": "azure_llm_2023_code.csv",
    "prefix": "mooncake_conversation_trace.jsonl",
}
#: Column (CSV header) or key (JSON lines) names a trace may use, compared lower-case with
#: everything but letters and digits removed ("Request tokens" = "request_tokens").
_TIME_NAMES = ("timestamp", "time", "ts", "arrivaltime", "arrivaltimestamp", "datetime",
               "timestampms", "starttime", "requesttime", "created")
_PROMPT_NAMES = ("contexttokens", "requesttokens", "inputtokens", "inputlength", "prompttokens",
                 "numprompttokens", "inputlen", "prompttokencount", "inputtokencount",
                 "contextlength", "promptlength", "numinputtokens", "promptlen", "prefilltokens")
_ANSWER_NAMES = ("generatedtokens", "responsetokens", "outputtokens", "outputlength",
                 "completiontokens", "numcompletiontokens", "outputlen", "completiontokencount",
                 "outputtokencount", "responselength", "completionlength", "numoutputtokens",
                 "generatedlength", "decodetokens")
#: At most this many rows are read from one file (the first ones): a week-long trace would
#: otherwise take minutes to load, and the simulator only resamples its distributions.
MAX_TRACE_ROWS = 1_000_000
#: A file with fewer usable rows than this is not used (too few to bootstrap bursts from).
MIN_TRACE_ROWS = 500
_U64 = np.uint64


class TracesNotFoundError(FileNotFoundError):
    """The real traffic traces the benign background is built from are not where expected."""


# --------------------------------------------------------------------------------------------
# Real traces


def _traces_hint() -> str:
    return (
        "The simulator builds its benign background from real LLM-serving traces: CSV files "
        "with a header or JSON-lines files, one request per row, with a prompt-length column "
        "(e.g. ContextTokens, Request tokens, input_length), an answer-length column (e.g. "
        "GeneratedTokens, Response tokens, output_length) and, for arrival bursts, a timestamp "
        "(e.g. TIMESTAMP, Timestamp, timestamp); Mooncake's hash_ids, when present, give prompt "
        "prefix sharing. Put such files there, or point to them with --traces DIR or "
        "MOATWATCH_TRACES=DIR."
    )


def resolve_traces_dir(traces_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find the directory holding the real traces.

    Order: the explicit argument, then ``$MOATWATCH_TRACES``, then ``<repo>/../shared/data``
    (where CI checks the shared data out next to the repository). Which files in it are used,
    and for what, is :func:`trace_roles`.

    Raises
    ------
    TracesNotFoundError
        If the directory does not exist or holds no usable trace, with what to do about it.
    """
    if traces_dir is not None:
        where, how = Path(traces_dir), "--traces"
    elif os.environ.get("MOATWATCH_TRACES"):
        where, how = Path(os.environ["MOATWATCH_TRACES"]), "MOATWATCH_TRACES"
    else:
        where, how = Path(__file__).resolve().parents[1].parent / "shared" / "data", "default"
    if not where.is_dir():
        raise TracesNotFoundError(f"real traffic traces not found: {where} ({how}) is not a "
                                  f"directory. {_traces_hint()}")
    trace_roles(str(where.resolve()), how)
    return where


def _norm(name: object) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def _find(names: list[str], wanted: tuple[str, ...]) -> int | None:
    """Index of the first of ``names`` matching ``wanted`` (in ``wanted``'s order of preference)."""
    normed = [_norm(n) for n in names]
    for w in wanted:
        if w in normed:
            return normed.index(w)
    return None


@dataclass(frozen=True)
class _TraceFile:
    """One trace file's usable rows: prompt and answer tokens, arrival gaps, prefix blocks."""

    path: Path
    prompt: np.ndarray
    answer: np.ndarray
    gaps: np.ndarray | None  # :func:`_unit_gaps_of` its timestamps; None without usable ones
    blocks: list[tuple[int, ...]] | None  # Mooncake-style hash_ids per row, None when absent


def _as_count(v: Any) -> int | None:
    """A token count from a CSV cell or JSON value; None if it is not a positive number."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x) or x < 1:
        return None
    return int(x)


def _trace_suffix(path: Path) -> str:
    """``.csv`` or ``.jsonl`` for a trace file, whether or not it is gzip-compressed."""
    name = path.name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    return Path(name).suffix


def _open_trace(path: Path, *, text: bool) -> Any:
    if path.name.lower().endswith(".gz"):
        raw = gzip.open(path, "rb")
        return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="") if text else raw
    return path.open(newline="", encoding="utf-8", errors="replace") if text else path.open("rb")


#: One trace row as the readers give it: (timestamp or None, prompt length, answer length,
#: Mooncake hash_ids or None), the lengths not yet checked.
_Row = tuple[Any, Any, Any, Any]


def _csv_rows(fh: Any) -> tuple[bool, bool, Iterator[_Row]]:
    """A CSV trace's rows, its columns found by header name: (has time, has blocks, rows)."""
    rows = csv.reader(fh)
    header = next(rows, None)
    if not header:
        raise ValueError("empty file")
    ti, pi, ai = (_find(header, _TIME_NAMES), _find(header, _PROMPT_NAMES),
                  _find(header, _ANSWER_NAMES))
    if pi is None or ai is None:
        raise ValueError(f"no {'prompt' if pi is None else 'answer'}-length column in "
                         f"its header {header[:8]}")
    width = max(pi, ai, -1 if ti is None else ti)
    return ti is not None, False, ((None if ti is None else r[ti], r[pi], r[ai], None)
                                   for r in rows if len(r) > width)


def _json_records(fh: Any) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; blank, unreadable and non-object lines skipped."""
    for line in fh:
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            yield rec


def _jsonl_rows(fh: Any) -> tuple[bool, bool, Iterator[_Row]]:
    """A JSON-lines trace's rows, its keys found by name in the first record."""
    recs = _json_records(fh)
    first = next(recs, None)
    if first is None:
        raise ValueError("no JSON record in it")
    names = list(first)
    ti, pi, ai = (_find(names, _TIME_NAMES), _find(names, _PROMPT_NAMES),
                  _find(names, _ANSWER_NAMES))
    if pi is None or ai is None:
        raise ValueError(f"no {'prompt' if pi is None else 'answer'}-length key "
                         f"in its first record {names[:8]}")
    hi = _find(names, ("hashids",))
    tk, pk, ak = (None if ti is None else names[ti]), names[pi], names[ai]
    hk = None if hi is None else names[hi]

    def rows() -> Iterator[_Row]:
        for rec in itertools.chain((first,), recs):
            b = None if hk is None else rec.get(hk)
            yield (None if tk is None else rec.get(tk), rec.get(pk), rec.get(ak),
                   tuple(b) if isinstance(b, list) else ())

    return tk is not None, hk is not None, rows()


def _read_trace(path: Path) -> _TraceFile:
    """Read a CSV (with a header) or JSON-lines trace, either gzip-compressed (``.csv.gz``,
    ``.jsonl.gz``); ValueError says why it is not usable.

    Rows without a positive prompt and answer length (failed requests, blanks) are left out.
    """
    suffix = _trace_suffix(path)
    if suffix not in (".csv", ".jsonl"):
        raise ValueError("not a .csv or .jsonl file (or either gzip-compressed)")
    prompt: list[int] = []
    answer: list[int] = []
    stamps: list[Any] = []
    blocks: list[tuple[int, ...]] = []
    text = suffix == ".csv"
    with _open_trace(path, text=text) as fh:
        has_time, has_blocks, rows = (_csv_rows if text else _jsonl_rows)(fh)
        for stamp, p_raw, a_raw, b in rows:
            if len(prompt) >= MAX_TRACE_ROWS:
                break
            p, a = _as_count(p_raw), _as_count(a_raw)
            if p is None or a is None:
                continue
            prompt.append(p)
            answer.append(a)
            if has_time:
                stamps.append(stamp)
            if has_blocks:
                blocks.append(b)
    if len(prompt) < MIN_TRACE_ROWS:
        raise ValueError(f"only {len(prompt)} usable rows (at least {MIN_TRACE_ROWS} needed)")
    return _TraceFile(path, np.array(prompt, dtype=np.int64), np.array(answer, dtype=np.int64),
                      _unit_gaps_of(stamps) if has_time else None,
                      blocks if has_blocks else None)


#: A date-time's trailing zone designator: ``Z``, ``+02:00``, ``-0500`` (after a time of day).
_ZONE = re.compile(r"(?<=\d)(?:Z|[+-]\d{2}:?\d{2})$", re.IGNORECASE)


def _unit_gaps_of(stamps: list[Any] | None) -> np.ndarray | None:
    """Inter-arrival gaps normalised to mean 1 (units do not matter), or None if unusable.

    Timestamps are numbers (seconds, milliseconds, ...) or date-times such as
    ``2023-11-16 18:17:03.9799600`` or ``2024-05-10T00:00:01Z``. A zone designator (``Z``,
    ``+00:00``) is dropped: only the gaps matter, and a trace keeps one zone.
    """
    if not stamps:
        return None
    try:
        ts = np.array([float(v) for v in stamps], dtype=np.float64)
    except (TypeError, ValueError):
        try:
            dt = np.array([_ZONE.sub("", str(v).strip()).replace(" ", "T")[:26] for v in stamps],
                          dtype="datetime64[us]")
        except ValueError:
            return None
        ts = (dt - dt.min()).astype(np.float64) / 1e6
    if not np.isfinite(ts).all():
        return None
    ts = _spread_ties(np.sort(ts))
    gaps = np.diff(ts)
    if len(gaps) < MIN_TRACE_ROWS - 1 or not gaps.mean() > 0:
        return None
    # A service trace holds a few multi-minute lulls of the whole service (557x the mean gap in
    # the Azure code trace); bootstrapped onto one key they would become hour-long silences.
    # Keep the bursts, clip the lulls at the 99th percentile.
    gaps = np.minimum(gaps, np.percentile(gaps, 99))
    return gaps / gaps.mean()


def _spread_ties(ts: np.ndarray) -> np.ndarray:
    """Sorted timestamps with each run of equal values spread within one tick of the clock.

    A trace stamped to the second (Mooncake's) holds several requests per stamp; taken as
    they are they would arrive at once, a burst no service saw. Given k arrivals in an
    interval, the times of a Poisson process are k uniform draws there, so a run of k ties
    keeps its first stamp and its other k - 1 requests are placed at sorted uniform points
    within one tick of the trace's clock (its smallest positive step), never past the next
    stamp (a fixed seed: loading stays deterministic). A trace without ties (the Azure ones,
    stamped to the microsecond) is returned unchanged.
    """
    if len(ts) < 2:
        return ts
    step = np.diff(ts)
    if not (step == 0).any():
        return ts
    positive = step[step > 0]
    if not len(positive):
        return ts
    out = ts.astype(np.float64).copy()
    starts = np.flatnonzero(np.r_[True, step > 0])  # first index of each run of equal stamps
    ends = np.r_[starts[1:], len(ts)]
    tick = float(np.min(positive))
    nxt = np.r_[ts[starts[1:]], ts[-1] + tick]  # the next stamp
    rng = np.random.default_rng(0)
    for a, b, t_next in zip(starts.tolist(), ends.tolist(), nxt.tolist(), strict=True):
        k = b - a
        if k > 1:
            span = min(t_next - ts[a], tick)
            out[a + 1:b] = ts[a] + span * np.sort(rng.random(k - 1))
    return out


def _prefix_sharing(files: list[_TraceFile]) -> tuple[np.ndarray, np.ndarray]:
    """Per request: the fraction of its prefix blocks shared with an earlier request of the
    same file, and an id of that shared prefix (0 when nothing is shared). Files without
    blocks share nothing."""
    shares: list[float] = []
    groups: list[int] = []
    seen: dict[tuple[Any, ...], int] = {}
    for fi, tf in enumerate(files):
        if tf.blocks is None:
            shares.extend([0.0] * len(tf.prompt))
            groups.extend([0] * len(tf.prompt))
            continue
        for blocks in tf.blocks:
            key = (fi, *blocks)
            shared = 0
            while shared < len(blocks) and key[: shared + 2] in seen:
                shared += 1
            for k in range(shared + 1, len(blocks) + 1):
                seen[key[: k + 1]] = len(seen) + 1
            shares.append(shared / len(blocks) if blocks else 0.0)
            groups.append(seen[key[: shared + 1]] if shared else 0)
    return np.array(shares, dtype=np.float64), np.array(groups, dtype=np.uint64)


@dataclass(frozen=True)
class TraceRoles:
    """Which trace files drive which part of the benign background, and why."""

    conv: tuple[Path, ...]  # conversational service: chat lengths and arrival bursts
    code: tuple[Path, ...]  # code service: coding tools' lengths and bursts
    prefix: tuple[Path, ...]  # prompt/answer lengths with prefix sharing (Mooncake hash_ids)
    notes: tuple[str, ...]  # fallbacks taken and files left out, for the summary
    conv_bursts: tuple[Path, ...]  # whose arrival gaps the conversational part resamples
    code_bursts: tuple[Path, ...]  # ... and the code part
    borrowed: tuple[str, ...] = ()  # parts with no file of their own (a note names the donor)

    def describe(self) -> dict[str, Any]:
        return {"conv": [p.name for p in self.conv], "code": [p.name for p in self.code],
                "prefix": [p.name for p in self.prefix], "notes": list(self.notes),
                "borrowed": list(self.borrowed)}


@lru_cache(maxsize=8)
def _read_cached(path: str, mtime_ns: int, size: int) -> _TraceFile:
    return _read_trace(Path(path))


def _read(path: Path) -> _TraceFile:
    st = path.stat()
    return _read_cached(str(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=4)
def trace_roles(where: str, how: str = "--traces") -> TraceRoles:
    """Assign the trace files in ``where`` to the simulator's three parts.

    The bundled file names (:data:`_CANONICAL`) keep their parts. Any other ``.csv`` (with a
    header) or ``.jsonl`` file, plain or ``.gz``, with prompt- and answer-length columns is read: one with
    ``hash_ids`` feeds prefix sharing, one with "code" in its name the code service, the rest
    the conversational service (several files of a part are pooled). A part with no file
    borrows one: conversations from the code or prefix traces, code from conversations,
    prefix lengths from conversations (with no prefix sharing then). Raises
    :class:`TracesNotFoundError` when nothing in the folder is usable, naming each file and
    why it was left out.
    """
    root = Path(where)
    roles: dict[str, list[Path]] = {"conv": [], "code": [], "prefix": []}
    notes: list[str] = []
    problems: list[str] = []
    canonical = {r: root / n for r, n in _CANONICAL.items() if (root / n).is_file()}
    for role, path in canonical.items():
        roles[role].append(path)
    if len(canonical) < len(_CANONICAL):
        taken = set(canonical.values())
        for path in sorted(p for p in root.iterdir() if p.is_file() and p not in taken):
            if _trace_suffix(path) not in (".csv", ".jsonl"):
                continue
            try:
                tf = _read(path)
            except (OSError, EOFError, ValueError) as exc:  # EOFError: a cut-off .gz
                problems.append(f"{path.name}: {exc}")
                continue
            role = "prefix" if tf.blocks is not None else (
                "code" if "code" in path.name.lower() else "conv")
            if role in canonical:
                notes.append(f"{path.name} not used: {canonical[role].name} is the {role} trace")
                continue
            roles[role].append(path)
    if not any(roles.values()):
        found = ", ".join(problems) if problems else "no .csv or .jsonl file (plain or .gz)"
        raise TracesNotFoundError(f"no usable real traffic trace in {root} ({how}): {found}. "
                                  f"{_traces_hint()}")
    notes.extend(f"{p} (not used)" for p in problems)
    borrowed = tuple(r for r in ("conv", "code", "prefix") if not roles[r])
    if not roles["conv"]:
        roles["conv"] = list(roles["code"] or roles["prefix"])
        notes.append("conv: no conversational trace, using " + ", ".join(p.name for p in roles["conv"]))
    if not roles["code"]:
        roles["code"] = list(roles["conv"])
        notes.append("code: no code-service trace, using " + ", ".join(p.name for p in roles["code"]))
    if not roles["prefix"]:
        roles["prefix"] = list(roles["conv"])
        notes.append("prefix: no trace with hash_ids, so no prefix sharing; lengths from "
                     + ", ".join(p.name for p in roles["prefix"]))
    bursts: dict[str, tuple[Path, ...]] = {}
    for role in ("conv", "code"):
        bursts[role] = tuple(p for p in roles[role] if _read(p).gaps is not None)
        if not bursts[role]:
            donors = [p for r in ("conv", "code", "prefix") for p in roles[r]
                      if _read(p).gaps is not None]
            if not donors:
                raise TracesNotFoundError(
                    f"no trace in {root} ({how}) has usable timestamps, so there are no real "
                    f"arrival bursts to resample. {_traces_hint()}")
            bursts[role] = (donors[0],)
            notes.append(f"{role}: no timestamps, arrival bursts from {donors[0].name}")
    return TraceRoles(tuple(roles["conv"]), tuple(roles["code"]), tuple(roles["prefix"]),
                      tuple(notes), bursts["conv"], bursts["code"], borrowed)


@dataclass(frozen=True)
class Traces:
    """Arrays drawn from the real traces (immutable, shared by every key)."""

    conv_ctx: np.ndarray  # conversational service (Azure conv): prompt (context) tokens
    conv_gen: np.ndarray  # ... and generated tokens of the same request
    code_ctx: np.ndarray  # code service (Azure code)
    code_gen: np.ndarray
    conv_gaps: np.ndarray  # inter-arrival gaps, normalised to mean 1, in trace order
    code_gaps: np.ndarray
    moon_in: np.ndarray  # prefix trace (Mooncake) input/output lengths
    moon_out: np.ndarray
    moon_share: np.ndarray  # fraction of the prompt's blocks shared with an earlier prompt
    moon_group: np.ndarray  # id of that shared prefix (uint64), 0 when nothing is shared
    roles: TraceRoles | None = field(default=None, compare=False)


def _lengths_and_gaps(paths: tuple[Path, ...], bursts: tuple[Path, ...]) -> tuple[np.ndarray, ...]:
    files = [_read(p) for p in paths]
    ctx = np.concatenate([f.prompt for f in files])
    gen = np.concatenate([f.answer for f in files])
    return ctx, gen, np.concatenate([_read(p).gaps for p in bursts])


@lru_cache(maxsize=4)
def _load_traces(where: str) -> Traces:
    r = trace_roles(where)
    code_ctx, code_gen, code_gaps = _lengths_and_gaps(r.code, r.code_bursts)
    conv_ctx, conv_gen, conv_gaps = _lengths_and_gaps(r.conv, r.conv_bursts)
    files = [_read(p) for p in r.prefix]
    m_share, m_group = _prefix_sharing(files)
    return Traces(conv_ctx, conv_gen, code_ctx, code_gen, conv_gaps, code_gaps,
                  np.concatenate([f.prompt for f in files]), np.concatenate([f.answer for f in files]),
                  m_share, m_group, r)


# --------------------------------------------------------------------------------------------
# Small numeric helpers


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a cheap, well-spread 64-bit hash of uint64 values."""
    with np.errstate(over="ignore"):
        z = x.astype(_U64) + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


_BITS = (np.uint64(1) << np.arange(64, dtype=np.uint64))


def _flip(rng: np.random.Generator, base: np.ndarray, q: np.ndarray | float) -> np.ndarray:
    """Flip each of the 64 bits of every ``base`` value independently with probability ``q``."""
    base = np.asarray(base, dtype=_U64)
    if base.size == 0:
        return base
    q = np.broadcast_to(np.asarray(q, dtype=np.float64), base.shape)
    out = base.copy()
    for lo in range(0, base.size, 8192):
        hi = min(lo + 8192, base.size)
        bits = rng.random((hi - lo, 64)) < q[lo:hi, None]
        out[lo:hi] ^= np.bitwise_or.reduce(np.where(bits, _BITS, _U64(0)), axis=1)
    return out


def _q_for_share(share: np.ndarray | float) -> np.ndarray:
    """Per-bit flip probability around a family base that makes two members sharing a
    fraction ``share`` of content differ in ``arccos(share)/pi`` of their bits (pairwise)."""
    d = np.arccos(np.clip(share, 0.0, 1.0)) / math.pi
    return (1.0 - np.sqrt(np.maximum(1.0 - 2.0 * d, 0.0))) / 2.0


def _rand64(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2**64, size=n, dtype=_U64)


def _hexid(rng: np.random.Generator, prefix: str, nhex: int = 12) -> str:
    return f"{prefix}{int(rng.integers(0, 2**63)):016x}"[: len(prefix) + nhex]


def _lognormal(rng: np.random.Generator, median: float, sigma: float, n: int) -> np.ndarray:
    return median * np.exp(sigma * rng.standard_normal(n))


def _draw(rng: np.random.Generator, values: np.ndarray, n: int) -> np.ndarray:
    return values[rng.integers(0, len(values), size=n)]


# Human activity by local hour (0..23): quiet at night, a morning ramp, busy in the evening.
_HUMAN_CURVE = np.array([0.35, 0.2, 0.1, 0.06, 0.05, 0.06, 0.12, 0.3, 0.55, 0.75, 0.85, 0.9,
                         0.85, 0.88, 0.9, 0.88, 0.85, 0.85, 0.9, 0.95, 1.0, 0.95, 0.8, 0.55])
_OFFICE_CURVE = np.array([0, 0, 0, 0, 0, 0, 0, 0.02, 0.3, 0.85, 1.0, 1.0,
                          0.6, 0.85, 1.0, 1.0, 0.9, 0.55, 0.15, 0.03, 0, 0, 0, 0], dtype=float)


def _curve(curve: np.ndarray, local_hour: np.ndarray) -> np.ndarray:
    h = np.mod(local_hour, 24.0)
    i = np.floor(h).astype(int)
    f = h - i
    return curve[i] * (1 - f) + curve[(i + 1) % 24] * f


def _human_tz(rng: np.random.Generator) -> float:
    """UTC offset (hours) of a human-driven key: a rough mix of where API users live."""
    region = rng.choice(4, p=[0.32, 0.3, 0.3, 0.08])
    lo, hi = [(-8, -4), (-1, 3), (5, 10), (-3, 12)][region]
    return float(rng.integers(lo, hi + 1)) + (0.5 if rng.random() < 0.05 else 0.0)


# --------------------------------------------------------------------------------------------
# Simulated time and arrivals


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    step: float = 60.0

    @property
    def grid(self) -> np.ndarray:
        n = max(2, int(math.ceil((self.end - self.start) / self.step)) + 1)
        return np.linspace(self.start, self.start + (n - 1) * self.step, n)

    def local_hour(self, t: np.ndarray, tz: float) -> np.ndarray:
        return np.mod(t / 3600.0 + tz, 24.0)


def _unit_gaps(rng: np.random.Generator, mode: str, n: int, traces: Traces,
               shape: float = 1.0) -> np.ndarray:
    """``n`` inter-arrival gaps with mean 1 in the requested style.

    ``conv``/``code`` block-bootstrap the real traces (contiguous runs keep their bursts);
    ``gamma`` with ``shape`` k has coefficient of variation 1/sqrt(k) (k=1 is Poisson).
    """
    if mode == "gamma":
        return rng.gamma(shape, 1.0 / shape, size=n)
    src = traces.conv_gaps if mode == "conv" else traces.code_gaps
    out = np.empty(n)
    filled = 0
    while filled < n:
        run = int(min(n - filled, rng.integers(20, 400)))
        start = int(rng.integers(0, len(src) - run))
        out[filled: filled + run] = src[start: start + run]
        filled += run
    return out


def _arrivals(rng: np.random.Generator, traces: Traces, t0: float, t1: float,
              rate: Callable[[np.ndarray], np.ndarray], mode: str = "gamma",
              shape: float = 1.0) -> np.ndarray:
    """Arrival times in [t0, t1) for a time-varying rate (events/s) and a gap style.

    Gaps are drawn in operational time (unit mean) and mapped through the inverse of the
    cumulative intensity, so diurnal modulation and real burst structure compose.
    """
    if t1 <= t0:
        return np.empty(0)
    n_grid = max(2, int(math.ceil((t1 - t0) / 60.0)) + 1)
    grid = np.linspace(t0, t1, n_grid)
    lam = np.maximum(rate(grid), 0.0) + 1e-12
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (lam[1:] + lam[:-1]) * np.diff(grid))])
    total = cum[-1]
    if total < 1e-6:
        return np.empty(0)
    n_draw = int(total * 1.3 + 10 * math.sqrt(total) + 20)
    s = np.cumsum(_unit_gaps(rng, mode, n_draw, traces, shape))
    s -= rng.random() * s[0]  # random phase: the process did not start at t0
    while s[-1] < total:
        more = np.cumsum(_unit_gaps(rng, mode, n_draw, traces, shape)) + s[-1]
        s = np.concatenate([s, more])
    s = s[(s >= 0) & (s < total)]
    return np.interp(s, cum, grid)


# --------------------------------------------------------------------------------------------
# Per-key columns


@dataclass
class Cols:
    """Column-wise requests of one key (before status, latency and field dropping)."""

    ts: np.ndarray
    prompt: np.ndarray
    completion: np.ndarray
    topic: np.ndarray  # index into TOPICS
    cot: np.ndarray
    simhash: np.ndarray  # uint64
    conv: list[str | None]
    turn: np.ndarray  # 0 = single request, no conversation
    temperature: np.ndarray  # nan = not sent
    logprobs: np.ndarray
    top_logprobs: np.ndarray  # 0 = not sent
    n: np.ndarray
    max_tokens: np.ndarray  # 0 = not sent
    stream: np.ndarray

    @staticmethod
    def empty() -> Cols:
        return Cols.build(np.empty(0))

    @staticmethod
    def build(ts: np.ndarray, **cols: Any) -> Cols:
        k = len(ts)
        base: dict[str, Any] = dict(
            prompt=np.zeros(k, np.int64), completion=np.zeros(k, np.int64),
            topic=np.full(k, _T["chat"], np.int64), cot=np.zeros(k, bool),
            simhash=np.zeros(k, _U64), conv=[None] * k, turn=np.zeros(k, np.int64),
            temperature=np.full(k, np.nan), logprobs=np.zeros(k, bool),
            top_logprobs=np.zeros(k, np.int64), n=np.ones(k, np.int64),
            max_tokens=np.zeros(k, np.int64), stream=np.zeros(k, bool),
        )
        base.update(cols)
        return Cols(ts=np.asarray(ts, dtype=np.float64), **base)

    def __len__(self) -> int:
        return len(self.ts)

    @staticmethod
    def concat(parts: list[Cols]) -> Cols:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Cols.empty()
        merged: dict[str, Any] = {}
        for name in Cols.__dataclass_fields__:
            vals = [getattr(p, name) for p in parts]
            merged[name] = sum(vals, []) if name == "conv" else np.concatenate(vals)
        return Cols(**merged)


# --------------------------------------------------------------------------------------------
# Identities: accounts, networks, user agents, models, gateway profiles


_RESIDENTIAL_ASNS = (7922, 701, 7018, 20115, 22773, 209, 6128, 5650, 3320, 3215, 2856, 5089,
                     6830, 3352, 3269, 1136, 6739, 12322, 8881, 4134, 4837, 9808, 17676, 4766,
                     9299, 7552, 45899, 18403, 8151, 28573, 27699, 7303, 1221, 852, 812, 577)
_MOBILE_ASNS = (21928, 22394, 20057, 45609, 55836, 9498, 24560, 26599, 45143)
_CLOUD_ASNS = (16509, 14618, 15169, 396982, 8075, 14061, 24940, 16276, 63949, 20473, 31898,
               45102, 132203, 13335, 8560)
_HOSTING_ASNS = (14061, 24940, 16276, 63949, 20473, 51167, 9009, 212238, 60068, 62240, 36352)
_MODELS = ("atlas-large", "atlas-mini", "atlas-reasoning", "atlas-large-latest", "atlas-nano")
_ENDPOINTS = ("/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/completions")
_UA_FAMILIES = (  # (template, weight); versions drawn per key
    ("OpenAI/Python 1.{a}.{b}", 0.30),
    ("OpenAI/JS 4.{a}.{b}", 0.14),
    ("Anthropic/Python 0.{a}.{b}", 0.10),
    ("Anthropic/JS 0.{a}.{b}", 0.05),
    ("python-httpx/0.{a}.{b}", 0.07),
    ("python-requests/2.{a}.{b}", 0.08),
    ("langchain-openai/0.{a}.{b} OpenAI/Python 1.{b}.{a}", 0.06),
    ("litellm/1.{a}.{b}", 0.05),
    ("axios/1.{a}.{b}", 0.05),
    ("Go-http-client/2.0", 0.04),
    ("okhttp/4.{a}.{b}", 0.03),
    ("curl/8.{a}.{b}", 0.03),
)


def _user_agent(rng: np.random.Generator) -> str:
    weights = np.array([w for _, w in _UA_FAMILIES])
    tpl = _UA_FAMILIES[int(rng.choice(len(weights), p=weights / weights.sum()))][0]
    return tpl.format(a=int(rng.integers(2, 60)), b=int(rng.integers(0, 12)))


_V4_FIRST = np.array([o for o in range(11, 224) if o not in (100, 127, 169, 172, 192, 198, 203)])


@dataclass(frozen=True)
class Prefix:
    """A client network: an IPv4 /24 or an IPv6 /48, announced by one ASN."""

    v6: bool
    hi: int  # IPv4: first three octets as an int; IPv6: the 48-bit prefix
    asn: int

    def host(self, rng: np.random.Generator) -> str:
        if not self.v6:
            return f"{self.hi >> 16}.{(self.hi >> 8) & 255}.{self.hi & 255}.{int(rng.integers(1, 255))}"
        subnet = int(rng.integers(0, 1 << 16))
        iid = int(rng.integers(1, 1 << 62))
        words = [(self.hi >> 32) & 0xFFFF, (self.hi >> 16) & 0xFFFF, self.hi & 0xFFFF, subnet,
                 (iid >> 48) & 0xFFFF, (iid >> 32) & 0xFFFF, (iid >> 16) & 0xFFFF, iid & 0xFFFF]
        return ":".join(f"{w:x}" for w in words)


def _new_prefix(rng: np.random.Generator, asns: tuple[int, ...], v6: bool = False) -> Prefix:
    asn = int(asns[int(rng.integers(0, len(asns)))])
    if v6:
        top = int(rng.choice([0x2001, 0x2400, 0x2401, 0x2600, 0x2601, 0x2603, 0x2605, 0x2a00,
                              0x2a01, 0x2a02, 0x2a03, 0x2a04, 0x2a05, 0x2c0f]))
        return Prefix(True, (top << 32) | int(rng.integers(0, 1 << 32)), asn)
    first = int(_draw(rng, _V4_FIRST, 1)[0])
    return Prefix(False, (first << 16) | int(rng.integers(0, 1 << 16)), asn)


@dataclass
class Identity:
    """What the gateway sees about a key besides its requests."""

    account_id: str | None
    ips: list[str]
    ip_p: np.ndarray
    asn: int | None
    uas: list[str]
    models: list[str]
    model_p: np.ndarray
    endpoint: str | None
    profile: str  # full | no_classifier | no_simhash | lean
    rpm: float  # rate limit, requests per rolling minute
    err400: float
    topic_miss: float  # per-event classifier dropouts
    send_turn_single: bool  # sends turn=1 on requests outside a conversation
    send_n: bool  # sends n=1 explicitly
    send_latency: bool = True
    lat_base: float = 400.0
    lat_per_tok: float = 18.0
    extra: dict[str, Any] = field(default_factory=dict)


_PROFILES = ("full", "no_classifier", "no_simhash", "lean")


class World:
    """Shared state of one run: the rng tree, traces, networks, accounts."""

    def __init__(self, seed: int, traces: Traces, start: float, end: float, scale: float):
        self.seed = seed
        self.traces = traces
        self.win = Window(start, end)
        self.scale = scale
        self.hours = (end - start) / 3600.0
        self._ss = np.random.SeedSequence(seed)
        self.rng = self.child()
        r = self.rng
        self.cloud = [_new_prefix(r, _CLOUD_ASNS) for _ in range(24)]
        self.cloud += [_new_prefix(r, _CLOUD_ASNS, v6=True) for _ in range(6)]
        self.hosting = [_new_prefix(r, _HOSTING_ASNS) for _ in range(10)]
        self.prompt_salt = int(r.integers(1, 2**63))  # global scope of shared human prompts
        self.incidents = [
            (s, s + float(r.uniform(120, 600)), float(r.uniform(0.05, 0.35)))
            for s in r.uniform(start, end, size=int(r.poisson(max(self.hours, 1) / 8)))
        ]
        self.used_keys: set[str] = set()

    def child(self) -> np.random.Generator:
        return np.random.default_rng(self._ss.spawn(1)[0])

    def new_key(self, rng: np.random.Generator) -> str:
        while True:
            key = _hexid(rng, "ak_", 16)
            if key not in self.used_keys:
                self.used_keys.add(key)
                return key

    def identity(self, rng: np.random.Generator, *, kind: str, account: str | None = None,
                 prefixes: list[Prefix] | None = None, n_ips: int | None = None,
                 profile_p: tuple[float, float, float, float] = (0.7, 0.1, 0.1, 0.1),
                 rpm: float = 60.0, models: tuple[float, ...] | None = None,
                 v6_p: float = 0.15) -> Identity:
        """An identity. ``kind`` is human (residential/mobile networks) or server (cloud)."""
        if prefixes is None:
            if kind == "human":
                v6 = rng.random() < v6_p
                prefixes = [_new_prefix(rng, _RESIDENTIAL_ASNS, v6=v6)]
                if rng.random() < 0.3:
                    prefixes.append(_new_prefix(rng, _MOBILE_ASNS, v6=rng.random() < 0.3))
            else:
                pool = self.cloud if rng.random() < 0.85 else self.hosting
                prefixes = [pool[int(rng.integers(0, len(pool)))]
                            for _ in range(1 + int(rng.random() < 0.3))]
        if n_ips is None:
            n_ips = 1 + int(rng.poisson(0.5 if kind == "human" else 2.0))
        hosts: list[tuple[str, int]] = []
        for i in range(n_ips):
            pre = prefixes[i % len(prefixes)]
            hosts.append((pre.host(rng), pre.asn))
        ip_p = rng.dirichlet(np.ones(n_ips) * 0.8)
        # ASN is enriched per key by one gateway: report the ASN of the dominant network.
        asn = None if rng.random() < 0.08 else hosts[int(np.argmax(ip_p))][1]
        model_w = np.asarray(models if models else rng.dirichlet(np.ones(len(_MODELS)) * 0.5))
        n_ua = 1 if rng.random() < 0.75 else int(rng.integers(2, 4))
        profile = _PROFILES[int(rng.choice(4, p=np.array(profile_p) / sum(profile_p)))]
        return Identity(
            account_id=None if rng.random() < 0.04 else (account or _hexid(rng, "acct_", 10)),
            ips=[h for h, _ in hosts], ip_p=ip_p, asn=asn,
            uas=[_user_agent(rng) for _ in range(n_ua)],
            models=list(_MODELS), model_p=model_w / model_w.sum(),
            endpoint=None if rng.random() < 0.1 else str(rng.choice(_ENDPOINTS, p=[0.6, 0.2, 0.15, 0.05])),
            profile=profile, rpm=float(rpm), err400=float(rng.uniform(0.0005, 0.006)),
            topic_miss=float(rng.uniform(0.0, 0.04)),
            send_turn_single=bool(rng.random() < 0.35), send_n=bool(rng.random() < 0.3),
            send_latency=bool(rng.random() > 0.05),
            lat_base=float(rng.uniform(200, 900)), lat_per_tok=float(rng.uniform(6, 35)),
        )


def _model_pref(rng: np.random.Generator, favour: dict[str, float]) -> tuple[float, ...]:
    w = rng.dirichlet(np.ones(len(_MODELS)) * 0.4) * 0.3
    for name, extra in favour.items():
        w[_MODELS.index(name)] += extra * rng.random()
    return tuple(float(x) for x in w / w.sum())


# --------------------------------------------------------------------------------------------
# Content helpers


def _trace_simhash(rng: np.random.Generator, tr: Traces, n: int, salt: int) -> np.ndarray:
    """Prompt simhashes with Mooncake's prefix sharing: a request drawn from a record that
    shares half or more of its blocks with an earlier one is a near-duplicate of that prefix
    family (scoped by ``salt``: one app's system prompt is not another's)."""
    idx = rng.integers(0, len(tr.moon_share), size=n)
    share = tr.moon_share[idx]
    out = _rand64(rng, n)
    near = share >= 0.5
    if near.any():
        base = _mix64(tr.moon_group[idx[near]] ^ _U64(salt))
        out[near] = _flip(rng, base, _q_for_share(share[near]))
    return out


def _conversations(rng: np.random.Generator, n: int, mean_turns: float,
                   pool: int) -> tuple[list[str | None], np.ndarray]:
    """Assign ``n`` time-ordered requests of a multi-user app to interleaved conversations."""
    convs: list[str | None] = [None] * n
    turns = np.zeros(n, np.int64)
    active: list[list[Any]] = []  # [conversation id, turn so far, turns planned]
    p_start = 1.0 / max(mean_turns, 1.0)
    p_new = rng.random(n)
    pick = rng.random(n)
    plan = rng.geometric(p_start, size=n)
    for i in range(n):
        if not active or p_new[i] < p_start:
            if len(active) >= pool:
                active.pop(0)
            active.append([_hexid(rng, "cv_", 12), 0, int(plan[i])])
            j = len(active) - 1
        else:
            j = int(pick[i] * len(active))
        c = active[j]
        c[1] += 1
        convs[i], turns[i] = c[0], c[1]
        if c[1] >= c[2]:
            active.pop(j)
    return convs, turns


def _grow_context(turns: np.ndarray, convs: list[str | None], first: np.ndarray,
                  new_msg: np.ndarray, completion: np.ndarray,
                  cap: int = 200_000) -> np.ndarray:
    """Prompt tokens of multi-turn requests: history (previous prompts and answers) grows."""
    prompt = first.copy()
    hist: dict[str, int] = {}
    for i, c in enumerate(convs):
        if c is None or turns[i] <= 1:
            if c is not None:
                hist[c] = int(first[i] + completion[i])
            continue
        prev = hist.get(c, int(first[i]))
        prompt[i] = min(prev + int(new_msg[i]), cap)
        hist[c] = int(prompt[i] + completion[i])
    return prompt


def _capped(completion: np.ndarray, max_tokens: np.ndarray | int, n: np.ndarray | int = 1) -> np.ndarray:
    """Answers as an API returns them: at most max_tokens per choice (0 = no limit sent).

    Applied where a persona draws its answers, before a conversation resends them as
    history, so a later turn's prompt carries the answer the user actually received."""
    budget = np.broadcast_to(np.asarray(max_tokens, np.int64) * np.maximum(n, 1), completion.shape)
    return np.where(budget > 0, np.minimum(completion, budget), completion)


def _topic_mix(rng: np.random.Generator, base: dict[str, float], conc: float) -> np.ndarray:
    alpha = np.array([base.get(t, 0.0) for t in TOPICS]) * conc + 1e-3
    return rng.dirichlet(alpha)


_HUMAN_TOPICS = {"chat": 0.3, "writing": 0.2, "code": 0.15, "math": 0.06, "science": 0.07,
                 "reasoning": 0.06, "other": 0.16}


# --------------------------------------------------------------------------------------------
# Benign personas


def _human_session_times(rng: np.random.Generator, w: World, t0: float, t1: float, tz: float,
                         sess_per_h: float, mean_turns: float, convs_per_sess: float,
                         think_s: float) -> tuple[np.ndarray, list[str | None], np.ndarray]:
    """A human at a keyboard: sessions when awake, conversations inside, think time between."""
    shift = float(rng.normal(0, 1.2))
    starts = _arrivals(rng, w.traces, t0, t1,
                       lambda g: sess_per_h / 3600.0 * _curve(_HUMAN_CURVE, w.win.local_hour(g, tz + shift)) ** 1.5,
                       mode="gamma", shape=float(rng.uniform(0.5, 1.0)))
    ts: list[float] = []
    convs: list[str | None] = []
    turns: list[int] = []
    for s in starts:
        t = float(s)
        for _ in range(1 + int(rng.poisson(convs_per_sess))):
            cid = _hexid(rng, "cv_", 12)
            for k in range(int(rng.geometric(1.0 / mean_turns))):
                if t >= t1:
                    break
                ts.append(t)
                convs.append(cid)
                turns.append(k + 1)
                t += float(_lognormal(rng, think_s, 0.8, 1)[0]) + 5.0
            t += float(_lognormal(rng, 240.0, 1.0, 1)[0])
    return np.array(ts), convs, np.array(turns, dtype=np.int64)


def _light_user(rng: np.random.Generator, w: World, t0: float, t1: float, tz: float,
                activity: float = 1.0) -> Cols:
    tr = w.traces
    ts, convs, turns = _human_session_times(
        rng, w, t0, t1, tz, sess_per_h=float(_lognormal(rng, 0.8, 0.8, 1)[0]) * activity,
        mean_turns=float(rng.uniform(1.3, 4.0)), convs_per_sess=float(rng.uniform(0.1, 1.2)),
        think_s=float(rng.uniform(25, 120)))
    n = len(ts)
    pick = rng.integers(0, len(tr.conv_ctx), size=n)
    max_tok = np.full(n, int(rng.choice([0, 0, 0, 512, 1024, 2048, 4096])))
    completion = _capped(tr.conv_gen[pick], max_tok)
    new_msg = np.maximum(8, _draw(rng, tr.conv_ctx, n) * 0.2).astype(np.int64)
    prompt = _grow_context(turns, convs, tr.conv_ctx[pick], new_msg, completion)
    mix = _topic_mix(rng, _HUMAN_TOPICS, float(rng.uniform(1.5, 6)))
    topic = _per_conversation(rng, convs, lambda k: rng.choice(len(TOPICS), size=k, p=mix))
    cot_p = float(rng.beta(0.6, 12))
    temp = np.full(n, np.nan)
    if rng.random() < 0.35:
        temp[:] = float(rng.choice([0.2, 0.5, 0.7, 0.8, 1.0, 1.2]))
    simhash = _trace_simhash(rng, tr, n, w.prompt_salt)
    return Cols.build(ts, prompt=prompt, completion=completion, topic=topic,
                      cot=rng.random(n) < cot_p, simhash=simhash, conv=convs, turn=turns,
                      temperature=temp, max_tokens=max_tok, stream=np.full(n, rng.random() < 0.7))


def _per_conversation(rng: np.random.Generator, convs: list[str | None],
                      draw: Callable[[int], np.ndarray], stick: float = 0.85) -> np.ndarray:
    """A value per request that mostly stays fixed within a conversation."""
    n = len(convs)
    fresh = draw(n)
    out = fresh.copy()
    seen: dict[str, Any] = {}
    keep = rng.random(n) < stick
    for i, c in enumerate(convs):
        if c is None:
            continue
        if c in seen and keep[i]:
            out[i] = seen[c]
        else:
            seen[c] = out[i]
    return out


def _chat_app(rng: np.random.Generator, w: World, t0: float, t1: float, tz: float,
              rate_h: float) -> Cols:
    """Many end users behind one key: aggregate diurnal load, interleaved conversations."""
    tr = w.traces
    floor = float(rng.uniform(0.15, 0.45))
    tz2 = tz + float(rng.uniform(-6, 6))
    mix_w = float(rng.uniform(0.5, 1.0))

    def rate(g: np.ndarray) -> np.ndarray:
        c = mix_w * _curve(_HUMAN_CURVE, w.win.local_hour(g, tz)) + (1 - mix_w) * _curve(
            _HUMAN_CURVE, w.win.local_hour(g, tz2))
        return rate_h / 3600.0 * (floor + (1 - floor) * c)

    ts = _arrivals(rng, tr, t0, t1, rate, mode="conv")
    n = len(ts)
    convs, turns = _conversations(rng, n, float(rng.uniform(1.5, 5.0)), pool=400)
    use_moon = rng.random() < 0.5
    if use_moon:  # long-context chat (documents, long histories), Mooncake shaped
        pick = rng.integers(0, len(tr.moon_in), size=n)
        first, completion = tr.moon_in[pick].copy(), tr.moon_out[pick].copy()
        first = np.maximum(20, (first * rng.uniform(0.1, 0.6))).astype(np.int64)
    else:
        pick = rng.integers(0, len(tr.conv_ctx), size=n)
        first, completion = tr.conv_ctx[pick].copy(), tr.conv_gen[pick].copy()
    max_tok = np.full(n, int(rng.choice([0, 1024, 2048, 4096])))
    completion = _capped(completion, max_tok)
    new_msg = np.maximum(5, _draw(rng, tr.conv_ctx, n) * 0.15).astype(np.int64)
    prompt = _grow_context(turns, convs, first, new_msg, completion, cap=128_000)
    mix = _topic_mix(rng, _HUMAN_TOPICS, float(rng.uniform(5, 20)))
    topic = _per_conversation(rng, convs, lambda k: rng.choice(len(TOPICS), size=k, p=mix))
    temp = np.full(n, float(rng.choice([0.7, 0.8, 1.0, 0.5]))) if rng.random() < 0.7 else np.full(n, np.nan)
    nvals = np.where(rng.random(n) < (0.03 if rng.random() < 0.3 else 0.0), 2, 1)
    simhash = _trace_simhash(rng, tr, n, int(rng.integers(1, 2**63)))
    return Cols.build(ts, prompt=prompt, completion=completion * nvals, topic=topic,
                      cot=rng.random(n) < float(rng.beta(0.8, 20)), simhash=simhash,
                      conv=convs, turn=turns, temperature=temp, n=nvals,
                      max_tokens=max_tok, stream=rng.random(n) < 0.9)


def _coding_agent(rng: np.random.Generator, w: World, t0: float, t1: float, tz: float,
                  tasks_h: float) -> Cols:
    """Automated tool loops: a task is a conversation of many calls with growing context."""
    tr = w.traces
    autonomous = rng.random() < 0.35
    shift = float(rng.normal(0, 1))

    def rate(g: np.ndarray) -> np.ndarray:
        if autonomous:
            return np.full_like(g, tasks_h / 3600.0)
        return tasks_h / 3600.0 * (_curve(_OFFICE_CURVE, w.win.local_hour(g, tz + shift)) + 0.1)

    starts = _arrivals(rng, tr, t0, t1, rate, mode="gamma", shape=float(rng.uniform(0.5, 2)))
    mean_steps = float(rng.uniform(8, 50))
    tool_s = float(rng.uniform(1.5, 12))
    ctx0 = float(rng.uniform(3000, 20000))
    step_ctx = float(rng.uniform(300, 3000))
    gen_mult = float(rng.uniform(2, 12))
    ts: list[float] = []
    convs: list[str | None] = []
    turns: list[int] = []
    prompts: list[int] = []
    comps: list[int] = []
    cap = int(rng.choice([128_000, 200_000]))
    max_tok = int(rng.choice([4096, 8192, 16384, 32000]))
    for s in starts:
        cid = _hexid(rng, "cv_", 12)
        t, ctx = float(s), float(_lognormal(rng, ctx0, 0.5, 1)[0])
        steps = int(rng.geometric(1.0 / mean_steps))
        comp = _capped(np.maximum(1, (_draw(rng, tr.code_gen, steps) * gen_mult
                                      * rng.uniform(0.5, 1.5, steps))).astype(int), max_tok)
        for k in range(steps):
            if t >= t1:
                break
            ts.append(t)
            convs.append(cid)
            turns.append(k + 1)
            prompts.append(int(min(ctx, cap)))
            comps.append(int(comp[k]))
            ctx += comp[k] + float(_lognormal(rng, step_ctx, 1.0, 1)[0])
            if ctx > cap * 0.9:  # the agent compacts its context
                ctx = ctx0
            t += comp[k] * 0.02 + float(_lognormal(rng, tool_s, 0.9, 1)[0])
    n = len(ts)
    topic = np.where(rng.random(n) < float(rng.uniform(0.85, 0.99)), _T["code"],
                     rng.choice([_T["other"], _T["writing"], _T["reasoning"], _T["math"]], size=n))
    # A tool loop re-sends the same system prompt and tool schema on every call: large shared
    # content, so a good part of its prompts are near-duplicates of each other.
    fam = _mix64(np.array([rng.integers(1, 2**63)], dtype=_U64))[0]
    share = rng.uniform(0.3, 0.97, n)
    near = rng.random(n) < float(rng.uniform(0.2, 0.8))
    simhash = np.where(near, _flip(rng, np.full(n, fam, dtype=_U64), _q_for_share(share)),
                       _trace_simhash(rng, tr, n, int(rng.integers(1, 2**63))))
    temp_v = float(rng.choice([0.0, 0.0, 0.2, 0.3, 1.0]))
    return Cols.build(np.array(ts), prompt=np.array(prompts, np.int64),
                      completion=np.array(comps, np.int64), topic=topic,
                      cot=rng.random(n) < float(rng.uniform(0.0, 0.25)), simhash=simhash,
                      conv=convs if rng.random() < 0.8 else [None] * n,
                      turn=np.array(turns, np.int64),
                      temperature=np.full(n, temp_v if rng.random() < 0.8 else np.nan),
                      max_tokens=np.full(n, max_tok), stream=np.full(n, rng.random() < 0.6))


def _rag_batch(rng: np.random.Generator, w: World, t0: float, t1: float,
               rate_h: float) -> Cols:
    """Enterprise batch: flat 24/7, templated long prompts, short answers, one narrow task."""
    tr = w.traces
    mode, shape = ("gamma", float(rng.uniform(1.5, 20))) if rng.random() < 0.7 else ("code", 1.0)
    ts = _arrivals(rng, tr, t0, t1, lambda g: np.full_like(g, rate_h / 3600.0), mode=mode, shape=shape)
    if rng.random() < 0.4:  # nightly-style jobs with pauses
        for _ in range(int(rng.integers(1, 4))):
            a = float(rng.uniform(t0, t1))
            ts = ts[(ts < a) | (ts > a + float(rng.uniform(600, 5400)))]
    n = len(ts)
    n_tpl = int(rng.integers(1, 5))
    bases = _rand64(rng, n_tpl)
    which = rng.integers(0, n_tpl, size=n)
    q = float(rng.uniform(0.01, 0.08))
    simhash = _flip(rng, bases[which], q)
    src_ctx = tr.code_ctx if rng.random() < 0.5 else tr.moon_in
    prompt = np.maximum(200, _draw(rng, src_ctx, n) * rng.uniform(0.5, 1.5)).astype(np.int64)
    completion = np.maximum(1, _draw(rng, tr.code_gen, n) * rng.uniform(0.6, 4.0)).astype(np.int64)
    topic = np.full(n, int(rng.choice([_T["other"], _T["writing"], _T["code"], _T["science"],
                                        _T["chat"], _T["reasoning"]])))
    return Cols.build(ts, prompt=prompt, completion=completion, topic=topic,
                      cot=rng.random(n) < (0.0 if rng.random() < 0.7 else 0.3),
                      simhash=simhash, temperature=np.full(n, float(rng.choice([0.0, 0.0, 0.1, 0.2]))),
                      max_tokens=np.full(n, int(rng.choice([128, 256, 512, 1024]))),
                      logprobs=np.full(n, rng.random() < 0.1))


def _eval_harness(rng: np.random.Generator, w: World, t0: float, t1: float,
                  burst_rps: float) -> Cols:
    """Benchmark runs: a fixed prompt set re-run in bounded bursts, temperature 0, n=1."""
    tr = w.traces
    n_items = max(30, int(rng.integers(150, 1500) * min(1.0, max(w.scale, 0.2))))
    n_tasks = int(rng.integers(2, 8))
    task = rng.integers(0, n_tasks, size=n_items)
    task_base = _rand64(rng, n_tasks)
    item_hash = _flip(rng, task_base[task], float(rng.uniform(0.05, 0.2)))  # few-shot prefix
    task_topic = rng.choice([_T["math"], _T["reasoning"], _T["code"], _T["science"], _T["writing"]],
                            size=n_tasks, p=[0.35, 0.3, 0.2, 0.1, 0.05])
    loglik = rng.random() < 0.35  # likelihood-scored suites: logprobs, one token out
    item_cot = rng.random(n_items) < float(rng.uniform(0.5, 1.0)) if not loglik else np.zeros(n_items, bool)
    item_prompt = np.maximum(50, _lognormal(rng, float(rng.uniform(300, 1800)), 0.5, n_items)).astype(np.int64)
    item_out = np.maximum(1, _lognormal(rng, float(rng.uniform(250, 1500)), 0.6, n_items)).astype(np.int64)
    if loglik:
        item_out[:] = 1
    period = float(rng.uniform(1.0, 4.0)) * 3600
    first = t0 + float(rng.uniform(0, min(period, (t1 - t0) * 0.6)))
    parts = []
    run = first
    while run < t1:
        order = rng.permutation(n_items) if rng.random() < 0.5 else np.arange(n_items)
        gaps = _unit_gaps(rng, "gamma", n_items, tr, float(rng.uniform(1, 6))) / burst_rps
        ts = run + np.cumsum(gaps)
        keep = ts < t1
        idx = order[keep]
        k = int(keep.sum())
        parts.append(Cols.build(
            ts[keep], prompt=item_prompt[idx],
            completion=np.maximum(1, item_out[idx] * rng.uniform(0.9, 1.1, k)).astype(np.int64),
            topic=task_topic[task[idx]], cot=item_cot[idx], simhash=item_hash[idx],
            temperature=np.zeros(k), logprobs=np.full(k, loglik),
            top_logprobs=np.full(k, 5 if loglik else 0),
            max_tokens=np.full(k, 1 if loglik else int(rng.choice([1024, 2048, 4096]))),
            stream=np.zeros(k, bool)))
        run += period + float(rng.normal(0, 600))
    return Cols.concat(parts)


def _ci_suite(rng: np.random.Generator, w: World, t0: float, t1: float, tz: float) -> Cols:
    """CI: the same handful of prompts, identical every run, on commits and a schedule."""
    n_items = int(rng.integers(5, 60))
    item_hash = _rand64(rng, n_items)
    item_prompt = np.maximum(20, _lognormal(rng, float(rng.uniform(100, 1500)), 0.7, n_items)).astype(np.int64)
    item_out = np.maximum(1, _lognormal(rng, float(rng.uniform(20, 300)), 0.6, n_items)).astype(np.int64)
    item_topic = rng.choice([_T["code"], _T["other"], _T["writing"], _T["chat"]], size=n_items)
    # a cron schedule (every 20 min to 2 h, a little jitter) plus runs on commits in office hours
    period = float(rng.uniform(1200, 7200))
    cron = np.arange(t0 + float(rng.uniform(0, period)), t1, period) + rng.uniform(0, 30)
    commits_h = float(rng.uniform(0.0, 2.0))
    pushes = _arrivals(rng, w.traces, t0, t1, lambda g: commits_h / 3600.0 * _curve(
        _OFFICE_CURVE, w.win.local_hour(g, tz)), mode="gamma", shape=1.0)
    runs = np.sort(np.concatenate([cron, pushes]))
    parallel = rng.random() < 0.5
    parts = []
    for r in runs:
        gaps = rng.uniform(0.05, 0.5, n_items) if parallel else _lognormal(rng, 2.0, 0.5, n_items)
        ts = r + np.cumsum(gaps)
        keep = ts < t1
        k = int(keep.sum())
        parts.append(Cols.build(
            ts[keep], prompt=item_prompt[:k], completion=item_out[:k] + rng.integers(0, 3, k),
            topic=item_topic[:k], simhash=item_hash[:k], temperature=np.zeros(k),
            max_tokens=np.full(k, int(rng.choice([64, 256, 512])))))
    return Cols.concat(parts)


def _reasoning_app(rng: np.random.Generator, w: World, t0: float, t1: float, tz: float,
                   rate_h: float) -> Cols:
    """A reasoning product (tutor, research helper): humans, long answers by nature."""
    tr = w.traces
    floor = float(rng.uniform(0.05, 0.3))
    ts = _arrivals(rng, tr, t0, t1, lambda g: rate_h / 3600.0 * (
        floor + (1 - floor) * _curve(_HUMAN_CURVE, w.win.local_hour(g, tz))), mode="conv")
    n = len(ts)
    convs, turns = _conversations(rng, n, float(rng.uniform(1.2, 3.0)), pool=150)
    focus = int(rng.choice(_CORE))
    base = {"math": 0.2, "science": 0.2, "reasoning": 0.2, "code": 0.15, "chat": 0.1,
            "writing": 0.05, "other": 0.1}
    base[TOPICS[focus]] += float(rng.uniform(0.5, 2.0))
    mix = _topic_mix(rng, base, float(rng.uniform(4, 15)))
    topic = _per_conversation(rng, convs, lambda k: rng.choice(len(TOPICS), size=k, p=mix))
    first = _draw(rng, tr.conv_ctx, n)
    max_tok = np.full(n, int(rng.choice([0, 8192, 16000, 32000])))
    completion = _capped(np.maximum(50, _lognormal(rng, float(rng.uniform(700, 3000)), 0.7, n)).astype(np.int64),
                         max_tok)
    prompt = _grow_context(turns, convs, first, np.maximum(10, _draw(rng, tr.conv_ctx, n) * 0.2).astype(np.int64),
                           completion)
    temp = np.full(n, float(rng.choice([0.6, 0.7, 1.0]))) if rng.random() < 0.6 else np.full(n, np.nan)
    return Cols.build(ts, prompt=prompt, completion=completion, topic=topic,
                      cot=rng.random(n) < float(rng.uniform(0.2, 0.8)),
                      simhash=_trace_simhash(rng, tr, n, int(rng.integers(1, 2**63))),
                      conv=convs, turn=turns, temperature=temp, max_tokens=max_tok,
                      stream=np.full(n, True))


# --------------------------------------------------------------------------------------------
# Distillation content and attack personas


@dataclass
class DistillStyle:
    """How one harvesting client phrases its requests (drawn per key)."""

    topic_p: np.ndarray
    phased: bool
    cot: float
    tpl_bases: np.ndarray
    tpl_topic: np.ndarray
    tpl_share: float
    tpl_q: float
    prompt_med: float
    prompt_sigma: float
    out_med: float
    out_sigma: float
    max_tokens: int
    logprobs: float
    top_logprobs: int
    multi_n: float
    n_choices: np.ndarray
    temps: np.ndarray
    stream: float
    conv_ids: bool


def _distill_style(rng: np.random.Generator, *, templates: np.ndarray | None = None,
                   tpl_topic: np.ndarray | None = None, subtle: bool = False) -> DistillStyle:
    core = rng.dirichlet(rng.uniform(0.6, 3.0, 4))
    off = float(rng.uniform(0.0, 0.12))
    p = np.zeros(len(TOPICS))
    p[_CORE] = core * (1 - off)
    p[[_T["chat"], _T["writing"], _T["other"]]] = rng.dirichlet(np.ones(3)) * off
    if templates is None:
        n_tpl = int(rng.integers(3, 40))
        templates = _rand64(rng, n_tpl)
        tpl_topic = rng.choice(len(TOPICS), size=n_tpl, p=p)
    temps_mode = rng.random()
    if temps_mode < 0.4:
        temps = np.array([float(rng.choice([0.6, 0.7, 0.8, 1.0]))])
    elif temps_mode < 0.55:
        temps = np.array([np.nan])
    else:
        temps = np.round(rng.uniform(0.0, 1.5, int(rng.integers(3, 7))), 1)
    max_tok = int(rng.choice([2048, 4096, 8192, 16000]))
    return DistillStyle(
        topic_p=p, phased=bool(rng.random() < 0.4),
        cot=float(rng.uniform(0.25, 0.7) if subtle else rng.uniform(0.35, 0.95)),
        tpl_bases=templates, tpl_topic=np.asarray(tpl_topic),
        tpl_share=float(rng.uniform(0.3, 0.9)), tpl_q=float(rng.uniform(0.015, 0.09)),
        prompt_med=float(rng.uniform(50, 450)), prompt_sigma=float(rng.uniform(0.3, 0.8)),
        out_med=float(rng.uniform(450, 2500)), out_sigma=float(rng.uniform(0.25, 0.7)),
        max_tokens=max_tok,
        logprobs=0.0 if rng.random() < 0.45 else float(rng.uniform(0.05, 0.5)),
        top_logprobs=int(rng.choice([3, 5, 10, 20])),
        multi_n=0.0 if rng.random() < 0.5 else float(rng.uniform(0.05, 0.35)),
        n_choices=rng.choice([2, 3, 4, 5, 8], size=int(rng.integers(1, 3))),
        temps=temps, stream=float(rng.choice([0.0, 0.0, 0.5, 1.0])),
        conv_ids=bool(rng.random() < 0.4),
    )


def _distill(rng: np.random.Generator, ts: np.ndarray, st: DistillStyle) -> Cols:
    """Harvesting requests at times ``ts``: short prompts, long answers, a swept capability
    mix, templated-but-varied prompts, CoT elicitation, sampling options."""
    n = len(ts)
    if n == 0:
        return Cols.empty()
    if st.phased:  # works through one dataset (domain) at a time
        topic = np.empty(n, np.int64)
        i = 0
        while i < n:
            run = int(rng.integers(20, 250))
            topic[i: i + run] = rng.choice(len(TOPICS), p=st.topic_p)
            i += run
    else:
        topic = rng.choice(len(TOPICS), size=n, p=st.topic_p)
    templated = rng.random(n) < st.tpl_share
    simhash = _rand64(rng, n)
    if templated.any():
        # a template of the request's topic when there is one, else any template
        choice = rng.integers(0, len(st.tpl_bases), size=n)
        for t in np.unique(topic[templated]):
            own = np.flatnonzero(st.tpl_topic == t)
            sel = templated & (topic == t)
            if len(own):
                choice[sel] = own[rng.integers(0, len(own), size=int(sel.sum()))]
        k = int(templated.sum())
        simhash[templated] = _flip(rng, st.tpl_bases[choice[templated]],
                                   st.tpl_q * rng.uniform(0.5, 1.5, k))
    n_samp = np.where(rng.random(n) < st.multi_n, _draw(rng, st.n_choices, n), 1)
    per = np.minimum(st.max_tokens, _lognormal(rng, st.out_med, st.out_sigma, n)).astype(np.int64)
    logp = rng.random(n) < st.logprobs
    return Cols.build(
        ts, prompt=np.maximum(12, _lognormal(rng, st.prompt_med, st.prompt_sigma, n)).astype(np.int64),
        completion=np.maximum(1, per) * n_samp, topic=topic, cot=rng.random(n) < st.cot,
        simhash=simhash,
        conv=[_hexid(rng, "cv_", 12) for _ in range(n)] if st.conv_ids else [None] * n,
        turn=np.ones(n, np.int64) if st.conv_ids else np.zeros(n, np.int64),
        temperature=_draw(rng, st.temps, n), logprobs=logp,
        top_logprobs=np.where(logp, st.top_logprobs, 0), n=n_samp,
        max_tokens=np.full(n, st.max_tokens), stream=rng.random(n) < st.stream)


def _blend_ordinary(rng: np.random.Generator, w: World, ts: np.ndarray) -> Cols:
    """Ordinary-looking chat requests an attacker mixes in as cover."""
    tr = w.traces
    n = len(ts)
    convs, turns = _conversations(rng, n, float(rng.uniform(1.2, 2.5)), pool=5)
    pick = rng.integers(0, len(tr.conv_ctx), size=n)
    completion = tr.conv_gen[pick].copy()
    prompt = _grow_context(turns, convs, tr.conv_ctx[pick],
                           np.maximum(8, _draw(rng, tr.conv_ctx, n) * 0.2).astype(np.int64), completion)
    topic = rng.choice([_T["chat"], _T["writing"], _T["other"], _T["code"]], size=n, p=[0.45, 0.3, 0.15, 0.1])
    return Cols.build(ts, prompt=prompt, completion=completion, topic=topic,
                      cot=rng.random(n) < 0.03, simhash=_trace_simhash(rng, tr, n, w.prompt_salt),
                      conv=convs, turn=turns,
                      temperature=np.full(n, np.nan if rng.random() < 0.5 else 0.7),
                      stream=np.full(n, rng.random() < 0.5))


def _machine_times(rng: np.random.Generator, w: World, t0: float, t1: float,
                   rate_h: float) -> np.ndarray:
    """Flat 24/7 machine timing, regular to bursty, with the odd restart pause."""
    mode = rng.choice(3, p=[0.6, 0.25, 0.15])
    if mode == 0:
        ts = _arrivals(rng, w.traces, t0, t1, lambda g: np.full_like(g, rate_h / 3600.0),
                       mode="gamma", shape=float(rng.uniform(2.0, 30.0)))
    elif mode == 1:
        ts = _arrivals(rng, w.traces, t0, t1, lambda g: np.full_like(g, rate_h / 3600.0), mode="code")
    else:
        ts = _arrivals(rng, w.traces, t0, t1, lambda g: np.full_like(g, rate_h / 3600.0), mode="gamma")
    for _ in range(int(rng.poisson(0.15 * (t1 - t0) / 3600.0))):
        a = float(rng.uniform(t0, t1))
        ts = ts[(ts < a) | (ts > a + float(rng.uniform(60, 1200)))]
    return ts


def _bulk_distiller(rng: np.random.Generator, w: World, ident: Identity, t0: float,
                    t1: float) -> Cols:
    rate_h = ident.rpm * 60.0 * float(rng.uniform(0.75, 1.1))
    return _distill(rng, _machine_times(rng, w, t0, t1, rate_h), _distill_style(rng))


def _low_and_slow(rng: np.random.Generator, w: World, t0: float, t1: float, tz: float) -> Cols:
    rate_h = float(rng.uniform(8, 40))
    if rng.random() < 0.5:
        ts = _arrivals(rng, w.traces, t0, t1, lambda g: np.full_like(g, rate_h / 3600.0),
                       mode="gamma", shape=float(rng.uniform(0.7, 4.0)))
    else:  # a mild day/night rhythm
        ts = _arrivals(rng, w.traces, t0, t1, lambda g: rate_h / 3600.0 * (
            0.4 + 0.9 * _curve(_HUMAN_CURVE, w.win.local_hour(g, tz))), mode="gamma",
            shape=float(rng.uniform(0.7, 3.0)))
    return _distill(rng, ts, _distill_style(rng, subtle=rng.random() < 0.5))


def _mimicry(rng: np.random.Generator, w: World, t0: float, t1: float,
             tz: float) -> tuple[Cols, float | None]:
    """Office hours, jittered gaps, fake follow-up turns and chat cover over a harvest.

    Also returns the time of the first harvesting (non-cover) request, for the truth."""
    rate_h = float(rng.uniform(20, 150))
    ts = _arrivals(rng, w.traces, t0, t1, lambda g: rate_h / 3600.0 * _curve(
        _OFFICE_CURVE, w.win.local_hour(g, tz)), mode="gamma", shape=float(rng.uniform(0.6, 1.6)))
    n = len(ts)
    cover = rng.random(n) < float(rng.uniform(0.1, 0.3))
    st = _distill_style(rng, subtle=True)
    st.conv_ids = True
    main = _distill(rng, ts[~cover], st)
    # fake follow-ups: some harvesting requests become turn 2-3 of a previous request's
    # conversation id; some mimics even re-send the "history" so prompts grow
    m = len(main)
    follow = rng.random(m) < float(rng.uniform(0.2, 0.5))
    resend = rng.random() < 0.5
    for i in np.flatnonzero(follow):
        if i == 0:
            continue
        j = int(i - 1)
        main.conv[i] = main.conv[j]
        main.turn[i] = main.turn[j] + 1
        if resend:
            main.prompt[i] += main.prompt[j] + main.completion[j]
    first = float(ts[~cover][0]) if (~cover).any() else None
    return Cols.concat([main, _blend_ordinary(rng, w, ts[cover])]), first


def _campaign_member(rng: np.random.Generator, w: World, t0: float, t1: float,
                     st: DistillStyle, rate_h: float, blend: float,
                     rounds: np.ndarray | None) -> Cols:
    """One rotating campaign key: normal-user volume, a share of ordinary cover traffic."""
    if rounds is not None:  # dispatched by the orchestrator in synchronised rounds
        r = rounds[(rounds >= t0) & (rounds < t1)]
        keep = rng.random(len(r)) < min(1.0, rate_h / 3600.0 * float(np.median(np.diff(rounds))) if len(rounds) > 1 else 1.0)
        ts = r[keep] + rng.uniform(0, float(rng.uniform(1, 30)), int(keep.sum()))
    else:
        ts = _arrivals(rng, w.traces, t0, t1, lambda g: np.full_like(g, rate_h / 3600.0),
                       mode="gamma", shape=float(rng.uniform(0.8, 5.0)))
    cover = rng.random(len(ts)) < blend
    return Cols.concat([_distill(rng, ts[~cover], st), _blend_ordinary(rng, w, ts[cover])])


# --------------------------------------------------------------------------------------------
# Status codes, latency, field dropping, serialisation


def _throttled(ts: np.ndarray, rpm: float) -> np.ndarray:
    """Rolling one-minute limiter: a request finding ``rpm`` accepted requests in the last
    60 s is answered 429 (rejected requests do not count against the limit)."""
    limit = max(1, int(rpm))
    out = np.zeros(len(ts), bool)
    if len(ts) <= limit:
        return out
    accepted: list[float] = []
    head = 0
    for i, t in enumerate(ts.tolist()):
        while head < len(accepted) and accepted[head] <= t - 60.0:
            head += 1
        if len(accepted) - head >= limit:
            out[i] = True
        else:
            accepted.append(t)
    return out


def _serialise(rng: np.random.Generator, w: World, key: str, ident: Identity,
               c: Cols) -> tuple[np.ndarray, bytes, np.ndarray]:
    """One key's requests as JSON lines: (ts, the lines concatenated, line start offsets).

    Lines go straight into one buffer: orjson's result bytes carry kilobytes of spare
    capacity each, so a list of 300k of them costs gigabytes.
    """
    order = np.argsort(c.ts, kind="stable")
    ts = np.round(c.ts[order], 3)
    keep = (ts >= w.win.start) & (ts < w.win.end)
    order, ts = order[keep], ts[keep]
    n = len(order)
    if n == 0:
        return ts, b"", np.zeros(1, np.int64)
    prompt, completion = c.prompt[order], c.completion[order].copy()
    # An API never returns more than max_tokens per choice (n choices share the count): a
    # persona's length draw is capped by the budget it asked for. Personas whose
    # conversations resend their history cap at draw (_capped), before the answer enters the
    # next prompt; this guard covers the single-turn ones. Before it, a batch job asking for
    # at most 128 tokens could be answered with 500.
    completion = _capped(completion, c.max_tokens[order], c.n[order])
    status = np.full(n, 200, np.int64)
    status[_throttled(ts, ident.rpm)] = 429
    status[(status == 200) & (rng.random(n) < ident.err400)] = 400
    p500 = np.full(n, 0.0015)
    for a, b, p in w.incidents:
        p500[(ts >= a) & (ts < b)] = p
    status[(status == 200) & (rng.random(n) < p500)] = 500
    ok = status == 200
    completion[~ok] = 0
    latency = np.where(ok, _lognormal(rng, ident.lat_base, 0.35, n) + prompt * 0.02
                       + completion * ident.lat_per_tok * rng.uniform(0.8, 1.2, n),
                       rng.uniform(3, 60, n))
    latency[status == 500] = rng.uniform(50, 30000, int((status == 500).sum()))

    prof = ident.profile
    send_topic = prof in ("full", "no_simhash")
    send_sim = prof in ("full", "no_classifier")
    topic_ok = rng.random(n) >= ident.topic_miss
    sim_ok = rng.random(n) >= 0.005
    ip_idx = rng.choice(len(ident.ips), size=n, p=ident.ip_p)
    ua_idx = rng.integers(0, len(ident.uas), size=n)
    model_idx = rng.choice(len(ident.models), size=n, p=ident.model_p)
    eid = _rand64(rng, n)
    lean = prof == "lean"

    topic, cot, sim = c.topic[order], c.cot[order], c.simhash[order]
    turn, temp, logp = c.turn[order], c.temperature[order], c.logprobs[order]
    topl, nn, maxt, stream = c.top_logprobs[order], c.n[order], c.max_tokens[order], c.stream[order]
    conv = c.conv
    buf = bytearray()
    starts = np.zeros(n + 1, np.int64)
    dumps = orjson.dumps
    for i in range(n):
        o = int(order[i])
        ev: dict[str, Any] = {
            "event_id": f"ev_{int(eid[i]):016x}",
            "ts": float(ts[i]),
            "api_key": key,
            "prompt_tokens": int(prompt[i]),
            "completion_tokens": int(completion[i]),
            "status": int(status[i]),
        }
        if ident.account_id is not None:
            ev["account_id"] = ident.account_id
        if not lean or i % 7:
            ev["client_ip"] = ident.ips[ip_idx[i]]
        if ident.asn is not None:
            ev["asn"] = ident.asn
        if not lean:
            ev["user_agent"] = ident.uas[ua_idx[i]]
        if not lean:
            ev["model"] = ident.models[model_idx[i]]
        if ident.endpoint is not None:
            ev["endpoint"] = ident.endpoint
        if maxt[i] > 0:
            ev["max_tokens"] = int(maxt[i])
        if ident.send_latency:
            ev["latency_ms"] = round(float(latency[i]), 1)
        cid = conv[o]
        if cid is not None and not lean:
            ev["conversation_id"] = cid
            ev["turn"] = int(max(turn[i], 1))
        elif ident.send_turn_single and turn[i] <= 1:
            ev["turn"] = 1
        if send_sim and sim_ok[i]:
            ev["prompt_simhash"] = f"{int(sim[i]):016x}"
        if send_topic and topic_ok[i]:
            ev["topic"] = TOPICS[topic[i]]
            ev["cot_request"] = bool(cot[i])
        if logp[i]:
            ev["logprobs"] = True
            if topl[i] > 0:
                ev["top_logprobs"] = int(topl[i])
        if nn[i] > 1 or ident.send_n:
            ev["n"] = int(nn[i])
        if temp[i] == temp[i]:  # not nan
            ev["temperature"] = float(temp[i])
        if stream[i] or not lean:
            ev["stream"] = bool(stream[i])
        buf += dumps(ev)
        buf += b"\n"
        starts[i + 1] = len(buf)
    return ts, bytes(buf), starts


# --------------------------------------------------------------------------------------------
# The run


class _Bar:
    """A tiny stderr progress bar (no dependency); silent when disabled."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.total, self.label, self.enabled = max(total, 1), label, enabled
        self.done = 0
        self._last = -1

    def step(self, k: int = 1) -> None:
        self.done += k
        if not self.enabled:
            return
        pct = int(100 * self.done / self.total)
        if pct != self._last:
            self._last = pct
            filled = pct * 30 // 100
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {pct:3d}%")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


@dataclass
class _KeySpec:
    persona: str
    label: str
    build: Callable[[np.random.Generator], tuple[Identity, Cols]]
    attack_start: float | None = None  # None: the key's first event (attacks), or no attack
    campaign: str | None = None
    key: str = ""
    # set by ``build`` for keys whose harvest starts after other traffic (a drifter's old
    # workload, a mimic's cover requests): the time of its first harvesting request
    first_attack: float | None = None


def _limit(rng: np.random.Generator, rate_h: float, lo: float, hi: float,
           floor: float = 20.0) -> float:
    """A key's rate limit (requests/min): some headroom over its mean rate (or, with
    ``lo`` < 1, a little under its peaks), never below the key's tier floor."""
    return max(floor * float(rng.uniform(1, 3)), rate_h / 60.0 * float(rng.uniform(lo, hi)))


def _count(base: float, scale: float, rng: np.random.Generator, minimum: int = 1) -> int:
    return max(minimum, int(round(base * scale * float(rng.uniform(0.8, 1.2)))))


def _plan(w: World) -> tuple[list[_KeySpec], dict[str, dict[str, Any]]]:
    """Decide every key of the run (persona, identity recipe, schedule) up front."""
    r = w.rng
    t0, t1, s = w.win.start, w.win.end, w.scale
    specs: list[_KeySpec] = []

    def human(persona: str, activity: float = 1.0, prefixes: list[Prefix] | None = None,
              account: str | None = None) -> _KeySpec:
        def build(rng: np.random.Generator) -> tuple[Identity, Cols]:
            tz = _human_tz(rng)
            ident = w.identity(rng, kind="human", prefixes=prefixes, account=account,
                               rpm=float(rng.uniform(20, 90)),
                               models=_model_pref(rng, {"atlas-mini": 1.0, "atlas-large": 0.8}))
            return ident, _light_user(rng, w, t0, t1, tz, activity)
        return _KeySpec(persona, "benign", build)

    for _ in range(_count(360, s, r)):
        specs.append(human("light_user", activity=float(_lognormal(r, 1.0, 0.6, 1)[0])))

    # Hard negative for group detection: a mobile carrier's NAT, one public /24, one ASN.
    cgnat = _new_prefix(r, _MOBILE_ASNS)
    for _ in range(_count(60, s, r)):
        specs.append(human("light_user_cgnat", activity=float(_lognormal(r, 1.0, 0.6, 1)[0]),
                           prefixes=[cgnat]))

    # Hard negative: a reseller account with many real customers behind its proxies.
    reseller_acct = _hexid(r, "acct_", 10)
    reseller_net = [w.cloud[int(r.integers(0, len(w.cloud)))]]

    def reseller(rng_kind: float) -> _KeySpec:
        def build(rng: np.random.Generator) -> tuple[Identity, Cols]:
            tz = _human_tz(rng)
            ident = w.identity(rng, kind="server", prefixes=reseller_net, account=reseller_acct,
                               n_ips=int(rng.integers(1, 4)), rpm=float(rng.uniform(60, 300)))
            ident.account_id = reseller_acct
            if rng_kind < 0.6:
                cols = _light_user(rng, w, t0, t1, tz, activity=float(rng.uniform(1, 4)))
            elif rng_kind < 0.85:
                cols = _chat_app(rng, w, t0, t1, tz, float(rng.uniform(20, 150)))
            else:
                cols = _reasoning_app(rng, w, t0, t1, tz, float(rng.uniform(10, 60)))
            return ident, cols
        return _KeySpec("reseller_user", "benign", build)

    for _ in range(_count(25, s, r)):
        specs.append(reseller(float(r.random())))

    def server(persona: str, gen: Callable[[np.random.Generator, float], tuple[Cols, float]],
               favour: dict[str, float], profile_p: tuple[float, ...] = (0.7, 0.1, 0.1, 0.1)) -> _KeySpec:
        def build(rng: np.random.Generator) -> tuple[Identity, Cols]:
            tz = _human_tz(rng)
            cols, rpm = gen(rng, tz)
            ident = w.identity(rng, kind="server", rpm=rpm, models=_model_pref(rng, favour),
                               profile_p=profile_p)  # type: ignore[arg-type]
            return ident, cols
        return _KeySpec(persona, "benign", build)

    vol = max(s, 0.1)  # aggregate personas shrink with scale too, so small runs stay small

    def chat(rng: np.random.Generator, tz: float) -> tuple[Cols, float]:
        rate_h = float(_lognormal(rng, 700, 0.7, 1)[0]) * vol
        return _chat_app(rng, w, t0, t1, tz, rate_h), _limit(rng, rate_h, 0.75, 2.5, floor=5.0)

    def agent(rng: np.random.Generator, tz: float) -> tuple[Cols, float]:
        return _coding_agent(rng, w, t0, t1, tz, float(_lognormal(rng, 2.0, 0.6, 1)[0])), float(rng.uniform(30, 150))

    def rag(rng: np.random.Generator, tz: float) -> tuple[Cols, float]:
        rate_h = float(_lognormal(rng, 500, 0.6, 1)[0]) * vol
        return _rag_batch(rng, w, t0, t1, rate_h), _limit(rng, rate_h, 1.0, 2.5)

    def evals(rng: np.random.Generator, tz: float) -> tuple[Cols, float]:
        rps = float(rng.uniform(1.0, 10.0))
        return _eval_harness(rng, w, t0, t1, rps), rps * 60 * float(rng.uniform(0.8, 1.5))

    def ci(rng: np.random.Generator, tz: float) -> tuple[Cols, float]:
        return _ci_suite(rng, w, t0, t1, tz), float(rng.uniform(60, 600))

    def reasoning(rng: np.random.Generator, tz: float) -> tuple[Cols, float]:
        rate_h = float(_lognormal(rng, 90, 0.6, 1)[0]) * max(vol, 0.3)
        return _reasoning_app(rng, w, t0, t1, tz, rate_h), _limit(rng, rate_h, 1.0, 4.0)

    for _ in range(_count(10, s, r)):
        specs.append(server("chat_app", chat, {"atlas-large": 1, "atlas-mini": 1}))
    for _ in range(_count(22, s, r)):
        specs.append(server("coding_agent", agent, {"atlas-large": 2, "atlas-reasoning": 1}))
    for _ in range(_count(8, s, r)):
        specs.append(server("rag_batch", rag, {"atlas-mini": 2, "atlas-nano": 1}))
    for _ in range(_count(6, s, r)):
        specs.append(server("eval_harness", evals, {"atlas-large": 1, "atlas-reasoning": 1}))
    for _ in range(_count(8, s, r)):
        specs.append(server("ci_suite", ci, {"atlas-mini": 1}))
    for _ in range(_count(9, s, r)):
        specs.append(server("reasoning_app", reasoning, {"atlas-reasoning": 2}))

    # ---- single-key attacks ------------------------------------------------------------
    attack_profile = (0.75, 0.125, 0.125, 0.0)

    def bulk() -> _KeySpec:
        def build(rng: np.random.Generator) -> tuple[Identity, Cols]:
            start = t0 + float(rng.uniform(0.0, 0.5)) * (t1 - t0)
            ident = w.identity(rng, kind="server" if rng.random() < 0.7 else "human",
                               rpm=float(rng.uniform(8, 40)),
                               models=_model_pref(rng, {"atlas-large": 2, "atlas-reasoning": 2}))
            return ident, _bulk_distiller(rng, w, ident, start, t1)
        return _KeySpec("bulk_distiller", "attack", build)

    def drifter(drift_at: float) -> _KeySpec:
        def build(rng: np.random.Generator) -> tuple[Identity, Cols]:
            tz = _human_tz(rng)
            kind = int(rng.choice(4, p=[0.4, 0.2, 0.25, 0.15]))
            if kind == 0:
                ident = w.identity(rng, kind="human", rpm=float(rng.uniform(20, 90)),
                                   profile_p=attack_profile)
                before = _light_user(rng, w, t0, t1, tz, activity=float(rng.uniform(1.5, 4)))
            elif kind == 1:
                ident = w.identity(rng, kind="server", rpm=float(rng.uniform(60, 300)),
                                   profile_p=attack_profile)
                before = _chat_app(rng, w, t0, t1, tz, float(rng.uniform(50, 300)))
            elif kind == 2:
                ident = w.identity(rng, kind="server", rpm=float(rng.uniform(30, 150)),
                                   profile_p=attack_profile)
                before = _reasoning_app(rng, w, t0, t1, tz, float(rng.uniform(20, 120)))
            else:
                ident = w.identity(rng, kind="server", rpm=float(rng.uniform(30, 150)),
                                   profile_p=attack_profile)
                before = _coding_agent(rng, w, t0, t1, tz, float(rng.uniform(1, 4)))
            # the old workload fades or carries on underneath the harvest
            carry = float(rng.choice([0.0, 0.3, 1.0]))
            after = before.ts >= drift_at
            keep = ~after | (rng.random(len(before)) < carry)
            before = _subset(before, keep)
            rate_h = float(np.exp(rng.uniform(math.log(40), math.log(900))))
            ident.rpm = max(ident.rpm, rate_h / 60 * float(rng.uniform(0.9, 1.5)))
            ramp = float(rng.uniform(0, 1800))
            ts = _arrivals(rng, w.traces, drift_at, t1, lambda g: rate_h / 3600.0 * np.clip(
                (g - drift_at) / max(ramp, 1.0), 0.15, 1.0), mode="gamma",
                shape=float(rng.uniform(0.8, 10)))
            spec.first_attack = float(ts[0]) if len(ts) else None
            return ident, Cols.concat([before, _distill(rng, ts, _distill_style(rng))])
        spec = _KeySpec("drifter", "attack", build, attack_start=drift_at)
        return spec

    def low(rng0: float) -> _KeySpec:
        def build(rng: np.random.Generator) -> tuple[Identity, Cols]:
            tz = _human_tz(rng)
            start = t0 + float(rng.uniform(0.0, 0.3)) * (t1 - t0)
            ident = w.identity(rng, kind="human" if rng0 < 0.6 else "server",
                               rpm=float(rng.uniform(20, 90)), profile_p=attack_profile)
            return ident, _low_and_slow(rng, w, start, t1, tz)
        return _KeySpec("low_and_slow", "attack", build)

    def mimic() -> _KeySpec:
        def build(rng: np.random.Generator) -> tuple[Identity, Cols]:
            # office hours that overlap the run: 09:00-12:00 local at a time in its first half
            anchor = t0 + float(rng.uniform(0.0, 0.5)) * (t1 - t0)
            local = float(rng.uniform(9.0, 12.0))
            tz = ((local - (anchor / 3600.0) % 24.0) + 12.0) % 24.0 - 12.0
            ident = w.identity(rng, kind="human" if rng.random() < 0.5 else "server",
                               rpm=float(rng.uniform(20, 90)), profile_p=attack_profile)
            cols, first = _mimicry(rng, w, t0, t1, tz)
            spec.first_attack = first
            return ident, cols
        spec = _KeySpec("mimicry", "attack", build)
        return spec

    def n_attack(lo: int, hi: int) -> int:
        return 1 if s < 0.5 else int(round(int(r.integers(lo, hi + 1)) * max(1.0, s)))

    for _ in range(n_attack(2, 4)):
        specs.append(bulk())
    for _ in range(n_attack(2, 4)):
        specs.append(drifter(t0 + float(r.uniform(0.2, 0.6)) * (t1 - t0)))
    for _ in range(n_attack(2, 4)):
        specs.append(low(float(r.random())))
    for _ in range(n_attack(2, 3)):
        specs.append(mimic())

    # ---- campaigns -----------------------------------------------------------------------
    campaigns: dict[str, dict[str, Any]] = {}
    for kind in ("template", "infra"):
        cid = f"{kind}-{int(r.integers(0, 2**31)):08x}"
        c_start = t0 + float(r.uniform(0.08, 0.3)) * (t1 - t0)
        concurrency = max(2, int(round(int(r.integers(4, 9)) * max(s, 0.25))))
        campaigns[cid] = {"kind": kind, "start_ts": c_start, "keys": []}
        members, net = _campaign_specs(w, r, cid, kind, c_start, concurrency)
        specs.extend(members)
        # the infrastructure campaign's hosting network also hosts the odd honest customer
        if kind == "infra" and r.random() < 0.5:
            neighbour = server("ci_suite", ci, {"atlas-mini": 1}) if r.random() < 0.5 else \
                server("coding_agent", agent, {"atlas-large": 1})
            neighbour.build = _with_prefixes(neighbour.build, net)
            specs.append(neighbour)
    return specs, campaigns


def _with_prefixes(build: Callable[[np.random.Generator], tuple[Identity, Cols]],
                   pre: Prefix) -> Callable[[np.random.Generator], tuple[Identity, Cols]]:
    def wrapped(rng: np.random.Generator) -> tuple[Identity, Cols]:
        ident, cols = build(rng)
        ident.ips = [pre.host(rng) for _ in ident.ips]
        ident.asn = pre.asn
        return ident, cols
    return wrapped


def _subset(c: Cols, mask: np.ndarray) -> Cols:
    out: dict[str, Any] = {}
    for name in Cols.__dataclass_fields__:
        v = getattr(c, name)
        out[name] = [x for x, m in zip(v, mask, strict=True) if m] if name == "conv" else v[mask]
    return Cols(**out)


def _campaign_specs(w: World, r: np.random.Generator, cid: str, kind: str, c_start: float,
                    concurrency: int) -> tuple[list[_KeySpec], Prefix]:
    """Rotating keys of one campaign: each lives 1-2 h; a replacement appears as one stops."""
    t1 = w.win.end
    specs: list[_KeySpec] = []
    # campaign-wide choices
    shared_tpl = _rand64(r, int(r.integers(8, 40)))
    proto = _distill_style(r, templates=shared_tpl,
                           tpl_topic=r.choice(_CORE, size=len(shared_tpl)))
    # The campaign's templates are instruction-heavy (a long fixed frame around a short slot),
    # so their instances stay within a few bits of each other: a family across keys.
    tpl_q = float(r.uniform(0.01, 0.05))
    tpl_share = float(r.uniform(0.6, 0.95))
    rounds = None
    if r.random() < 0.5:
        period = float(r.uniform(40, 240))
        rounds = np.arange(c_start, t1, period)
    net = _new_prefix(r, _HOSTING_ASNS if r.random() < 0.7 else _CLOUD_ASNS,
                      v6=bool(r.random() < 0.4))
    shared_account = _hexid(r, "acct_", 10)
    p_shared_account = 0.0 if r.random() < 0.4 else float(r.uniform(0.3, 1.0))
    shared_ua = _user_agent(r) if r.random() < 0.5 else None
    lifetimes: list[tuple[float, float]] = []
    for _slot in range(concurrency):
        t = c_start + float(r.uniform(0, 900))
        while t < t1:
            life = float(r.uniform(3600, 7200))
            lifetimes.append((t, min(t + life, t1)))
            t += life + float(r.uniform(0, 600))

    for a, b in lifetimes:
        def build(rng: np.random.Generator, a: float = a, b: float = b) -> tuple[Identity, Cols]:
            st = _distill_style(rng, templates=shared_tpl, tpl_topic=proto.tpl_topic, subtle=True)
            # one orchestrator drives every key: the same client settings
            st.max_tokens, st.temps, st.stream = proto.max_tokens, proto.temps, proto.stream
            st.logprobs, st.top_logprobs = proto.logprobs * float(rng.uniform(0.5, 1.5)), proto.top_logprobs
            if kind == "template":
                # the campaign's own templates: same families on every key, tight variation
                st.tpl_share = float(np.clip(tpl_share + rng.normal(0, 0.08), 0.5, 0.97))
                st.tpl_q = tpl_q
                sub = rng.choice(len(shared_tpl), size=max(3, len(shared_tpl) // 2), replace=False)
                st.tpl_bases, st.tpl_topic = shared_tpl[sub], proto.tpl_topic[sub]
                ident = w.identity(rng, kind="human", profile_p=(0.85, 0.15, 0.0, 0.0),
                                   rpm=float(rng.uniform(20, 90)), v6_p=0.2)
            else:
                # shared infrastructure only: diverse prompts, own (or no) templates per key
                st.tpl_bases = _rand64(rng, int(rng.integers(1, 6)))
                st.tpl_topic = rng.choice(_CORE, size=len(st.tpl_bases))
                st.tpl_share = float(rng.uniform(0.0, 0.3))
                acct = shared_account if rng.random() < p_shared_account else None
                ident = w.identity(rng, kind="server", prefixes=[net], account=acct,
                                   n_ips=int(rng.integers(1, 3)), rpm=float(rng.uniform(20, 90)),
                                   profile_p=(0.8, 0.1, 0.1, 0.0))
                ident.asn = net.asn
                if shared_ua is not None:
                    ident.uas = [shared_ua]
            rate_h = float(rng.uniform(15, 60))
            cols = _campaign_member(rng, w, a, b, st, rate_h, float(rng.uniform(0.15, 0.4)), rounds)
            return ident, cols
        specs.append(_KeySpec(f"campaign_{kind}", "attack", build, campaign=cid))
    return specs, net


def simulate(hours: float, seed: int, out_path: str, truth_path: str, *,
             traces_dir: str | None = None, start_ts: float | None = None,
             progress: bool | None = None, scale: float = 1.0) -> dict[str, Any]:
    """Write ``hours`` of labelled QueryEvent v1 traffic and its truth file.

    Parameters
    ----------
    hours
        Length of simulated time.
    seed
        Seed of the run: the same seed (and traces, hours, scale) gives byte-identical files.
    out_path, truth_path
        Where to write the events (JSON lines sorted by ``ts``) and the truth (JSON).
    traces_dir
        Directory of the real traces (see :func:`resolve_traces_dir`).
    start_ts
        Start of simulated time, Unix seconds (default :data:`DEFAULT_START_TS`).
    progress
        Show a progress bar on stderr; ``None`` shows it when stderr is a terminal.
    scale
        Multiplies the number of keys (and the volume of aggregate apps); 1.0 is the
        reference mix of a few hundred keys.

    Returns
    -------
    dict
        Summary: events, keys, attack keys, campaigns, keys and events per persona, seconds,
        and which trace files played which part (:func:`trace_roles`).
    """
    if not hours > 0:
        raise ValueError(f"hours must be > 0, got {hours!r}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    began = time.perf_counter()
    where = resolve_traces_dir(traces_dir)
    traces = _load_traces(str(where.resolve()))
    t0 = DEFAULT_START_TS if start_ts is None else float(start_ts)
    t1 = t0 + hours * 3600.0
    show = sys.stderr.isatty() if progress is None else bool(progress)

    w = World(int(seed), traces, t0, t1, float(scale))
    specs, campaigns = _plan(w)
    key_rng = w.child()
    for spec in specs:
        spec.key = w.new_key(key_rng)
    # key ids are random draws: neither an id nor its position gives the persona away
    rngs = [w.child() for _ in specs]

    bar = _Bar(len(specs), "simulate", show)
    all_ts: list[np.ndarray] = []
    blobs: list[tuple[bytes, np.ndarray]] = []
    truth_keys: dict[str, dict[str, Any]] = {}
    per_persona_events: dict[str, int] = {}
    for spec, rng in zip(specs, rngs, strict=True):
        ident, cols = spec.build(rng)
        ts, blob, starts = _serialise(rng, w, spec.key, ident, cols)
        bar.step()
        if not len(ts):
            continue  # a key that never spoke in this window is not part of the truth
        attack_start: float | None = None
        if spec.label == "attack":
            attack_start = float(ts[0]) if spec.attack_start is None else float(spec.attack_start)
            if spec.attack_start is not None and ts[-1] < spec.attack_start:
                continue  # a drifter whose drift never produced a request: not an attack here
            if spec.first_attack is not None:
                # The attack starts with its first harvesting request, not at the planned drift
                # time (a slow ramp's first request can come many minutes later) nor with a
                # mimic's cover chat: before it no detector has anything to see.
                sent = ts[ts >= round(spec.first_attack, 3)]
                if len(sent):
                    attack_start = max(attack_start, float(sent[0]))
        all_ts.append(ts)
        blobs.append((blob, starts))
        truth_keys[spec.key] = {
            "label": spec.label,
            "persona": spec.persona,
            "attack_start": attack_start,
            "campaign": spec.campaign,
            "hard_negative": spec.persona in HARD_NEGATIVE_PERSONAS,
        }
        per_persona_events[spec.persona] = per_persona_events.get(spec.persona, 0) + len(ts)
        if spec.campaign is not None:
            campaigns[spec.campaign]["keys"].append(spec.key)
    bar.close()

    for cid in list(campaigns):
        keys = campaigns[cid]["keys"]
        if not keys:
            del campaigns[cid]
            continue
        campaigns[cid]["start_ts"] = min(truth_keys[k]["attack_start"] for k in keys)

    ts_all = np.concatenate(all_ts) if all_ts else np.empty(0)
    which = np.concatenate([np.full(len(t), i, np.int64) for i, t in enumerate(all_ts)]) \
        if all_ts else np.empty(0, np.int64)
    line_no = np.concatenate([np.arange(len(t)) for t in all_ts]) if all_ts else which
    order = np.argsort(ts_all, kind="stable")
    wbar = _Bar(len(order), "write   ", show)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "wb") as fh:
        chunk = 20000
        for lo in range(0, len(order), chunk):
            part = []
            for i in order[lo: lo + chunk].tolist():
                blob, starts = blobs[which[i]]
                j = line_no[i]
                part.append(blob[starts[j]: starts[j + 1]])
            fh.write(b"".join(part))
            wbar.step(len(part))
    wbar.close()

    truth = {
        "schema": TRUTH_SCHEMA,
        "seed": int(seed),
        "hours": float(hours),
        "start_ts": t0,
        "end_ts": t1,
        "scale": float(scale),
        "keys": truth_keys,
        "campaigns": campaigns,
    }
    Path(truth_path).parent.mkdir(parents=True, exist_ok=True)
    Path(truth_path).write_bytes(orjson.dumps(truth, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))

    personas: dict[str, int] = {}
    for k in truth_keys.values():
        personas[k["persona"]] = personas.get(k["persona"], 0) + 1
    n_attack = sum(1 for k in truth_keys.values() if k["label"] == "attack")
    return {
        "events": int(len(order)),
        "keys": len(truth_keys),
        "attack_keys": n_attack,
        "benign_keys": len(truth_keys) - n_attack,
        "campaigns": len(campaigns),
        "campaign_keys": sum(len(c["keys"]) for c in campaigns.values()),
        "personas": dict(sorted(personas.items())),
        "events_by_persona": dict(sorted(per_persona_events.items())),
        "start_ts": t0,
        "end_ts": t1,
        "seconds": round(time.perf_counter() - began, 2),
        "traces": {"dir": str(where), **(traces.roles.describe() if traces.roles else {})},
        "out_path": str(out_path),
        "truth_path": str(truth_path),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """What :func:`simulate` made, as a few lines for a person (the summary dict is for code).

    >>> print(format_summary({
    ...     "events": 18984, "keys": 6, "attack_keys": 3, "benign_keys": 3, "campaigns": 1,
    ...     "campaign_keys": 2, "seconds": 1.4, "out_path": "e.jsonl", "truth_path": "t.json",
    ...     "personas": {"campaign_infra": 2, "chat_app": 1, "drifter": 1, "light_user": 2},
    ...     "traces": {"dir": "data", "conv": ["a.csv"], "code": ["a.csv"], "prefix": [],
    ...                "notes": ["code: no code-service trace, using a.csv"], "borrowed": ["code"]}}))
    18,984 events from 6 keys in 1.4 s: e.jsonl (truth: t.json)
      attack keys 3: campaign_infra 2, drifter 1 (1 campaign with 2 keys)
      benign keys 3: light_user 2, chat_app 1
      traces data: conv a.csv; code: no code-service trace, using a.csv
    """
    personas = summary.get("personas", {})

    def part(names: tuple[str, ...]) -> str:
        got = sorted(((n, c) for n, c in personas.items() if n in names), key=lambda x: (-x[1], x[0]))
        return ", ".join(f"{n} {c:,}" for n, c in got) or "none"

    n_camp = int(summary.get("campaigns", 0))
    camp = (f" ({n_camp} campaign{'s' if n_camp != 1 else ''} with "
            f"{int(summary.get('campaign_keys', 0)):,} keys)") if n_camp else ""
    lines = [
        f"{int(summary['events']):,} events from {int(summary['keys']):,} keys in "
        f"{float(summary.get('seconds', 0.0)):.1f} s: {summary.get('out_path')} "
        f"(truth: {summary.get('truth_path')})",
        f"  attack keys {int(summary['attack_keys']):,}: {part(ATTACK_PERSONAS)}{camp}",
        f"  benign keys {int(summary['benign_keys']):,}: {part(BENIGN_PERSONAS)}",
    ]
    tr = summary.get("traces") or {}
    if tr:
        # a borrowed part's files are named by its note
        roles = "; ".join(f"{r} {', '.join(tr[r])}" for r in ("conv", "code", "prefix")
                          if tr.get(r) and r not in tr.get("borrowed", ()))
        notes = "; ".join(tr.get("notes", []))
        lines.append(f"  traces {tr.get('dir')}: " + "; ".join(x for x in (roles, notes) if x))
    return "\n".join(lines)
