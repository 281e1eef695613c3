"""Whole-pipeline throughput against inference alone, capture-to-result latency and memory over a long run.

    python -m edge.bench BUNDLE --source VIDEO [--seconds 120] [--threads N] [--json OUT]

The pipeline run replays the source as fast as it decodes (a camera that never waits). With capture
(read, decode, preprocess) and inference each measured alone, its frame rate shows whether the two
overlap: at best it reaches the slower of the two. RSS is sampled every second; growth after the
warm-up would be a leak.
"""

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from .bundle import load_bundle
from .classify import Classifier
from .command import non_negative_float, positive_float, positive_int, with_examples
from .files import output_problem, write_atomic
from .run import RunConfig, RunError, run
from .sources import SourceError, open_source
from .stats import percentiles

MIN_SECONDS = 1


def for_seconds(step, seconds: float, desc: str) -> float:
    """Call ``step()`` repeatedly for ``seconds``, with a progress bar; returns the calls per second."""
    calls, start = 0, time.monotonic()
    with tqdm(total=int(seconds), desc=desc, unit="s", leave=False) as bar:
        while (elapsed := time.monotonic() - start) < seconds:
            step()
            calls += 1
            if int(elapsed) > bar.n:
                bar.update(int(elapsed) - bar.n)
    return round(calls / (time.monotonic() - start), 1)


def inference_only(classifier: Classifier, x, seconds: float) -> dict:
    """Results/s of inference (and softmax/top-k) alone, on one prepared frame."""
    latencies = []

    def step() -> None:
        probs, ms = classifier.classify(x)
        classifier.top(probs)
        latencies.append(ms)

    fps = for_seconds(step, seconds, "inference only")
    return {"fps": fps, "latency_ms": percentiles(latencies)}


def capture_only(classifier: Classifier, source, seconds: float) -> dict:
    """Frames/s of reading, decoding and preprocessing alone: the other bound on the pipeline."""
    return {"fps": for_seconds(lambda: classifier.prepare(source.read().image), seconds, "capture only")}


def pipeline(bundle_dir: Path, source: str, seconds: float, threads: int | None) -> dict:
    """The live loop on the looping source, unpaced; RSS comes from the run's once-a-second timeline."""
    done = threading.Event()

    def progress() -> None:
        with tqdm(total=int(seconds), desc="pipeline", unit="s", leave=False) as bar:
            while not done.wait(1.0):
                bar.update(1)

    bar = threading.Thread(target=progress, daemon=True)
    bar.start()
    summary = run(RunConfig(bundle_dir, source, loop=True, fps=0, threads=threads, headless=True, duration=seconds))
    done.set()
    bar.join()
    timeline = summary["timeline"]
    return {"summary": summary, "rss_mb": list(zip(timeline["t_s"], timeline["rss_mb"], strict=True))}


def rss_figures(samples: list[tuple[float, float]], warmup_s: float) -> dict:
    after = [mb for t, mb in samples if t >= warmup_s]
    return (
        {
            "after_warmup_mb": after[0],
            "end_mb": after[-1],
            "peak_mb": max(mb for _, mb in samples),
            "growth_mb": round(after[-1] - after[0], 1),
        }
        if after
        else {}
    )


def table(result: dict) -> str:
    inf, pipe, rss = result["inference_only"], result["pipeline"], result["rss"]
    ms = pipe["capture_to_result_ms"]
    rows = [
        ("capture + preprocessing only", f"{result['capture_only']['fps']:.1f}", "-", "-"),
        ("inference only", f"{inf['fps']:.1f}", f"{inf['latency_ms']['p50']:.2f}", "-"),
        (
            "whole pipeline",
            f"{pipe['fps']:.1f}",
            f"{pipe['latency_ms']['p50']:.2f}",
            f"{ms['p50']:.2f} / {ms['p90']:.2f}",
        ),
    ]
    lines = ["| run | frames/s | inference p50 ms | capture-to-result p50 / p90 ms |", "|---|---:|---:|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines) + (
        f"\n\npipeline keeps {100 * result['pipeline_share']:.1f}% of the inference-only rate and "
        f"{100 * pipe['fps'] / min(inf['fps'], result['capture_only']['fps']):.1f}% of the slower stage's "
        f"({pipe['frames']} frames in {result['seconds']:.0f} s, {pipe['dropped']} dropped); "
        f"RSS {rss.get('after_warmup_mb', 0):.1f} MB after warm-up, {rss.get('end_mb', 0):.1f} MB at the end, "
        f"peak {rss.get('peak_mb', 0):.1f} MB"
    )


def bench_seconds(text: str) -> float:
    """Seconds of pipeline run; a quarter of it (at most 20 s) measures each stage alone first."""
    seconds = positive_float(text)
    if seconds < MIN_SECONDS:
        raise argparse.ArgumentTypeError(f"want a number of seconds >= {MIN_SECONDS}, got {text!r}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m edge.bench",
        description=__doc__.split("\n\n")[0],
        **with_examples(
            "python -m edge.bench artifacts/v3_small --source artifacts/demo.mp4",
            "python -m edge.bench artifacts/v3_small --source clip.mp4 --seconds 600 --threads 2 --json bench.json",
        ),
    )
    parser.add_argument("bundle", type=Path, help="bundle directory (model.pte + model.json)")
    parser.add_argument("--source", required=True, help="a video file or directory, replayed in a loop (required)")
    parser.add_argument(
        "--seconds", type=bench_seconds, default=120, help=f"pipeline run length, at least {MIN_SECONDS}"
    )
    parser.add_argument("--warmup", type=non_negative_float, default=10, help="seconds before RSS growth is measured")
    parser.add_argument("--threads", type=positive_int, help="XNNPACK threads (default: the runtime's, one per core)")
    parser.add_argument("--json", type=Path, help="write every figure here (default: the table only)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.json and (problem := output_problem(args.json, make_parents=True)):
            raise ValueError(f"--json: {problem}")
        if args.warmup >= args.seconds:
            raise ValueError(
                f"--warmup ({args.warmup:g} s) must be shorter than --seconds ({args.seconds:g} s): "
                "memory growth is measured after it"
            )
        classifier = Classifier(load_bundle(args.bundle, args.threads))
        source = open_source(args.source, loop=True)
        source.open()
        if (first := source.read()) is None:
            raise SourceError(f"{args.source} gave no frame to measure with: give a video or a folder of images")
        alone = min(20.0, args.seconds / 4)
        inference = inference_only(classifier, classifier.prepare(first.image), alone)
        capture = capture_only(classifier, source, alone)
        source.close()
        piped = pipeline(args.bundle, args.source, args.seconds, args.threads)
        if not piped["summary"]["frames"] or not piped["rss_mb"]:
            raise RunError(f"the pipeline gave no result in {args.seconds:g} s: give more --seconds")
    except ValueError as e:  # a flag's value that does not fit the others
        sys.exit(f"error: {e}")
    summary = piped["summary"]
    result = {
        "bundle": str(args.bundle),
        "model": summary["model"],
        "source": args.source,
        "seconds": args.seconds,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "inference_only": inference,
        "capture_only": capture,
        "pipeline": summary,
        "pipeline_share": round(summary["fps"] / inference["fps"], 4),
        "rss": rss_figures(piped["rss_mb"], args.warmup),
    }
    print(table(result))
    if args.json:
        write_atomic(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    from edge.command import run_main

    run_main("edge.bench")
