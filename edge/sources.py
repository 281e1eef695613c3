"""Frame sources behind one small interface: ``open()``, ``read() -> Frame | None``, ``close()``.

Frames are BGR uint8 (OpenCV's order, and what Picamera2's "RGB888" format holds in memory),
stamped with a ``clock`` (``time.monotonic`` unless a test gives a fake one) so capture and result times
share one clock.
``live`` sources (cameras, network streams) are reconnected when they stop; for the others
``None`` from ``read()`` is the end.
"""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .command import UserError
from .files import IMAGE_SUFFIXES, is_image
from .images import read_bgr, unreadable
from .paths import folder_images

log = logging.getLogger(__name__)
Clock = Callable[[], float]
SOURCE_HELP = (
    "picamera, a camera index (0), a video file, a directory of images, an rtsp://, http:// URL, or procedural"
)


class SourceError(UserError):
    """A source that cannot be opened or read; the message says what to do."""


@dataclass(frozen=True)
class Orientation:
    """Turn frames clockwise by ``rotate`` degrees, then mirror them (``flip``): for cameras mounted upside
    down or sideways, which Pi camera mounts often are. The model and the page both see the turned frame."""

    rotate: int = 0
    flip: str | None = None  # "horizontal" (left-right) or "vertical" (top-bottom)

    ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
    FLIPS = {"horizontal": 1, "vertical": 0}  # cv2.flip's codes

    def __post_init__(self) -> None:
        if self.rotate not in (0, *self.ROTATIONS) or self.flip not in (None, *self.FLIPS):
            raise SourceError(
                f"rotate must be 0, 90, 180 or 270 and flip horizontal or vertical, got {self.rotate} and {self.flip}"
            )

    def __bool__(self) -> bool:
        return bool(self.rotate or self.flip)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.rotate:
            image = cv2.rotate(image, self.ROTATIONS[self.rotate])
        return cv2.flip(image, self.FLIPS[self.flip]) if self.flip else image

    def as_flips(self) -> tuple[bool, bool] | None:
        """(hflip, vflip) that turn frames the same way, where mirroring alone can (0 and 180 degrees):
        a Pi camera's ISP does those for free (libcamera's Transform)."""
        if self.rotate not in (0, 180):
            return None
        half_turn = self.rotate == 180
        return half_turn != (self.flip == "horizontal"), half_turn != (self.flip == "vertical")


@dataclass
class Frame:
    image: np.ndarray  # HxWx3 uint8 BGR
    t_capture: float  # the source's clock (time.monotonic) at capture, in seconds (sensor time for Picamera2)
    index: int  # frames delivered by this source so far, from 0


class PicameraSource:
    """A Raspberry Pi camera through Picamera2, at the stream size asked for (not full sensor resolution).

    ``queue=False`` makes each capture wait for a frame exposed after the request instead of
    handing back one queued earlier (picamera2 #914, #950); a small stream keeps the copy cheap (#426).
    ``capture_request`` + ``make_array`` is ``capture_array`` keeping the request's metadata
    (SensorTimestamp), which counts ``boottime`` nanoseconds.
    """

    live = True

    def __init__(
        self,
        size: tuple[int, int],
        fps: float | None = None,
        flips: tuple[bool, bool] = (False, False),
        clock: Clock = time.monotonic,
        boottime: Clock = lambda: time.clock_gettime(time.CLOCK_BOOTTIME),
    ) -> None:
        self.size, self.fps, self.flips, self.count = size, fps, flips, 0
        self.camera: Any = None  # a Picamera2 once open() has run: picamera2 is imported only there, on a Pi
        self.clock, self.boottime = clock, boottime
        self.name = f"picamera {size[0]}x{size[1]}"

    def open(self) -> None:
        try:
            from libcamera import Transform
            from picamera2 import Picamera2
        except ImportError:
            raise SourceError(
                "picamera2 is not installed: on Raspberry Pi OS run `sudo apt install python3-picamera2` "
                "and use a venv made with --system-site-packages (`make setup` does)"
            ) from None
        try:
            self.camera = Picamera2()
            controls = {"FrameRate": self.fps} if self.fps else {}
            transform = {"transform": Transform(hflip=self.flips[0], vflip=self.flips[1])} if any(self.flips) else {}
            config = self.camera.create_video_configuration(
                main={"size": self.size, "format": "RGB888"},
                buffer_count=2,
                queue=False,
                controls=controls,
                **transform,
            )
            self.camera.configure(config)
            self.camera.start()
        except Exception as e:  # libcamera raises RuntimeError/IndexError when no camera is attached
            self.close()
            raise SourceError(
                f"cannot start the Raspberry Pi camera ({e}); check the ribbon cable and `rpicam-hello --list-cameras`"
            ) from None

    def read(self) -> Frame | None:
        request = self.camera.capture_request()
        try:
            image = request.make_array("main")
            sensor_ns = request.get_metadata().get("SensorTimestamp")
        finally:
            request.release()
        # SensorTimestamp counts CLOCK_BOOTTIME nanoseconds: move it onto the monotonic clock.
        now = self.clock()
        t_capture = now if sensor_ns is None else sensor_ns / 1e9 - (self.boottime() - now)
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

    def __init__(
        self,
        target: int | str,
        loop: bool = False,
        timeout: float = 5.0,
        size: tuple[int, int] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.target, self.loop, self.size, self.count = target, loop, size, 0
        self.capture: cv2.VideoCapture | None = None
        self.clock = clock
        self.live = isinstance(target, int) or "://" in str(target)
        self.name = f"camera {target}" if isinstance(target, int) else str(target)
        self.fps: float | None = None
        ms = int(1000 * timeout)
        network = "://" in self.name
        self.params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms] if network else []

    def open(self) -> None:
        capture = cv2.VideoCapture(self.target, cv2.CAP_ANY, self.params)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open {self.name}: no such camera, unreadable file or unreachable stream")
        if self.live:  # OpenCV queues several frames by default; a queue is latency.
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self.size and isinstance(self.target, int):  # a webcam picks the supported size nearest to this
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        self.fps = capture.get(cv2.CAP_PROP_FPS) or None
        self.capture = capture

    def read(self) -> Frame | None:
        if self.capture is None:
            raise SourceError(f"{self.name} is not open")
        ok, image = self.capture.read()
        if not ok and self.loop and not self.live:
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self.capture.read()
        if not ok:
            return None
        self.count += 1
        return Frame(image, self.clock(), self.count - 1)

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None


