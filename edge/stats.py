"""Per-frame figures of a run: live values over a recent window and the whole-run summary."""
from collections import deque

import numpy as np


def percentiles(values, qs=(50, 90)) -> dict:
    if len(values) == 0:
        return {f"p{q}": None for q in qs}
    return {f"p{q}": round(float(v), 3) for q, v in zip(qs, np.percentile(np.asarray(values), qs))}


class RunStats:
    """Inference ms, capture-to-result ms and result times; ``window`` recent frames feed the live figures."""

    def __init__(self, window: int = 120) -> None:
        self.latency_ms: list[float] = []
        self.capture_to_result_ms: list[float] = []
        self.t_results: list[float] = []
        self.recent = deque(maxlen=window)

    def add(self, latency_ms: float, t_capture: float, t_result: float) -> None:
        self.latency_ms.append(latency_ms)
        self.capture_to_result_ms.append(1000 * (t_result - t_capture))
        self.t_results.append(t_result)
        self.recent.append((latency_ms, self.capture_to_result_ms[-1], t_result))

    @staticmethod
    def _fps(times) -> float | None:
        return round((len(times) - 1) / (times[-1] - times[0]), 2) if len(times) > 1 and times[-1] > times[0] else None

    def live(self) -> dict:
        latency, c2r, times = zip(*self.recent) if self.recent else ((), (), ())
        return {"frames": len(self.t_results), "fps": self._fps(times),
                "latency_ms": percentiles(latency), "capture_to_result_ms": percentiles(c2r)}

    def summary(self) -> dict:
        return {"frames": len(self.t_results), "fps": self._fps(self.t_results),
                "latency_ms": percentiles(self.latency_ms), "capture_to_result_ms": percentiles(self.capture_to_result_ms)}


def format_summary(summary: dict) -> str:
    def ms(d):
        return "-" if d["p50"] is None else f"p50 {d['p50']:.2f} / p90 {d['p90']:.2f} ms"

    return (f"{summary['frames']} frames at {summary['fps'] or 0:.1f} FPS | inference {ms(summary['latency_ms'])} | "
            f"capture-to-result {ms(summary['capture_to_result_ms'])} | dropped {summary['dropped']} | "
            f"reconnects {summary['reconnects']} ({summary['gap_s']:.1f} s without frames)")
