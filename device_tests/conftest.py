"""Fixtures for the device tests: the release's bundle and device facts, and the report they fill in.

python -m pytest device_tests [--bundle bundle] [--device-facts device.json] [--report device_report.json]
                               [--threads N]

Latency is measured at every thread count; the app's count (``--threads``, else the count this release
chose by measurement, else the profile's) runs the pipeline and parity tests. At the end the measured
latencies choose the release's count (edge/threads.py), written beside the release for its app.
"""

import json
import os
from pathlib import Path

import pytest

from edge import device_report as report_file
from edge import threads as chosen_threads
from edge.bundle import BundleError, load_bundle, read_golden, read_meta


def pytest_addoption(parser):
    group = parser.getgroup("device")
    group.addoption("--bundle", default="bundle", help="bundle directory (default: the release's bundle/)")
    group.addoption("--device-facts", default="device.json", help="the profile's facts shipped with the release")
    group.addoption("--report", default="device_report.json", help="where to write the report")
    group.addoption("--runs", type=int, default=200, help="timed runs per thread count (at least 200)")
    group.addoption(
        "--threads", type=int, help="the app's thread count (default: the release's chosen one, else the profile's)"
    )


RESULTS = {"figures": {}, "tests": {}}  # one pytest session per process: filled in by tests and hooks


def pytest_generate_tests(metafunc):
    if "threads" in metafunc.fixturenames:
        metafunc.parametrize("threads", range(1, (os.cpu_count() or 1) + 1))


def pytest_runtest_logreport(report):
    if report.when != "call" and not (report.skipped or report.failed):
        return
    entry = {"outcome": report.outcome}
    if report.skipped and isinstance(report.longrepr, tuple):
        entry["reason"] = report.longrepr[2].removeprefix("Skipped: ")
    elif report.failed:
        entry["reason"] = report.longreprtext.strip().splitlines()[-1][:300]
    RESULTS["tests"][report.nodeid] = entry


def pytest_sessionfinish(session):
    config = session.config
    bundle = Path(config.getoption("bundle"))
    data = dict(RESULTS)
    try:
        meta = read_meta(bundle)
        described = {
            "name": meta.name,
            "arch": meta.arch,
            "pte_sha256": meta.pte_sha256,
            "method": meta.method,
            "quantization": meta.quantization,
            "input_size": meta.input.size,
        }
    except BundleError as e:
        described = {"error": str(e)}
    release = Path("release.json")
    data |= {
        "bundle": described,
        "profile": facts(config),
        "release": json.loads(release.read_text()) if release.exists() else None,
    }
    if choice := choose_threads(data["figures"].get("latency", {})):
        data["threads"] = choice
        if release.exists():  # in a release: its app runs with the choice from now on
            chosen_threads.record(choice)
    report_file.write(Path(config.getoption("report")), data)


def choose_threads(latency: dict) -> dict | None:
    """The choice, once every thread count of this device was measured (a partial run chooses nothing)."""
    if set(latency) != {str(n) for n in range(1, (os.cpu_count() or 1) + 1)}:
        return None
    return chosen_threads.choose(latency)


def facts(config) -> dict:
    path = Path(config.getoption("device_facts"))
    defaults = {
        "name": "unprofiled",
        "threads": os.cpu_count(),
        "camera": None,
        "budgets_ms": {},
        "memory_budget_mb": None,
    }
    return defaults | (json.loads(path.read_text()) if path.exists() else {})


@pytest.fixture(scope="session")
def device(pytestconfig) -> dict:
    return facts(pytestconfig)


@pytest.fixture(scope="session")
def figures() -> dict:
    """Tests put what they measured here; it becomes device_report.json's "figures"."""
    return RESULTS["figures"]


@pytest.fixture(scope="session")
def bundle_dir(pytestconfig) -> Path:
    path = Path(pytestconfig.getoption("bundle"))
    try:
        read_meta(path)
    except BundleError as e:
        pytest.exit(f"{e} (run from a deployed release or pass --bundle)", returncode=2)
    return path


@pytest.fixture(scope="session")
def app_threads(pytestconfig, device) -> int:
    """The count the release's app runs with: given, else chosen by an earlier measurement, else the profile's."""
    return pytestconfig.getoption("threads") or chosen_threads.chosen() or device["threads"]


@pytest.fixture
def bundle(bundle_dir, app_threads):
    """Loaded for each test, after sizing the threadpool: resizing it later would break a loaded method."""
    return load_bundle(bundle_dir, app_threads)


@pytest.fixture(scope="session")
def golden(bundle_dir) -> dict:
    return read_golden(bundle_dir)
