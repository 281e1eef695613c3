"""The eval preprocessing: its numbers (``InputSpec``, model.json's ``input``) and its OpenCV implementation.

Training imports ``InputSpec``, ``resize`` and ``Preprocessor.crop`` from here, so the numbers and the pixels
the model was trained with and the ones the device applies have one definition.
"""

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_RESIZE = 2048  # the resized frame is at most MAX_ASPECT * MAX_RESIZE**2 pixels: 50 MB as uint8 BGR
MAX_ASPECT = 4  # a frame's long side is cut to this many times its short side before the resize


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV's area filter when shrinking (no aliasing), bilinear when enlarging."""
    shrinking = width * height < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


@dataclass(frozen=True)
class InputSpec:
    """Resize the shorter side to ``resize``, take the central ``size`` square, normalise RGB; NCHW float32."""

    size: int
    resize: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop: str = "center"
    interpolation: str = "area_down_linear_up"
    channel_order: str = "RGB"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        """Only what this app implements: anything else would be preprocessed wrongly without a sound."""
        if not 1 <= self.size <= self.resize <= MAX_RESIZE:
            raise ValueError(
                f"input size {self.size} and resize {self.resize} need 1 <= size <= resize <= {MAX_RESIZE}"
            )
        if (
            len(self.mean) != 3
            or len(self.std) != 3
            or not all(_folds_to_float32(m, s) for m, s in zip(self.mean, self.std, strict=True))
        ):
            raise ValueError(
                f"input mean/std need 3 values each, std > 0 and both usable as float32 (the device "
                f"computes in it), got {self.mean} / {self.std}"
            )
        supported = {"crop": "center", "interpolation": "area_down_linear_up", "channel_order": "RGB", "layout": "NCHW"}
        for key, value in supported.items():
            if getattr(self, key) != value:
                raise ValueError(f"unsupported input {key} {getattr(self, key)!r} (this app implements {value!r})")

    @classmethod
    def for_resolution(cls, size: int, crop_fraction: float = 0.875) -> "InputSpec":
        return cls(size=size, resize=int(math.floor(size / crop_fraction)))

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _folds_to_float32(mean: float, std: float) -> bool:
    """Whether ``(x / 255 - mean) / std`` folds into a finite float32 scale and offset, as ``Preprocessor``
    computes it: a std of 1e-50 is positive as a float64 and 0 as a float32."""
    with np.errstate(all="ignore"):
        std32 = np.float32(std)
        scale, offset = np.float32(1.0) / (np.float32(255.0) * std32), -np.float32(mean) / std32
    return bool(std32 > 0 and np.isfinite(scale) and np.isfinite(offset))


class Preprocessor:
    """uint8 HWC frame -> (1, 3, size, size) float32 RGB: resize shorter side, center crop, normalise.

    Built once per bundle; mean/std are folded into one scale and offset per channel. The result is NCHW
    over NHWC memory (channels-last strides): normalised in the frame's own layout, never transposed, it
    is what an exported program reads (``export.lower``), and the runner passes it on without a copy.
    """

    def __init__(self, spec: InputSpec) -> None:
        self.size, self.resize = spec.size, spec.resize
        std = np.asarray(spec.std, np.float32)
        self.scale = 1.0 / (255.0 * std)
        self.offset = -np.asarray(spec.mean, np.float32) / std

    def _geometry(self, height: int, width: int) -> tuple[tuple[int, int, int, int], tuple[int, int], int, int]:
        """Where ``crop`` cuts: the window of the frame it resizes (top, left, height, width), the size it
        resizes that to, and the top-left of the square it then keeps.

        The window is the whole frame unless the frame is more than ``MAX_ASPECT`` times wider than high (or
        higher than wide): then its central MAX_ASPECT:1 part, which still holds the square. This bounds the
        resized frame (a 1x40000 image would otherwise become 256x10 million pixels) without changing the
        pixels of any frame a camera makes.
        """
        short = min(height, width)
        window_h, window_w = min(height, MAX_ASPECT * short), min(width, MAX_ASPECT * short)
        window = ((height - window_h) // 2, (width - window_w) // 2, window_h, window_w)
        scale = self.resize / short
        new_w, new_h = max(self.resize, int(window_w * scale)), max(self.resize, int(window_h * scale))
        return window, (new_w, new_h), (new_h - self.size) // 2, (new_w - self.size) // 2

    def crop(self, rgb: np.ndarray) -> np.ndarray:
        """The ``size`` square the model sees, uint8 as given: the geometric part, alone for parity tests."""
        (top0, left0, h, w), (new_w, new_h), top, left = self._geometry(*rgb.shape[:2])
        resized = resize(rgb[top0 : top0 + h, left0 : left0 + w], new_w, new_h)
        return resized[top : top + self.size, left : left + self.size]

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in the frame of the square ``crop`` keeps: what the model sees."""
        (top0, left0, h, w), (new_w, new_h), top, left = self._geometry(height, width)
        sx, sy = w / new_w, h / new_h
        return (
            left0 + round(left * sx),
            top0 + round(top * sy),
            left0 + round((left + self.size) * sx),
            top0 + round((top + self.size) * sy),
        )

    def __call__(self, image: np.ndarray, order: str = "RGB") -> np.ndarray:
        """``order="BGR"`` for OpenCV/Picamera2 frames: channels are swapped after the crop, where it is cheap."""
        crop = self.crop(image)
        if order == "BGR":
            crop = crop[..., ::-1]
        elif order != "RGB":
            raise ValueError(f"order must be RGB or BGR, got {order!r}")
        hwc = crop.astype(np.float32) * self.scale + self.offset
        return hwc.transpose(2, 0, 1)[None]
