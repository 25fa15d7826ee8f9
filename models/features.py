"""Per-key feature state, updated per event in event time, and the scrape-direction features.

A key's features live in one ``array('d')`` (:data:`NF` doubles), a ring of recent prompt
SimHashes and a two-generation Bloom filter of exact prompt hashes (see
:class:`models.keymodel.KeyState`). :func:`apply_event` is the per-event hot path: a handful
of float updates, no allocation beyond boxed floats, no River call. The direction features
(:func:`direction_features`) are computed only at evaluation points.

Shares are exponentially weighted over the events that *carry* the field (``w``/``s`` pairs):
an event without ``cot_request`` leaves the cot share untouched, so a missing optional field
never looks suspicious; a share with no evidence reads as 0 (toward benign).

Direction
---------
Every feature is oriented so that a *larger* value is *more* like distillation-style
harvesting (:data:`DIRECTION` spells out why). Drift is only scored upward on these axes:
a key that goes quiet, shortens its outputs or turns into a multi-turn chat app moves *down*
and can never fire because of that.
"""

from __future__ import annotations

import math
import zlib
from array import array

__all__ = [
    "DIRECTION",
    "FEATURES",
    "NF",
    "TOPICS",
    "apply_event",
    "events_per_hour",
    "direction_features",
    "fabricated_share",
    "length_ratio",
    "raw_observations",
]

TOPICS = ("chat", "writing", "code", "math", "science", "reasoning", "other")
_TOPIC_INDEX = {t: i for i, t in enumerate(TOPICS)}
#: Topics that carry the capabilities a distiller harvests.
CAPABILITY_TOPICS = ("code", "math", "science", "reasoning")

# --- float layout of KeyState.f ----------------------------------------------------------
F_FIRST = 0  # event time of the key's first event
F_LAST = 1  # latest event time seen
F_LAST_EVAL = 2  # event time of the last evaluation point
F_R5M = 3  # decayed event counts, tau = 5 min, 1 h, 24 h
F_R1H = 4
F_R24H = 5
F_IA_M = 6  # EW mean / variance of log inter-arrival seconds
F_IA_V = 7
F_IA_W = 8  # how many inter-arrivals the two above have seen (capped)
F_COT_W = 9
F_COT_S = 10
F_TOP_W = 11
F_TOP0 = 12  # 7 topic weights, TOPICS order: 12..18
F_TURN_W = 19
F_SINGLE_S = 20
F_SAMP_W = 21
F_SAMP_S = 22
F_TEMP_W = 23
F_TEMP_M = 24
F_TEMP_V = 25
F_GREEDY_S = 26  # share of temperature == 0 among events that state a temperature
F_RATIO = 27  # EW mean of log((completion+1)/(prompt+1))
F_PLOG = 28  # EW mean of log(prompt+1)
F_CLOG = 29  # EW mean of log(completion+1)
F_SIM_W = 30
F_DUP_S = 31  # near-duplicate or exact repeat of a recent prompt
F_TMPL_S = 32  # same template family as a recent prompt, but a new prompt
F_429 = 33
F_PH_N = 34  # Page-Hinkley state of the key's own baseline (flyweight, models.keymodel)
F_PH_MEAN = 35
F_PH_SUM = 36
F_PH_MIN = 37
F_SCORE = 38  # last evaluated score
F_EP_FIRST = 39  # open episode: first/last event time of its evidence
F_EP_LAST = 40
F_BELOW_SINCE = 41  # event time the score fell below the resolve level (0 = not below)
F_FP_FLOOR = 42  # extra threshold after analyst false_positive feedback
F_PEAK = 43  # peak score of the open episode
F_LAST_SNAP = 44  # event time of the last member snapshot for campaign detection
F_EP_TS = 45  # event_ts of the event that opened / last escalated the episode
F_BASE = 46  # the key's own slow baseline of its direction score
F_ABOVE = 47  # consecutive evaluations at or above the threshold
F_DRIFT_TS = 48  # event time of the key's last upward Page-Hinkley drift
F_OK_W = 49  # successful (2xx) responses behind the token means (capped count)
F_HARV_W = 50  # answered requests, decayed
F_HARV_S = 51  # ... that look like one harvest: capability topic, long answer
F_STREAM_W = 52  # events that say whether they stream
F_BATCH_S = 53  # ... and do not (a client collecting whole answers, not a UI)
F_HFAST_W = 54  # answered requests, decayed fast (short horizon: the last ~5 requests)
F_HFAST_S = 55  # ... that are harvests (the short window sees a drift into harvesting early)
F_CFAST_W = 56  # the same short horizon for cot_request ...
F_CFAST_S = 57
F_SFAST_W = 58  # ... and for single-turn requests
F_SFAST_S = 59
F_RFAST = 60  # EW mean of log(completion/prompt) over the short horizon (answered requests)
# Change points (key-0.9): a one-sided Bernoulli CUSUM per short-window share (harvest,
# cot_request, single-turn), each as (statistic, events since it was last 0, of which hits).
F_HCP = 61
F_CCP = 64
F_SCP = 67
# Fabricated follow-ups (key-0.14): the key's last two conversations as (64 x (1 + crc32 of the
# conversation id) + 8 x its latest turn's topic + the topic of the turn before, topics as
# 1 + index in TOPICS and 0 unknown (key-0.25); context size = prompt + one answer's tokens of
# its latest request), and the decayed count of follow-up turns matched to one of them, of which
# "cold" (the prompt does not carry half the conversation so far: a fake follow-up on a fresh
# prompt) and, at F_FU_SW, "switched" (on a topic neither of the conversation's last two turns
# had: a fresh question filed under an old conversation id).
F_CONV0_H = 70
F_CONV0_N = 71
F_CONV1_H = 72
F_CONV1_N = 73
F_FU_W = 74
F_FU_COLD = 75
# A change toward harvesting (key-0.19, fires key_drift below the population's line): the
# Page-Hinkley running mean of the key's score when it last saw an upward drift (where the key
# stood before the change; 1.0 when it had too few evaluations to say), and the consecutive
# evaluations since whose score is at least drift_min_rise above it and at least change_floor.
F_CHANGE = 76
F_CHANGE_REF = 77
F_FU_SW = 78  # matched follow-ups on a new subject (key-0.25; see F_CONV0_H above)
NF = 79
_CAP_TOPIC_SET = frozenset(("code", "math", "science", "reasoning"))
_LONG_ANSWER = math.log(2.5)  # completion at least 2.5x the prompt

