"""Frame sources behind one small interface: ``open()``, ``read() -> Frame | None``, ``close()``.

Frames are BGR uint8 (OpenCV's order, and what Picamera2's "RGB888" format holds in memory),
stamped with ``time.monotonic()`` so capture and result times share one clock.
``live`` sources (cameras, network streams) are reconnected when they stop; for the others
``None`` from ``read()`` is the end.
"""
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .files import IMAGE_SUFFIXES, is_image

log = logging.getLogger(__name__)
SOURCE_HELP = ("picamera, a camera index (0), a video file, a directory of images, "
               "an rtsp://, http:// URL, or procedural")


class SourceError(RuntimeError):
    """A source that cannot be opened or read; the message says what to do."""


@dataclass
class Frame:
    image: np.ndarray  # HxWx3 uint8 BGR
    t_capture: float  # time.monotonic() seconds at capture (sensor time for Picamera2)
    index: int  # frames delivered by this source so far, from 0


class PicameraSource:
    """A Raspberry Pi camera through Picamera2, at the stream size asked for (not full sensor resolution).

    ``queue=False`` makes each capture wait for a frame exposed after the request instead of
    handing back one queued earlier (picamera2 #914, #950); a small stream keeps the copy cheap (#426).
    ``capture_request`` + ``make_array`` is ``capture_array`` keeping the request's metadata
    (SensorTimestamp).
    """

    live = True

    def __init__(self, size: tuple[int, int], fps: float | None = None) -> None:
        self.size, self.fps, self.camera, self.count = size, fps, None, 0
        self.name = f"picamera {size[0]}x{size[1]}"

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise SourceError("picamera2 is not installed: on Raspberry Pi OS run `sudo apt install python3-picamera2` "
                              "and use a venv made with --system-site-packages (`make setup` does)") from None
        try:
            self.camera = Picamera2()
            controls = {"FrameRate": self.fps} if self.fps else {}
            config = self.camera.create_video_configuration(
                main={"size": self.size, "format": "RGB888"}, buffer_count=2, queue=False, controls=controls)
            self.camera.configure(config)
            self.camera.start()
        except Exception as e:  # libcamera raises RuntimeError/IndexError when no camera is attached
            self.close()
            raise SourceError(f"cannot start the Raspberry Pi camera ({e}); check the ribbon cable and "
                              "`rpicam-hello --list-cameras`") from None

    def read(self) -> Frame | None:
        request = self.camera.capture_request()
        try:
            image = request.make_array("main")
            sensor_ns = request.get_metadata().get("SensorTimestamp")
        finally:
            request.release()
        # SensorTimestamp counts CLOCK_BOOTTIME nanoseconds: move it onto the monotonic clock.
        now = time.monotonic()
        t_capture = now if sensor_ns is None else sensor_ns / 1e9 - (time.clock_gettime(time.CLOCK_BOOTTIME) - now)
        self.count += 1
        return Frame(image[..., :3], t_capture, self.count - 1)

    def close(self) -> None:
        if self.camera is not None:
            try:
                self.camera.stop()
            finally:
                self.camera.close()
                self.camera = None


class VideoSource:
    """OpenCV VideoCapture: a webcam index, a video file, or an rtsp/http stream.

    A network stream gets ``timeout`` seconds to open and to deliver each frame: OpenCV's own
    default is about 30 s, during which a stalled stream looks like a slow one.
    """

    def __init__(self, target: int | str, loop: bool = False, timeout: float = 5.0) -> None:
        self.target, self.loop, self.capture, self.count = target, loop, None, 0
        self.live = isinstance(target, int) or "://" in str(target)
        self.name = f"camera {target}" if isinstance(target, int) else str(target)
        self.fps = None
        ms = int(1000 * timeout)
        network = "://" in self.name
        self.params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms] if network else []

    def open(self) -> None:
        self.capture = cv2.VideoCapture(self.target, cv2.CAP_ANY, self.params)
        if not self.capture.isOpened():
            self.capture.release()
            raise SourceError(f"cannot open {self.name}: no such camera, unreadable file or unreachable stream")
        if self.live:  # OpenCV queues several frames by default; a queue is latency.
            self.capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self.fps = self.capture.get(cv2.CAP_PROP_FPS) or None

    def read(self) -> Frame | None:
        ok, image = self.capture.read()
        if not ok and self.loop and not self.live:
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self.capture.read()
        if not ok:
            return None
        self.count += 1
        return Frame(image, time.monotonic(), self.count - 1)

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None


class DirectorySource:
    """The images of a directory in name order; unreadable files are skipped with a warning."""

    live = False
    fps = 30.0

    def __init__(self, root: Path, loop: bool = False) -> None:
        self.root, self.loop, self.count = Path(root), loop, 0
        self.name = str(root)
        self.paths: list[Path] = []

    def open(self) -> None:
        self.paths = sorted(p for p in self.root.rglob("*") if is_image(p))
        if not self.paths:
            raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {self.root}")

    def read(self) -> Frame | None:
        for _ in range(len(self.paths)):
            if self.count >= len(self.paths) and not self.loop:
                return None
            path = self.paths[self.count % len(self.paths)]
            self.count += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return Frame(image, time.monotonic(), self.count - 1)
            log.warning("skipped unreadable image %s", path)
        return None

    def close(self) -> None:
        self.paths = []


class ProceduralSource:
    """Generated frames (a shape moving over a gradient, the frame number drawn in): needs no file or camera."""

    live = False
    fps = 30.0

    def __init__(self, size: tuple[int, int] = (320, 240), frames: int | None = None) -> None:
        self.size, self.frames, self.count = size, frames, 0
        self.name = "procedural"
        w, h = size
        self.background = np.dstack([np.tile(np.linspace(40, 200, w, dtype=np.uint8), (h, 1))] * 3)

    def open(self) -> None:
        self.count = 0

    def read(self) -> Frame | None:
        if self.frames is not None and self.count >= self.frames:
            return None
        w, h = self.size
        image = self.background.copy()
        angle = self.count * 2 * math.pi / 90
        centre = (int(w / 2 + w / 4 * math.cos(angle)), int(h / 2 + h / 4 * math.sin(angle)))
        cv2.circle(image, centre, min(w, h) // 6, (40, 90, 230), -1, cv2.LINE_AA)
        cv2.putText(image, str(self.count), (8, h - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
        self.count += 1
        return Frame(image, time.monotonic(), self.count - 1)

    def close(self) -> None:
        pass


def open_source(spec: str, loop: bool = False, camera_size: tuple[int, int] = (640, 480),
                camera_fps: float | None = None):
    """The source that ``spec`` names (not yet opened); SourceError when it names nothing."""
    if not spec.strip():
        raise SourceError(f"the source is empty: give {SOURCE_HELP}")
    if spec == "picamera":
        return PicameraSource(camera_size, camera_fps)
    if spec == "procedural":
        return ProceduralSource()
    if spec.isdigit():
        return VideoSource(int(spec))
    if "://" in spec:
        return VideoSource(spec)
    path = Path(spec)
    if path.is_dir():
        return DirectorySource(path, loop)
    if path.is_file():
        if is_image(path):
            raise SourceError(f"{spec} is a single image: use `python -m edge eval` or give its directory")
        return VideoSource(str(path), loop)
    raise SourceError(f"source {spec!r} does not exist: give {SOURCE_HELP}")
