"""The two steps of a point, each the project's own command run as a child process with its output in a log:
``python -m pipeline`` builds the verified int8 bundle, ``python -m deploy`` runs the device tests on it."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edge.bundle import read_meta
from export.report import PROGRAM
from training.models.cost import count

from .grid import Layout, Point, Recipe

# The table needs the shipped int8 program's accuracy; the pipeline's float and fp32 baselines would add a
# lowering and two evaluations per point (PTQ is still built: it ships when it is measurably better).
EXPORT_ARGS = "--no-baselines"


class PointFailed(RuntimeError):
    """A step of one point failed; the message says which, why (the log's last line) and where the log is."""


RUNNING: set[subprocess.Popen] = set()  # the steps under way, stopped together on Ctrl-C or SIGTERM


def run_logged(command: list[str], log: Path, threads: int | None = None) -> int:
    """Run ``command`` with stdout and stderr in ``log``; its exit code. ``threads`` caps torch's threads."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        child = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )  # its own group: stop_all reaches its children too
        RUNNING.add(child)
        try:
            return child.wait()
        finally:
            RUNNING.discard(child)


def stop_all(grace_s: float = 30) -> None:
    """Interrupt every running step and its children (as Ctrl-C would), then wait for them to clean up."""
    for child in list(RUNNING):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGINT)
    for child in list(RUNNING):
        try:
            child.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)


def last_line(log: Path) -> str:
    """The log's last meaningful line (progress bars end lines with \\r: the text after the last one)."""
    lines = [line.rsplit("\r", 1)[-1].strip() for line in log.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line and not line.startswith("==")]
    return lines[-1][:300] if lines else "(no output)"


def build(point: Point, recipe: Recipe, layout: Layout, threads: int | None = None, export_args: str = "") -> dict:
    """``python -m pipeline`` for the point, then its bundle's figures: the shipped program's accuracy on the
    held-out split and its size (from the bundle's report), and MACs and parameters (training.models.count)."""
    bundle, log = layout.bundle(point, recipe), layout.point(point, recipe) / "build.log"
    weights = point.weights(recipe)
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "--recipe",
        recipe.name,
        "--model",
        point.model,
        "--width",
        f"{point.width:g}",
        "--res",
        str(point.resolution),
        "--epochs",
        str(recipe.epochs),
        "--qat-epochs",
        str(recipe.qat_epochs),
        f"--data={recipe.data}",
        *(["--weights", weights] if weights else []),
        "--run",
        str(layout.run(point, recipe)),
        "--out",
        str(bundle),
        f"--args={recipe.args}",
        f"--export-args={EXPORT_ARGS} {export_args}".strip(),
    ]
    started = time.monotonic()
    code = run_logged(command, log, threads)
    if code != 0:
        raise PointFailed(f"the pipeline failed (exit {code}): {last_line(log)} (log: {log})")
    meta = read_meta(bundle)
    report = json.loads((bundle / "report.json").read_text())
    program = PROGRAM[meta.quantization["scheme"]]
    return {
        "model": point.model,
        "width": point.width,
        "resolution": point.resolution,
        "bundle": str(bundle),
        "name": meta.name,
        "scheme": meta.quantization["scheme"],
        "top1": report["accuracy"][program]["top1"],
        "top5": report["accuracy"][program]["top5"],
        "val_images": report["val_images"],
        "pte_bytes": report["programs"][program]["bytes"],
        "build_s": round(time.monotonic() - started, 1),
        **count(point.model, point.width, point.resolution, meta.num_classes),
    }


def measure(point: Point, recipe: Recipe, layout: Layout, device: str, deploy_args: list[str]) -> dict:
    """Deploy the bundle to ``device`` and run the device tests there; latency at the profile's thread count.

    A device test that fails (a latency budget the point misses, say) is recorded, not fatal: the figures
    are what a sweep is for. No report at all is a failed point.
    """
    folder = layout.point(point, recipe)
    reports, log, started = folder / "devices", folder / f"deploy-{device}.log", time.time()
    code = run_logged(
        [
            sys.executable,
            "-m",
            "deploy",
            device,
            "--bundle",
            str(layout.bundle(point, recipe)),
            *deploy_args,
            "--reports",
            str(reports),
        ],
        log,
    )
    found = sorted(
        (p for p in reports.glob("*/*/device_report.json") if p.stat().st_mtime >= started),
        key=lambda p: p.stat().st_mtime,
    )
    if not found:
        raise PointFailed(f"deploy to {device} failed (exit {code}): {last_line(log)} (log: {log})")
    report = json.loads(found[-1].read_text())
    threads, latency = report["profile"]["threads"], report["figures"].get("latency", {})
    row = latency.get(str(threads))
    if not row:
        raise PointFailed(f"the device report {found[-1]} has no latency at {threads} threads (log: {log})")
    failed = sorted(name.split("::")[-1] for name, t in report["tests"].items() if t["outcome"] == "failed")
    fastest = min(latency, key=lambda n: latency[n]["p50"])  # the profile's count ships; the table notes a faster
    return {
        "device": device,
        "threads": threads,
        "p50": row["p50"],
        "p90": row["p90"],
        "fastest": {"threads": int(fastest), "p50": latency[fastest]["p50"]},
        "emulated": bool(report["profile"].get("emulated")),
        "report": str(found[-1]),
        "failed_tests": failed,
    }
