"""Scoring of a key's direction vector and the alert policy (episodes).

:func:`scrape_score` combines the direction features (:data:`models.features.FEATURES`) into
one score in [0, 1]. It is an *evidence combination*, not a rule: no single tell can carry a
key over the threshold, because the score is a product of three groups,

* **content** - what is asked: chain-of-thought, capability topics, breadth over capability
  domains, single-turn, long outputs for short prompts, novel prompts;
* **extraction** - how it is generated, sampled and kept: logprobs / n > 1, temperature
  spread, whole answers collected at temperature > 0 (no streaming), new prompts filled into
  a few templates;
* **automation** - how it arrives: machine-regular timing, flat duty cycle, 429s, volume
  above the population, no streaming,

content and automation each a weighted mean, extraction a noisy-OR, combined as
``content * (c0 + c1 * extraction + c2 * automation)``:
content is necessary (batch jobs, CI suites and agents are automated but ask for the wrong
thing), and extraction or automation must add to it (a human asking the odd math question is
content-heavy but neither).

:class:`EpisodeTracker` turns scores into Alert v1 dicts: warm-up, adaptive threshold,
confirmation over consecutive evaluations, open / escalate / resolve, deterministic ids.
"""

from __future__ import annotations

import hashlib
import math

from models import features as F
from models.features import FEATURES

__all__ = ["DETECTORS", "EpisodeTracker", "alert_id", "collection_gate", "opening_bar", "outlier_support",
           "population_score", "scrape_score"]

DETECTORS = ("key_scrape", "key_population", "key_drift")
SEVERITIES = ("info", "warning", "critical")

_IDX = {n: i for i, n in enumerate(FEATURES)}

#: (feature, weight) of each evidence group. Content features may be unknown (NaN): the
#: group mean is taken over the known ones and shrunk by the share of weight that is known.
CONTENT = (
    ("harvest_share", 2.0),
    ("cot_share", 1.2),
    ("capability_share", 0.8),
    ("capability_breadth", 0.5),
    ("single_turn_share", 0.5),
    ("output_ratio", 1.0),
)
EXTRACTION = (
    ("sampling_share", 0.9),
    ("temperature_spread", 0.9),
)
AUTOMATION = (
    ("timing_regularity", 1.0),
    ("duty_cycle", 0.7),
    ("throttled_share", 0.4),
    ("rate", 1.0),
    ("non_streaming_share", 0.8),
)
_GROUPS = (CONTENT, EXTRACTION, AUTOMATION)
_GROUP_IDX = tuple(tuple((_IDX[n], w) for n, w in g) for g in _GROUPS)
_GROUP_W = tuple(sum(w for _, w in g) for g in _GROUPS)
#: Automation tells that corroborate a population outlier (:func:`outlier_support`): how the
#: requests arrive (regular timing, 429s, whole answers without streaming), not how many: the
#: duty cycle and the volume are left out, a busy product's human traffic fills both (key-0.20).
_SUPPORT_AUTO = tuple((i, w) for i, w in _GROUP_IDX[2] if i not in (_IDX["duty_cycle"], _IDX["rate"]))
_NOVELTY = _IDX["novelty"]
_SAMPLED = _IDX["sampled_decoding"]
_NON_STREAMING = _IDX["non_streaming_share"]
_TEMPLATE = _IDX["template_share"]
_HARVEST = _IDX["harvest_share"]
_RATIO = _IDX["output_ratio"]


def _collected(vec: list[float]) -> float:
    """Share of sampled answers collected whole: ``non_streaming_share x sampled_decoding``.

    A product shows its users tokens as they come (it streams); a harvester wants whole,
    sampled answers to store. Greedy whole answers are how eval harnesses and batch jobs
    work, so the tell needs temperature > 0 too. Unknown sampling (no temperature sent) counts
    half; unknown streaming (no ``stream`` field) leaves the tell out (NaN).
    """
    ns = vec[_NON_STREAMING]
    if ns != ns:
        return ns
    sam = vec[_SAMPLED]
    return ns * (sam if sam == sam else 0.5)


