"""Per-frame figures of a run: live values over a recent window and the run's summary, in fixed memory.

A service runs for days: the figures live in preallocated ring buffers, so memory does not grow
with the frame count. Summary percentiles cover the last ``history`` frames (all of a shorter run).
"""

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def percentiles(values, qs=(50, 90)) -> dict:
    if len(values) == 0:
        return {f"p{q}": None for q in qs}
    return {f"p{q}": round(float(v), 3) for q, v in zip(qs, np.percentile(np.asarray(values), qs), strict=True)}


def process_age_s() -> float | None:
    """Seconds since this process started (interpreter start-up and imports included), where Linux says."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 2)


def cpu_temperature_c(zone: Path = Path("/sys/class/thermal/thermal_zone0/temp")) -> float | None:
    """The SoC's temperature where Linux exposes it (a Pi does; most VMs do not): a throttling Pi is slow."""
    try:
        return round(int(zone.read_text()) / 1000, 1)
    except (OSError, ValueError):
        return None


def rss_mb() -> float:
    """Resident set size of this process (Linux /proc)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def time_calls(call, runs: int, warmup: int = 10, samples: bool = False) -> dict:
    """Latency of ``call()`` in ms after ``warmup`` untimed calls: p50/p90/p99, mean and the run count, and
    with ``samples`` every time in order (for a histogram, or to see drift)."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - start))
    row = percentiles(times, (50, 90, 99)) | {"mean": round(float(np.mean(times)), 3), "runs": runs}
    return row | ({"samples_ms": [round(t, 3) for t in times]} if samples else {})


class Ring:
    """The last ``size`` floats added, oldest first on ``tail``."""

    def __init__(self, size: int) -> None:
        self.values, self.count = np.zeros(size), 0

    def add(self, value: float) -> None:
        self.values[self.count % len(self.values)] = value
        self.count += 1

    def last(self) -> float:
        return float(self.values[(self.count - 1) % len(self.values)])

    def tail(self, n: int | None = None) -> np.ndarray:
        n = min(self.count, len(self.values), n or len(self.values))
        return self.values[(np.arange(self.count - n, self.count)) % len(self.values)]


class Timeline:
    """Every ``interval`` seconds of results: seconds since the first, frames/s since the last point, and RSS.

    Read on the result path (no thread of its own), so a stalled source shows as a low point once frames
    come back. Keeps the last ``size`` points: an hour at the default interval.
    """

    def __init__(self, interval: float = 1.0, size: int = 3600) -> None:
        self.interval, self.frames_at_last = interval, 0
        self.start: float | None = None
        self.last: float | None = None
        self.t_s, self.fps, self.rss_mb = Ring(size), Ring(size), Ring(size)

    def tick(self, now: float, frames: int) -> None:
        if self.start is None or self.last is None:
            self.start, self.last, self.frames_at_last = now, now, frames
        elif now - self.last >= self.interval:
            self.t_s.add(now - self.start)
            self.fps.add((frames - self.frames_at_last) / (now - self.last))
            self.rss_mb.add(rss_mb())
            self.last, self.frames_at_last = now, frames

    def to_json(self) -> dict:
        return {
            name: [round(float(v), 2) for v in ring.tail()]
            for name, ring in (("t_s", self.t_s), ("fps", self.fps), ("rss_mb", self.rss_mb))
        }


class RunStats:
    """Inference ms, capture-to-result ms and result times; the last ``window`` frames feed the live figures,
    and a once-a-second timeline of frames/s and memory covers the run.

    Result times are read from ``clock``, the one the frames' capture times come from (``time.monotonic``
    unless a test gives a fake one), so frame rates can be tested without waiting for them."""

    def __init__(self, window: int = 120, history: int = 50_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.clock = window, clock
        self.latency_ms, self.capture_to_result_ms, self.t_result = Ring(history), Ring(history), Ring(history)
        self.first_t_result: float | None = None
        self.timeline = Timeline()

    @property
    def frames(self) -> int:
        return self.t_result.count

    def add(self, latency_ms: float, t_capture: float, t_result: float | None = None) -> float:
        """One frame's figures; ``t_result`` defaults to now on the clock. Returns the result time."""
        t_result = self.clock() if t_result is None else t_result
        self.latency_ms.add(latency_ms)
        self.capture_to_result_ms.add(1000 * (t_result - t_capture))
        self.t_result.add(t_result)
        if self.first_t_result is None:
            self.first_t_result = t_result
        self.timeline.tick(t_result, self.frames)
        return t_result

    @staticmethod
    def _fps(frames: int, first: float | None, last: float | None) -> float | None:
        if frames < 2 or first is None or last is None or last <= first:
            return None
        return round((frames - 1) / (last - first), 2)

    def live(self) -> dict:
        times = self.t_result.tail(self.window)
        fps = self._fps(len(times), times[0], times[-1]) if len(times) else None
        return {
            "frames": self.frames,
            "fps": fps,
            "latency_ms": percentiles(self.latency_ms.tail(self.window)),
            "capture_to_result_ms": percentiles(self.capture_to_result_ms.tail(self.window)),
        }

    def summary(self) -> dict:
        last = self.t_result.last() if self.frames else None
        return {
            "frames": self.frames,
            "fps": self._fps(self.frames, self.first_t_result, last),
            "latency_ms": percentiles(self.latency_ms.tail()),
            "capture_to_result_ms": percentiles(self.capture_to_result_ms.tail()),
            "timeline": self.timeline.to_json(),
        }


def format_summary(summary: dict) -> str:
    def ms(d):
        return "-" if d["p50"] is None else f"p50 {d['p50']:.2f} / p90 {d['p90']:.2f} ms"

    return (
        f"{summary['frames']} frames at {summary['fps'] or 0:.1f} FPS | inference {ms(summary['latency_ms'])} | "
        f"capture-to-result {ms(summary['capture_to_result_ms'])} | dropped {summary['dropped']} | "
        f"reconnects {summary['reconnects']} ({summary['gap_s']:.1f} s without frames)"
    )
