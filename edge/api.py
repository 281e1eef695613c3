"""The Python API: ``edge.load(bundle).predict(image)``, with the app's own preprocessing and runtime.

from edge import load
model = load("artifacts/v3_small")
model.predict("cat.jpg")          # [("cat", 0.91), ("dog", 0.05), ...]
model.predict(bgr_frame, top_k=1)  # an OpenCV/Picamera2 frame: HxWx3 uint8, BGR
"""

from pathlib import Path

import cv2
import numpy as np

from .bundle import Bundle, load_bundle
from .classify import ranked, softmax
from .images import read_bgr
from .preprocess import Preprocessor

GREY_OR_ALPHA = {2: cv2.COLOR_GRAY2BGR, 4: cv2.COLOR_BGRA2BGR}


def as_bgr(image: np.ndarray | str | Path) -> np.ndarray:
    """A path is read as the app reads files; an array must be uint8 HxW (grey), HxWx3 (BGR) or HxWx4 (BGRA)."""
    if isinstance(image, (str, Path)):
        return read_bgr(image)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"want an image path or a uint8 HxWx3 BGR array, got {_describe(image)}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 3:
        return image
    if channels not in (1, 4):
        raise ValueError(f"want 1, 3 or 4 channels, got an array of shape {image.shape}")
    return cv2.cvtColor(image, GREY_OR_ALPHA[2 if channels == 1 else 4])


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return type(value).__name__


class Model:
    """A loaded bundle. Close it (or use ``with``) to free the runtime before the process ends."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.preprocess = Preprocessor(bundle.input)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.bundle.labels

    @property
    def name(self) -> str:
        return self.bundle.meta.name

    def probabilities(self, image: np.ndarray | str | Path) -> np.ndarray:
        """Softmax over the labels, in ``labels`` order."""
        logits = self.bundle.logits(self.preprocess(as_bgr(image), order="BGR"))[0]
        return softmax(logits.astype(np.float64))

    def predict(
        self, image: np.ndarray | str | Path, top_k: int = 5, threshold: float = 0.0
    ) -> list[tuple[str, float]]:
        """The ``top_k`` most likely (label, probability), best first, none below ``threshold``."""
        if top_k < 1 or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"want top_k >= 1 and threshold in [0, 1], got {top_k} and {threshold}")
        return ranked(self.probabilities(image), self.labels, top_k, threshold)

    def close(self) -> None:
        self.bundle.runner.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Model({str(self.bundle.path)!r}: {self.name}, {len(self.labels)} labels)"


def load(path: str | Path, threads: int | None = None) -> Model:
    """Check and load a bundle directory; ``threads`` sizes XNNPACK's pool (None: the runtime's default)."""
    return Model(load_bundle(path, threads))
