"""Two bundles of the same classes on the same images, with a paired 95% interval on their top-1 difference.

    python -m export.compare_bundles BUNDLE_A BUNDLE_B DATADIR [--limit N] [--json]

Each image goes through each bundle as the device app runs it (OpenCV preprocessing, the native runner), so
the comparison is of what would ship. Which of two training recipes, or two runs, made the better bundle is
a question a fraction of a point apart: only a paired interval on the same images answers it.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from edge.bundle import BundleError, load_bundle
from edge.command import positive_int, with_examples
from edge.evaluate import every_class_in_turn, labelled_images, ranked

from .paired import paired_difference


def correct(bundle, samples: list[tuple[str, int]], name: str) -> np.ndarray:
    """1 for each image the bundle's top-1 gets right, in the samples' order (all must be readable)."""
    right = [int(order[0] == label) for label, order in ranked(bundle, samples, progress=True)]
    if len(right) != len(samples):
        raise BundleError(f"{len(samples) - len(right)} images were unreadable for {name}: compare on readable ones")
    return np.array(right)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m export.compare_bundles",
        description=__doc__.splitlines()[0],
        **with_examples("python -m export.compare_bundles artifacts/a artifacts/b data/val --limit 5000"),
    )
    parser.add_argument("a", type=Path, help="a bundle")
    parser.add_argument("b", type=Path, help="a bundle with the same labels")
    parser.add_argument("data", type=Path, help="an ImageFolder of the bundles' classes (data/<class>/*.jpg)")
    parser.add_argument("--limit", type=positive_int, help="images, taken from every class in turn (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    a, b = load_bundle(args.a), load_bundle(args.b)
    if a.labels != b.labels:
        raise BundleError(f"{args.a} and {args.b} have other labels: compare bundles of the same classes")
    samples = every_class_in_turn(labelled_images(args.data, a.labels))[: args.limit]
    right_a, right_b = correct(a, samples, str(args.a)), correct(b, samples, str(args.b))
    difference = paired_difference(right_a, right_b)
    if args.json:
        print(
            json.dumps({"n": len(samples), "top1_a": right_a.mean(), "top1_b": right_b.mean()} | difference.to_json())
        )
        return
    print(f"| bundle | top-1 on {len(samples)} images |\n|---|---:|")
    print(f"| {args.a} | {100 * right_a.mean():.2f}% |\n| {args.b} | {100 * right_b.mean():.2f}% |")
    print(f"\nA - B: {difference}, images where they differ in being right: {100 * difference.changed:.1f}%")


if __name__ == "__main__":
    from edge.command import run_main

    run_main("export.compare_bundles")