def _extraction_terms(vec: list[float], collect_weight: float = 0.0,
                      template_weight: float = 0.0) -> list[tuple[int, float]]:
    """The known extraction tells as ``(feature index, weight x value)``, unknown ones left out;
    whole sampled answers (:func:`_collected`, weight ``collect_weight``) are told as
    ``non_streaming_share``, prompts filled from templates (weight ``template_weight``) as
    ``template_share``."""
    terms = [(i, w * vec[i]) for i, w in _GROUP_IDX[1] if vec[i] == vec[i]]
    if collect_weight > 0.0:
        v = _collected(vec)
        if v == v:
            terms.append((_NON_STREAMING, collect_weight * v))
    if template_weight > 0.0:
        v = vec[_TEMPLATE]
        if v == v:
            terms.append((_TEMPLATE, template_weight * v))
    return terms


def _extraction(terms: list[tuple[int, float]]) -> float:
    """Noisy-OR of the extraction tells (:func:`_extraction_terms`)."""
    keep = 1.0
    for _, t in terms:
        keep *= 1.0 - t
    return 1.0 - keep


def collection_gate(novelty: float, sampled: float) -> float:
    """How much of a key's evidence counts as collecting answers: ``(0.3 + 0.7 * novelty) *
    (0.5 + 0.5 * sampled_decoding)``, each factor 1 when its feature is unknown (NaN).

    A key that re-runs its own prompts (CI suites, eval re-runs) collects nothing new; one that
    decodes greedily (eval harnesses, CI) asks for one answer per prompt, not its distribution.
    The per-key score (:func:`scrape_score`) and campaign member suspicion
    (``models.campaign.member_suspicion``) are gated alike.

    Examples
    --------
    >>> collection_gate(1.0, 1.0), collection_gate(0.0, 0.0), collection_gate(float("nan"), 0.0)
    (1.0, 0.15, 0.5)
    """
    gate = 0.3 + 0.7 * novelty if novelty == novelty else 1.0
    if sampled == sampled:
        gate *= 0.5 + 0.5 * sampled
    return gate


