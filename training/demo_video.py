"""A camera-like video of the procedural shapes, for `make demo` and `make bench-edge` without a camera.

Each second shows one validation-split shape (rendered as in training, scaled up to fill a 4:3
frame) drifting slowly, with fresh sensor-like noise on every frame.

    python -m training.demo_video artifacts/demo.mp4 --seconds 20
"""

import argparse
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge.command import HelpFormatter, frame_size, positive_float, positive_int
from edge.files import atomic_path

from .procedural import CLASSES, ProceduralShapes


def scene(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The RGB training-size render as a BGR frame: scaled to the frame height, edges stretched to its width."""
    w, h = size
    square = cv2.resize(image[..., ::-1], (h, h), interpolation=cv2.INTER_LINEAR)
    pad = (w - h) // 2
    return cv2.copyMakeBorder(square, 0, 0, pad, w - h - pad, cv2.BORDER_REPLICATE)


def write_video(
    path: Path, seconds: float = 20, fps: int = 30, size: tuple[int, int] = (640, 480), seed: int = 0
) -> list[str]:
    """Writes ``path`` (MPEG-4, via a temp file); returns the label shown in each second."""
    shapes = ProceduralShapes(int(seconds) + 1, seed, "val", image_size=96)
    rng = np.random.default_rng(seed)
    with atomic_path(path) as tmp:
        return _write_frames(tmp, shapes, rng, seconds, fps, size)


def _write_frames(tmp: Path, shapes, rng, seconds: float, fps: int, size: tuple[int, int]) -> list[str]:
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MPEG-4 video to {tmp}")
    labels = []
    try:
        for second in tqdm(range(int(seconds)), desc="demo video", unit="s"):
            image, label = shapes.image(second)
            labels.append(CLASSES[label])
            frame, (dx, dy) = scene(image, size), rng.uniform(-1.5, 1.5, 2)
            for i in range(fps):
                shift = np.float32([[1, 0, dx * i], [0, 1, dy * i]])
                moved = cv2.warpAffine(frame, shift, size, borderMode=cv2.BORDER_REFLECT)
                writer.write(np.clip(moved + rng.normal(0, 4, moved.shape), 0, 255).astype(np.uint8))
    finally:
        writer.release()
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.demo_video", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=positive_float, default=20)
    parser.add_argument("--fps", type=positive_int, default=30)
    parser.add_argument("--size", type=frame_size, default=(640, 480), help="WIDTHxHEIGHT")
    args = parser.parse_args()
    w, h = args.size
    if w < h or args.seconds < 1:
        parser.error(f"want --size wider than tall and --seconds >= 1, got {w}x{h} and {args.seconds:g}")
    labels = write_video(args.out, args.seconds, args.fps, (w, h))
    print(f"{args.out}: {len(labels)} s at {args.fps} FPS, {w}x{h}: {' '.join(labels)}")


if __name__ == "__main__":
    main()
