"""Derive the prompt fields of QueryEvent v1 from prompt text, when the gateway did not.

The drivers call :func:`derive_prompt_fields` when an event carries ``prompt_text`` but lacks
``prompt_simhash``, ``topic`` or ``cot_request``; they then drop the text, so it never reaches
the detection core, alerts, logs or metrics. Pure and fast: a tokenizer regex, a keyed hash per
token (blake2b, so the SimHash does not depend on ``PYTHONHASHSEED``) and a keyword vote.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["derive_prompt_fields", "simhash64"]

_TOKEN = re.compile(r"[a-z0-9_]+")
_MASK64 = (1 << 64) - 1

# Keyword votes per topic. A crude classifier on purpose: it only has to agree with itself
# (replay and live use the same function), and the detector uses topic *shares*, so an
# occasional miss only blurs a share a little.
_TOPIC_WORDS: dict[str, frozenset[str]] = {
    "code": frozenset(
        "code function python javascript java rust golang sql bug compile class method api "
        "implement refactor regex algorithm debug script typescript c++ program unittest".split()
    ),
    "math": frozenset(
        "prove proof integral derivative equation theorem lemma matrix probability solve "
        "algebra calculus geometry compute sum prime polynomial limit".split()
    ),
    "science": frozenset(
        "physics chemistry biology molecule protein cell energy quantum reaction experiment "
        "gene enzyme force velocity atom electron organism".split()
    ),
    "reasoning": frozenset(
        "puzzle logic riddle deduce infer argument premise conclusion syllogism why "
        "paradox hypothesis analyze reasoning".split()
    ),
    "writing": frozenset(
        "write essay poem story letter email rewrite summarize summary blog draft edit "
        "paragraph tone article".split()
    ),
    "chat": frozenset("hi hello thanks thank you how are lol chat opinion feel".split()),
}
_TOPIC_ORDER = ("code", "math", "science", "reasoning", "writing", "chat")
_COT = re.compile(
    r"step[- ]by[- ]step|show (your|all) (work|steps|reasoning)|think (carefully|step)|"
    r"chain[- ]of[- ]thought|explain your reasoning|reason through|walk me through",
    re.IGNORECASE,
)


def _token_hash(tok: str) -> int:
    return int.from_bytes(hashlib.blake2b(tok.encode("utf-8"), digest_size=8).digest(), "big")


def simhash64(tokens: list[str]) -> int:
    """64-bit SimHash of a token list (unigrams and bigrams, equal weight).

    Examples
    --------
    >>> a = simhash64("solve the integral of x squared step by step".split())
    >>> b = simhash64("solve the integral of x cubed step by step".split())
    >>> c = simhash64("write a poem about the sea at night".split())
    >>> (a ^ b).bit_count() < (a ^ c).bit_count()
    True
    """
    feats = tokens + [tokens[i] + " " + tokens[i + 1] for i in range(len(tokens) - 1)]
    if not feats:
        return 0
    acc = [0] * 64
    for f in feats:
        h = _token_hash(f)
        for bit in range(64):
            if (h >> bit) & 1:
                acc[bit] += 1
            else:
                acc[bit] -= 1
    out = 0
    for bit in range(64):
        if acc[bit] > 0:
            out |= 1 << bit
    return out & _MASK64


def derive_prompt_fields(text: str) -> dict:
    """Derive ``prompt_simhash``, ``topic`` and ``cot_request`` from a prompt.

    Parameters
    ----------
    text
        The prompt. It is only read here; nothing derived from it can reproduce it.

    Returns
    -------
    dict
        ``{"prompt_simhash": 16 hex chars, "topic": one of the QueryEvent v1 enum,
        "cot_request": bool}``.

    Examples
    --------
    >>> f = derive_prompt_fields("Solve step by step: the integral of x^2 from 0 to 1")
    >>> f["topic"], f["cot_request"], len(f["prompt_simhash"])
    ('math', True, 16)
    >>> derive_prompt_fields("")["topic"]
    'other'
    """
    if not isinstance(text, str):
        raise TypeError("prompt text must be a string")
    # Long contexts: the first 4,000 characters carry the template and the task.
    head = text[:4000]
    lowered = head.lower()
    tokens = _TOKEN.findall(lowered)[:400]
    votes = {t: 0 for t in _TOPIC_ORDER}
    for tok in tokens:
        for t in _TOPIC_ORDER:
            if tok in _TOPIC_WORDS[t]:
                votes[t] += 1
    best = "other"
    best_n = 0
    for t in _TOPIC_ORDER:  # fixed order: ties resolve the same way everywhere
        if votes[t] > best_n:
            best, best_n = t, votes[t]
    return {
        "prompt_simhash": format(simhash64(tokens), "016x"),
        "topic": best,
        "cot_request": _COT.search(head) is not None,
    }
