"""The device's native runner against ExecuTorch's Python runtime, on one bundle, in one run.

    python -m export.compare_runtimes BUNDLE [--against OTHER_BUNDLE] [--threads N] [--runs 2000] [--rounds 7]

Three rows: the native runner on the app's method (model.json's ``method``, channels-last), the native
runner on ``forward`` (contiguous NCHW, what other runtimes are given), and ExecuTorch's Python runtime on
``forward`` fed plain contiguous tensors, as a user would. Each runs in its own process (the runner and the
bindings link different copies of the ExecuTorch runtime and must not share one), taking turns for
``--rounds`` so that machine drift hits all. ``--against`` adds the native runner on another bundle's app
method to the same rounds: an A/B of two programs of one model. Each process
reports its time from start to the first result (imports and load included), inference p50/p90 over
``--runs`` calls on the golden inputs, and its peak RSS.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edge.bundle import FORWARD, read_bundle, read_golden
from edge.command import HelpFormatter, positive_int
from edge.native import Runner

RUNTIMES = ("native", "native forward", "executorch.runtime")


def child(runtime: str, bundle: Path, threads: int | None, runs: int) -> dict:
    """Runs in the measured process: load, first result, then ``runs`` timed calls."""
    started = time.perf_counter()
    # Laid out as each method reads them, outside the timer.
    inputs = list(read_golden(bundle)["inputs"])
    if runtime.startswith("native"):
        meta, pte = read_bundle(bundle)
        runner = Runner(pte, threads, FORWARD if runtime == "native forward" else meta.method)
        inputs, infer = [runner.laid_out(x[None]) for x in inputs], runner
    else:
        import torch
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        from executorch.runtime import Runtime

        if threads:
            _unsafe_reset_threadpool(threads)
        _, pte = read_bundle(bundle)
        program = Runtime.get().load_program(pte)  # kept alive: the method does not keep its program
        method = program.load_method(FORWARD)
        inputs = [torch.from_numpy(x).unsqueeze(0) for x in inputs]  # contiguous NCHW, as a user passes

        def infer(x):
            return method.execute([x])[0].numpy()

    infer(inputs[0])
    first_result_s = time.perf_counter() - started
    times = []
    for i in range(runs):
        start = time.perf_counter()
        infer(inputs[i % len(inputs)])
        times.append(1000 * (time.perf_counter() - start))
    peak = next(
        int(line.split()[1]) / 1024
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    return {
        "first_result_s": round(first_result_s, 3),
        "p50_ms": round(float(np.percentile(times, 50)), 4),
        "p90_ms": round(float(np.percentile(times, 90)), 4),
        "peak_rss_mb": round(peak, 1),
    }


def measure(runtime: str, bundle: Path, args: argparse.Namespace) -> dict:
    argv = [
        sys.executable,
        "-m",
        "export.compare_runtimes",
        str(bundle),
        "--child",
        runtime,
        "--runs",
        str(args.runs),
        *(["--threads", str(args.threads)] if args.threads else []),
    ]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: the {runtime} run failed: {(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(results: dict[str, list[dict]]) -> str:
    lines = [
        "| runtime | inference p50 ms (median of rounds) | p50 of each round | p90 ms | start to first result s | "
        "peak RSS MB |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for runtime, rounds in results.items():
        mid = {k: float(np.median([r[k] for r in rounds])) for k in rounds[0]}
        each = " ".join(f"{r['p50_ms']:.3f}" for r in rounds)
        lines.append(
            f"| {runtime} | {mid['p50_ms']:.4f} | {each} | {mid['p90_ms']:.4f} | {mid['first_result_s']:.2f} | "
            f"{mid['peak_rss_mb']:.0f} |"
        )
    p50 = {name: float(np.median([r["p50_ms"] for r in rounds])) for name, rounds in results.items()}
    native = p50["native"]
    ratios = [f"{name} / native: {value / native:.3f}x" for name, value in p50.items() if name != "native"]
    return "\n".join(lines) + f"\n\ninference p50, medians of rounds: {'; '.join(ratios)}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m export.compare_runtimes", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--against", type=Path, help="another bundle whose app method joins the rounds")
    parser.add_argument("--threads", type=positive_int, help="XNNPACK threads for all (default: the runtimes' own)")
    parser.add_argument("--runs", type=positive_int, default=2000, help="timed inferences per round")
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=7,
        help="alternating rounds per runtime: "
        "one process's timing can settle in a faster or slower mode, so sample several",
    )
    parser.add_argument("--child", choices=RUNTIMES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for bundle in (args.bundle, args.against):
        if bundle is not None:
            read_bundle(bundle)
    if args.child:
        print(json.dumps(child(args.child, args.bundle, args.threads, args.runs)))
        return
    rows = {name: (name, args.bundle) for name in RUNTIMES}
    if args.against:
        rows[f"native, {args.against}"] = ("native", args.against)
    results = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, (runtime, bundle) in rows.items():
            results[name].append(measure(runtime, bundle, args))
    print(table(results))


if __name__ == "__main__":
    from edge.command import run_main

    run_main("export.compare_runtimes")
