"""The detection core: per-key detection state for one input partition.

:class:`DetectionCore` is a pure state machine that both drivers (``moatwatch replay`` and the
Faust worker) feed with validated QueryEvent v1 dicts, in partition order, and that returns
Alert v1 dicts. It holds, for the keys of one partition:

* per-key compact feature state (:mod:`models.features`, :class:`models.keymodel.KeyState`),
  updated per event in event time;
* per-key River baselines (an upward Page-Hinkley test evaluated as a flyweight,
  :class:`models.keymodel.KeyBaseline`), so a key that *changes* toward harvesting is seen;
* a population model shared by the partition's keys (:class:`models.population.PopulationModel`:
  River HalfSpaceTrees + population means + score histogram), learning only from keys that
  are not flagged, so a key scraping from its first request is seen too;
* the alert policy (:class:`models.policy.EpisodeTracker`): warm-up, adaptive threshold,
  episodes that open, escalate and resolve, deterministic alert ids.

The per-event path only folds the event into the key's floats. Scoring (direction features,
HalfSpaceTrees, Page-Hinkley, policy) runs at the key's *evaluation points*: every
``eval_every_events`` events or ``eval_every_seconds`` of event time, whichever comes first.

Determinism
-----------
Nothing reads the wall clock or an unseeded random source; no decision iterates a set or a
dict whose order could depend on ``PYTHONHASHSEED`` (``advance`` walks keys in sorted order).
The same events (and seqs) into a fresh core, or into one restored from
:meth:`DetectionCore.export_key` / :meth:`DetectionCore.export_shared` blobs at any point,
give the same alerts, ids and all (``detected_at`` is 0.0; the driver stamps it).

Campaign member snapshots
-------------------------
:meth:`DetectionCore.drain_member_snapshots` returns (and forgets) the snapshots produced
since the last call. A key emits at most one per evaluation point, and at most one every
``snapshot_every_seconds`` of event time (its first one at its first evaluation with at least
``snapshot_min_events`` events)::

    {"api_key": str,
     "ts": float,            # event time of the evaluation
     "first_ts": float,      # the key's first event time
     "events": int,          # events of the key so far
     "score": float,         # the key's distillation score 0..1 at this evaluation
     "features": {name: float, ...},   # direction features (models.features.FEATURES, each 0..1,
                             # larger = more like harvesting; a feature whose field the key's
                             # gateway does not send is omitted) plus events_per_hour,
                             # completion_prompt_ratio, code/math/science/reasoning_share,
                             # topic_entropy, greedy_share, repeat_share
     "groups": {"account": str | None, "client_net": str | None,   # /24 IPv4, /48 IPv6
                "asn": str | None, "user_agent": str | None,
                "template": [str, ...]},   # LSH band ids "b<band>:<4 hex>" of SimHash families
                                           # recurring in the key's recent prompts; [] if none
     "simhashes": [str, ...],  # the key's last <= 8 distinct prompt SimHashes, newest first,
                               # 16 hex each (no prompt text); [] when the gateway sends none
     "activity": {"minute": int,   # event-time minute (epoch // 60) of the key's latest request
                  "mask": str}}    # its active minutes of the last hour, 16 hex: bit i = minute - i

Examples
--------
>>> core = DetectionCore()
>>> ev = {"event_id": "e1", "ts": 1.7e9, "api_key": "k1", "prompt_tokens": 30,
...       "completion_tokens": 400, "status": 200}
>>> core.process(ev, seq=0)
[]
>>> core.process(ev, seq=0)  # redelivered: already applied
[]
>>> core.stats()["duplicates_total"], core.has_key("k1")
(1, True)
"""

from __future__ import annotations

import ipaddress
import math
import struct
import sys
from dataclasses import dataclass

from models import features as F
from models.codec import decode_key, encode_key
from models.features import FEATURES, apply_event, direction_features, raw_observations
from models.keymodel import KeyBaseline, KeyState
from models.policy import EpisodeTracker, opening_bar, population_score, scrape_score
from models.population import PopulationModel

__all__ = ["MODEL_VERSION", "DetectionCore", "DetectorConfig"]

MODEL_VERSION = "key-0.26"

_SHARED_MAGIC = b"MWS1"
_DET_SCRAPE, _DET_POP, _DET_DRIFT = 0, 1, 2
#: A reason must exceed the population's value by this (relative above 1) to explain anything.
_STANDS_OUT = 0.02
_CAP_IDX = tuple(F.F_TOP0 + F.TOPICS.index(t) for t in ("code", "math", "science", "reasoning"))


