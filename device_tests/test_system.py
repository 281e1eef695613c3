"""Memory after the whole session, and on a Raspberry Pi the clocks and throttling state (vcgencmd)."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def test_peak_memory(device, figures):
    peak = status_mb("VmHWM")  # high-water mark of this process: the runs before this test included
    figures["memory"] = {"peak_rss_mb": round(peak, 1), "rss_mb": round(status_mb("VmRSS"), 1)}
    budget = device.get("memory_budget_mb")
    assert budget is None or peak <= budget, f"peak RSS {peak:.0f} MB over the {budget} MB budget"


def vcgencmd(*args: str) -> str:
    return subprocess.run(["vcgencmd", *args], capture_output=True, text=True, check=True).stdout.strip()


def test_clock_and_throttling(figures):
    if shutil.which("vcgencmd") is None:
        pytest.skip("vcgencmd not found: not a Raspberry Pi")
    throttled = int(vcgencmd("get_throttled").split("=")[1], 16)
    figures["vcgencmd"] = {
        "arm_hz": int(vcgencmd("measure_clock", "arm").split("=")[1]),
        "temp": vcgencmd("measure_temp").split("=")[1],
        "throttled": hex(throttled),
    }
    # Bits 0-3: under-voltage, frequency capped, throttled, soft temperature limit, all "now".
    assert throttled & 0xF == 0, (
        f"the Pi is throttling now (get_throttled={hex(throttled)}): latency figures are "
        "not representative; check the power supply and cooling"
    )


def test_environment_has_no_torch(device, figures):
    """The device runs on the native runner: its environment must not carry PyTorch (gigabytes on a Pi)."""
    prefix = Path(sys.prefix)
    size = sum(p.stat().st_size for p in prefix.rglob("*") if p.is_file() and not p.is_symlink())
    figures["environment"] = {"prefix": str(prefix), "size_mb": round(size / 2**20, 1)}
    if not device.get("own_environment"):
        pytest.skip(f"the {device['name']} profile runs in an environment it shares (size recorded)")
    assert importlib.util.find_spec("torch") is None, f"torch is installed in {prefix}: the device does not need it"


def test_runtime_origin(device, figures):
    """How the runtime got here, as make deploy recorded it beside what it made: the packages (wheels
    downloaded on the host, installed with no index) and the runner (built on the host or on the device)."""
    from edge.native.build import origins

    figures["runtime"] = found = origins()
    if not device.get("own_environment"):
        pytest.skip(f"the {device['name']} profile runs in an environment deploy did not make")
    assert all(found.values()), f"deploy recorded no origin for {[k for k, v in found.items() if not v]}"
