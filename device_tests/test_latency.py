"""Inference latency of the bundle at every thread count, against the profile's budget at its default."""

import pytest

from edge.bundle import load_bundle
from edge.device_report import budget_for
from edge.stats import time_calls

WARMUP = 20


def test_latency(bundle_dir, golden, device, figures, threads, pytestconfig):
    bundle = load_bundle(bundle_dir, threads)
    x = bundle.runner.laid_out(golden["inputs"][:1])  # as the preprocessor lays out a frame: no copy per call
    row = time_calls(lambda: bundle.logits(x), max(200, pytestconfig.getoption("runs")), WARMUP, samples=True)
    at_default = threads == device["threads"]
    budget = budget_for(device, bundle.meta.name) if at_default and not device.get("emulated") else None
    if budget:
        row["budget"] = budget
    figures.setdefault("latency", {})[str(threads)] = row
    if budget:
        over = {q: (row[q], limit) for q, limit in budget.items() if row[q] > limit}
        assert not over, f"{bundle.meta.name} at {threads} threads over budget (ms, measured vs budget): {over}"
    elif at_default and device.get("emulated"):
        pytest.skip(f"{device['name']} is emulated: latency recorded, not checked against a budget")
    elif at_default:
        pytest.skip(f"no latency budget for {bundle.meta.name} in the {device['name']} profile (figures recorded)")
