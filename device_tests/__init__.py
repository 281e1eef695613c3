"""Tests that run on the device against a deployed release: latency, parity, pipeline, memory."""
