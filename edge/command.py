"""What every command line here shares: start-up that an interrupt ends in one line, and argument
types that reject a bad number with one line naming the flag (argparse adds the flag's name)."""

import argparse
import importlib
import math
import signal
import sys
from collections.abc import Callable

MAX_ERROR = 1000  # characters of an error line


class UserError(RuntimeError):
    """Something the user can put right. Its message is one line saying what is wrong and what to do;
    ``run_main`` prints it as ``error: ...`` and exits 1. Each stage subclasses it (BundleError,
    DeployError, ...), so a caller that handles one kind of failure catches its own class, and no
    stage translates another's error into its own."""


def run_main(module: str, quiet: Callable[[], None] | None = None, argv: list[str] | None = None) -> None:
    """Import ``module`` and call its ``main()`` (with ``argv``, else the command line's); the imports
    alone take seconds (torch, the runtime).

    ``quiet`` installs a command's log and warning filters first, before the libraries it filters are
    imported: importing a package never changes them.

    A UserError (or an OSError) from anywhere below ends as one ``error: ...`` line and exit 1.
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
        main() if argv is None else main(argv)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except (UserError, OSError) as e:  # OSError: a file or a device the user named, unreadable or full
        sys.exit(capped(f"error: {e}"))
    except SystemExit as done:
        done.code = capped(done.code) if isinstance(done.code, str) else done.code
        raise


def capped(line: str) -> str:
    return line if len(line) <= MAX_ERROR else line[: MAX_ERROR - 3] + "..."


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` that shows each option's default from the parser itself, never restated by hand, and
    keeps descriptions and examples as written. An empty string shows as none; an option without a
    value of its own (None, or a switch that is off) shows nothing: its help says what happens then."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return text
        if "%(default)" in text or not action.option_strings:
            return text
        return f"{text} (default: {'none' if action.default == '' else '%(default)s'})"


def with_examples(*commands: str) -> dict:
    """``ArgumentParser`` keywords for a help that shows defaults and ends with example commands."""
    return {
        "formatter_class": HelpFormatter,
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
