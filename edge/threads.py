"""The XNNPACK thread count a device runs with, chosen by measurement on that device.

The fastest count differs by device: one thread can beat four on a Pi whose camera takes a core, and a phone's
little cores slow a run that spills onto them. So the device's own latency at every thread count decides:
the fewest threads whose p90 is within ``MARGIN`` of the best p90. p90, because a live app feels the slow
frames; the fewest, because a thread that buys nothing measurable still costs a core the camera could use.

The deploy's device tests measure every count and write the choice into the release (``CHOSEN``); the
release's ``make demo`` (and so its service) and its device tests then run with it, unless a thread count
is given. A phone's deploy records its choice the same way.
"""

import json
from pathlib import Path

from .files import write_atomic

MARGIN = 0.05  # p90 within 5% of the best counts as as fast: closer than run-to-run spread on a device
CHOSEN = "threads.json"  # in the release directory, beside device.json


def choose(latency: dict[str, dict]) -> dict | None:
    """From ``{threads: {"p90": ms, ...}}`` (a device report's figures): the choice and why, or None when
    nothing was measured."""
    rows = sorted((int(t), row["p90"]) for t, row in latency.items() if row.get("p90") is not None)
    if not rows:
        return None
    best_threads, best = min(rows, key=lambda row: (row[1], row[0]))
    threads, p90 = next(row for row in rows if row[1] <= best * (1 + MARGIN))
    why = (
        f"the fastest p90 ({p90:.3f} ms)"
        if threads == best_threads
        else f"p90 {p90:.3f} ms, within {MARGIN:.0%} of the best ({best:.3f} ms at {best_threads}), with fewer threads"
    )
    return {"threads": threads, "p90_ms": p90, "best_threads": best_threads, "best_p90_ms": best, "why": why}


def record(choice: dict, directory: Path = Path(".")) -> Path:
    """The choice, atomically, where the release's commands read it."""
    path = directory / CHOSEN
    write_atomic(path, json.dumps(choice) + "\n")
    return path


def chosen(directory: Path = Path(".")) -> int | None:
    """The thread count recorded in ``directory``, or None when none was (or the file is not one)."""
    try:
        threads = json.loads((directory / CHOSEN).read_text())["threads"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return threads if isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1 else None


def main(argv: list[str] | None = None) -> None:
    """``python -m edge.threads [DIR]``: the count recorded in a release, or nothing (for its Makefile)."""
    import argparse

    from .command import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="python -m edge.threads",
        description="the thread count recorded in a release, or nothing (for its Makefile)",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("directory", nargs="?", type=Path, default=Path("."), help="the release directory")
    if found := chosen(parser.parse_args(argv).directory):
        print(found)


if __name__ == "__main__":
    main()
