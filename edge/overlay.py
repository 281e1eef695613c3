"""The on-frame overlay: top label and confidence, inference ms, FPS."""
import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX


def annotate(bgr: np.ndarray, top: list[dict], latency_ms: float, fps: float | None) -> np.ndarray:
    """A copy of ``bgr`` with a translucent banner; text scales with the frame so it stays legible."""
    out = bgr.copy()
    h, w = out.shape[:2]
    scale = max(0.4, w / 900)
    line = int(30 * scale)
    lines = [f"{top[0]['label']} {100 * top[0]['score']:.1f}%",
             f"{latency_ms:.1f} ms  {fps or 0:.1f} FPS"]
    banner = out[:line * len(lines) + line // 3]
    banner[:] = (banner * 0.45).astype(np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(out, text, (int(8 * scale), line * (i + 1) - line // 5), FONT, scale,
                    (255, 255, 255), max(1, int(2 * scale)), cv2.LINE_AA)
    return out