def scrape_score(
    vec: list[float],
    mix: tuple[float, float, float],
    unknown_exponent: float = 0.5,
    unknown_automation: float = 0.0,
    unknown_relief: float = 0.0,
    collect_weight: float = 0.0,
    template_weight: float = 0.0,
) -> tuple[float, list[float]]:
    """Combine a direction vector into a score and per-feature contributions.

    ``score = content * novelty_gate * (c0 + c1*extraction + c2*automation)``, where each group
    is a weighted mean of its features, unknown (NaN) content features are left out (and the
    content mean shrunk by the known share of weight, so missing fields neither accuse nor
    acquit), and ``novelty_gate = 0.3 + 0.7 * novelty``: a key that repeats its prompts (CI
    suites, eval re-runs) is not harvesting new answers.

    Parameters
    ----------
    vec
        Direction features in FEATURES order, each in [0, 1] or NaN (unknown).
    mix
        ``(c0, c1, c2)``, summing to 1 so the score stays in [0, 1].
    unknown_exponent
        The content mean is multiplied by ``(known weight / total weight) ** unknown_exponent``:
        0 ignores how much is unknown, 1 scales by it.
    unknown_automation
        When part of the content is unknown, the automation weight ``c2`` grows by this times
        the unknown share of content weight (what is asked is uncertain, so how it arrives
        carries more of the evidence; content stays necessary).
    unknown_relief
        The unknown-content penalty exponent is scaled by ``1 - unknown_relief * how``, where
        ``how`` is the noisy-OR of the automation and extraction evidence: a key whose arrivals
        are machine-like (regular, flat, at volume, throttled) or that asks for the answer
        distribution (sampling options, a temperature sweep, whole sampled answers, templated
        prompts) loses less of its known content evidence (the long-answer share) to the fields
        its gateway does not send. 0 = off; content is still necessary.
    collect_weight
        Weight of whole sampled answers (``non_streaming_share x sampled_decoding``, see
        :func:`_collected`) as one more tell in the extraction noisy-OR. 0 = off.
    template_weight
        Weight of ``template_share`` (new prompts filled into a recent prompt's template: a
        dataset run through a few prompt templates) as one more tell in the extraction
        noisy-OR. 0 = off.

    Returns
    -------
    score, contributions
        ``contributions[i]`` is feature i's share of the score (they sum to 1 when score > 0).

    Examples
    --------
    >>> def vec(**kw):
    ...     return [kw.get(n, 0.0) for n in FEATURES]
    >>> harvest = vec(harvest_share=0.9, cot_share=0.8, capability_share=0.95,
    ...               capability_breadth=0.7, single_turn_share=1.0, output_ratio=0.9,
    ...               novelty=1.0, sampled_decoding=1.0, sampling_share=0.6,
    ...               temperature_spread=0.5, timing_regularity=0.8, duty_cycle=0.9, rate=0.7)
    >>> chat = vec(harvest_share=0.05, cot_share=0.05, capability_share=0.2,
    ...            single_turn_share=0.3, output_ratio=0.2, novelty=1.0, sampled_decoding=1.0)
    >>> mix = (0.45, 0.35, 0.2)
    >>> round(scrape_score(harvest, mix)[0], 2), round(scrape_score(chat, mix)[0], 2)
    (0.72, 0.05)
    >>> eval_run = list(harvest); eval_run[FEATURES.index("sampled_decoding")] = 0.0
    >>> round(scrape_score(eval_run, mix)[0], 2)  # greedy decoding halves the content evidence
    0.36
    >>> no_topics = list(harvest)
    >>> for n in ("cot_share", "capability_share", "capability_breadth"):
    ...     no_topics[FEATURES.index(n)] = float("nan")  # unknown: neither accuses nor acquits
    >>> round(scrape_score(no_topics, mix)[0], 2)
    0.57
    """
    cidx = _GROUP_IDX[0]
    known_w = 0.0
    acc = 0.0
    for i, w in cidx:
        v = vec[i]
        if v == v:
            known_w += w
            acc += w * v
    if known_w <= 0.0:
        return 0.0, [0.0] * len(vec)
    s = 0.0
    for i, w in _GROUP_IDX[2]:
        v = vec[i]
        if v == v:
            s += w * v
    automation = s / _GROUP_W[2]  # unknown (NaN) automation tells count as 0
    ext_terms = _extraction_terms(vec, collect_weight, template_weight)
    extraction = _extraction(ext_terms)
    if known_w < _GROUP_W[0]:
        how = 1.0 - (1.0 - automation) * (1.0 - extraction)  # machine-like or extracting
        content = acc / known_w * (known_w / _GROUP_W[0]) ** (unknown_exponent * (1.0 - unknown_relief * how))
    else:
        content = acc / known_w
    gate = collection_gate(vec[_NOVELTY], vec[_SAMPLED])
    # Extraction is a noisy-OR: logprobs/n>1 *or* a temperature sweep *or* whole sampled
    # answers *or* templated prompts is the tell, one is enough. Automation is a weighted
    # mean: each of its tells is weak alone.
    c0, c1, c2 = mix
    if unknown_automation > 0.0:
        c2 = c2 * (1.0 + unknown_automation * (1.0 - known_w / _GROUP_W[0]))
    score = content * gate * (c0 + c1 * extraction + c2 * automation)
    contrib = [0.0] * len(vec)
    if score > 0.0:
        # Attribution of a product is not unique; this one is stable and sums to 1:
        # the content features share the c0 part, each other group shares its own part.
        parts = (c0 + 0.0, c1 * extraction, c2 * automation)
        for part, grp, gi in ((parts[0], content, 0), (parts[1], extraction, 1), (parts[2], automation, 2)):
            # (within extraction the shares follow each tell's weighted value, as for the others)
            if grp > 0 and part > 0:
                if gi == 1:
                    terms = ext_terms
                else:
                    terms = [(i, w * vec[i]) for i, w in _GROUP_IDX[gi] if vec[i] == vec[i]]
                denom = sum(t for _, t in terms)
                if denom > 0:
                    for i, t in terms:
                        contrib[i] += part * (t / denom)
        tot = sum(contrib)
        if tot > 0:
            contrib = [c / tot for c in contrib]
    return min(max(score, 0.0), 1.0), contrib