class DirectorySource:
    """The images of a directory in name order; unreadable files are skipped with a warning."""

    live = False
    fps = 30.0

    def __init__(self, root: Path, loop: bool = False, clock: Clock = time.monotonic) -> None:
        self.root, self.loop, self.count, self.clock = Path(root), loop, 0, clock
        self.name = str(root)
        self.paths: list[Path] = []

    def open(self) -> None:
        found = folder_images(self.root)
        for line in found.skipped:
            log.warning(line)
        self.paths = found.paths
        if not self.paths:
            raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {self.root}")

    def read(self) -> Frame | None:
        for _ in range(len(self.paths)):
            if self.count >= len(self.paths) and not self.loop:
                return None
            path = self.paths[self.count % len(self.paths)]
            self.count += 1
            try:
                return Frame(read_bgr(path), self.clock(), self.count - 1)
            except (OSError, ValueError) as e:
                log.warning("skipped %s", unreadable(path, e))
        return None

    def close(self) -> None:
        self.paths = []


class ProceduralSource:
    """Generated frames (a shape moving over a gradient, the frame number drawn in): needs no file or camera."""

    live = False
    fps = 30.0

    def __init__(
        self, size: tuple[int, int] = (320, 240), frames: int | None = None, clock: Clock = time.monotonic
    ) -> None:
        self.size, self.frames, self.count, self.clock = size, frames, 0, clock
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
        return Frame(image, self.clock(), self.count - 1)

    def close(self) -> None:
        pass


class Oriented:
    """Any source, its frames turned by ``orientation``; everything else is the source's own."""

    def __init__(self, source, orientation: Orientation) -> None:
        self.source, self.orientation = source, orientation

    def __getattr__(self, name: str):
        return getattr(self.source, name)

    def read(self) -> Frame | None:
        frame = self.source.read()
        return None if frame is None else Frame(self.orientation(frame.image), frame.t_capture, frame.index)


def open_source(
    spec: str,
    loop: bool = False,
    camera_size: tuple[int, int] = (640, 480),
    camera_fps: float | None = None,
    orientation: Orientation = Orientation(),
    clock: Clock = time.monotonic,
):
    """The source that ``spec`` names (not yet opened), its frames turned by ``orientation`` and stamped by
    ``clock``; SourceError when it names nothing. ``camera_size`` is asked of Pi cameras and webcams."""
    flips = orientation.as_flips()
    if spec == "picamera" and flips is not None:
        return PicameraSource(camera_size, camera_fps, flips, clock=clock)
    source = _source(spec, loop, camera_size, camera_fps, clock)
    return Oriented(source, orientation) if orientation else source


def _source(spec: str, loop: bool, camera_size: tuple[int, int], camera_fps: float | None, clock: Clock):
    if not spec.strip():
        raise SourceError(f"the source is empty: give {SOURCE_HELP}")
    if spec == "picamera":
        return PicameraSource(camera_size, camera_fps, clock=clock)
    if spec == "procedural":
        return ProceduralSource(clock=clock)
    if spec.isdigit():
        return VideoSource(int(spec), size=camera_size, clock=clock)
    if "://" in spec:
        return VideoSource(spec, clock=clock)
    path = Path(spec)
    if path.is_dir():
        return DirectorySource(path, loop, clock)
    if path.is_file():
        if is_image(path):
            raise SourceError(
                f"{spec} is a single image: label it with `python -m edge predict BUNDLE {spec}`, "
                "or give its folder as the source"
            )
        return VideoSource(str(path), loop, clock=clock)
    if path.exists():
        raise SourceError(f"source {spec!r} is neither a file nor a folder: give {SOURCE_HELP}")
    raise SourceError(f"source {spec!r} does not exist: give {SOURCE_HELP}")
