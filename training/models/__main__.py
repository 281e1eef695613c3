"""Print a model's parameter and multiply-accumulate counts as one JSON line.

    python -m training.models v1 --width 0.75 --resolution 160
"""
import argparse
import json

from edge.command import positive_float, positive_int

from . import MODELS
from .cost import count


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m training.models", description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=list(MODELS))
    parser.add_argument("--width", type=positive_float, default=1.0, help="width multiplier alpha")
    parser.add_argument("--resolution", type=positive_int, default=224, help="input size in pixels (rho * 224)")
    parser.add_argument("--num-classes", type=positive_int, default=1000)
    args = parser.parse_args()
    print(json.dumps(count(args.model, args.width, args.resolution, args.num_classes)))


if __name__ == "__main__":
    main()
