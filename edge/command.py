"""What every command line here shares: start-up that an interrupt ends in one line, and argument
types that reject a bad number with one line naming the flag (argparse adds the flag's name)."""

import argparse
import importlib
import math
import signal
import sys
from collections.abc import Callable

MAX_ERROR = 1000  # characters of an error line


def run_main(module: str, quiet: Callable[[], None] | None = None) -> None:
    """Import ``module`` and call its ``main()``; the imports alone take seconds (torch, the runtime).

    ``quiet`` installs a command's log and warning filters first, before the libraries it filters are
    imported: importing a package never changes them.

    SIGTERM (a service stop, ``kill``) is handled like Ctrl-C. Commands that clean up on an interrupt
    catch it themselves; one that reaches here exits 130 with "interrupted", never a traceback. An error line
    (``sys.exit("error: ...")``) longer than MAX_ERROR characters is cut there: a value from a hostile file
    may be megabytes long.
    An interrupt during the imports is held until they finish: OpenCV's loader has a bare ``except:``
    that would swallow it, and the run would go on as if nothing had been asked.
    """
    held = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: held.append(signum))
    try:
        if quiet:
            quiet()
        main = importlib.import_module(module).main
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.default_int_handler)
        if held:
            raise KeyboardInterrupt
        main()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit as done:
        if isinstance(done.code, str) and len(done.code) > MAX_ERROR:
            done.code = done.code[: MAX_ERROR - 3] + "..."
        raise


def with_examples(*commands: str) -> dict:
    """``ArgumentParser`` keywords for a help that ends with example commands, kept as written."""
    return {
        "formatter_class": argparse.RawDescriptionHelpFormatter,
        "epilog": "examples:\n" + "\n".join(f"  {command}" for command in commands),
    }


def _number(kind: type, text: str, valid, want: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or not valid(value):
        raise argparse.ArgumentTypeError(f"want {want}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(int, text, lambda v: v >= 1, "a whole number >= 1")


def positive_float(text: str) -> float:
    return _number(float, text, lambda v: v > 0, "a number > 0")


def non_negative_float(text: str) -> float:
    return _number(float, text, lambda v: v >= 0, "a number >= 0")


def fraction(text: str) -> float:
    return _number(float, text, lambda v: 0 < v <= 1, "a number in (0, 1]")


def probability(text: str) -> float:
    return _number(float, text, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def frame_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT``, both at least 1."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        w = h = 0
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"want WIDTHxHEIGHT, e.g. 640x480, got {text!r}")
    return w, h
