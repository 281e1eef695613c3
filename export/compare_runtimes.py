"""The device's native runner against ExecuTorch's Python runtime, on one bundle, in one run.

    python -m export.compare_runtimes BUNDLE [--threads N] [--runs 2000] [--rounds 7]

Each runtime runs in its own process (the two link different copies of the ExecuTorch runtime and
must not share one), alternating A/B for ``--rounds`` so that machine drift hits both. Each process
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

from edge.bundle import BundleError, load_bundle, read_bundle, read_golden
from edge.command import positive_int

RUNTIMES = ("native", "executorch.runtime")


def child(runtime: str, bundle: Path, threads: int | None, runs: int) -> dict:
    """Runs in the measured process: load, first result, then ``runs`` timed calls."""
    started = time.perf_counter()
    # Laid out as each runtime reads them, outside the timer: NHWC memory for export's channels-last programs.
    inputs = [x[None] for x in read_golden(bundle)["inputs"]]
    if runtime == "native":
        loaded = load_bundle(bundle, threads)
        inputs, infer = [loaded.runner.laid_out(x) for x in inputs], loaded.logits
    else:
        import torch
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        from executorch.runtime import Runtime

        if threads:
            _unsafe_reset_threadpool(threads)
        meta, pte = read_bundle(bundle)
        program = Runtime.get().load_program(pte)  # kept alive: the method does not keep its program
        method = program.load_method("forward")
        memory = torch.channels_last if meta.format >= 2 else torch.contiguous_format  # docs/bundle.md
        inputs = [torch.from_numpy(x).contiguous(memory_format=memory) for x in inputs]

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


def measure(runtime: str, args: argparse.Namespace) -> dict:
    argv = [
        sys.executable,
        "-m",
        "export.compare_runtimes",
        str(args.bundle),
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
    native, pybind = (float(np.median([r["p50_ms"] for r in results[name]])) for name in RUNTIMES)
    return (
        "\n".join(lines) + f"\n\nnative / executorch.runtime inference p50: {native / pybind:.3f}x (median of rounds)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export.compare_runtimes", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=positive_int, help="XNNPACK threads for both (default: the runtimes' own)")
    parser.add_argument("--runs", type=positive_int, default=2000, help="timed inferences per round (default 2000)")
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=7,
        help="alternating rounds per runtime (default 7): "
        "one process's timing can settle in a faster or slower mode, so sample several",
    )
    parser.add_argument("--child", choices=RUNTIMES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        read_bundle(args.bundle)
    except BundleError as e:
        sys.exit(f"error: {e}")
    if args.child:
        print(json.dumps(child(args.child, args.bundle, args.threads, args.runs)))
        return
    results = {name: [] for name in RUNTIMES}
    for _ in range(args.rounds):
        for name in RUNTIMES:
            results[name].append(measure(name, args))
    print(table(results))


if __name__ == "__main__":
    main()
