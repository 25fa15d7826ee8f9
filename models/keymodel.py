"""Per-key state (compact) and the key's own River baseline, evaluated as a flyweight.

A tracked key costs one :class:`KeyState`: a ``__slots__`` object holding an ``array('d')`` of
:data:`models.features.NF` doubles, a ring of 8 recent prompt SimHashes (``array('Q')``), a
256-byte two-generation Bloom filter of exact prompt hashes, and a few ints. No River object
lives per key: the key's Page-Hinkley baseline is four floats in its array, loaded into one
shared :class:`river.drift.PageHinkley` when the key is evaluated and read back afterwards
(:class:`KeyBaseline`), so a million keys cost megabytes, not a million River objects.
"""

from __future__ import annotations

from array import array

from river import drift

from models import features as F

__all__ = ["KeyBaseline", "KeyState"]


class KeyState:
    """Everything the detector remembers about one API key.

    Examples
    --------
    >>> ks = KeyState()
    >>> ks.events, ks.seq, len(ks.f) == F.NF
    (0, -1, True)
    """

    __slots__ = (
        "f",
        "ring",
        "bloom",
        "seq",
        "events",
        "last_min",
        "mask",
        "since_eval",
        "ring_pos",
        "bloom_n",
        "bloom_gen",
        "ep_seq",
        "ep_sev",
        "ep_det",
        "ep_events",
        "evals",
    )

    def __init__(self) -> None:
        self.f = F.new_float_state()
        self.ring = array("Q", bytes(64))
        self.bloom = bytearray(256)
        self.seq = -1  # last applied input offset (-1: none)
        self.events = 0
        self.last_min = 0
        self.mask = 0  # active minutes, bit 0 = the latest minute
        self.since_eval = 0
        self.ring_pos = 0
        self.bloom_n = 0
        self.bloom_gen = 0
        self.ep_seq = 0  # how many episodes this key has had
        self.ep_sev = 0  # 0 = no open episode, else 1 info / 2 warning / 3 critical
        self.ep_det = 0  # detector index of the open episode
        self.ep_events = 0
        self.evals = 0  # evaluation points so far


class KeyBaseline:
    """The key's own drift detector: River's Page-Hinkley test, one shared instance.

    Page-Hinkley runs *upward only* (``mode="up"``) over the key's direction score at its
    evaluation points: a key whose behaviour moves toward harvesting trips it; a key that goes
    quiet or grows as a chat app moves the score down and cannot. Its state (count, running
    mean, cumulative sum, minimum) is stored in the key's float array and swapped in and out of
    the shared detector around each update.

    Parameters
    ----------
    delta
        Page-Hinkley tolerance: score changes below it are not accumulated.
    threshold
        Page-Hinkley lambda, in score units.
    min_instances
        Evaluation points before the key's own baseline can signal drift.

    Examples
    --------
    >>> b = KeyBaseline(delta=0.01, threshold=0.5, min_instances=5)
    >>> ks = KeyState()
    >>> [b.update(ks, 0.1) for _ in range(10)][-1]
    False
    >>> any(b.update(ks, 0.8) for _ in range(5))
    True
    """

    def __init__(self, delta: float = 0.01, threshold: float = 0.6, min_instances: int = 6) -> None:
        if not delta >= 0:
            raise ValueError(f"delta must be >= 0, got {delta}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        self._ph = drift.PageHinkley(
            min_instances=min_instances, delta=delta, threshold=threshold, alpha=1.0, mode="up"
        )

    def update(self, ks: KeyState, x: float) -> bool:
        """Update the key's baseline with its score ``x``; True when it drifted upward."""
        ph = self._ph
        f = ks.f
        ph._drift_detected = False
        mean = ph._x_mean
        mean.n = f[F.F_PH_N]
        mean._mean = f[F.F_PH_MEAN]
        ph._sum_increase = f[F.F_PH_SUM]
        ph._min_increase = f[F.F_PH_MIN] if mean.n > 0 else float("inf")
        ph.update(x)
        hit = ph.drift_detected
        if hit:
            # River resets on the next update; we reset now so the stored state is clean.
            f[F.F_PH_N] = 0.0
            f[F.F_PH_MEAN] = 0.0
            f[F.F_PH_SUM] = 0.0
            f[F.F_PH_MIN] = 0.0
        else:
            f[F.F_PH_N] = mean.n
            f[F.F_PH_MEAN] = mean._mean
            f[F.F_PH_SUM] = ph._sum_increase
            f[F.F_PH_MIN] = ph._min_increase
        return hit
