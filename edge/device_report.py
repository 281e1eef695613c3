"""device_report.json: the device, the versions, the bundle and every figure, so two runs can be compared.

Written on the device by the device tests (device_tests/), and on the host for a phone (deploy/android.py),
which runs no Python: one format, so `make device-report` and the picture read both.
"""

import json
import os
import platform
import socket
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from edge.files import write_atomic


def board() -> str | None:
    """The Pi's board name from the device tree, else the CPU's model name."""
    model = Path("/proc/device-tree/model")
    if model.exists():
        return model.read_text().strip("\x00\n")
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith(("model name", "Model"))]
    return names[0] if names else platform.processor() or None


def device_info() -> dict:
    return {
        "hostname": socket.gethostname(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "model": board(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def versions() -> dict:
    found = {}
    for package in ("executorch", "torch", "numpy", "opencv-python-headless", "opencv-python", "picamera2"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def budget_for(device: dict, model: str) -> dict | None:
    """The budget whose key is the longest prefix of the bundle's name (e.g. v3_small-1-64)."""
    keys = [k for k in device["budgets_ms"] if model.startswith(k)]
    return device["budgets_ms"][max(keys, key=len)] if keys else None


def write(path: Path, report: dict) -> None:
    """Atomically: the JSON and a short markdown summary next to it."""
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": device_info(), "versions": versions()} | report
    write_atomic(path, json.dumps(report, indent=2) + "\n")
    write_atomic(path.with_suffix(".md"), markdown(report))


def _ms(d: dict) -> str:
    return " / ".join(f"{d[k]:.2f}" for k in ("p50", "p90", "p99") if d.get(k) is not None)


def markdown(report: dict) -> str:
    d, f = report["device"], report["figures"]
    emulated = (
        " (EMULATED: timings say nothing about real hardware)" if report.get("profile", {}).get("emulated") else ""
    )
    lines = [
        f"# {report.get('bundle', {}).get('name')} on {report.get('profile', {}).get('name')} "
        f"({d['model']}, {d['machine']}, {d['cpus']} CPUs){emulated}",
        "",
    ]
    if f.get("latency"):
        lines += ["| threads | p50 / p90 / p99 ms | budget |", "|---:|---|---|"]
        for threads, row in sorted(f["latency"].items(), key=lambda kv: int(kv[0])):
            budget = " / ".join(f"{q} {ms}" for q, ms in row.get("budget", {}).items()) or "-"
            lines.append(f"| {threads} | {_ms(row)} | {budget} |")
        lines.append("")
    if choice := report.get("threads"):
        where = f" {choice['cluster']}" if choice.get("cluster") else ""
        lines += [f"threads chosen: {choice['threads']}{where}: {choice['why']}", ""]
    for key, what in (("parity", "golden inputs"), ("preprocessing_parity", "raw frames, preprocessed here")):
        if key in f:
            p = f[key]
            lines.append(
                f"- parity on {p['images']} {what}: top-1 agreement {100 * p['top1_agreement']:.0f}%, max "
                f"logit diff {p['max_abs_logit_diff']:.4f} (tolerance {p['logit_tolerance']:.4f})"
            )
    for name, run in f.get("pipeline", {}).items():
        lines.append(
            f"- pipeline ({name}): {run['fps']} FPS, capture-to-result {_ms(run['capture_to_result_ms'])} ms, "
            f"{run['dropped']} dropped"
        )
    if f.get("cores"):
        lines.append(
            "- cores: "
            + ", ".join(
                f"{group} {group_cpus['cpus']} (CPU part {group_cpus['part']}, {group_cpus['max_mhz']} MHz)"
                for group, group_cpus in f["cores"].items()
            )
        )
    if "memory" in f:
        lines.append(f"- peak RSS {f['memory']['peak_rss_mb']:.1f} MB")
    if f.get("runtime"):
        lines.append("- runtime: " + "; ".join(f"{what} {how or 'not recorded'}" for what, how in f["runtime"].items()))
    if "environment" in f:
        lines.append(f"- Python environment {f['environment']['size_mb']:.0f} MB ({f['environment']['prefix']})")
    if "vcgencmd" in f:
        lines.append(f"- vcgencmd: {', '.join(f'{k} {v}' for k, v in f['vcgencmd'].items())}")
    outcomes = report.get("tests", {})
    counts = {o: sum(1 for t in outcomes.values() if t["outcome"] == o) for o in ("passed", "failed", "skipped")}
    lines += ["", f"tests: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"]
    lines += [
        f"- {name}: {t['outcome']}{': ' + t['reason'] if t.get('reason') else ''}"
        for name, t in outcomes.items()
        if t["outcome"] != "passed"
    ]
    return "\n".join(lines) + "\n"
