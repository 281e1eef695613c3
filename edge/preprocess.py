"""The training eval transform, rebuilt with OpenCV from the bundle's ``input`` numbers."""
import cv2
import numpy as np


class Preprocessor:
    """uint8 HWC frame -> (1, 3, size, size) float32 RGB: resize shorter side, center crop, normalise.

    Built once per bundle; mean/std are folded into one scale and offset per channel.
    """

    def __init__(self, spec: dict) -> None:
        if spec.get("crop") != "center" or spec.get("layout") != "NCHW" or spec.get("channel_order") != "RGB":
            raise ValueError(f"unsupported input spec {spec}")
        if spec.get("interpolation") != "area_down_linear_up":
            raise ValueError(f"unsupported interpolation {spec.get('interpolation')!r}")
        self.size, self.resize = int(spec["size"]), int(spec["resize"])
        std = np.asarray(spec["std"], np.float32)
        self.scale = (1.0 / (255.0 * std)).reshape(3, 1, 1)
        self.offset = (-np.asarray(spec["mean"], np.float32) / std).reshape(3, 1, 1)

    def crop(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        scale = self.resize / min(h, w)
        new_w, new_h = max(self.resize, int(w * scale)), max(self.resize, int(h * scale))
        shrinking = new_w * new_h < h * w
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
        return rgb[top:top + self.size, left:left + self.size]

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
