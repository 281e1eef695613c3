"""Frame sources and the newest-frame capture thread (no camera here: Picamera2 is a stand-in)."""

import logging
import os
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from conftest import FakeClock, run_module, write_video

from edge.capture import Capture
from edge.serve import Broadcast, Server
from edge.sources import (
    DirectorySource,
    Frame,
    Orientation,
    PicameraSource,
    ProceduralSource,
    SourceError,
    VideoSource,
    open_source,
)


def test_picamera_asks_for_the_stream_it_needs_and_stamps_sensor_time(fake_picamera2):
    fake_picamera2.exposed_ns = 7_000_000_000  # 7 s after boot; read at 7.005 s, when the monotonic clock says 100
    source = PicameraSource((320, 240), 30, clock=lambda: 100.0, boottime=lambda: 7.005)
    source.open()
    frames = [source.read() for _ in range(3)]
    camera = fake_picamera2.instances[0]
    source.close()
    assert camera.config == {
        "main": {"size": (320, 240), "format": "RGB888"},
        "buffer_count": 2,
        "queue": False,
        "controls": {"FrameRate": 30},
    }
    assert camera.released == 3 and camera.closed and not camera.started
    assert [f.index for f in frames] == [0, 1, 2]
    assert frames[0].image.shape == (240, 320, 3) and tuple(frames[0].image[0, 0]) == (10, 20, 30)
    assert frames[-1].t_capture == pytest.approx(100.0 - 0.005, abs=1e-9), "sensor time, on the monotonic clock"
    assert open_source("picamera", camera_size=(320, 240), camera_fps=30).size == (320, 240)


