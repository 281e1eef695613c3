"""The on-frame overlay: top label and confidence, inference ms, FPS, and the crop the model sees."""

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
CROP_COLOUR = (0, 215, 255)  # BGR amber: visible on most scenes


def annotate(
    bgr: np.ndarray,
    top: list[dict],
    latency_ms: float,
    fps: float | None,
    crop: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """A copy of ``bgr`` with a translucent banner, and the ``crop`` box (left, top, right, bottom) the model
    sees: on a wide frame it leaves out the sides. Text scales with the frame so it stays legible."""
    out = bgr.copy()
    h, w = out.shape[:2]
    scale = max(0.4, w / 900)
    if crop:
        cv2.rectangle(out, crop[:2], (crop[2] - 1, crop[3] - 1), CROP_COLOUR, max(2, int(2 * scale)))
    line = int(30 * scale)
    lines = [f"{top[0]['label']} {100 * top[0]['score']:.1f}%", f"{latency_ms:.1f} ms  {fps or 0:.1f} FPS"]
    banner = out[: line * len(lines) + line // 3]
    banner[:] = (banner * 0.45).astype(np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(
            out,
            text,
            (int(8 * scale), line * (i + 1) - line // 5),
            FONT,
            scale,
            (255, 255, 255),
            max(1, int(2 * scale)),
            cv2.LINE_AA,
        )
    return out
