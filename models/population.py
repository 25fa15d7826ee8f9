"""The population model shared by the keys of one input partition.

Three pieces, all updated only at key evaluation points and only from keys that are **not**
currently flagged (River's advice: do not learn from what you just flagged):

* a River :class:`~river.anomaly.HalfSpaceTrees` over the keys' direction vectors
  (:data:`models.features.FEATURES`), scored before it learns: a key that scrapes from its
  first request is unusual against the population even without a history of its own;
* exponentially weighted population means of each direction feature and of the log rate:
  the "baseline" in alert reasons ("cot_request share 0.87 vs population 0.05") and the
  reference of the scale-free rate feature;
* a decayed histogram of recent key scores, from which the adaptive threshold is read.

HalfSpaceTrees' structure is deterministic from its seed and the (sorted) feature names, so
the serialized form holds only the masses and counters; :meth:`PopulationModel.import_state`
rebuilds the trees and pours the masses back in.
"""

from __future__ import annotations

import math
import struct
from array import array

from river import anomaly

from models.features import FEATURES

__all__ = ["PopulationModel"]

_NFEAT = len(FEATURES)
_HIST_BINS = 50
_MAGIC = b"MWP1"


class PopulationModel:
    """Population statistics and a streaming outlier model over per-key direction vectors.

    Parameters
    ----------
    n_trees, height, window_size, seed
        HalfSpaceTrees hyperparameters (the seed fixes the tree structure).
    fading
        Weight of one observation in the population means and the score histogram.
    warm_windows
        Completed HalfSpaceTrees windows before its outlier score counts (0 until then). The
        trees score against the masses of their last completed window; a run's first window
        is learned over its first evaluations, when nearly every key is young (a few requests,
        its shares shrunk to the priors), a poor reference for a mature population.

    Examples
    --------
    >>> pop = PopulationModel(n_trees=4, height=4, window_size=20, seed=7)
    >>> for i in range(60):
    ...     _ = pop.score_then_learn([0.1] * len(FEATURES), 0.05, learn=True)
    >>> round(pop.mean("cot_share"), 2)
    0.1
    >>> pop.score_then_learn([0.95] * len(FEATURES), 0.9, learn=False) > 0.5
    True
    >>> clone = PopulationModel(n_trees=4, height=4, window_size=20, seed=7)
    >>> clone.import_state(pop.export_state())
    >>> clone.export_state() == pop.export_state()
    True
    """

    def __init__(
        self,
        n_trees: int = 10,
        height: int = 6,
        window_size: int = 256,
        seed: int = 42,
        fading: float = 0.002,
        warm_windows: int = 2,
    ) -> None:
        if not 1 <= n_trees <= 64:
            raise ValueError(f"n_trees must be in [1, 64], got {n_trees}")
        if not 1 <= height <= 12:
            raise ValueError(f"height must be in [1, 12], got {height}")
        if not window_size >= 2:
            raise ValueError(f"window_size must be >= 2, got {window_size}")
        if not 0.0 < fading < 1.0:
            raise ValueError(f"fading must be in (0, 1), got {fading}")
        if not warm_windows >= 1:
            raise ValueError(f"warm_windows must be >= 1, got {warm_windows}")
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.seed = seed
        self.fading = fading
        self.warm_windows = warm_windows
        self._hst = self._new_hst()
        self.means = array("d", bytes(8 * _NFEAT))
        self.log_rate = 0.0
        self.weight = 0.0  # decayed count of observations behind the means
        self.hist = array("d", bytes(8 * _HIST_BINS))
        self.hst_seen = 0

    def _new_hst(self) -> anomaly.HalfSpaceTrees:
        return anomaly.HalfSpaceTrees(
            n_trees=self.n_trees, height=self.height, window_size=self.window_size, seed=self.seed
        )

    # -- scoring ---------------------------------------------------------------------------
    def mean(self, name: str) -> float:
        """Population mean of a direction feature."""
        return self.means[FEATURES.index(name)]

    def score_then_learn(self, vec: list[float], score_hint: float, learn: bool) -> float:
        """HalfSpaceTrees outlier score of ``vec`` (0..1), *then* learn it if ``learn``.

        ``score_hint`` is unused by the trees; it is the caller's direction score, recorded in
        the histogram when ``learn`` (so flagged keys do not move the adaptive threshold).
        """
        m = self.means
        # Unknown features (NaN) are imputed with the population mean: neither odd nor normal.
        x = {name: (v if v == v else m[i]) for i, (name, v) in enumerate(zip(FEATURES, vec, strict=True))}
        hst = self._hst
        s = float(hst.score_one(x)) if self.hst_seen >= self.warm_windows * self.window_size else 0.0
        if learn:
            hst.learn_one(x)
            self.hst_seen += 1
            a = self.fading
            if self.weight < 1.0 / a:
                a = 1.0 / (self.weight + 1.0)
            for i in range(_NFEAT):
                v = vec[i]
                if v == v:
                    m[i] += a * (v - m[i])
            self.weight += 1.0
            self.observe_score(score_hint)
        return s

    def learn_rate(self, log_rate: float) -> None:
        """Track the population's typical log1p(events/hour) (a slow EW mean)."""
        a = 0.01 if self.weight > 100 else 1.0 / (self.weight + 1.0)
        self.log_rate += a * (log_rate - self.log_rate)

    def observe_score(self, score: float) -> None:
        h = self.hist
        d = 1.0 - self.fading
        for i in range(_HIST_BINS):
            h[i] *= d
        b = min(int(score * _HIST_BINS), _HIST_BINS - 1)
        h[b] += 1.0

    def quantile(self, q: float) -> float:
        """Score below which a fraction ``q`` of recent unflagged key evaluations fell."""
        h = self.hist
        tot = sum(h)
        if tot <= 0.0:
            return 0.0
        target = q * tot
        acc = 0.0
        for i in range(_HIST_BINS):
            acc += h[i]
            if acc >= target:
                return (i + 1) / _HIST_BINS
        return 1.0

    def score_counts(self) -> list[float]:
        """The decayed score histogram (50 bins over 0..1), for metrics."""
        return [round(x, 3) for x in self.hist]

    # -- serialization -------------------------------------------------------------------------
    def export_state(self) -> bytes:
        hst = self._hst
        head = struct.pack(
            "<4sHHIqddqIB",
            _MAGIC,
            self.n_trees,
            self.height,
            self.window_size,
            self.seed,
            self.log_rate,
            self.weight,
            self.hst_seen,
            hst.counter,
            1 if hst._first_window else 0,
        )
        body = array("d", self.means).tobytes() + array("d", self.hist).tobytes()
        masses = array("q")
        if hst.trees:
            for nodes in hst._tree_nodes:
                for node in nodes:
                    masses.append(node.l_mass)
                    masses.append(node.r_mass)
        return head + body + struct.pack("<I", len(masses)) + masses.tobytes()

    def import_state(self, blob: bytes) -> None:
        """Restore from :meth:`export_state`; raise ValueError on anything else."""
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise ValueError("population state must be bytes")
        blob = bytes(blob)
        hs = struct.calcsize("<4sHHIqddqIB")
        if len(blob) < hs or blob[:4] != _MAGIC:
            raise ValueError("not a moatwatch population state (bad magic or too short)")
        magic, n_trees, height, window, seed, log_rate, weight, seen, counter, first = struct.unpack_from(
            "<4sHHIqddqIB", blob
        )
        if (n_trees, height, window, seed) != (self.n_trees, self.height, self.window_size, self.seed):
            raise ValueError(
                "population state was written with different HalfSpaceTrees settings "
                f"(n_trees={n_trees}, height={height}, window={window}, seed={seed}); "
                "start with the same DetectorConfig or drop the shared state"
            )
        off = hs
        need = off + 8 * (_NFEAT + _HIST_BINS) + 4
        if len(blob) < need:
            raise ValueError("population state is truncated")
        means = array("d")
        means.frombytes(blob[off : off + 8 * _NFEAT])
        off += 8 * _NFEAT
        hist = array("d")
        hist.frombytes(blob[off : off + 8 * _HIST_BINS])
        off += 8 * _HIST_BINS
        (nm,) = struct.unpack_from("<I", blob, off)
        off += 4
        if len(blob) != off + 8 * nm:
            raise ValueError("population state has a wrong length")
        masses = array("q")
        masses.frombytes(blob[off:])
        for v in (*means, *hist, log_rate, weight):
            if not math.isfinite(v):
                raise ValueError("population state holds a non-finite number")
        hst = self._new_hst()
        if nm:
            hst.learn_one({k: 0.0 for k in FEATURES})  # builds the same trees from the seed
            total = sum(len(nodes) for nodes in hst._tree_nodes)
            if nm != 2 * total:
                raise ValueError("population state does not match the tree structure")
            i = 0
            for nodes in hst._tree_nodes:
                for node in nodes:
                    node.l_mass = masses[i]
                    node.r_mass = masses[i + 1]
                    i += 2
            if not 0 <= counter < window:
                raise ValueError("population state has an invalid window counter")
            hst.counter = counter
            hst._first_window = bool(first)
        self._hst = hst
        self.means = means
        self.hist = hist
        self.log_rate = log_rate
        self.weight = weight
        self.hst_seen = seen