_TAU_5M = 300.0
_TAU_1H = 3600.0
_TAU_24H = 86400.0
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # odd 64-bit multiplier: spreads a token count over the hash
_LOG_POISSON_SD = math.pi / math.sqrt(6.0)  # sd of log(Exp) inter-arrivals: 1.28

#: Direction features, in vector order. All in [0, 1]; larger = more like harvesting.
FEATURES = (
    "harvest_share",
    "cot_share",
    "capability_share",
    "capability_breadth",
    "single_turn_share",
    "output_ratio",
    "novelty",
    "template_share",
    "sampled_decoding",
    "sampling_share",
    "temperature_spread",
    "timing_regularity",
    "duty_cycle",
    "throttled_share",
    "rate",
    "non_streaming_share",
)

#: Why each feature points toward harvesting (the sign is always "higher = more suspicious").
DIRECTION = {
    "harvest_share": "+ requests that are each a harvest: an answer >= 2.5x the prompt to a"
    " capability question, or to any question asked with n > 1 / logprobs (a per-request"
    " conjunction, robust to cover traffic and fake follow-ups)",
    "cot_share": "+ chain-of-thought requests buy the reasoning traces a student model needs",
    "capability_share": "+ code/math/science/reasoning are the capabilities worth distilling",
    "capability_breadth": "+ a sweep over several capability domains, not one product task",
    "single_turn_share": "+ harvesting is one-shot; apps and agents hold conversations",
    "output_ratio": "+ long completions for short prompts; batch/RAG/agents are the opposite",
    "novelty": "+ new prompts every time; CI suites and eval re-runs repeat themselves",
    "template_share": "+ generated prompts share a template (weak alone: batch jobs do too)",
    "sampled_decoding": "+ temperature > 0: a harvest wants varied samples; eval harnesses, CI and"
    " deterministic pipelines decode greedily (temperature 0). Unknown when not sent",
    "sampling_share": "+ logprobs / n>1 harvest the distribution, not just an answer",
    "temperature_spread": "+ temperature sweeps collect diverse samples",
    "timing_regularity": "+ machine-regular inter-arrivals (scale-free: log-gap spread)",
    "duty_cycle": "+ flat activity, minute after minute",
    "throttled_share": "+ pinned at the rate limit (429s)",
    "rate": "+ volume above the population's typical key",
    "non_streaming_share": "+ whole answers collected by a program; interactive products stream"
    " tokens to a person (weak alone: batch, CI and evals do not stream either). Unknown when"
    " not sent",
}


