"""Print a model's parameter and multiply-accumulate counts as one JSON line.

python -m training.models v1 --width 0.75 --resolution 160
"""

import argparse
import json
import sys

from edge.command import HelpFormatter, positive_float, positive_int

from . import MAX_WIDTH, MODELS
from .cost import count

MAX_RESOLUTION, MAX_CLASSES = 4096, 100_000  # counted on the meta device: these only keep the numbers sane


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.models", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("model", choices=list(MODELS))
    parser.add_argument(
        "--width", type=positive_float, default=1.0, help=f"width multiplier alpha, at most {MAX_WIDTH}"
    )
    parser.add_argument(
        "--resolution",
        type=positive_int,
        default=224,
        help=f"input size in pixels (rho * 224), at most {MAX_RESOLUTION}",
    )
    parser.add_argument("--num-classes", type=positive_int, default=1000, help=f"at most {MAX_CLASSES}")
    args = parser.parse_args()
    if args.resolution > MAX_RESOLUTION or args.num_classes > MAX_CLASSES:
        parser.error(f"--resolution at most {MAX_RESOLUTION} and --num-classes at most {MAX_CLASSES}")
    try:
        print(json.dumps(count(args.model, args.width, args.resolution, args.num_classes)))
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
