"""Bundle + preprocessing + softmax/top-k/smoothing: what the live loop calls per frame."""

import time

import numpy as np

from .bundle import Bundle
from .preprocess import Preprocessor


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def ranked(probs: np.ndarray, labels: tuple[str, ...], k: int, threshold: float = 0.0) -> list[tuple[str, float]]:
    """The ``k`` most likely (label, probability), best first, leaving out those below ``threshold``.

    Scores are rounded to 4 places first, so a score printed as 0.3 passes a threshold of 0.3.
    """
    top = [(labels[i], round(float(probs[i]), 4)) for i in np.argsort(-probs)[:k]]
    return [(label, score) for label, score in top if score >= threshold]


class Classifier:
    """``classify(x)`` -> (probabilities, inference ms); ``smooth`` in [0, 1) weighs the previous frames' average."""

    def __init__(self, bundle: Bundle, top_k: int = 3, smooth: float = 0.0) -> None:
        self.bundle, self.top_k, self.smooth = bundle, min(top_k, len(bundle.labels)), smooth
        self.preprocess = Preprocessor(bundle.input)
        self.average: np.ndarray | None = None

    def prepare(self, bgr: np.ndarray) -> np.ndarray:
        return self.preprocess(bgr, order="BGR")

    def classify(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        logits = self.bundle.logits(x)[0]
        latency_ms = 1000 * (time.perf_counter() - start)
        probs = softmax(logits.astype(np.float64))
        if self.smooth:
            self.average = probs if self.average is None else self.smooth * self.average + (1 - self.smooth) * probs
            probs = self.average
        return probs, latency_ms

    def top(self, probs: np.ndarray) -> list[dict]:
        return [{"label": label, "score": score} for label, score in ranked(probs, self.bundle.labels, self.top_k)]