def outlier_support(vec: list[float], collect_weight: float = 0.0, template_weight: float = 0.0) -> float:
    """Evidence outside content that a population outlier is a harvester, not an odd product.

    HalfSpaceTrees sees every direction feature, so a key is an outlier mostly for what it
    asks: a reasoning product's users ask the same capability questions, with the same CoT
    and long answers, as a harvester. This is the extraction evidence (the noisy-OR of
    sampling options, temperature spread and, with their weights, whole sampled answers and
    templated prompts: the same tells as :func:`scrape_score`) plus the automation
    evidence of *how* requests arrive, not how many (regular timing, 429s, whole answers
    collected without streaming; each tell's weight over the whole automation weight). The duty
    cycle and the volume are left out because many people behind one key fill its minutes and
    its hourly count by themselves: before key-0.20 a busy reasoning product's volume (rate 0.28)
    alone nearly carried it over the line. Both still count in :func:`scrape_score`. The engine
    lets the outlier boost through in proportion to it (``DetectorConfig.population_support``).

    Examples
    --------
    >>> def vec(**kw):
    ...     return [kw.get(n, 0.0) for n in FEATURES]
    >>> outlier_support(vec(duty_cycle=0.9, rate=0.3, cot_share=0.8))  # a busy reasoning product
    0.0
    >>> round(outlier_support(vec(non_streaming_share=1.0)), 3)  # whole answers, by a program
    0.205
    >>> round(outlier_support(vec(sampling_share=1.0)), 2)
    0.9
    >>> round(outlier_support(vec(template_share=0.4), template_weight=0.5), 2)  # a dataset in templates
    0.2
    """
    s = 0.0
    for i, w in _SUPPORT_AUTO:
        v = vec[i]
        if v == v:
            s += w * v
    return _extraction(_extraction_terms(vec, collect_weight, template_weight)) + s / _GROUP_W[2]


def population_score(s_dir: float, hst: float, vec: list[float], weight: float,
                     support: float, collect_weight: float = 0.0,
                     template_weight: float = 0.0, harvest_floor: float = 0.0,
                     length_ratio: float = math.nan) -> tuple[float, float]:
    """The key's score: ``s_dir`` modulated by the HalfSpaceTrees outlier score ``hst``.

    ``score = s_dir * (1 + 2 * weight * (hst - 0.5))`` (no modulation before the trees have seen
    a window, ``hst`` 0), where the upward part (an outlier) is scaled by
    ``min(1, outlier_support(vec, collect_weight, template_weight) / support)`` when ``support``
    > 0, and by ``min(1, answers / harvest_floor)`` when ``harvest_floor`` > 0, ``answers``
    being the larger of the known ``harvest_share`` and ``min(1, length_ratio)``, the key's
    typical answer length over prompt length (geometric mean; the vector's ``output_ratio``
    when it is not given): an outlier whose answers are a few percent of its prompts (a RAG or
    classification job asking for logprobs on short replies to long contexts) is unusual, but
    it is not collecting the model's answers. A distiller whose answers are about as long as
    its prompts, on any topic, keeps the whole boost. Returns the score, clipped to [0, 1],
    and the scale applied (1.0 when nothing was gated).

    Examples
    --------
    >>> v = [0.0] * len(FEATURES)
    >>> population_score(0.3, 0.9, v, 0.25, 0.0)[0]  # ungated: x1.2
    0.36
    >>> population_score(0.3, 0.9, v, 0.25, 0.05)  # no evidence beyond content: no boost
    (0.3, 0.0)
    >>> v[_IDX["sampling_share"]] = 1.0  # logprobs on every request ...
    >>> population_score(0.3, 0.9, v, 0.25, 0.15, harvest_floor=0.1)  # ... but no long answer
    (0.3, 0.0)
    >>> v[_HARVEST] = 0.05  # half the floor: half the boost
    >>> [round(x, 3) for x in population_score(0.3, 0.9, v, 0.25, 0.15, harvest_floor=0.1)]
    [0.33, 0.5]
    >>> population_score(0.3, 0.9, v, 0.25, 0.15, harvest_floor=0.1, length_ratio=0.8)[0]
    0.36
    """
    boost = 2.0 * weight * (hst - 0.5) if hst > 0.0 else 0.0
    scale = 1.0
    if boost > 0.0 and support > 0.0:
        scale = min(outlier_support(vec, collect_weight, template_weight) / support, 1.0)
    if boost > 0.0 and harvest_floor > 0.0:
        ratio = min(length_ratio, 1.0) if length_ratio == length_ratio else vec[_RATIO]
        known = [x for x in (vec[_HARVEST], ratio) if x == x]
        if known:
            scale *= min(max(max(known), 0.0) / harvest_floor, 1.0)
    boost *= scale
    return min(max(s_dir * (1.0 + boost), 0.0), 1.0), scale


