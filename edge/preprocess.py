"""The eval preprocessing: its numbers (``InputSpec``, model.json's ``input``) and its OpenCV implementation.

Training imports ``InputSpec`` from here, so the numbers the model was trained with and the ones
the device applies have one definition.
"""
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        if not 1 <= self.size <= self.resize:
            raise ValueError(f"input size {self.size} and resize {self.resize} need 1 <= size <= resize")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"input mean/std need 3 values each and std > 0, got {self.mean} / {self.std}")
        supported = {"crop": "center", "interpolation": "area_down_linear_up", "channel_order": "RGB",
                     "layout": "NCHW"}
        for key, value in supported.items():
            if getattr(self, key) != value:
                raise ValueError(f"unsupported input {key} {getattr(self, key)!r} (this app implements {value!r})")

    @classmethod
    def for_resolution(cls, size: int, crop_fraction: float = 0.875) -> "InputSpec":
        return cls(size=size, resize=int(math.floor(size / crop_fraction)))

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class Preprocessor:
    """uint8 HWC frame -> (1, 3, size, size) float32 RGB: resize shorter side, center crop, normalise.

    Built once per bundle; mean/std are folded into one scale and offset per channel.
    """

    def __init__(self, spec: InputSpec) -> None:
        self.size, self.resize = spec.size, spec.resize
        std = np.asarray(spec.std, np.float32)
        self.scale = (1.0 / (255.0 * std)).reshape(3, 1, 1)
        self.offset = (-np.asarray(spec.mean, np.float32) / std).reshape(3, 1, 1)

    def crop(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        scale = self.resize / min(h, w)
        new_w, new_h = max(self.resize, int(w * scale)), max(self.resize, int(h * scale))
        shrinking = new_w * new_h < h * w
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
        return rgb[top:top + self.size, left:left + self.size]

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in the frame of the square ``crop`` keeps: what the model sees."""
        scale = self.resize / min(height, width)
        new_w, new_h = max(self.resize, int(width * scale)), max(self.resize, int(height * scale))
        left, top = (new_w - self.size) // 2, (new_h - self.size) // 2
        sx, sy = width / new_w, height / new_h
        return (round(left * sx), round(top * sy), round((left + self.size) * sx), round((top + self.size) * sy))

    def __call__(self, image: np.ndarray, order: str = "RGB") -> np.ndarray:
        """``order="BGR"`` for OpenCV/Picamera2 frames: channels are swapped after the crop, where it is cheap."""
        crop = self.crop(image)
        if order == "BGR":
            crop = crop[..., ::-1]
        elif order != "RGB":
            raise ValueError(f"order must be RGB or BGR, got {order!r}")
        # C-contiguous: the ExecuTorch runtime reads the raw buffer and ignores numpy strides.
        chw = np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32)
        return (chw * self.scale + self.offset)[None]


def read_bgr(path: str | Path) -> np.ndarray:
    """An image file as a BGR uint8 frame, decoded as the app and training do; ValueError if it is not an image.

    ``np.fromfile`` + ``imdecode`` rather than ``imread``: a missing or unreadable file raises OSError
    saying why, instead of ``imread``'s silent None.
    """
    data = np.fromfile(path, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"{path} is not an image OpenCV can decode")
    return image
