"""Capture in its own thread, keeping only the newest frame.

The consumer (inference) takes whatever is newest; a frame replaced before it was taken is
dropped and counted. So when inference is slower than the camera, latency stays one frame
deep instead of growing with a queue. Preprocessing runs here too, hidden behind inference.
A live source that stops is reopened with exponential back-off; the gap is counted from the last
frame received, and a live source that has sent nothing for ``warn_after`` seconds is warned about
while it is still silent.

Every time here comes from one injected ``clock`` (``time.monotonic`` by default) and every wait goes
through ``sleep``, so pacing, gaps and warnings can be tested against a fake clock, to the microsecond.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .sources import Frame, SourceError

log = logging.getLogger(__name__)


@dataclass
class Captured:
    frame: Frame
    prepared: Any  # prepare(frame.image), e.g. the model input


@dataclass
class CaptureStats:
    captured: int = 0
    dropped: int = 0  # frames replaced by a newer one before the consumer took them
    reconnects: int = 0
    gap_s: float = 0.0  # time without frames while reconnecting


class Capture(threading.Thread):
    """Reads ``source`` until stopped or (for a non-live source) until it ends.

    ``fps`` paces non-live sources like a camera would (None: the source's own rate if it has one,
    0: as fast as they read). ``backoff`` is the first and the longest wait between reconnects.
    ``clock`` gives the time (the sources' frames must be stamped on the same one); ``sleep(seconds)``
    waits, returning True when capture is being stopped (default: a wait that ``stop()`` cuts short).
    """

    def __init__(
        self,
        source,
        prepare: Callable[[Any], Any] = lambda image: None,
        fps: float | None = None,
        backoff: tuple[float, float] = (0.25, 8.0),
        warn_after: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], bool] | None = None,
    ) -> None:
        super().__init__(name="capture", daemon=True)
        self.source, self.prepare, self.backoff, self.warn_after = source, prepare, backoff, warn_after
        self.clock = clock
        self._stopping = threading.Event()
        self.sleep = sleep or self._stopping.wait
        self.last_frame = clock()  # when the newest frame arrived (or capture started)
        self._warned = False
        rate = fps if fps is not None else source.fps
        self.interval = 1.0 / rate if rate and not source.live else 0.0
        self.stats = CaptureStats()
        self.error: BaseException | None = None
        self._newest: Captured | None = None
        self._ended = False
        self._changed = threading.Condition()

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # handed to the consumer, which reports it
            self.error = e
        finally:
            self.source.close()
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def _loop(self) -> None:
        next_due = self.clock()
        while not self._stopping.is_set():
            if self.interval:
                next_due += self.interval
                self.sleep(max(0.0, next_due - self.clock()))
                next_due = max(next_due, self.clock())  # woke late: pace on from now, no catch-up burst
            frame = self._read()
            if frame is None:
                if not self.source.live or not self._reconnect():
                    return
                continue
            item = Captured(frame, self.prepare(frame.image))
            with self._changed:
                self.last_frame, self._warned = self.clock(), False
                self.stats.captured += 1
                self.stats.dropped += self._newest is not None
                self._newest = item
                self._changed.notify_all()

    def _read(self) -> Frame | None:
        try:
            return self.source.read()
        except Exception as e:  # a camera/stream failing mid-run is a gap, not the end
            if not self.source.live:
                raise
            log.warning("%s failed: %s", self.source.name, e)
            return None

    def _reconnect(self) -> bool:
        """Reopen the live source, waiting longer after each failure; False only when stopped."""
        delay = self.backoff[0]
        self.source.close()
        while not self.sleep(delay) and not self._stopping.is_set():
            log.warning("%s stopped delivering frames; reconnecting", self.source.name)
            try:
                self.source.open()
            except SourceError as e:
                log.warning("%s; retrying in %.1f s", e, min(2 * delay, self.backoff[1]))
                delay = min(2 * delay, self.backoff[1])
                continue
            with self._changed:
                self.stats.reconnects += 1
                now = self.clock()
                self.stats.gap_s += now - self.last_frame
                self.last_frame = now  # a gap is counted once
            return True
        return False

    def get(self, timeout: float | None = None) -> Captured | None:
        """The newest frame not yet taken, waiting for one; None when the source has ended (or on timeout)."""
        with self._changed:
            self._changed.wait_for(lambda: self._newest is not None or self._ended, timeout)
            item, self._newest = self._newest, None
            silent = self.clock() - self.last_frame
            if item is None and self.source.live and silent > self.warn_after and not self._warned:
                self._warned = True
                log.warning("%s has sent no frame for %.0f s", self.source.name, silent)
        if item is None and self.error is not None:
            raise self.error
        return item

    @property
    def ended(self) -> bool:
        with self._changed:
            return self._ended

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)
