"""The whole live loop: frames/s and capture-to-result latency, on the device camera and on generated frames."""

import pytest

from edge.run import RunConfig, run
from edge.sources import SourceError, open_source

SECONDS = 10


def record(figures, name: str, summary: dict) -> dict:
    keep = ("frames", "fps", "latency_ms", "capture_to_result_ms", "dropped", "reconnects", "threads", "timeline")
    figures.setdefault("pipeline", {})[name] = {k: summary[k] for k in keep}
    return summary


def test_pipeline_on_the_camera(bundle_dir, device, app_threads, figures):
    if not device["camera"]:
        pytest.skip(f"the {device['name']} profile has no camera")
    try:
        open_source(device["camera"]).open()
    except SourceError as e:
        pytest.skip(f"no camera present: {e}")
    summary = record(
        figures,
        "camera",
        run(RunConfig(bundle_dir, device["camera"], threads=app_threads, headless=True, duration=SECONDS)),
    )
    assert summary["frames"] > SECONDS and summary["reconnects"] == 0


def test_pipeline_on_generated_frames(bundle_dir, app_threads, figures):
    summary = record(
        figures,
        "procedural",
        run(RunConfig(bundle_dir, "procedural", fps=0, threads=app_threads, headless=True, duration=SECONDS / 2)),
    )
    assert summary["frames"] > 0 and summary["capture_to_result_ms"]["p50"] > 0