def apply_event(
    ks, ev: dict, alpha: float, dup_bits: int, tmpl_bits: int, bloom_cap: int, fast_alpha: float = 0.125,
    fast_seconds: float = 0.0,
) -> None:
    """Fold one validated QueryEvent v1 into the key state (per-event hot path).

    ``alpha`` is the event-count EW rate of the shares; ``dup_bits`` / ``tmpl_bits`` are the
    SimHash Hamming distances under which a prompt counts as a near-duplicate / a member of a
    recent template family; ``bloom_cap`` is the insert count after which the Bloom filter
    rotates its generations; ``fast_alpha`` is the EW rate of the short-horizon harvest share.
    With ``fast_seconds`` > 0 the short windows also span at least about that much event time
    (per-event decay ``max(1 - fast_alpha, exp(-dt / fast_seconds))``): a key sending every few
    seconds has its short window over the last minute, not the last few seconds, so a streak
    of a few requests is not a change unless it lasts.
    """
    f = ks.f
    d = 1.0 - alpha
    ts = ev["ts"]
    n_ev = ks.events
    df = 1.0 - fast_alpha  # the short windows' decay (at least a minute's, below)
    if n_ev == 0:
        f[F_FIRST] = ts
        f[F_LAST] = ts
        f[F_LAST_EVAL] = ts
        ks.last_min = int(ts // 60.0)
        ks.mask = 1
        f[F_R5M] = 1.0
        f[F_R1H] = 1.0
        f[F_R24H] = 1.0
    else:
        last = f[F_LAST]
        dt = ts - last
        if dt > 0.0:
            exp = math.exp
            f[F_R5M] = f[F_R5M] * exp(-dt / _TAU_5M) + 1.0
            f[F_R1H] = f[F_R1H] * exp(-dt / _TAU_1H) + 1.0
            f[F_R24H] = f[F_R24H] * exp(-dt / _TAU_24H) + 1.0
            f[F_LAST] = ts
            if fast_seconds > 0.0:
                keep = exp(-dt / fast_seconds)
                if keep > df:
                    df = keep
            # Regularity on the log scale is scale-free: a bot at 1/s and one at 1/min
            # both have a tiny spread; Poisson arrivals have sd 1.28 whatever the rate.
            lg = math.log(dt if dt > 0.05 else 0.05)
            w = f[F_IA_W]
            if w < 1.0:
                f[F_IA_M] = lg
                f[F_IA_V] = 0.0
            else:
                a = 1.0 / (w + 1.0) if w < 31.0 else 0.03125
                diff = lg - f[F_IA_M]
                f[F_IA_M] += a * diff
                f[F_IA_V] = (1.0 - a) * (f[F_IA_V] + a * diff * diff)
            if w < 1000.0:
                f[F_IA_W] = w + 1.0
            m = int(ts // 60.0)
            shift = m - ks.last_min
            if shift > 0:
                ks.mask = ((ks.mask << shift) & _MASK64) | 1 if shift < 64 else 1
                ks.last_min = m
        else:
            # Same second or out of order: counts still grow, clocks do not go backwards.
            if fast_seconds > 0.0:
                df = 1.0  # no time passed: the short windows keep everything
            f[F_R5M] += 1.0
            f[F_R1H] += 1.0
            f[F_R24H] += 1.0
    ks.events = n_ev + 1

    nsamp = ev.get("n")
    # logprobs / n default to off in the API, so an absent field is a "no", not unknown.
    samp = (nsamp is not None and nsamp > 1) or bool(ev.get("logprobs")) or bool(ev.get("top_logprobs"))
    status = ev["status"]
    topic = ev.get("topic")
    ti = _TOPIC_INDEX.get(topic)  # None: no topic sent, or one this build does not know
    answer = 0  # one answer's tokens (0 when the request was not answered)
    if 200 <= status < 300:
        # Token sizes only from answered requests: a 429 or 5xx has no completion, and a
        # throttled harvester must not look like a key with short outputs.
        pt = ev["prompt_tokens"]
        ct = ev["completion_tokens"]
        if nsamp is not None and nsamp > 1:
            ct = ct / nsamp  # completion_tokens sums the n samples: compare one answer
        answer = ct
        lr = math.log((ct + 1.0) / (pt + 1.0))
        lp = math.log(pt + 1.0)
        lc = math.log(ct + 1.0)
        n_ok = f[F_OK_W]
        if n_ok == 0.0:
            f[F_RATIO] = lr
            f[F_PLOG] = lp
            f[F_CLOG] = lc
            f[F_RFAST] = lr
        else:
            a = 1.0 / (n_ok + 1.0) if n_ok * alpha < 1.0 else alpha
            f[F_RATIO] += a * (lr - f[F_RATIO])
            f[F_RFAST] += (1.0 - df) * (lr - f[F_RFAST])
            f[F_PLOG] += a * (lp - f[F_PLOG])
            f[F_CLOG] += a * (lc - f[F_CLOG])
        if n_ok < 1000.0:
            f[F_OK_W] = n_ok + 1.0
        # The per-event conjunction is what mixtures (cover traffic, a drifting key's old
        # workload) cannot average away: a long answer to a short capability question, or to a
        # short question on any topic that asks for n > 1 samples or logprobs (a harvest of the
        # answer distribution: a chat or instruction-following dataset is distilled too; a chat
        # or writing app's long answers come one at a time). No turn condition: a real follow-up
        # carries its history in the prompt (small ratio), a fake follow-up (turn 2 on a fresh
        # short prompt) does not.
        harvest = lr >= _LONG_ANSWER and (topic is None or topic in _CAP_TOPIC_SET or samp)
        _cusum(f, F_HCP, harvest, f[F_HARV_S], f[F_HARV_W])
        f[F_HARV_W] = f[F_HARV_W] * d + 1.0
        f[F_HARV_S] = f[F_HARV_S] * d + (1.0 if harvest else 0.0)
        f[F_HFAST_W] = f[F_HFAST_W] * df + 1.0
        f[F_HFAST_S] = f[F_HFAST_S] * df + (1.0 if harvest else 0.0)
    f[F_429] = f[F_429] * d + (alpha if status == 429 else 0.0)

    v = ev.get("cot_request")
    if v is not None:
        _cusum(f, F_CCP, bool(v), f[F_COT_S], f[F_COT_W])
        f[F_COT_W] = f[F_COT_W] * d + 1.0
        f[F_COT_S] = f[F_COT_S] * d + (1.0 if v else 0.0)
        f[F_CFAST_W] = f[F_CFAST_W] * df + 1.0
        f[F_CFAST_S] = f[F_CFAST_S] * df + (1.0 if v else 0.0)

    if ti is not None:
        f[F_TOP_W] = f[F_TOP_W] * d + 1.0
        for i in range(F_TOP0, F_TOP0 + 7):
            f[i] *= d
        f[F_TOP0 + ti] += 1.0

    v = ev.get("stream")
    if v is not None:
        f[F_STREAM_W] = f[F_STREAM_W] * d + 1.0
        f[F_BATCH_S] = f[F_BATCH_S] * d + (0.0 if v else 1.0)

    v = ev.get("turn")
    conv = ev.get("conversation_id")
    tcode = ti + 1 if ti is not None else 0
    if conv is not None and _cold_followup(f, conv, v, ev["prompt_tokens"], answer, d, tcode):
        # A follow-up that does not carry its conversation is a one-shot request dressed as a
        # conversation turn: it counts as single-turn.
        v = 1
    if v is None and f[F_TURN_W] > 0.0 and conv is None:
        # This key's gateway reports conversation turns (it has sent one): a request with
        # neither a turn nor a conversation id is outside any conversation, a one-shot call. A
        # drifting key whose old workload held conversations would otherwise keep its old
        # single-turn share while its new script sends bare requests. A key that never sent a
        # turn keeps it unknown.
        v = 1
    if v is not None:
        _cusum(f, F_SCP, v == 1, f[F_SINGLE_S], f[F_TURN_W])
        f[F_TURN_W] = f[F_TURN_W] * d + 1.0
        f[F_SINGLE_S] = f[F_SINGLE_S] * d + (1.0 if v == 1 else 0.0)
        f[F_SFAST_W] = f[F_SFAST_W] * df + 1.0
        f[F_SFAST_S] = f[F_SFAST_S] * df + (1.0 if v == 1 else 0.0)

    f[F_SAMP_W] = f[F_SAMP_W] * d + 1.0
    f[F_SAMP_S] = f[F_SAMP_S] * d + (1.0 if samp else 0.0)

    v = ev.get("temperature")
    if v is not None:
        w = f[F_TEMP_W]
        f[F_TEMP_W] = w * d + 1.0
        f[F_GREEDY_S] = f[F_GREEDY_S] * d + (1.0 if v == 0.0 else 0.0)
        if w == 0.0:
            f[F_TEMP_M] = v
        else:
            a = 1.0 / (w + 1.0) if w * alpha < 1.0 else alpha
            diff = v - f[F_TEMP_M]
            f[F_TEMP_M] += a * diff
            f[F_TEMP_V] = (1.0 - a) * (f[F_TEMP_V] + a * diff * diff)

    v = ev.get("prompt_simhash")
    if v is not None:
        h = int(v, 16)
        # A repeat is the same prompt: the same SimHash *and* the same length. A template
        # filled with new data can keep its SimHash (the template dominates it) but not its
        # token count, so it counts as a template member, not a repeat.
        rh = h ^ ((ev["prompt_tokens"] * _GOLDEN) & _MASK64)
        ring = ks.ring
        best = 64
        for r in ring:
            if r:
                x = (h ^ r).bit_count()
                if x < best:
                    best = x
        bloom = ks.bloom
        p1 = rh & 1023
        p2 = (rh >> 10) & 1023
        p3 = (rh >> 20) & 1023
        seen = False
        for base in (0, 128):
            if (
                bloom[base + (p1 >> 3)] >> (p1 & 7) & 1
                and bloom[base + (p2 >> 3)] >> (p2 & 7) & 1
                and bloom[base + (p3 >> 3)] >> (p3 & 7) & 1
            ):
                seen = True
                break
        dup = seen or (dup_bits > 0 and best <= dup_bits)
        f[F_SIM_W] = f[F_SIM_W] * d + 1.0
        f[F_DUP_S] = f[F_DUP_S] * d + (1.0 if dup else 0.0)
        f[F_TMPL_S] = f[F_TMPL_S] * d + (1.0 if (not dup and best <= tmpl_bits) else 0.0)
        if not seen:
            cur = 128 * ks.bloom_gen
            bloom[cur + (p1 >> 3)] |= 1 << (p1 & 7)
            bloom[cur + (p2 >> 3)] |= 1 << (p2 & 7)
            bloom[cur + (p3 >> 3)] |= 1 << (p3 & 7)
            ks.bloom_n += 1
            if ks.bloom_n >= bloom_cap:
                # Rotate: the older generation is cleared and becomes the current one.
                ks.bloom_gen ^= 1
                cur = 128 * ks.bloom_gen
                bloom[cur : cur + 128] = bytes(128)
                ks.bloom_n = 0
        if best > dup_bits or not seen:
            pos = ks.ring_pos
            ring[pos] = h
            ks.ring_pos = (pos + 1) & 7


def _share(f, w_i: int, s_i: int) -> float:
    w = f[w_i]
    return f[s_i] / w if w > 1e-9 else 0.0


_COLD_CONTEXT = 0.5  # a follow-up whose prompt is under half its conversation so far is cold


def _cold_followup(f, conv: str, turn, pt: int, answer: float, d: float, tcode: int = 0) -> bool:
    """Track the key's last two conversations; True for a *cold* follow-up.

    Chat APIs are stateless: turn N of a conversation sends the turns before it, so its
    ``prompt_tokens`` is at least the previous request's prompt plus its answer (clients that
    trim or summarise a long history shrink it a little, not by half). A request that says it is
    a later turn (``turn`` > 1) of one of the key's two latest conversations but whose prompt is
    under half of that conversation's context is a fake follow-up: a harvest script labelling a
    fresh prompt as a continuation to look like a chat. A turn of a conversation the key has not
    sent lately is left out (unknown), and so is the first request of a conversation.
    ``answer`` is the request's one answer (``apply_event``'s per-sample completion, 0 when
    it was not answered).

    A matched follow-up whose topic (``tcode``: 1 + its index in TOPICS, 0 unknown) is neither
    of its conversation's last two known topics is counted as *switched* (key-0.25): people
    stay on a subject for a conversation and change it now and then, a script that files a
    fresh question under an old conversation id (whose prompt may even resend that history)
    changes it as often as its questions do. Two topics, not one, so that one stray label (a
    classifier calling one turn of a coding session "math") is one switch, not two. A switched
    turn is not counted as single-turn: only the fabricated share (``fabricated_share``) reads it.
    """
    h = float(zlib.crc32(conv.encode("utf-8", "surrogatepass")) + 1)
    h0, t0 = divmod(f[F_CONV0_H], 64.0)
    h1, t1 = divmod(f[F_CONV1_H], 64.0)
    if h == h0:
        prev, topics = f[F_CONV0_N], t0
    else:  # the other slot or a new conversation: slot 0 moves to slot 1 (most recent first)
        prev, topics = (f[F_CONV1_N], t1) if h == h1 else (-1.0, 0.0)
        f[F_CONV1_H], f[F_CONV1_N] = f[F_CONV0_H], f[F_CONV0_N]
    last, before = divmod(topics, 8.0)  # the conversation's last two known topics (0 = none)
    f[F_CONV0_H] = h * 64.0 + (tcode * 8.0 + last if tcode else topics)
    f[F_CONV0_N] = pt + answer
    if turn is None or turn <= 1 or prev <= 0.0:
        return False
    cold = pt < _COLD_CONTEXT * prev
    switched = tcode > 0 and last > 0 and tcode != last and tcode != before
    f[F_FU_W] = f[F_FU_W] * d + 1.0
    f[F_FU_COLD] = f[F_FU_COLD] * d + (1.0 if cold else 0.0)
    f[F_FU_SW] = f[F_FU_SW] * d + (1.0 if switched else 0.0)
    return cold


def fabricated_share(ks, prior: float = 3.0, switch_floor: float = 0.3) -> float:
    """Share of the key's matched follow-up turns that look fabricated, shrunk toward 0 by
    ``prior`` pseudo-follow-ups: a few cold turns are weak evidence, many are strong.

    The larger of two readings: the shrunk share of *cold* follow-ups (no history: no person's
    client sends those), and the shrunk share of *switched* ones (a new subject) beyond
    ``switch_floor``, rescaled to [0, 1]: ``max(0, s - floor) / (1 - floor)``. People do change
    the subject within a conversation, so only a key that does it on more than ``switch_floor``
    of its follow-ups, as a script filing unrelated questions under old conversation ids does,
    shows it. ``switch_floor`` 1.0 leaves switches out (key-0.24 and before).

    Examples
    --------
    >>> from models.keymodel import KeyState
    >>> ks = KeyState()
    >>> base = {"ts": 0.0, "api_key": "k", "prompt_tokens": 40, "completion_tokens": 600,
    ...         "status": 200, "conversation_id": "c1"}
    >>> for i in range(6):  # turn 2 on a fresh 40-token prompt, each after a 640-token turn
    ...     apply_event(ks, dict(base, ts=float(i), turn=1 if i == 0 else 2), 1 / 32, 0, 20, 96)
    >>> round(fabricated_share(ks), 2)
    0.61
    """
    f = ks.f
    w = f[F_FU_W]
    if w <= 0.0:
        return 0.0
    cold = f[F_FU_COLD] / (w + prior)
    if switch_floor >= 1.0:
        return cold
    return max(cold, max(0.0, f[F_FU_SW] / (w + prior) - switch_floor) / (1.0 - switch_floor))


def events_per_hour(ks) -> float:
    """The key's decayed 1-hour rate, corrected for keys younger than an hour."""
    f = ks.f
    age = max(f[F_LAST] - f[F_FIRST], 1.0)
    return f[F_R1H] / (1.0 - math.exp(-(age + 60.0) / _TAU_1H))


def raw_observations(ks) -> dict[str, float]:
    """Human-scale observations of a key (for reasons and campaign snapshots)."""
    f = ks.f
    age = max(f[F_LAST] - f[F_FIRST], 1.0)
    norm1h = 1.0 - math.exp(-(age + 60.0) / _TAU_1H)
    tw = f[F_TOP_W]
    return {
        "events_per_hour": f[F_R1H] / norm1h if norm1h > 0 else 0.0,
        "events_per_min_5m": f[F_R5M] / (_TAU_5M / 60.0) / (1.0 - math.exp(-(age + 30.0) / _TAU_5M)),
        "completion_prompt_ratio": math.exp(f[F_RATIO]),
        "prompt_tokens": math.exp(f[F_PLOG]) - 1.0,
        "completion_tokens": math.exp(f[F_CLOG]) - 1.0,
        "greedy_share": _share(f, F_TEMP_W, F_GREEDY_S),
        "repeat_share": _share(f, F_SIM_W, F_DUP_S),
        "topic_entropy": _entropy([f[F_TOP0 + i] / tw for i in range(7)]) / math.log(7) if tw > 1e-9 else 0.0,
    }


def _entropy(ps) -> float:
    h = 0.0
    for p in ps:
        if p > 1e-12:
            h -= p * math.log(p)
    return h


_NAN = float("nan")
#: Evidence needed before a content share counts (fewer events carrying the field = unknown):
#: the EW(1/32) weight is 1.97 after two carrying events and 2.91 after three, so a share is
#: known from the third (the score's warm-up, ``DetectorConfig.warmup_events``, is 3 as well).
_MIN_W = 2.5
_LN2 = math.log(2.0)
_CP_CAP = 30.0  # a finished change is forgotten after ~40 misses (the run share decays sooner)


def _cusum(f, i: int, x: bool, s: float, w: float) -> None:
    """One step of a one-sided Bernoulli CUSUM at ``f[i:i+3]``: has the share risen from the key's own?

    H0: the key's long share ``p0 = s / w`` (its own history, read before this event counts);
    H1: halfway from there to 1, ``p1 = (1 + p0) / 2``. A hit adds ``log(p1 / p0)``, a miss
    ``log((1 - p1) / (1 - p0)) = log(1/2)``; at 0 the statistic and its run counts restart.
    A key that never harvested and now does two requests in a row is a change
    (``log(0.51/0.02)`` = 3.2 each); one already harvesting half its requests needs about a dozen
    in a row (0.41 each), so a reasoning app's streaks are not one.
    """
    if w < _MIN_W:
        return
    p0 = s / w
    p0 = 0.02 if p0 < 0.02 else (0.98 if p0 > 0.98 else p0)
    g = f[i] + (math.log((1.0 + p0) / (2.0 * p0)) if x else -_LN2)
    if g <= 0.0:
        f[i] = f[i + 1] = f[i + 2] = 0.0
        return
    f[i] = g if g < _CP_CAP else _CP_CAP
    f[i + 1] += 1.0
    if x:
        f[i + 2] += 1.0


def _changed(long: float, f, i: int, h: float) -> float:
    """The share since the change point when the CUSUM at ``f[i]`` is past ``h`` (> 0), else ``long``."""
    if long != long or f[i] < h or f[i + 1] <= 0.0:
        return long
    cp = f[i + 2] / f[i + 1]
    return cp if cp > long else long


def direction_features(
    ks, pop_log_rate: float, prior=None, prior_weight: float = 0.0, fast_weight: float = 0.0,
    fast_alpha: float = 0.125, fast_z: float = 0.0, fast_shares: bool = False,
    fast_ratio: bool = False, benign_base: bool = True, change_h: float = 0.0,
    prior_relief: float = 0.0, template_z: float = 0.0,
) -> list[float]:
    """The key's direction vector (FEATURES order), each in [0, 1], larger = more suspicious.

    A feature whose field the key's gateway does not send is NaN ("unknown"), never 0 or 1:
    the scorer drops it and HalfSpaceTrees routes around it. ``pop_log_rate`` is the
    population's typical log1p(events/hour): the rate feature is relative to it, so it scales
    with the deployment rather than with a constant.

    With ``prior`` (the population means, FEATURES order) and ``prior_weight`` > 0, the content
    shares of a key with little evidence are shrunk toward the population (empirical Bayes:
    ``(w * share + m * prior) / (w + m)``): five requests that happen to look like harvesting
    are weak evidence; five hundred are not. With ``prior_relief`` > 0 the pseudo-count ``m``
    shrinks with the key's extraction evidence (the noisy-OR of sampling options and temperature
    spread, as in the score): ``m x (1 - prior_relief x extraction)``. A product's first few
    requests carry no logprobs, n > 1 or temperature sweep; five requests that also ask for
    the answer distribution are less likely to look like harvesting by luck.

    With ``template_z`` > 0 the template share is read that many binomial standard errors
    below its value over the key's events (never below 0): a young key's share is uncertain
    and the tell is one that waives the content-only margin.

    With ``fast_ratio``, a key whose own history was benign (``benign_base``) and whose harvest
    share rose beyond noise in the short window also has its answer/prompt ratio judged on its
    recent requests, in proportion to its extraction evidence (see :func:`_fast_ratio`).
    """
    f = ks.f
    cot = f[F_COT_S] / f[F_COT_W] if f[F_COT_W] >= _MIN_W else _NAN
    tw = f[F_TOP_W]
    if tw >= _MIN_W:
        caps = [f[F_TOP0 + _TOPIC_INDEX[t]] / tw for t in CAPABILITY_TOPICS]
        cap_share = sum(caps)
        if cap_share > 1e-9:
            eff = math.exp(_entropy([c / cap_share for c in caps]))  # 1..4 domains
            breadth = (eff - 1.0) / 3.0 * cap_share
        else:
            breadth = 0.0
    else:
        cap_share = _NAN
        breadth = _NAN
    single = f[F_SINGLE_S] / f[F_TURN_W] if f[F_TURN_W] >= _MIN_W else _NAN
    if f[F_OK_W] >= _MIN_W:
        ratio_t = min(max(f[F_RATIO] / 2.5, 0.0), 1.0)  # 1 at >= ~12x output/prompt, 0 at <= 1x
    else:
        ratio_t = _NAN
    sim_w = f[F_SIM_W]
    if sim_w >= _MIN_W:
        novelty = 1.0 - f[F_DUP_S] / sim_w
        tmpl = f[F_TMPL_S] / sim_w
        if template_z > 0.0 and ks.events > 0:
            tmpl = max(tmpl - template_z * math.sqrt(tmpl * (1.0 - tmpl) / ks.events), 0.0)
    else:
        novelty = _NAN
        tmpl = _NAN
    samp = min(_share(f, F_SAMP_W, F_SAMP_S) * 4.0, 1.0)  # 1 when a quarter of requests sample
    sampled = 1.0 - f[F_GREEDY_S] / f[F_TEMP_W] if f[F_TEMP_W] >= _MIN_W else _NAN
    temp_sd = math.sqrt(f[F_TEMP_V]) if f[F_TEMP_W] > 2.0 else 0.0
    temp_t = min(temp_sd / 0.3, 1.0)
    iw = f[F_IA_W]
    if iw >= 8.0:
        reg = 1.0 - math.sqrt(f[F_IA_V]) / _LOG_POISSON_SD
        reg = min(max(reg, 0.0), 1.0)
    else:
        reg = 0.0
    span_min = ks.last_min - int(f[F_FIRST] // 60.0) + 1
    duty = ks.mask.bit_count() / (span_min if span_min < 64 else 64) if span_min >= 10 else 0.0
    thr = min(f[F_429] * 4.0, 1.0)
    rate_t = math.log1p(events_per_hour(ks)) - pop_log_rate
    rate_t = min(max(rate_t / 3.0, 0.0), 1.0)  # 1 at ~20x the population's typical rate
    harv_long = f[F_HARV_S] / f[F_HARV_W] if f[F_HARV_W] >= _MIN_W else _NAN
    harv = harv_long
    if fast_weight > 0.0:
        harv = _fast_rise(harv_long, f[F_HFAST_S], f[F_HFAST_W], fast_weight, fast_alpha, fast_z)
        if fast_shares:
            cot = _fast_rise(cot, f[F_CFAST_S], f[F_CFAST_W], fast_weight, fast_alpha, fast_z)
            single = _fast_rise(single, f[F_SFAST_S], f[F_SFAST_W], fast_weight, fast_alpha, fast_z)
    if change_h > 0.0:
        # A key with N events has had N chances to streak: the bar grows with log N (about
        # e**-change_h false changes per key lifetime, whatever its volume).
        change_h += math.log1p(ks.events)
        harv = _changed(harv, f, F_HCP, change_h)
        cot = _changed(cot, f, F_CCP, change_h)
        single = _changed(single, f, F_SCP, change_h)
    if fast_weight > 0.0 and fast_ratio and benign_base and ratio_t == ratio_t and harv > harv_long:
        ratio_t = _fast_ratio(ratio_t, f[F_RATIO], f[F_RFAST], fast_weight, samp, temp_t)
    batch = f[F_BATCH_S] / f[F_STREAM_W] if f[F_STREAM_W] >= _MIN_W else _NAN
    vec = [harv, cot, cap_share, breadth, single, ratio_t, novelty, tmpl, sampled, samp, temp_t, reg, duty, thr, rate_t, batch]
    if prior is not None and prior_weight > 0.0:
        # The evidence is the key's event count (the decayed weights saturate at 1/alpha and
        # would keep shrinking a key with a long, clear history).
        n = float(ks.events)
        m = prior_weight
        if prior_relief > 0.0:
            m *= 1.0 - prior_relief * _sampling_extraction(samp, temp_t)
        for i in _SHRINK:
            v = vec[i]
            if v == v:
                vec[i] = (n * v + m * prior[i]) / (n + m)
    return vec


def length_ratio(ks) -> float:
    """The key's typical answer length over prompt length: ``exp`` of the EW mean of
    ``log((completion + 1) / (prompt + 1))`` (a geometric mean), NaN before ``_MIN_W`` answered
    requests. Unlike ``output_ratio`` (0 at or below 1x) it tells a RAG job's replies, a few
    percent of their long contexts, from answers about as long as their prompts.

    Examples
    --------
    >>> from models.keymodel import KeyState
    >>> ks = KeyState()
    >>> ks.f[F_OK_W], ks.f[F_RATIO] = 10.0, math.log(0.02)
    >>> round(length_ratio(ks), 3)
    0.02
    """
    return math.exp(ks.f[F_RATIO]) if ks.f[F_OK_W] >= _MIN_W else _NAN


#: Weights of the score's extraction tells (models.policy.EXTRACTION: sampling, temperature).
_EXTRACTION_W = (0.9, 0.9)


def _fast_ratio(ratio_t: float, long: float, fast: float, weight: float, samp: float, temp_t: float) -> float:
    """The output_ratio feature raised toward the short-horizon mean of log(completion/prompt).

    Called only once the key's harvest short window rose beyond noise (its recent requests
    differ from its history) and its own history was benign: a coding agent or chat app turned
    harvester keeps a long-run ratio << 1 for tens of requests, while its new requests are long
    answers to short prompts. The rise counts in proportion to the key's extraction evidence
    (noisy-OR of sampling options and temperature spread, as in the score): a reasoning app's
    bursts of long answers come without sampling options and gain nothing, a harvester that
    samples or sweeps temperatures gains it all.

    Examples
    --------
    >>> round(_fast_ratio(0.0, -1.0, 2.0, 1.0, 1.0, 0.0), 2)  # logprobs on: 0.9 of the rise
    0.72
    >>> _fast_ratio(0.0, -1.0, 2.0, 1.0, 0.0, 0.0)  # no extraction tell: unchanged
    0.0
    """
    rise = fast - long
    if rise <= 0.0:
        return ratio_t
    fr = (long + weight * rise) / 2.5
    fr = 1.0 if fr > 1.0 else fr
    if fr <= ratio_t:
        return ratio_t
    return ratio_t + _sampling_extraction(samp, temp_t) * (fr - ratio_t)


def _sampling_extraction(samp: float, temp_t: float) -> float:
    """Noisy-OR of the sampling-options and temperature-spread tells, as the score weighs them."""
    return 1.0 - (1.0 - _EXTRACTION_W[0] * samp) * (1.0 - _EXTRACTION_W[1] * temp_t)


def _fast_rise(long: float, s: float, w: float, weight: float, alpha: float, z: float) -> float:
    """The long share raised toward its short-horizon share ``s / w`` (upward only).

    Only a rise beyond the fast window's own binomial noise around the long share counts (sd of
    an EW(alpha) mean of Bernoulli(p): ``sqrt(p (1-p) alpha / (2 - alpha))``): a key already at
    half wanders; one that never did and now does has changed.
    """
    if long != long or w < _MIN_W:
        return long
    rise = s / w - long - z * math.sqrt(long * (1.0 - long) * alpha / (2.0 - alpha))
    return long + weight * rise if rise > 0.0 else long


# Indices of the content shares shrunk toward the population for keys with few events.
_SHRINK = (0, 1, 2, 3, 4, 5)


def new_float_state() -> array:
    """A zeroed float state for a new key."""
    return array("d", bytes(8 * NF))
