"""Check and time every program of a converted folder, here: on the host or on a device.

    python -m peers.measure FOLDER [--threads 2] [--rounds 60] [--calls 10] [--settle 0.1] [--only NAME]

Prints one JSON object: per program its size, its p50/p90/p99 and every sample in ms, its top-1 on the
folder's images, how often that equals the eager model's (and how often its logits agree with eager's by
the bundle's parity rule, ``edge.parity``). ``--only`` loads and times one program alone in this process.
Needs numpy, the runtimes and the native runner only (no torch), so the same code measures on a device.
"""

import argparse
import json
import platform
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edge.command import HelpFormatter
from edge.parity import compare, logit_tolerance

from .runtimes import RUNTIMES, PeerError, load
from .timing import Plan, alternate, summary

PROGRAMS = "programs.json"  # written by peers.convert


def command(python: str, folder: str, threads: int, plan: Plan, only: str | None = None) -> list[str]:
    """The command line that runs this module on ``folder``: here in a fresh process, or on a device."""
    options = {"--threads": threads, "--rounds": plan.rounds, "--calls": plan.calls, "--settle": plan.settle_s}
    return [
        python,
        "-m",
        "peers.measure",
        folder,
        *(word for flag, value in options.items() for word in (flag, str(value))),
        *(["--only", only] if only else []),
    ]


def measure(folder: Path, threads: int, plan: Plan, say=lambda line: None, only: str | None = None) -> dict:
    """Check every program (or ``only`` that one) against the eager model, then time them taking turns."""
    listing = folder / PROGRAMS
    if not listing.is_file():
        raise PeerError(f"{folder} has no {PROGRAMS}: convert first (python -m peers)")
    programs = json.loads(listing.read_text())
    if only is not None:
        programs = [p for p in programs if p["name"] == only]
        if not programs:
            raise PeerError(f"{folder} has no program named {only!r}")
    images, eager = np.load(folder / "images.npy"), np.load(folder / "eager.npy")
    sessions, inputs, outputs = {}, {}, {}
    for p in programs:
        session = load(folder / p["file"], threads)
        prepared = [session.prepare(x[None]) for x in images]
        outputs[p["name"]] = np.stack([session.logits(session.run(x)) for x in prepared])
        sessions[p["name"]], inputs[p["name"]] = session, prepared[0]
    calls = {name: (lambda s=s, x=inputs[name]: s.run(x)) for name, s in sessions.items()}
    say(f"timing {', '.join(calls)}: {plan.rounds} rounds of {plan.calls} calls each, {threads} threads")
    every = 10 * len(calls)  # a line every 10 rounds

    def progress(done: int, total: int) -> None:
        if done % every == 0 or done == total:
            say(f"  round {done // len(calls)} of {plan.rounds}")

    samples = alternate(calls, plan, progress=progress)
    rows = []
    for p in programs:
        out = outputs[p["name"]]
        size = sum(
            f.stat().st_size for f in [folder / p["file"], (folder / p["file"]).with_suffix(".bin")] if f.is_file()
        )
        rows.append(
            p
            | summary(samples[p["name"]])
            | {
                "runtime_label": RUNTIMES[Path(p["file"]).suffix],
                "bytes": size,
                "vs_eager": compare(out, eager, logit_tolerance(eager, p["precision"])),
                "top1": out.argmax(1).tolist(),
            }
        )
    return {
        "machine": platform.machine(),
        "threads": threads,
        "images": len(images),
        "plan": asdict(plan),
        "programs": with_agreement(rows),
    }


def with_agreement(rows: list[dict]) -> list[dict]:
    """Each row with how often its top-1 equals our int8 program's, from the rows' own top-1 lists, so rows
    measured in separate processes compare too."""
    ours = next((r["top1"] for r in rows if r["ours"] and r["precision"] == "int8"), None)
    return [
        r | {"top1_vs_ours_int8": None if ours is None else float(np.mean(np.array(r["top1"]) == np.array(ours)))}
        for r in rows
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m peers.measure", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("folder", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=Plan.rounds)
    parser.add_argument("--calls", type=int, default=Plan.calls)
    parser.add_argument("--settle", type=float, default=Plan.settle_s, help="seconds of untimed calls per turn")
    parser.add_argument("--only", help="load and time this program alone (default: all, taking turns)")
    args = parser.parse_args(argv)
    try:
        plan = Plan(args.rounds, args.calls, args.settle)
        result = measure(
            args.folder, args.threads, plan, say=lambda line: print(line, file=sys.stderr, flush=True), only=args.only
        )
    except ValueError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted")
    print(json.dumps(result))


if __name__ == "__main__":
    from edge.command import HelpFormatter, run_main

    run_main("peers.measure")
