"""Check and time every program of a converted folder, here: on the host or on a device.

    python -m peers.measure FOLDER [--threads 2] [--rounds 60] [--calls 10] [--settle 0.1] [--only NAME
                                   [--on-request]]

Prints one JSON object: per program its size, its p50/p90/p99 and every sample in ms, its top-1 on the
folder's images, how often that equals the eager model's (and how often its logits agree with eager's by
the bundle's parity rule, ``edge.parity``). ``--only`` loads and times one program alone in this process;
with ``--on-request`` it takes one turn per line its parent sends, so programs in processes of their own
still take turns.
Needs numpy, the runtimes and the native runner only (no torch), so the same code measures on a device.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from edge.command import HelpFormatter
from edge.parity import compare, logit_tolerance

from .runtimes import RUNTIMES, PeerError, load
from .timing import Plan, alternate, summary, turn

PROGRAMS = "programs.json"  # written by peers.convert


def command(
    python: str, folder: str, threads: int, plan: Plan, only: str | None = None, on_request: bool = False
) -> list[str]:
    """The command line that runs this module on ``folder``: here in a fresh process, or on a device."""
    options = {"--threads": threads, "--rounds": plan.rounds, "--calls": plan.calls, "--settle": plan.settle_s}
    return [
        python,
        "-m",
        "peers.measure",
        folder,
        *(word for flag, value in options.items() for word in (flag, str(value))),
        *(["--only", only] if only else []),
        *(["--on-request"] if on_request else []),
    ]


@dataclass
class Checked:
    """The programs of a folder loaded, each with its timed call and its logits on the folder's images.

    It holds the images and every prepared input for as long as the calls may run: a runtime's input can
    point into their memory without holding it (an ncnn Mat made from an array does)."""

    folder: Path
    threads: int
    programs: list[dict]
    calls: dict[str, Callable[[], object]]
    outputs: dict[str, np.ndarray]
    images: np.ndarray
    inputs: dict[str, list]
    eager: np.ndarray


def load_checked(folder: Path, threads: int, only: str | None = None) -> Checked:
    """Load every program (or ``only`` that one) and run it on the folder's images."""
    listing = folder / PROGRAMS
    if not listing.is_file():
        raise PeerError(f"{folder} has no {PROGRAMS}: convert first (python -m peers)")
    programs = json.loads(listing.read_text())
    if only is not None:
        programs = [p for p in programs if p["name"] == only]
        if not programs:
            raise PeerError(f"{folder} has no program named {only!r}")
    images, eager = np.load(folder / "images.npy"), np.load(folder / "eager.npy")
    calls, outputs, inputs = {}, {}, {}
    for p in programs:
        session = load(folder / p["file"], threads)
        inputs[p["name"]] = prepared = [session.prepare(x[None]) for x in images]
        outputs[p["name"]] = np.stack([session.logits(session.run(x)) for x in prepared])
        calls[p["name"]] = lambda s=session, x=prepared[0]: s.run(x)
    return Checked(folder, threads, programs, calls, outputs, images, inputs, eager)


def result(checked: Checked, samples: dict[str, list[float]], plan: Plan) -> dict:
    """Per program its size, its timing and its agreement with the eager model (the JSON this module prints)."""
    rows = []
    for p in checked.programs:
        out, path = checked.outputs[p["name"]], checked.folder / p["file"]
        rows.append(
            p
            | summary(samples[p["name"]])
            | {
                "runtime_label": RUNTIMES[path.suffix],
                "bytes": sum(f.stat().st_size for f in [path, path.with_suffix(".bin")] if f.is_file()),
                "vs_eager": compare(out, checked.eager, logit_tolerance(checked.eager, p["precision"])),
                "top1": out.argmax(1).tolist(),
            }
        )
    return {
        "machine": platform.machine(),
        "threads": checked.threads,
        "images": len(checked.images),
        "plan": asdict(plan),
        "programs": with_agreement(rows),
    }


def measure(folder: Path, threads: int, plan: Plan, say=lambda line: None, only: str | None = None) -> dict:
    """Check every program (or ``only`` that one) against the eager model, then time them taking turns."""
    checked = load_checked(folder, threads, only)
    say(f"timing {', '.join(checked.calls)}: {plan.rounds} rounds of {plan.calls} calls each, {threads} threads")
    every = 10 * len(checked.calls)  # a line every 10 rounds

    def progress(done: int, total: int) -> None:
        if done % every == 0 or done == total:
            say(f"  round {done // len(checked.calls)} of {plan.rounds}")

    return result(checked, alternate(checked.calls, plan, progress=progress), plan)


def measure_on_request(folder: Path, threads: int, plan: Plan, only: str, requests: TextIO, replies: TextIO) -> dict:
    """Load and check ``only``, say ``ready``, then take one turn per line of ``requests``, saying ``done``
    after each; at the end of ``requests``, its result. The parent hands out the turns of several such
    processes (``TurnTaker``), so each program runs alone in its process and yet all take turns."""
    checked = load_checked(folder, threads, only)
    samples: list[float] = []
    print("ready", file=replies, flush=True)
    for _ in requests:
        samples += turn(checked.calls[only], plan)
        print("done", file=replies, flush=True)
    return result(checked, {only: samples}, plan)


def standard_output_apart() -> TextIO:
    """Standard output for this module's replies alone: what a runtime prints there itself (from C) goes to
    stderr instead, where it cannot be taken for a reply."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return replies


class TurnTaker:
    """A program in a process of its own (``--on-request``), timed one turn per ``turn()``; ``finish()``
    ends it and returns its result. Its stderr is this process's. It is in a process group of its own, so
    Ctrl-C reaches only this process, which stops it; if this process dies, its end of input ends it."""

    def __init__(self, python: str, folder: Path, threads: int, plan: Plan, name: str) -> None:
        self.name = name
        self.process = subprocess.Popen(
            command(python, str(folder), threads, plan, name, on_request=True),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            process_group=0,
        )
        self._expect("ready")

    def _expect(self, word: str) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != word:
            self.stop()
            raise PeerError(f"timing {self.name} in its own process failed (its error is above)")

    def turn(self) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write("turn\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # it has ended: _expect says so
        self._expect("done")

    def finish(self) -> dict:
        out, _ = self.process.communicate()
        if self.process.returncode != 0 or not out.strip():
            raise PeerError(f"timing {self.name} in its own process failed (its error is above)")
        return json.loads(out.strip().splitlines()[-1])

    def stop(self) -> None:
        """Kill it if it is still running (an error or Ctrl-C elsewhere)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


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
    parser.add_argument(
        "--on-request",
        action="store_true",
        help="with --only: one turn per line of standard input, the result at its end (the parent hands out turns)",
    )
    args = parser.parse_args(argv)
    if args.on_request and not args.only:
        parser.error("--on-request needs --only")
    try:
        plan = Plan(args.rounds, args.calls, args.settle)
        if args.on_request:
            replies = standard_output_apart()
            measured = measure_on_request(args.folder, args.threads, plan, args.only, sys.stdin, replies)
            print(json.dumps(measured), file=replies, flush=True)
        else:
            say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
            print(json.dumps(measure(args.folder, args.threads, plan, say=say, only=args.only)))
    except ValueError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted")


if __name__ == "__main__":
    from edge.command import HelpFormatter, run_main

    run_main("peers.measure")