def opening_bar(thr: float, vec: list[float], margin: float, enough: float,
                collect_weight: float = 0.0, template_weight: float = 0.0) -> float:
    """The score a key must reach to open an episode: ``thr``, plus ``margin`` for a key whose
    only evidence is content, shrinking as its :func:`outlier_support` (how it takes the
    answers) approaches ``enough`` (key-0.22).

    A busy reasoning product's users ask what a harvester asks: capability topics, CoT, long
    answers. Content alone must clear the line by a margin; sampling options, a temperature
    sweep, whole sampled answers, templated prompts, regular timing, 429s or no streaming
    each take part of the margin away.

    Examples
    --------
    >>> v = [0.0] * len(FEATURES)
    >>> round(opening_bar(0.35, v, 0.04, 0.15), 3)  # content alone
    0.39
    >>> v[_IDX["sampling_share"]] = 0.1  # logprobs on a few requests: 0.09 of 0.15
    >>> round(opening_bar(0.35, v, 0.04, 0.15), 3)
    0.366
    >>> v[_IDX["sampling_share"]] = 1.0
    >>> opening_bar(0.35, v, 0.04, 0.15)
    0.35
    """
    if margin <= 0.0:
        return thr
    corr = outlier_support(vec, collect_weight, template_weight)
    told = min(1.0, corr / enough) if enough > 0.0 else float(corr > 0.0)
    return thr + margin * (1.0 - told)


def alert_id(entity_type: str, entity: str, detector: str, episode_seq: int) -> str:
    """Deterministic id of one episode: same episode, same id, in replay and live.

    Examples
    --------
    >>> alert_id("api_key", "k1", "key_scrape", 1)
    'c9d5330f30e9c35a5995eabd1c400936'
    >>> len(alert_id("api_key", "k1", "key_scrape", 2))
    32
    """
    s = f"{entity_type}|{entity}|{detector}|{episode_seq}".encode()
    return hashlib.blake2b(s, digest_size=16).hexdigest()


_EXPLAIN = {
    "harvest_share": "share of capability requests answered with >= 2.5x the prompt {o:.2f} vs population {b:.2f}",
    "sampled_decoding": "share of requests sampled at temperature > 0 {o:.2f} vs population {b:.2f}",
    "cot_share": "cot_request share {o:.2f} vs population {b:.2f}",
    "capability_share": "code/math/science/reasoning share {o:.2f} vs population {b:.2f}",
    "capability_breadth": "breadth over code/math/science/reasoning {o:.2f} vs population {b:.2f}",
    "single_turn_share": "single-turn share {o:.2f} vs population {b:.2f}",
    "output_ratio": "completion/prompt tokens {o:.1f}x vs population {b:.1f}x",
    "novelty": "never-seen prompt share {o:.2f} vs population {b:.2f}",
    "template_share": "templated-prompt share {o:.2f} vs population {b:.2f}",
    "sampling_share": "logprobs or n>1 share {o:.2f} vs population {b:.2f}",
    "temperature_spread": "temperature spread {o:.2f} (scaled) vs population {b:.2f}",
    "timing_regularity": "inter-arrival regularity {o:.2f} vs population {b:.2f}",
    "duty_cycle": "active-minute share {o:.2f} vs population {b:.2f}",
    "throttled_share": "rate-limited (429) share {o:.2f} (scaled) vs population {b:.2f}",
    "rate": "{o:.0f} events/hour vs population typical {b:.0f}",
    "non_streaming_share": "non-streaming share {o:.2f} vs population {b:.2f}",
    "drift_score": "score rose to {o:.2f} from the key's own baseline {b:.2f}",
    "drift_level": "score has averaged {o:.2f} since it changed, against {b:.2f} before",
    "fabricated_followups": "share of follow-up turns that drop their conversation's history "
                            "or change its subject {o:.2f} (fake follow-ups: a real one "
                            "resends it and mostly stays on it)",
}


def explain(name: str, observed: float, baseline: float) -> str:
    return _EXPLAIN[name].format(o=observed, b=baseline)


def ratio_from_feature(x: float) -> float:
    """Invert the output_ratio feature scaling back to a completion/prompt ratio."""
    return math.exp(x * 2.5)


