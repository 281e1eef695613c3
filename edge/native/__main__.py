"""python -m edge.native [--force]: build the native runner for this machine and Python environment."""

import argparse
import sys

from edge.command import HelpFormatter

from .build import build


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m edge.native", description=__doc__.split(": ", 1)[1], formatter_class=HelpFormatter
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if this source is already built")
    args = parser.parse_args(argv)
    try:
        print(build(args.force))
    except KeyboardInterrupt:
        sys.exit("interrupted: nothing was installed")


if __name__ == "__main__":
    from edge.command import HelpFormatter, run_main

    run_main("edge.native.__main__")
