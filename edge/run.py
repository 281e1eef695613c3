"""The live loop: newest frame -> inference -> window / JSON lines / web page, and a summary at the end."""

import json
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

import cv2

from .bundle import load_bundle
from .capture import Capture
from .classify import Classifier
from .command import UserError
from .files import output_problem
from .native import Runner
from .overlay import annotate
from .serve import Broadcast, Server, parse_address
from .sources import Orientation, open_source
from .stats import RunStats, cpu_temperature_c

WINDOW = "edge"
HISTORY = 8  # top-1 label changes the page lists


class RunError(UserError):
    """A run that cannot start as asked; the message says what to do instead."""


@dataclass
class RunConfig:
    bundle: Path
    source: str
    loop: bool = False
    fps: float | None = None  # pace files/directories (None: a video's own rate); cameras set their own
    threads: int | None = None
    top_k: int = 3
    smooth: float = 0.0
    headless: bool = False
    jsonl: str | None = None  # a path, or "-" for stdout
    max_frames: int | None = None
    duration: float | None = None  # seconds
    serve: str | None = None  # HOST:PORT
    camera_size: tuple[int, int] | None = None
    rotate: int = 0  # degrees clockwise
    flip: str | None = None  # horizontal | vertical, after the rotation

    def __post_init__(self) -> None:
        if not 0.0 <= self.smooth < 1.0:
            raise RunError(f"--smooth must be in [0, 1), got {self.smooth}")
        for name in ("threads", "top_k", "max_frames"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise RunError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.duration is not None and not self.duration > 0:
            raise RunError(f"--duration must be more than 0 seconds, got {self.duration}")
        for name in ("jsonl", "serve"):
            if getattr(self, name) == "":
                raise RunError(f"--{name} is empty: leave it out or give a value")


def default_camera_size(resize: int) -> tuple[int, int]:
    """640x480, or larger 4:3 when the model's resize step needs more: never the full sensor (picamera2 #426)."""
    height = max(480, resize)
    return math.ceil(height * 4 / 3 / 2) * 2, height


def open_window() -> str | None:
    """Open the app's window; else why it cannot (checked first: GTK ends a process that has no display)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY and WAYLAND_DISPLAY are unset)"
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error:
        return "this OpenCV build has no GUI support"
    return None


def run(cfg: RunConfig, log: TextIO = sys.stderr, clock: Callable[[], float] = time.monotonic) -> dict:
    """Run until ``max_frames`` results, ``duration`` seconds, the end of a non-live source, `q` in the window,
    or Ctrl-C/SIGTERM; returns the summary. ``log`` gets the served page's address, and the reason when a
    window was asked for and cannot open (the run goes on headless: a Pi without a screen is common).
    ``clock`` stamps frames and results, paces files and times ``duration``."""
    address = parse_address(cfg.serve) if cfg.serve else None  # cheap checks first: loading the runtime takes seconds
    if cfg.jsonl not in (None, "-") and (problem := output_problem(Path(cfg.jsonl))):
        raise RunError(f"--jsonl: {problem}")
    orientation = Orientation(cfg.rotate, cfg.flip)
    open_source(cfg.source, orientation=orientation)
    no_window = None if cfg.headless else open_window()
    if no_window:
        watch = "" if cfg.serve else "; add --serve 8080 to watch in a browser"
        print(f"{no_window}: running headless{watch} (--headless skips this check)", file=log, flush=True)
        cfg = replace(cfg, headless=True)
    bundle = load_bundle(cfg.bundle, cfg.threads)
    classifier = Classifier(bundle, cfg.top_k, cfg.smooth)
    source = open_source(
        cfg.source,
        cfg.loop,
        cfg.camera_size or default_camera_size(bundle.input.resize),
        orientation=orientation,
        clock=clock,
    )
    stats, broadcast = RunStats(clock=clock), Broadcast()
    with ExitStack() as stack:
        if address:
            server = Server(address, broadcast, f"{bundle.meta.name} on {source.name}")
            stack.callback(server.close)
            lan = f" (on your network: {server.lan_url})" if server.lan_url else ""
            print(f"serving {server.url}{lan}", file=log, flush=True)
        source.open()
        # Opened once the run can start: a run that cannot start leaves the last run's file as it was.
        jsonl = sys.stdout if cfg.jsonl == "-" else stack.enter_context(open(cfg.jsonl, "w")) if cfg.jsonl else None
        capture = Capture(source, classifier.prepare, cfg.fps, clock=clock)
        capture.start()
        stack.callback(capture.stop)
        try:
            _loop(cfg, capture, classifier, stats, broadcast, jsonl)
        except KeyboardInterrupt:
            pass
    if not cfg.headless:
        cv2.destroyAllWindows()
    summary = stats.summary() | {
        "dropped": capture.stats.dropped,
        "reconnects": capture.stats.reconnects,
        "gap_s": round(capture.stats.gap_s, 3),
        "source": source.name,
        "model": bundle.meta.name,
        "threads": cfg.threads,
    }
    return summary


def _loop(
    cfg: RunConfig,
    capture: Capture,
    classifier: Classifier,
    stats: RunStats,
    broadcast: Broadcast,
    jsonl: TextIO | None,
) -> None:
    show = not cfg.headless or cfg.serve
    deadline = stats.clock() + cfg.duration if cfg.duration else float("inf")
    history: deque[dict] = deque(maxlen=HISTORY)
    threads = cfg.threads or Runner.pool_threads()
    temperature, temperature_read = None, -math.inf  # read once a second, not per frame
    while (cfg.max_frames is None or stats.frames < cfg.max_frames) and stats.clock() < deadline:
        item = capture.get(timeout=0.1)
        if item is None:
            if capture.ended:
                return
            if not cfg.headless and cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                return
            continue
        probs, latency_ms = classifier.classify(item.prepared)
        t_result = stats.add(latency_ms, item.frame.t_capture)
        top = classifier.top(probs)
        if jsonl:
            record = {
                "frame": stats.frames - 1,
                "source_frame": item.frame.index,
                "t_capture": round(item.frame.t_capture, 6),
                "t_result": round(t_result, 6),
                "latency_ms": round(latency_ms, 3),
                "capture_to_result_ms": round(1000 * (t_result - item.frame.t_capture), 3),
                "top": top,
                "dropped": capture.stats.dropped,
            }
            jsonl.write(json.dumps(record) + "\n")
            jsonl.flush()
        if show:
            live = stats.live()
            crop = classifier.preprocess.crop_box(*item.frame.image.shape[:2])
            annotated = annotate(item.frame.image, top, latency_ms, live["fps"], crop)
            if cfg.serve:
                if t_result - temperature_read >= 1.0:
                    temperature, temperature_read = cpu_temperature_c(), t_result
                if not history or history[0]["label"] != top[0]["label"]:
                    history.appendleft({"label": top[0]["label"], "time": time.strftime("%H:%M:%S")})
                broadcast.publish(
                    annotated,
                    live
                    | {
                        "top": top,
                        "dropped": capture.stats.dropped,
                        "reconnects": capture.stats.reconnects,
                        "history": list(history),
                        "threads": threads,
                        "temperature_c": temperature,
                        "crop": crop,
                    },
                )
            if not cfg.headless:
                cv2.imshow(WINDOW, annotated)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    return