@pytest.mark.parametrize("rotate", [0, 90, 180, 270])
@pytest.mark.parametrize("flip", [None, "horizontal", "vertical"])
def test_orientation_turns_then_mirrors_and_the_pi_isp_does_the_same(rotate, flip):
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    turned = np.rot90(image, k=-rotate // 90)  # numpy turns counter-clockwise for positive k
    expected = turned[:, ::-1] if flip == "horizontal" else turned[::-1] if flip == "vertical" else turned
    orientation = Orientation(rotate, flip)
    assert np.array_equal(orientation(image), expected)
    flips = orientation.as_flips()
    assert (flips is None) == (rotate in (90, 270))
    if flips is not None:
        mirrored = image[:, ::-1] if flips[0] else image
        assert np.array_equal(mirrored[::-1] if flips[1] else mirrored, expected), "hflip, vflip: the same frame"


def test_orientation_reaches_the_frames_or_the_camera(fake_picamera2):
    source = open_source("procedural", orientation=Orientation(90))
    source.open()
    assert source.read().image.shape == (320, 240, 3) and source.name == "procedural" and not source.live
    upside_down = open_source("picamera", camera_size=(320, 240), orientation=Orientation(180, "vertical"))
    upside_down.open()
    assert fake_picamera2.instances[-1].config["transform"] == {"hflip": True, "vflip": False}
    assert upside_down.read().image.shape == (240, 320, 3), "the ISP mirrors: the frame is not turned again"
    upside_down.close()
    sideways = open_source("picamera", camera_size=(320, 240), orientation=Orientation(270))
    sideways.open()
    assert "transform" not in fake_picamera2.instances[-1].config and sideways.read().image.shape == (320, 240, 3)
    sideways.close()
    with pytest.raises(SourceError, match="rotate must be 0, 90, 180 or 270"):
        Orientation(45)


def test_a_webcam_is_asked_for_the_camera_size(monkeypatch, tmp_path):
    asked = {}

    class FakeCapture:
        def __init__(self, target, api, params):
            self.target = target

        def isOpened(self):
            return True

        def set(self, prop, value):
            asked[prop] = value

        def get(self, prop):
            return 30.0

    monkeypatch.setattr(cv2, "VideoCapture", FakeCapture)
    open_source("0", camera_size=(1280, 720)).open()
    assert asked[cv2.CAP_PROP_FRAME_WIDTH] == 1280 and asked[cv2.CAP_PROP_FRAME_HEIGHT] == 720
    asked.clear()
    (tmp_path / "clip.mp4").write_bytes(b"")
    open_source(str(tmp_path / "clip.mp4"), camera_size=(1280, 720)).open()
    assert cv2.CAP_PROP_FRAME_WIDTH not in asked, "a video file plays at its own size"


def test_picamera_missing_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(SourceError, match="apt install python3-picamera2"):
        PicameraSource((640, 480)).open()


def test_video_file_plays_once_or_loops(tmp_path):
    path = write_video(tmp_path / "clip.mp4", frames=12)
    source = open_source(str(path))
    assert isinstance(source, VideoSource) and not source.live
    source.open()
    assert source.fps == pytest.approx(30)
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    assert len(frames) == 12 and frames[0].image.shape == (120, 160, 3)
    assert frames[-1].image.mean() > frames[0].image.mean() + 5, "frames arrive in order"
    looping = open_source(str(path), loop=True)
    looping.open()
    assert all(looping.read() is not None for _ in range(30))
    looping.close()


def test_directory_in_name_order_skipping_unreadable_files(image_folder):
    source = open_source(str(image_folder))
    assert isinstance(source, DirectorySource)
    source.open()
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    assert len(frames) == 24, "3 colours x 8 images; the corrupt JPEG is skipped"
    looping = DirectorySource(image_folder, loop=True)
    looping.open()
    assert all(looping.read() is not None for _ in range(60))


@pytest.mark.parametrize("spec,message", [("missing.mp4", "does not exist"), ("7", "cannot open camera 7")])
def test_sources_that_cannot_open_say_so(spec, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=message):
        open_source(spec).open()


def test_a_file_that_is_not_a_video_cannot_open(tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(SourceError, match="cannot open"):
        open_source(str(tmp_path / "notes.mp4")).open()


@pytest.mark.repeat
def test_capture_keeps_only_the_newest_frame_and_counts_drops():
    capture = Capture(ProceduralSource(frames=10), prepare=lambda image: image.mean(), fps=0)
    capture.start()
    capture.join(timeout=10)
    item = capture.get(timeout=1)
    assert item.frame.index == 9 and item.prepared == pytest.approx(item.frame.image.mean())
    assert capture.stats.captured == 10 and capture.stats.dropped == 9
    assert capture.get(timeout=0.1) is None and capture.ended


class GatedSource:
    """A source whose frames come only when the test lets them: ``allow(n)`` delivers n more, ``open_gate()``
    all the rest. Its frames are stamped on the test's clock."""

    live, fps, name = False, None, "gated"

    def __init__(self, source):
        self.source, self.gate, self.unlimited = source, threading.Semaphore(0), False

    def allow(self, frames: int) -> None:
        self.gate.release(frames)

    def open_gate(self) -> None:
        self.unlimited = True
        self.gate.release()

    def read(self):
        if not self.unlimited:
            self.gate.acquire()
        return self.source.read()

    def close(self):
        pass


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    """Poll ``condition``: the timeout only bounds a hang, no figure is read from the wall clock."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting after {timeout} s: {what}"
        time.sleep(0.001)


@pytest.mark.repeat
def test_slow_consumer_sees_fresh_frames_not_a_backlog():
    """A 200 FPS source paced on a fake clock, and inference taking 10 frames' time: each frame taken is the
    newest, at most one frame interval old, and the 9 before it were dropped rather than queued."""
    clock = FakeClock()
    source = GatedSource(ProceduralSource(clock=clock))
    capture = Capture(source, fps=200, clock=clock, sleep=clock.sleep)
    start = clock()
    capture.start()
    for batch in range(1, 9):
        source.allow(10)  # the camera delivers 10 frames while the model works on one
        wait_until(lambda want=10 * batch: capture.stats.captured == want, f"frame {10 * batch}")
        item = capture.get(timeout=30)
        assert item.frame.index == 10 * batch - 1, "the newest frame, not the oldest of a queue"
        assert item.frame.t_capture == pytest.approx(start + 10 * batch / 200), "paced at 200 FPS"
        assert 0 <= clock() - item.frame.t_capture <= 1 / 200 + 1e-9, "one frame interval old at most"
    source.open_gate()
    capture.stop()
    assert capture.stats.dropped >= 8 * 9 and not capture.is_alive()


@pytest.mark.repeat
def test_pacing_after_a_late_wake_up_does_not_catch_up_in_a_burst():
    """A wait that overslept by 0.25 s (a loaded machine) is not made up with frames back to back."""
    clock, read_at = FakeClock(), []
    waits = iter([0.0, 0.0, 0.25])

    def oversleep(seconds: float) -> bool:
        clock.sleep(seconds + next(waits, 0.0))
        return False

    capture = Capture(
        ProceduralSource(frames=6, clock=clock),
        prepare=lambda image: read_at.append(clock()),
        fps=10,
        clock=clock,
        sleep=oversleep,
    )
    start = clock()
    capture.start()
    capture.join(timeout=30)
    gaps = [round(b - a, 9) for a, b in zip([start, *read_at], read_at, strict=False)]
    assert gaps == [0.1, 0.1, 0.35, 0.1, 0.1, 0.1], gaps


class FlakyCamera:
    """A live 30 FPS source on a fake clock that stops after 3 frames, refuses the first reopen, then works again."""

    live, fps, name = True, None, "flaky camera"

    def __init__(self, clock):
        self.opens, self.count, self.delivered_since_open, self.clock = 0, 0, 0, clock

    def open(self):
        self.opens += 1
        if self.opens == 2:
            raise SourceError("camera busy")
        self.delivered_since_open = 0

    def read(self):
        if self.opens == 1 and self.delivered_since_open == 3:
            raise OSError("USB disconnect")
        self.clock.sleep(1 / 30)  # a camera's frame interval
        self.delivered_since_open += 1
        self.count += 1
        return Frame(np.zeros((8, 8, 3), np.uint8), self.clock(), self.count - 1)

    def close(self):
        pass


@pytest.mark.repeat
def test_a_live_source_that_stops_is_reconnected_with_back_off():
    clock = FakeClock()
    camera = FlakyCamera(clock)
    camera.open()
    capture = Capture(camera, backoff=(0.02, 0.1), clock=clock, sleep=clock.sleep)
    capture.start()
    wait_until(lambda: capture.stats.captured > 10, "frames after the reconnect")
    capture.stop()
    assert camera.opens == 3, "one refused reopen, then a successful one"
    assert capture.stats.reconnects == 1
    assert capture.stats.gap_s == pytest.approx(0.02 + 0.04), "the two back-off waits: 0.02 s, then twice that"
    assert capture.error is None


@pytest.mark.repeat
def test_a_silent_live_source_is_warned_about_once_while_it_stays_silent(caplog):
    clock = FakeClock()
    source = GatedSource(ProceduralSource(clock=clock))
    source.live = True
    capture = Capture(source, clock=clock, warn_after=3.0)
    capture.start()
    with caplog.at_level(logging.WARNING, logger="edge.capture"):
        source.allow(1)
        assert capture.get(timeout=30) is not None
        clock.sleep(2.9)
        assert capture.get(timeout=0.01) is None
        clock.sleep(0.2)
        assert capture.get(timeout=0.01) is None and capture.get(timeout=0.01) is None
    source.open_gate()
    capture.stop()
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["gated has sent no frame for 3 s"], warnings


@pytest.mark.repeat
def test_a_stalled_stream_is_warned_about_timed_out_and_its_gap_counted_from_the_last_frame(caplog):
    """An HTTP MJPEG stream that stops sending without closing (our own server as the camera)."""
    broadcast = Broadcast()
    server = Server(("127.0.0.1", 0), broadcast, "camera")
    sending = threading.Event()
    sending.set()

    def camera():
        while not broadcast.closed:
            if sending.is_set():
                broadcast.publish(np.full((48, 64, 3), 90, np.uint8), {})
            time.sleep(0.03)

    threading.Thread(target=camera, daemon=True).start()
    source = VideoSource(server.url + "stream.mjpg", timeout=1.0)
    source.open()
    capture = Capture(source, backoff=(0.05, 0.1), warn_after=0.5)
    capture.start()
    try:
        assert capture.get(timeout=5) is not None
        sending.clear()
        stalled = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="edge.capture"):
            while time.monotonic() - stalled < 2.5:
                capture.get(timeout=0.1)
        sending.set()
        deadline = time.monotonic() + 10
        while capture.stats.reconnects == 0 and time.monotonic() < deadline:
            capture.get(timeout=0.1)
        assert capture.get(timeout=5) is not None, "frames again after the stall"
    finally:
        capture.stop()
        server.close()
    assert any("has sent no frame for" in r.getMessage() for r in caplog.records), "warned while silent"
    assert capture.stats.reconnects >= 1
    assert capture.stats.gap_s >= 2.0, f"counted from the last frame, not from the reconnect: {capture.stats}"


def test_edge_run_skips_a_fifo_in_its_folder(tiny_bundle, tmp_path):
    os.mkfifo(tmp_path / "a.jpg")
    cv2.imwrite(str(tmp_path / "b.jpg"), np.full((40, 40, 3), 99, np.uint8))
    result = run_module(
        "-m",
        "edge",
        "run",
        str(tiny_bundle),
        "--source",
        str(tmp_path),
        "--headless",
        "--jsonl",
        "-",
        "--fps",
        "0",
        "--threads",
        "1",
        timeout=120,
        text=True,
    )
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1, result.stderr
    assert "a.jpg is a FIFO" in result.stderr