@dataclass(frozen=True)
class DetectorConfig:
    """Hyperparameters of the detection core, validated at construction.

    Parameters
    ----------
    eval_every_events, eval_every_seconds
        A key is evaluated after this many of its events or this much event time.
    warmup_events, warmup_seconds
        A key cannot fire before it has this many events and this much history.
    share_alpha
        Event-count EW rate of the per-key shares (1/32: about the last 32 events).
    prior_weight, prior_relief
        Pseudo-count of the population prior the content shares are shrunk toward, and how much
        of it a key's extraction evidence (sampling options, temperature spread; noisy-OR)
        removes: ``prior_weight x (1 - prior_relief x extraction)``. 0 = no relief.
    fast_alpha, fast_weight, fast_z, fast_shares, fast_ratio
        Short-horizon shares: an EW(``fast_alpha``) share of harvest requests (about the
        last 5) raises the long share by ``fast_weight`` times its rise beyond ``fast_z``
        binomial standard deviations of the fast window around the long share (upward only;
        a drift into harvesting shows within a few requests, a key that always harvested
        half the time does not gain from its wandering). With ``fast_shares`` the cot_request
        and single-turn shares get the same short window.
        With ``fast_ratio``, a key whose harvest short window rose and whose own slow score
        baseline is below ``threshold_floor - resolve_margin`` (its history was benign) has its
        answer/prompt ratio raised toward the short-window mean, in proportion to its extraction
        evidence (:func:`models.features._fast_ratio`).
        With ``fast_seconds`` the short windows span at least about that much event time as
        well as about ``1 / fast_alpha`` requests (key-0.23): five requests of a key sending
        every few seconds are a streak, not a change, until they last.
    change_h
        Change points (0 = off): each fast share also runs a one-sided Bernoulli CUSUM against
        the key's own long share (H1 halfway to 1); past ``change_h + log(1 + events)`` the
        share since the CUSUM last restarted counts (:func:`models.features._cusum`). A key
        that never harvested shows three or four harvests in a row at once.
    dup_bits, template_bits
        SimHash Hamming distance for a near-duplicate / a same-template prompt. With
        ``dup_bits`` 0 only an exact repeat counts (the same SimHash *and* the same
        ``prompt_tokens``); the same SimHash at a new length is a template member.
    bloom_rotate
        Distinct prompts per Bloom generation (repeats are seen within ~1-2x this many).
    score_mix
        ``(c0, c1, c2)`` of ``content * (c0 + c1*extraction + c2*automation)``; sums to 1.
    unknown_exponent, unknown_automation, unknown_relief
        How much content evidence a key loses for content fields its gateway does not send, how
        much more its automation evidence then weighs, and how much machine-like arrival or
        extraction tells (their noisy-OR) relieve that loss (models.policy.scrape_score).
    collect_weight
        Weight of whole sampled answers (non-streaming x temperature > 0) as an extraction
        tell beside logprobs / n > 1 and temperature sweeps; 0 = off.
    template_weight
        Weight of the templated-prompt share (new prompts filled into a recent prompt's
        template) as one more extraction tell; 0 = off. Batch jobs, evals and agents template
        too: the tell multiplies content like the others, so their low content (or the greedy
        gate) keeps them low.
    template_z
        The template share is read at ``template_z`` standard errors below its value,
        ``share - z * sqrt(share * (1 - share) / events)`` (key-0.24; 0 = as measured). It is
        one of the tells that waive the content-only margin and let the outlier boost through, and
        a product's first few dozen requests can share a system prompt by chance: 10 of 28
        is not yet a template, 300 of 1,000 is.
    fabricated_weight, fabricated_prior
        Fake follow-ups: a key whose follow-up turns do not carry their conversation's history
        (:func:`models.features.fabricated_share`, shrunk by ``fabricated_prior``
        pseudo-follow-ups) has its direction score multiplied by
        ``1 + fabricated_weight * share``. Content stays necessary: a key that asks nothing a
        harvester asks gains nothing from it. 0 = off.
    fabricated_switch_floor
        Follow-ups on a new subject (a topic neither of the conversation's last two turns had)
        count as fabricated only beyond this share of the key's follow-ups, rescaled
        (key-0.25): people change the subject now and then, a script that files unrelated
        questions under old conversation ids does it as often as its questions change. 1.0 =
        off (key-0.24).
    population_weight
        How much the HalfSpaceTrees outlier score modulates the direction score:
        ``score = s_dir * (1 + 2 * population_weight * (hst - 0.5))``.
    population_support
        The upward part of that modulation (an outlier key) is scaled by
        ``min(1, outlier_support / population_support)``: being unusual counts only with
        evidence outside content (sampling options, temperature spread, whole sampled answers,
        templated prompts, regular timing, 429s, no streaming; not volume or duty cycle;
        :func:`models.policy.outlier_support`). An unusual
        *content* profile is already in ``s_dir``; a reasoning product whose users ask unusual
        questions is an outlier for that alone. 0 lets the whole boost through.
    population_harvest
        The outlier boost is also scaled by ``min(1, answers / population_harvest)`` (key-0.21),
        ``answers`` being the larger of ``harvest_share`` and the key's typical answer length
        over prompt length, capped at 1 (:func:`models.features.length_ratio`): a key whose
        answers are a few percent of its prompts is not an outlier *toward harvesting*, however
        unusual (a RAG job asking for logprobs on short replies to long contexts). Both unknown
        leaves it out; 0 = off.
    content_only_margin
        A key whose only evidence is content (what it asks: capability topics, CoT, long
        answers) opens an episode only this far above the threshold (key-0.22): a busy reasoning
        product's users ask the same. The margin shrinks in proportion to the key's evidence of
        how it takes the answers, ``outlier_support`` over ``population_support`` (sampling
        options, a temperature sweep, whole sampled answers, templated prompts, regular timing,
        429s, no streaming), and does not apply to a key whose score drifted up (a change toward
        harvesting is evidence too). The change path asks the same margin of the rise (key-0.23):
        a content-only key's score must rise ``drift_min_rise`` plus the margin over where it
        stood. Episodes resolve as before. 0 = off.
    threshold_floor, threshold_ceiling, threshold_quantile, threshold_margin
        Adaptive threshold: the ``threshold_quantile`` of recent unflagged key scores plus
        ``threshold_margin``, clipped to [floor, ceiling].
    confirm_evals, fast_open_margin
        Consecutive evaluations at or above the threshold needed to open an episode; a score
        at least ``fast_open_margin`` above the threshold opens it at once.
    drift_bonus, drift_memory
        After an upward Page-Hinkley drift, the threshold is lowered by ``drift_bonus`` for
        ``drift_memory`` seconds of event time, while its direction score is at least
        ``drift_min_rise`` above its own slow baseline.
    change_floor, change_evals, change_min_evals
        A change toward harvesting is an alert of its own (``key_drift``, key-0.19), below the
        population's line. When Page-Hinkley sees an upward drift, the running mean it kept
        until then is where the key stood before the change (if it kept it over at least
        ``change_min_evals`` evaluations). For ``drift_memory`` seconds after, a direction
        score at least ``drift_min_rise`` above that level and at least ``change_floor``, for
        ``change_evals`` consecutive evaluations, opens an episode (not once an analyst marked
        the key a false positive). A drifter that still sends much of its old traffic goes
        0.03 -> 0.2: far under the population's line, but a change the key's own baseline is
        there to see.
    sustain_evals, sustain_seconds, sustain_ratio, sustain_rise, sustain_floor
        A change that holds is an alert of its own too (``key_drift``, key-0.26). After an
        upward Page-Hinkley trip, its running mean is the mean of the key's scores since. Once
        that mean has held over ``sustain_evals`` evaluations and ``sustain_seconds`` of event
        time, and is at least ``sustain_ratio`` times where the key stood before the trip, at
        least ``sustain_rise`` above it (plus the content-only margin, as the change path asks)
        and at least ``sustain_floor``, an episode opens, once per trip. A drifter that keeps
        most of its old traffic doubles its score (0.08 -> 0.16) and stays there, under the
        change path's rise; a benign score that wandered up to trip Page-Hinkley falls back
        toward where it stood. ``sustain_evals`` 0 = off.
    resolve_margin, resolve_after, quiet_timeout
        An episode resolves when the score stays below ``threshold - resolve_margin`` for
        ``resolve_after`` seconds, or the key is silent for ``quiet_timeout`` seconds.
    fp_penalty
        After an analyst marks a key false_positive, it fires again only above the rejected
        episode's peak score plus this.
    idle_ttl
        Keys silent this long (event time) are evicted by :meth:`DetectionCore.advance`.
    max_keys
        Hard cap on keys held (per core, i.e. per input partition). When a flood of new keys
        passes it within ``idle_ttl``, :meth:`DetectionCore.advance` evicts the longest-silent
        keys without an open episode down to 90% of the cap, so memory stays bounded whatever
        the key rate (about 1.4 KiB per key).
    snapshot_every_seconds, snapshot_min_events
        Rate of campaign member snapshots per key.
    hst_trees, hst_height, hst_window, seed
        Population HalfSpaceTrees.
    hst_warm_windows
        Completed HalfSpaceTrees windows before the outlier score modulates key scores
        (key-0.18: 2). The first window is learned from the run's first minutes, when nearly
        every key is young and shrunk to the priors; scored against it alone, a reasoning app
        with 13 requests was an outlier enough to fire (unseen seed 222).
    ph_delta, ph_threshold, ph_min_instances
        The per-key Page-Hinkley baseline (upward only).

    Examples
    --------
    >>> DetectorConfig().warmup_events
    3
    >>> DetectorConfig(share_alpha=2.0)
    Traceback (most recent call last):
    ...
    ValueError: share_alpha must be in (0, 1), got 2.0
    """

    eval_every_events: int = 16
    eval_every_seconds: float = 30.0
    warmup_events: int = 3
    warmup_seconds: float = 60.0
    share_alpha: float = 1.0 / 32.0
    prior_weight: float = 3.0
    prior_relief: float = 1.0
    fast_alpha: float = 0.2
    fast_weight: float = 1.0
    fast_z: float = 1.5
    fast_seconds: float = 60.0
    fast_shares: bool = True
    fast_ratio: bool = True
    change_h: float = 2.3
    dup_bits: int = 0
    template_bits: int = 20
    bloom_rotate: int = 96
    score_mix: tuple[float, float, float] = (0.45, 0.35, 0.2)
    unknown_exponent: float = 0.5
    unknown_automation: float = 0.0
    unknown_relief: float = 1.0
    collect_weight: float = 0.6
    template_weight: float = 0.5
    template_z: float = 1.0
    fabricated_weight: float = 1.0
    fabricated_prior: float = 3.0
    fabricated_switch_floor: float = 0.3
    population_weight: float = 0.25
    population_support: float = 0.15
    population_harvest: float = 0.1
    content_only_margin: float = 0.04
    threshold_floor: float = 0.35
    threshold_ceiling: float = 0.75
    threshold_quantile: float = 0.995
    threshold_margin: float = 0.05
    confirm_evals: int = 1
    fast_open_margin: float = 0.1
    drift_bonus: float = 0.05
    drift_memory: float = 1800.0
    drift_min_rise: float = 0.1
    change_floor: float = 0.15
    change_evals: int = 3
    change_min_evals: int = 20
    sustain_evals: int = 40
    sustain_seconds: float = 1200.0
    sustain_ratio: float = 2.0
    sustain_rise: float = 0.05
    sustain_floor: float = 0.1
    resolve_margin: float = 0.1
    resolve_after: float = 900.0
    quiet_timeout: float = 1800.0
    fp_penalty: float = 0.1
    idle_ttl: float = 6 * 3600.0
    max_keys: int = 1_000_000
    snapshot_every_seconds: float = 300.0
    snapshot_min_events: int = 3
    hst_trees: int = 10
    hst_height: int = 6
    hst_window: int = 256
    hst_warm_windows: int = 2
    seed: int = 42
    ph_delta: float = 0.01
    ph_threshold: float = 0.5
    ph_min_instances: int = 6

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        for name in ("eval_every_events", "warmup_events", "confirm_evals", "bloom_rotate",
                     "snapshot_min_events", "hst_trees", "hst_height", "hst_window", "hst_warm_windows",
                     "change_evals", "change_min_evals",
                     "ph_min_instances", "dup_bits", "template_bits", "max_keys"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1 or (name == "dup_bits" and v == 0),
                 f"{name} must be a positive integer, got {v!r}")
        for name in ("eval_every_seconds", "warmup_seconds", "drift_memory", "resolve_after",
                     "quiet_timeout", "idle_ttl", "snapshot_every_seconds", "sustain_seconds"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0,
                 f"{name} must be a finite number of seconds >= 0, got {v!r}")
        need(0.0 < self.share_alpha < 1.0, f"share_alpha must be in (0, 1), got {self.share_alpha}")
        need(self.share_alpha <= self.fast_alpha < 1.0,
             f"fast_alpha must be in [share_alpha, 1), got {self.fast_alpha}")
        need(0.0 <= self.fast_weight <= 1.0, f"fast_weight must be in [0, 1], got {self.fast_weight}")
        need(0.0 <= self.fast_z <= 10.0, f"fast_z must be in [0, 10], got {self.fast_z}")
        need(0.0 <= self.fast_seconds <= 3600.0,
             f"fast_seconds must be in [0, 3600] (0 = off), got {self.fast_seconds}")
        need(self.dup_bits < self.template_bits <= 32,
             f"need dup_bits < template_bits <= 32, got {self.dup_bits}, {self.template_bits}")
        need(self.bloom_rotate <= 400, f"bloom_rotate must be <= 400 (2048-bit filter), got {self.bloom_rotate}")
        mix = self.score_mix
        need(len(mix) == 3 and all(0.0 <= c <= 1.0 for c in mix) and abs(sum(mix) - 1.0) < 1e-9,
             f"score_mix must be three weights in [0, 1] summing to 1, got {mix}")
        need(0.0 <= self.unknown_automation <= 5.0,
             f"unknown_automation must be in [0, 5], got {self.unknown_automation}")
        need(0.0 <= self.unknown_relief <= 1.0,
             f"unknown_relief must be in [0, 1], got {self.unknown_relief}")
        need(0.0 <= self.collect_weight <= 1.0,
             f"collect_weight must be in [0, 1], got {self.collect_weight}")
        need(0.0 <= self.template_weight <= 1.0,
             f"template_weight must be in [0, 1], got {self.template_weight}")
        need(0.0 <= self.template_z <= 5.0, f"template_z must be in [0, 5], got {self.template_z}")
        need(0.0 <= self.unknown_exponent <= 2.0,
             f"unknown_exponent must be in [0, 2], got {self.unknown_exponent}")
        need(0.0 <= self.fabricated_weight <= 5.0,
             f"fabricated_weight must be in [0, 5], got {self.fabricated_weight}")
        need(0.0 < self.fabricated_prior <= 100.0,
             f"fabricated_prior must be in (0, 100], got {self.fabricated_prior}")
        need(0.0 <= self.fabricated_switch_floor <= 1.0,
             f"fabricated_switch_floor must be in [0, 1], got {self.fabricated_switch_floor}")
        need(0.0 <= self.population_weight <= 1.0,
             f"population_weight must be in [0, 1], got {self.population_weight}")
        need(0.0 <= self.population_support <= 1.0,
             f"population_support must be in [0, 1], got {self.population_support}")
        need(0.0 <= self.population_harvest <= 1.0,
             f"population_harvest must be in [0, 1], got {self.population_harvest}")
        need(0.0 <= self.content_only_margin <= 0.5,
             f"content_only_margin must be in [0, 0.5], got {self.content_only_margin}")
        need(0.0 < self.threshold_floor <= self.threshold_ceiling < 1.0,
             "need 0 < threshold_floor <= threshold_ceiling < 1, got "
             f"{self.threshold_floor}, {self.threshold_ceiling}")
        need(0.5 <= self.threshold_quantile < 1.0,
             f"threshold_quantile must be in [0.5, 1), got {self.threshold_quantile}")
        need(isinstance(self.prior_weight, (int, float)) and 0.0 <= self.prior_weight <= 1000.0,
             f"prior_weight must be in [0, 1000], got {self.prior_weight}")
        need(0.0 <= self.prior_relief <= 1.0, f"prior_relief must be in [0, 1], got {self.prior_relief}")
        need(0.0 <= self.change_floor <= 1.0, f"change_floor must be in [0, 1], got {self.change_floor}")
        need(isinstance(self.sustain_evals, int) and not isinstance(self.sustain_evals, bool)
             and self.sustain_evals >= 0,
             f"sustain_evals must be an integer >= 0 (0 = off), got {self.sustain_evals!r}")
        need(1.0 <= self.sustain_ratio <= 100.0, f"sustain_ratio must be in [1, 100], got {self.sustain_ratio}")
        for name in ("sustain_rise", "sustain_floor"):
            v = getattr(self, name)
            need(0.0 <= v <= 1.0, f"{name} must be in [0, 1], got {v}")
        for name in ("threshold_margin", "drift_bonus", "drift_min_rise", "fast_open_margin", "resolve_margin", "fp_penalty", "ph_delta"):
            v = getattr(self, name)
            need(0.0 <= v < 1.0, f"{name} must be in [0, 1), got {v}")
        need(self.ph_threshold > 0, f"ph_threshold must be > 0, got {self.ph_threshold}")
        need(0.0 <= self.change_h < 50.0, f"change_h must be in [0, 50) (0 = off), got {self.change_h}")
        need(self.eval_every_events <= 10_000, "eval_every_events must be <= 10000")


