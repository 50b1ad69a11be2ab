"""Bounded stores of served samples, one per ramp: what refits learn from.

Each row that reached the model's end (every row in release mode; the rows no ramp released and the
audited ones in skip mode) gives each active ramp it passed one sample: the ramp's pooled features
(float32 [D], the ramp graph's ``features`` output), the model's final probabilities (float32
[classes]) and the inputs the row stands for (its feedback weight, ``1 / audit_rate`` for an
audited row). A :class:`Reservoir` keeps the NEWEST ``capacity`` of them in a ring: the workload
drifts, and the newest samples describe it as it is. When a sample arrives it is marked held out
with probability :data:`HELDOUT_FRACTION` (seeded), once and for all, so that no head is judged on
rows it trained on. :class:`Reservoirs` holds one per site and bounds their total bytes.

Sizes: a ramp's reservoir holds ``min(samples, max_bytes // row_bytes)`` rows, ``row_bytes =
4 * (D + classes) + 9``; the defaults (:data:`RESERVOIR_SAMPLES`, :data:`RESERVOIR_BYTES`) keep a
384-feature ramp of a 10-class model at 8,192 rows (13 MB) and a 2,048-feature one at 4,071 rows
(32 MiB). More samples refit better (``benchmarks/refit_quality.py``). Past :data:`TOTAL_BYTES` the
reservoir least recently fed (a ramp no longer active) is dropped.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

RESERVOIR_SAMPLES = 8192
"""Newest samples kept per ramp."""
RESERVOIR_BYTES = 32 * 1024 * 1024
"""Most bytes one ramp's reservoir holds (fewer rows for wide features)."""
TOTAL_BYTES = 128 * 1024 * 1024
"""Most bytes all reservoirs hold together (the least recently fed is dropped past it)."""
HELDOUT_FRACTION = 0.25
"""Share of the samples marked held out (for judging refits) when they arrive."""


def row_bytes(features: int, classes: int) -> int:
    """Bytes one sample takes: features and probabilities (float32), weight (float64), held-out flag."""
    return 4 * (int(features) + int(classes)) + 8 + 1


class Reservoir:
    """The newest samples of one ramp (a ring of ``capacity`` rows).

    Args:
        features: D, the ramp's pooled features per sample.
        classes: the model's classes.
        samples: most rows kept.
        max_bytes: most bytes kept (the capacity shrinks for wide features; at least 1 row).
        seed: seeds the held-out marks.
    """

    def __init__(self, features: int, classes: int, samples: int, max_bytes: int, seed: int = 0) -> None:
        if int(samples) < 1 or int(max_bytes) < 1:
            raise ValueError(f"a reservoir holds at least 1 sample and 1 byte, got {samples} and {max_bytes}")
        self.capacity = max(1, min(int(samples), int(max_bytes) // row_bytes(features, classes)))
        self.features = np.zeros((self.capacity, int(features)), dtype=np.float32)
        self.probs = np.zeros((self.capacity, int(classes)), dtype=np.float32)
        self.weights = np.zeros(self.capacity, dtype=np.float64)
        self.heldout = np.zeros(self.capacity, dtype=bool)
        self._rng = np.random.default_rng(seed)
        self._next = 0  # ring position of the next row
        self._size = 0
        self.seen = 0
        """Samples ever added (the ring keeps the newest ``capacity``)."""

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes the reservoir's arrays take (allocated at its capacity)."""
        return int(self.features.nbytes + self.probs.nbytes + self.weights.nbytes + self.heldout.nbytes)

    def add(self, features: np.ndarray, probs: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Append rows (features [n, D], probabilities [n, classes], weights [n] or None: 1),
        overwriting the oldest past the capacity."""
        n = int(features.shape[0])
        if features.shape[1:] != self.features.shape[1:] or probs.shape != (n, self.probs.shape[1]):
            raise ValueError(
                f"samples of shapes {list(features.shape)} and {list(probs.shape)} do not fit a reservoir of "
                f"{self.features.shape[1]} features and {self.probs.shape[1]} classes"
            )
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
        held = self._rng.random(n) < HELDOUT_FRACTION
        self.seen += n
        if n >= self.capacity:  # only the newest fit
            features, probs, w, held = (
                features[-self.capacity :],
                probs[-self.capacity :],
                w[-self.capacity :],
                held[-self.capacity :],
            )
            n = self.capacity
        positions = (self._next + np.arange(n)) % self.capacity
        self.features[positions] = features
        self.probs[positions] = probs
        self.weights[positions] = w
        self.heldout[positions] = held
        self._next = int((self._next + n) % self.capacity)
        self._size = min(self.capacity, self._size + n)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the kept ``(features, probs, weights, heldout)``, oldest first."""
        if self._size < self.capacity:
            order = np.arange(self._size)
        else:
            order = (self._next + np.arange(self.capacity)) % self.capacity
        return self.features[order], self.probs[order], self.weights[order], self.heldout[order]


class Reservoirs:
    """One :class:`Reservoir` per site, created on the first sample, their total bytes bounded."""

    def __init__(
        self,
        samples: int = RESERVOIR_SAMPLES,
        max_bytes: int = RESERVOIR_BYTES,
        total_bytes: int = TOTAL_BYTES,
        seed: int = 0,
    ) -> None:
        self.samples = int(samples)
        self.max_bytes = int(max_bytes)
        self.total_bytes = int(total_bytes)
        self.seed = int(seed)
        self._by_site: OrderedDict[int, Reservoir] = OrderedDict()
        self.dropped = 0
        """Reservoirs dropped to stay within ``total_bytes``."""

    def get(self, site: int) -> Reservoir | None:
        """The reservoir of ``site`` (None before its first sample)."""
        return self._by_site.get(int(site))

    def add(self, site: int, features: np.ndarray, probs: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Add samples to ``site``'s reservoir (made on first use); drop the least recently fed
        other reservoirs while the total passes ``total_bytes``."""
        site = int(site)
        reservoir = self._by_site.get(site)
        if reservoir is None or reservoir.features.shape[1] != features.shape[1]:
            reservoir = Reservoir(features.shape[1], probs.shape[1], self.samples, self.max_bytes, self.seed + site)
            self._by_site[site] = reservoir
        self._by_site.move_to_end(site)
        reservoir.add(features, probs, weights)
        while self.nbytes > self.total_bytes and len(self._by_site) > 1:
            self._by_site.popitem(last=False)
            self.dropped += 1

    @property
    def nbytes(self) -> int:
        """Bytes all reservoirs take."""
        return sum(r.nbytes for r in self._by_site.values())

    def sizes(self) -> dict[int, int]:
        """Samples kept per site."""
        return {site: len(r) for site, r in self._by_site.items()}
