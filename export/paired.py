"""Paired comparisons of two models on the same images, with bootstrap 95% intervals.

Two int8 models a fraction of a point apart are told apart only by judging them on the same images:
the per-image differences cancel what the images have in common. An interval that contains 0 is
"no measurable difference", never a win.
"""

from dataclasses import dataclass

import numpy as np
from scipy.stats import bootstrap

CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Difference:
    """Top-1 of a minus top-1 of b, in fractions, with its interval."""

    delta: float
    low: float
    high: float
    changed: float  # fraction of images where a and b differ in being right

    @property
    def measurable(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        interval = f"{100 * self.delta:+.2f} pt ({100 * self.low:+.2f}..{100 * self.high:+.2f})"
        return interval if self.measurable else f"{interval}, no measurable difference"

    def to_json(self) -> dict:
        return {
            "delta": self.delta,
            "low": self.low,
            "high": self.high,
            "changed": self.changed,
            "measurable": self.measurable,
        }


def paired_difference(a: np.ndarray, b: np.ndarray, seed: int = 0) -> Difference:
    """Percentile bootstrap of mean(a) - mean(b) over images resampled in pairs; ``a``/``b`` are per-image
    correctness (bool) of two models on the same images, in the same order."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need per-image results of two models on the same >= 2 images, got {a.shape} and {b.shape}")
    result = bootstrap(
        (a, b),
        _mean_difference,
        paired=True,
        vectorized=True,
        n_resamples=RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        batch=250,
        random_state=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return Difference(float(a.mean() - b.mean()), float(interval.low), float(interval.high), float((a != b).mean()))


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    return a.mean(axis) - b.mean(axis)