def _client_net(ip: str | None) -> str | None:
    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    plen = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{plen}", strict=False))


def _recent_simhashes(ring, pos: int) -> list[str]:
    """The ring's prompt SimHashes, newest first, as 16-hex strings (campaign linking confirms
    cross-key matches by Hamming distance on the full 64 bits: ~150 bytes per snapshot)."""
    out = []
    for i in range(1, len(ring) + 1):
        h = ring[(pos - i) % len(ring)]
        if h:
            out.append(f"{h:016x}")
    return out


def _template_bands(ring) -> list[str]:
    """LSH band ids (4 bands of 16 bits) shared by at least two recent prompts."""
    counts: dict[str, int] = {}
    for h in ring:
        if not h:
            continue
        for b in range(4):
            bid = f"b{b}:{(h >> (16 * b)) & 0xFFFF:04x}"
            counts[bid] = counts.get(bid, 0) + 1
    return sorted(b for b, c in counts.items() if c >= 2)[:4]


class DetectionCore:
    """Per-key detection state for one input partition.

    Key features, per-key River baselines, a population model shared by the partition's keys,
    and the alert policy (episodes). See the module docstring for the contract.

    Parameters
    ----------
    config
        Hyperparameters; the defaults are the tuned ones (docs/detection.md).
    feedback
        Optional analyst feedback: an object with ``verdict(entity_type, entity, ts)``
        returning None, ``"confirmed"``, ``"false_positive"`` or ``"allowlisted"``.

    Examples
    --------
    >>> core = DetectionCore(DetectorConfig(warmup_events=5, warmup_seconds=0))
    >>> alerts = []
    >>> for i in range(400):
    ...     alerts += core.process({"event_id": str(i), "ts": 1000.0 + 2 * i, "api_key": "bot",
    ...         "prompt_tokens": 40, "completion_tokens": 900, "status": 200, "turn": 1,
    ...         "cot_request": True, "topic": ("code", "math", "science", "reasoning")[i % 4],
    ...         "prompt_simhash": format((i * 0x9E3779B97F4A7C15) % (1 << 64), "016x"),
    ...         "logprobs": True, "temperature": (0.2, 0.7, 1.0)[i % 3]}, seq=i)
    >>> alerts[0]["status"], alerts[0]["entity"], alerts[0]["reasons"][0]["feature"]
    ('firing', 'bot', 'sampling_share')
    >>> [a["status"] for a in core.advance(1000.0 + 800 + 4000)]
    ['resolved']
    """

    def __init__(self, config: DetectorConfig | None = None, *, feedback=None) -> None:
        self.config = cfg = config or DetectorConfig()
        self.feedback = feedback
        self.keys: dict[str, KeyState] = {}
        self.population = PopulationModel(
            n_trees=cfg.hst_trees, height=cfg.hst_height, window_size=cfg.hst_window, seed=cfg.seed,
            warm_windows=cfg.hst_warm_windows,
        )
        self.baseline = KeyBaseline(cfg.ph_delta, cfg.ph_threshold, cfg.ph_min_instances)
        self.policy = EpisodeTracker(MODEL_VERSION)
        self._open: dict[str, None] = {}
        self._dirty: set[str] = set()
        self._snapshots: list[dict] = []
        self.snapshots_dropped = 0
        self.evicted_total = 0
        self.events_total = 0
        self.duplicates_total = 0
        self._last_sweep = 0.0
        self._args = (cfg.share_alpha, cfg.dup_bits, cfg.template_bits, cfg.bloom_rotate, cfg.fast_alpha,
                      cfg.fast_seconds)

    # -- the per-event path ----------------------------------------------------------------
    def process(self, event: dict, seq: int | None = None) -> list[dict]:
        """Fold one validated event into its key; return the alerts it causes (often none)."""
        k = event["api_key"]
        ks = self.keys.get(k)
        if ks is None:
            ks = KeyState()
            self.keys[k] = ks
        elif seq is not None and seq <= ks.seq:
            self.duplicates_total += 1
            return []
        if seq is not None:
            ks.seq = seq
        out: list[dict] = []
        ts = event["ts"]
        f = ks.f
        cfg = self.config
        if ks.ep_sev and ks.events and ts - f[F.F_LAST] > cfg.quiet_timeout:
            out.append(self._resolve(k, ks, f[F.F_LAST]))
        a = self._args
        apply_event(ks, event, a[0], a[1], a[2], a[3], a[4], a[5])
        self.events_total += 1
        self._dirty.add(k)
        if ks.ep_sev:
            ks.ep_events += 1
        ks.since_eval += 1
        if ks.since_eval >= cfg.eval_every_events or ts - f[F.F_LAST_EVAL] >= cfg.eval_every_seconds:
            self._evaluate(k, ks, event, out)
        return out

    # -- evaluation points -------------------------------------------------------------------
    def _evaluate(self, k: str, ks: KeyState, event: dict, out: list[dict]) -> None:
        cfg = self.config
        f = ks.f
        ts = f[F.F_LAST]
        ks.since_eval = 0
        f[F.F_LAST_EVAL] = ts
        ks.evals += 1
        pop = self.population
        vec, s_dir, contrib = self._direction(ks)
        warm = ks.events >= cfg.warmup_events and ts - f[F.F_FIRST] >= cfg.warmup_seconds
        flagged = ks.ep_sev > 0
        thr = self._threshold(ks, ts, s_dir)
        # Score before learn; learn only from keys that are neither flagged nor near the line.
        learn = warm and not flagged and s_dir < thr
        hst = pop.score_then_learn(vec, s_dir, learn)
        if learn:
            pop.learn_rate(math.log1p(F.events_per_hour(ks)))
        # An outlier counts only with evidence outside content (see population_support).
        score, support = population_score(s_dir, hst, vec, cfg.population_weight, cfg.population_support,
                                          cfg.collect_weight, cfg.template_weight, cfg.population_harvest,
                                          F.length_ratio(ks))
        f[F.F_SCORE] = score
        # The key's own baseline: upward Page-Hinkley over its direction score.
        ph_mean, ph_n = f[F.F_PH_MEAN], f[F.F_PH_N]
        if warm and self.baseline.update(ks, s_dir):
            f[F.F_DRIFT_TS] = ts
            # Where the key stood before the change, if it had stood there long enough to say
            # (else 1.0: no score rises above it, no change alert).
            f[F.F_CHANGE_REF] = ph_mean if ph_n >= cfg.change_min_evals else 1.0
        # The key's slow baseline: EW(0.05) of its warm scores, bias-corrected (their running
        # mean over its first 20 evaluations; before warm-up it just follows the score), so it
        # starts from the key's own level. Decayed from the score of its first request, it sat
        # below a new key for tens of evaluations and read the fading small-sample shrinkage
        # as a drift (key-0.16).
        if warm:
            f[F.F_BASE] += max(0.05, 1.0 / ks.evals) * (s_dir - f[F.F_BASE])
        else:
            f[F.F_BASE] = s_dir
        self._maybe_snapshot(k, ks, event, score, vec, ts)

        verdict = None
        if self.feedback is not None:
            verdict = self.feedback.verdict("api_key", k, ts)
        if verdict == "allowlisted":
            if ks.ep_sev:
                self._close_quietly(k, ks)
            f[F.F_ABOVE] = 0.0
            return
        if verdict == "false_positive":
            # Close quietly; from now on only a clearly higher score than the one an analyst
            # rejected can fire (the bar is set once per verdict, it does not ratchet).
            if ks.ep_sev:
                rejected = max(f[F.F_PEAK], score)
                self._close_quietly(k, ks)
                f[F.F_ABOVE] = 0.0
                f[F.F_FP_FLOOR] = min(rejected + cfg.fp_penalty, 0.99)
            elif f[F.F_FP_FLOOR] == 0.0:
                f[F.F_FP_FLOOR] = min(max(score, thr) + cfg.fp_penalty, 0.99)
            thr = self._threshold(ks, ts, s_dir)
        min_sev = 2 if verdict == "confirmed" else 1

        if not warm:
            return
        if score >= thr:
            f[F.F_ABOVE] += 1.0
        else:
            f[F.F_ABOVE] = 0.0
        drifted = self._drifted(ks, ts)
        # (not once an analyst marked the key a false positive: then only the raised bar fires)
        # A change in content alone must be larger by the content-only margin (key-0.23): a
        # reasoning product's questions wander with its users, as a drifter's would.
        if (drifted and s_dir >= cfg.change_floor and f[F.F_FP_FLOOR] == 0.0
                and s_dir - f[F.F_CHANGE_REF] >= cfg.drift_min_rise + self._content_margin(vec)):
            f[F.F_CHANGE] += 1.0
        else:
            f[F.F_CHANGE] = 0.0
        if ks.ep_sev == 0:
            bar = thr
            if score >= thr and not drifted:
                # content alone is what a busy reasoning product shows too (key-0.22)
                bar = opening_bar(thr, vec, cfg.content_only_margin, cfg.population_support,
                                  cfg.collect_weight, cfg.template_weight)
            above = score >= bar
            clear = score >= bar + cfg.fast_open_margin  # clear evidence needs no confirmation
            held = None if f[F.F_CHANGE] >= cfg.change_evals else self._sustained(ks, ts, vec)
            changed = f[F.F_CHANGE] >= cfg.change_evals or held is not None
            if (above and (f[F.F_ABOVE] >= cfg.confirm_evals or clear or verdict == "confirmed")
                    or changed):
                if changed or drifted and f[F.F_BASE] < thr - cfg.resolve_margin:
                    det = _DET_DRIFT
                elif hst >= 0.7 and support >= 0.5:  # an outlier, with evidence beyond content
                    det = _DET_POP
                else:
                    det = _DET_SCRAPE
                ks.ep_det = det
                alert = self.policy.open_or_update(
                    ks, k, score, thr, ts, det, self._reasons(ks, vec, contrib, det, held), min_sev
                )
                ks.ep_events = ks.events
                if alert is not None:
                    alert["window"]["events"] = ks.events
                    out.append(alert)
                self._open[k] = None
            return
        if score >= thr - cfg.resolve_margin:
            f[F.F_BELOW_SINCE] = 0.0
            if score >= thr or min_sev > 1:
                alert = self.policy.open_or_update(
                    ks, k, score, thr, ts, ks.ep_det, self._reasons(ks, vec, contrib, ks.ep_det), min_sev
                )
                if alert is not None:
                    out.append(alert)
            else:
                f[F.F_EP_LAST] = ts
        else:
            if f[F.F_BELOW_SINCE] == 0.0:
                f[F.F_BELOW_SINCE] = ts
            elif ts - f[F.F_BELOW_SINCE] >= cfg.resolve_after and verdict != "confirmed":
                out.append(self._resolve(k, ks, ts, vec, contrib))

    def _content_margin(self, vec: list[float]) -> float:
        """What a change must rise beyond its own bar when its only evidence is content (key-0.23)."""
        cfg = self.config
        return opening_bar(0.0, vec, cfg.content_only_margin, cfg.population_support,
                           cfg.collect_weight, cfg.template_weight)

    def _sustained(self, ks: KeyState, ts: float, vec: list[float]) -> tuple[float, float] | None:
        """The key's score has stood at a new level since Page-Hinkley's last upward trip.

        After the trip, Page-Hinkley's running mean is the mean of the key's scores since. Once
        it holds over ``sustain_evals`` evaluations and ``sustain_seconds``, at least
        ``sustain_ratio`` times where the key stood before (``F_CHANGE_REF``), at least
        ``sustain_rise`` above it (plus the content-only margin, as the change path asks) and
        at least ``sustain_floor``, the change is an alert of its own (once per trip). A drifter
        that keeps most of its old traffic doubles its score and stays there; a benign key whose
        score wandered up to trip Page-Hinkley falls back toward where it stood.
        Returns ``(level, where the key stood)`` when it fires, else None.
        """
        cfg = self.config
        f = ks.f
        ref = f[F.F_CHANGE_REF]
        if (cfg.sustain_evals == 0 or f[F.F_DRIFT_TS] <= 0.0 or ref >= 1.0 or f[F.F_FP_FLOOR] != 0.0
                or f[F.F_PH_N] < cfg.sustain_evals or ts - f[F.F_DRIFT_TS] < cfg.sustain_seconds):
            return None
        level = f[F.F_PH_MEAN]
        if (level < cfg.sustain_floor or level < cfg.sustain_ratio * ref
                or level - ref < cfg.sustain_rise + self._content_margin(vec)):
            return None
        f[F.F_CHANGE_REF] = 1.0  # one alert per change
        return level, ref

    def _direction(self, ks: KeyState) -> tuple[list[float], float, list[float]]:
        """The key's direction vector, its direction score and the score's contributions."""
        cfg = self.config
        pop = self.population
        vec = direction_features(ks, pop.log_rate, pop.means, cfg.prior_weight, cfg.fast_weight, cfg.fast_alpha,
                                 cfg.fast_z, cfg.fast_shares, cfg.fast_ratio, self._benign_base(ks), cfg.change_h,
                                 cfg.prior_relief, cfg.template_z)
        s_dir, contrib = scrape_score(vec, cfg.score_mix, cfg.unknown_exponent, cfg.unknown_automation,
                                      cfg.unknown_relief, cfg.collect_weight, cfg.template_weight)
        m = self._fabricated(ks)[1]
        if m > 1.0 and s_dir > 0.0:
            # Fake follow-ups multiply the evidence; the features keep their relative shares of
            # the score and fabricated_followups (in the reasons) takes the rest.
            s_dir = min(1.0, s_dir * m)
            contrib = [c / m for c in contrib]
        return vec, s_dir, contrib

    def _fabricated(self, ks: KeyState) -> tuple[float, float]:
        """The key's fake follow-up share and the factor it multiplies the direction score by."""
        cfg = self.config
        fab = F.fabricated_share(ks, cfg.fabricated_prior, cfg.fabricated_switch_floor)
        return fab, 1.0 + cfg.fabricated_weight * fab

    def _benign_base(self, ks: KeyState) -> bool:
        """The key's own slow score baseline is clearly below the line (or it has none yet)."""
        cfg = self.config
        return ks.evals <= 1 or ks.f[F.F_BASE] < cfg.threshold_floor - cfg.resolve_margin

    def _drifted(self, ks: KeyState, ts: float) -> bool:
        """Page-Hinkley saw the key's score drift upward within the last ``drift_memory``."""
        d = ks.f[F.F_DRIFT_TS]
        return d > 0 and ts - d <= self.config.drift_memory

    def _threshold(self, ks: KeyState, ts: float, s_dir: float) -> float:
        cfg = self.config
        f = ks.f
        q = self.population.quantile(cfg.threshold_quantile) + cfg.threshold_margin
        thr = min(max(q, cfg.threshold_floor), cfg.threshold_ceiling)
        # A key that changed toward harvesting (Page-Hinkley drift, and well above its own
        # slow baseline) gets a slightly lower bar for a while: change is evidence too.
        if self._drifted(ks, ts) and s_dir - f[F.F_BASE] >= cfg.drift_min_rise:
            thr -= cfg.drift_bonus
        return min(max(thr, f[F.F_FP_FLOOR]), 0.99)

    def _reasons(self, ks, vec, contrib, det, held=None) -> list[tuple[str, float, float, float]]:
        """The (up to four) largest contributions, each as ``(feature, observed, population,
        contribution)``. A feature the key shares with the population (a non-streaming share of
        0.68 where keys average 0.67) explains nothing to a reader, although it adds to the score:
        it is passed over for the next largest (of the six largest) that stands out, unless none
        does."""
        pop = self.population
        # the six largest: a reason further down the list would explain little of the score
        order = sorted(range(len(vec)), key=lambda i: (-contrib[i], i))[:6]
        out = []
        plain = None  # the largest that does not stand out, listed only if none does
        obs = raw_observations(ks)
        for i in order:
            if len(out) == 4:
                break
            if (contrib[i] <= 0.0 and (out or plain)) or vec[i] != vec[i]:
                continue
            name = FEATURES[i]
            o, b = vec[i], pop.means[i]
            if name == "rate":
                o, b = obs["events_per_hour"], math.expm1(pop.log_rate)
            elif name == "output_ratio":
                o, b = obs["completion_prompt_ratio"], math.exp(b * 2.5)
            if o > b + _STANDS_OUT * max(1.0, abs(b)):
                out.append((name, o, b, contrib[i]))
            elif plain is None:
                plain = (name, o, b, contrib[i])
        if not out and plain is not None:
            out.append(plain)
        fab, m = self._fabricated(ks)
        if m > 1.0 and fab >= 0.1:
            out.append(("fabricated_followups", fab, 0.0, 1.0 - 1.0 / m))
        if det == _DET_DRIFT:
            if held is not None:  # a level that held since the change (key-0.26)
                out.append(("drift_level", held[0], held[1], 0.0))
            else:
                out.append(("drift_score", ks.f[F.F_SCORE], ks.f[F.F_BASE], 0.0))
        return out

    def _resolve(self, k, ks, ts, vec=None, contrib=None) -> dict:
        if vec is None:
            vec, _, contrib = self._direction(ks)
        alert = self.policy.resolve(ks, k, ks.f[F.F_SCORE], ts, self._reasons(ks, vec, contrib, ks.ep_det))
        ks.f[F.F_ABOVE] = 0.0
        ks.f[F.F_CHANGE] = 0.0
        self._open.pop(k, None)
        self._dirty.add(k)
        return alert

    def _close_quietly(self, k, ks) -> None:
        ks.ep_sev = 0
        ks.f[F.F_BELOW_SINCE] = 0.0
        self._open.pop(k, None)

    def _maybe_snapshot(self, k, ks, event, score, vec, ts) -> None:
        cfg = self.config
        f = ks.f
        if ks.events < cfg.snapshot_min_events:
            return
        if f[F.F_LAST_SNAP] > 0 and ts - f[F.F_LAST_SNAP] < cfg.snapshot_every_seconds:
            return
        f[F.F_LAST_SNAP] = ts
        if len(self._snapshots) >= 100_000:
            self.snapshots_dropped += 1
            return
        feats = {n: v for n, v in zip(FEATURES, vec, strict=True) if v == v}  # unknown omitted
        obs = raw_observations(ks)
        tw = f[F.F_TOP_W]
        for name, i in zip(("code_share", "math_share", "science_share", "reasoning_share"), _CAP_IDX, strict=True):
            feats[name] = f[i] / tw if tw > 0 else 0.0
        for name in ("events_per_hour", "completion_prompt_ratio", "topic_entropy", "repeat_share"):
            feats[name] = obs[name]
        asn = event.get("asn")
        self._snapshots.append(
            {
                "api_key": k,
                "ts": ts,
                "first_ts": f[F.F_FIRST],
                "events": ks.events,
                "score": score,
                "features": feats,
                "groups": {
                    "account": event.get("account_id"),
                    "client_net": _client_net(event.get("client_ip")),
                    "asn": str(asn) if asn is not None else None,
                    "user_agent": event.get("user_agent"),
                    "template": _template_bands(ks.ring),
                },
                "simhashes": _recent_simhashes(ks.ring, ks.ring_pos),
                "activity": {"minute": ks.last_min, "mask": f"{ks.mask:016x}"},
            }
        )

    # -- housekeeping --------------------------------------------------------------------------
    def advance(self, now_ts: float) -> list[dict]:
        """Event-time housekeeping: resolve quiet episodes, evict idle keys."""
        cfg = self.config
        out: list[dict] = []
        keys = self.keys
        if self._open:
            for k in sorted(self._open):
                ks = keys[k]
                last = ks.f[F.F_LAST]
                if now_ts - last > cfg.quiet_timeout:
                    out.append(self._resolve(k, ks, last))
        if now_ts - self._last_sweep >= max(cfg.idle_ttl / 8.0, 60.0):
            self._last_sweep = now_ts
            cutoff = now_ts - cfg.idle_ttl
            stale = [k for k, ks in keys.items() if ks.f[F.F_LAST] < cutoff and not ks.ep_sev]
            for k in stale:
                del keys[k]
                self._dirty.discard(k)
            self.evicted_total += len(stale)
        if len(keys) > cfg.max_keys:
            # a flood of fresh keys inside idle_ttl: drop the longest-silent ones (ties by key,
            # so replay and live drop the same), never a key with an open episode
            keep = int(cfg.max_keys * 0.9)
            idle = sorted((ks.f[F.F_LAST], k) for k, ks in keys.items() if not ks.ep_sev)
            drop = idle[: max(0, len(keys) - keep)]
            for _, k in drop:
                del keys[k]
                self._dirty.discard(k)
            self.evicted_total += len(drop)
        return out

    # -- state transfer ------------------------------------------------------------------------
    def export_key(self, api_key: str) -> bytes | None:
        ks = self.keys.get(api_key)
        return None if ks is None else encode_key(ks)

    def import_key(self, api_key: str, blob: bytes) -> None:
        ks = decode_key(blob)
        self.keys[api_key] = ks
        if ks.ep_sev:
            self._open[api_key] = None
        else:
            self._open.pop(api_key, None)

    def has_key(self, api_key: str) -> bool:
        return api_key in self.keys

    def dirty_keys(self) -> set[str]:
        return set(self._dirty)

    def mark_dirty(self, api_key: str) -> None:
        """Have ``api_key`` written at the next state write although no event changed it (a
        driver rolled back a half-written record of it and must write it again)."""
        if api_key in self.keys:
            self._dirty.add(api_key)

    def clear_dirty(self) -> None:
        self._dirty.clear()

    def export_shared(self) -> bytes:
        head = struct.pack(
            "<4sqqqqd", _SHARED_MAGIC, self.evicted_total, self.events_total,
            self.duplicates_total, self.snapshots_dropped, self._last_sweep,
        )
        return head + self.population.export_state()

    def import_shared(self, blob: bytes) -> None:
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise ValueError("shared state must be bytes")
        blob = bytes(blob)
        n = struct.calcsize("<4sqqqqd")
        if len(blob) < n or blob[:4] != _SHARED_MAGIC:
            raise ValueError("not a moatwatch shared state (bad magic or too short)")
        _, ev, et, dup, dropped, sweep = struct.unpack_from("<4sqqqqd", blob)
        if min(ev, et, dup, dropped) < 0 or not math.isfinite(sweep):
            raise ValueError("shared state holds invalid counters")
        self.population.import_state(blob[n:])
        self.evicted_total, self.events_total, self.duplicates_total = ev, et, dup
        self.snapshots_dropped, self._last_sweep = dropped, sweep

    def drain_member_snapshots(self) -> list[dict]:
        out = self._snapshots
        self._snapshots = []
        return out

    def stats(self) -> dict:
        return {
            "tracked_keys": len(self.keys),
            "state_bytes": len(self.keys) * _KEY_BYTES + sum(map(len, self.keys)),
            "open_episodes": len(self._open),
            "evicted_total": self.evicted_total,
            "events_total": self.events_total,
            "scores": self.population.score_counts(),
            "duplicates_total": self.duplicates_total,
        }


def _measure_key_bytes() -> int:
    ks = KeyState()
    ks.mask = (1 << 63) | 1
    size = sys.getsizeof(ks) + sys.getsizeof(ks.f) + sys.getsizeof(ks.ring) + sys.getsizeof(ks.bloom)
    size += sys.getsizeof(ks.mask)
    return size + 100  # dict slot, key object header, dirty-set share


_KEY_BYTES = _measure_key_bytes()