class EpisodeTracker:
    """Turns a key's successive scores into firing / resolved Alert v1 dicts.

    The episode state lives in the key's :class:`~models.keymodel.KeyState` (ints and floats),
    so it is exported and restored with the key. An episode of key K is numbered by K's
    episode count; its ``alert_id`` hashes (entity_type, K, detector, number), so firing,
    escalation and the final resolved message share one id.

    Examples
    --------
    >>> from models.keymodel import KeyState
    >>> t = EpisodeTracker(model_version="t")
    >>> ks = KeyState(); ks.f[F.F_FIRST] = 0.0; ks.events = 50
    >>> a = t.open_or_update(ks, "k", 0.8, 0.5, 100.0, 0, [("cot_share", 0.9, 0.1, 1.0)], 2)
    >>> a["status"], a["severity"], a["alert_id"] == alert_id("api_key", "k", "key_scrape", 1)
    ('firing', 'critical', True)
    >>> t.open_or_update(ks, "k", 0.8, 0.5, 110.0, 0, [("cot_share", 0.9, 0.1, 1.0)], 2) is None
    True
    >>> t.resolve(ks, "k", 0.1, 200.0, [("cot_share", 0.1, 0.1, 1.0)])["status"]
    'resolved'
    """

    def __init__(self, model_version: str) -> None:
        self.model_version = model_version

    @staticmethod
    def severity_for(score: float, threshold: float) -> int:
        if score >= threshold + 0.2 or score >= 0.95:
            return 3
        if score >= threshold + 0.1:
            return 2
        return 1

    def open_or_update(
        self,
        ks,
        api_key: str,
        score: float,
        threshold: float,
        ts: float,
        detector: int,
        reasons: list[tuple[str, float, float, float]],
        min_severity: int,
    ) -> dict | None:
        """Open an episode or escalate it; return the firing alert, or None (dedup)."""
        f = ks.f
        sev = max(self.severity_for(score, threshold), min_severity)
        if ks.ep_sev == 0:
            ks.ep_seq += 1
            ks.ep_sev = sev
            ks.ep_det = detector
            ks.ep_events = 0
            f[F.F_EP_FIRST] = f[F.F_FIRST] if ks.events < 200 else max(f[F.F_FIRST], ts - 3600.0)
            f[F.F_EP_LAST] = ts
            f[F.F_EP_TS] = ts
            f[F.F_PEAK] = score
            f[F.F_BELOW_SINCE] = 0.0
            return self._alert(ks, api_key, "firing", sev, score, ts, reasons)
        f[F.F_EP_LAST] = ts
        if score > f[F.F_PEAK]:
            f[F.F_PEAK] = score
        if sev > ks.ep_sev:
            ks.ep_sev = sev
            f[F.F_EP_TS] = ts
            return self._alert(ks, api_key, "firing", sev, score, ts, reasons)
        return None

    def resolve(self, ks, api_key: str, score: float, ts: float, reasons) -> dict:
        """Close the open episode; return its resolved alert."""
        sev = ks.ep_sev
        a = self._alert(ks, api_key, "resolved", sev, score, ts, reasons)
        ks.ep_sev = 0
        ks.f[F.F_BELOW_SINCE] = 0.0
        return a

    def _alert(self, ks, api_key, status, sev, score, ts, reasons) -> dict:
        f = ks.f
        det = DETECTORS[ks.ep_det]
        return {
            "alert_id": alert_id("api_key", api_key, det, ks.ep_seq),
            "schema_version": 1,
            "entity_type": "api_key",
            "entity": api_key,
            "status": status,
            "severity": SEVERITIES[sev - 1],
            "score": round(min(max(score, 0.0), 1.0), 4),
            "event_ts": ts,
            "detected_at": 0.0,
            "window": {
                "first_ts": f[F.F_EP_FIRST],
                "last_ts": f[F.F_EP_LAST] if f[F.F_EP_LAST] >= f[F.F_EP_FIRST] else f[F.F_EP_FIRST],
                "events": int(ks.ep_events),
            },
            "reasons": [
                {
                    "feature": name,
                    "observed": round(obs, 4),
                    "baseline": round(base, 4),
                    "contribution": round(min(max(c, 0.0), 1.0), 4),
                    "explanation": explain(name, obs, base),
                }
                for name, obs, base, c in reasons
            ],
            "detector": det,
            "model_version": self.model_version,
            "related_entities": [],
            "related_total": 0,
        }
