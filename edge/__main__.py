"""python -m edge eval BUNDLE DATADIR [--json]"""
import argparse
import json
import sys
from pathlib import Path

from .bundle import BundleError, load_bundle
from .evaluate import evaluate_folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edge", description="Run a model bundle on the edge.")
    commands = parser.add_subparsers(dest="command", required=True)
    ev = commands.add_parser("eval", help="accuracy of a bundle on an ImageFolder (DATADIR/<class>/*.jpg)")
    ev.add_argument("bundle", type=Path)
    ev.add_argument("datadir", type=Path)
    ev.add_argument("--json", action="store_true", help='print one line {"top1", "top5", "n"}')
    ev.add_argument("--limit", type=int, help="evaluate at most this many images")
    args = parser.parse_args(argv)
    try:
        bundle = load_bundle(args.bundle)
        result = evaluate_folder(bundle, args.datadir, args.limit, progress=not args.json)
    except BundleError as e:
        sys.exit(f"error: {e}")
    if args.json:
        print(json.dumps({k: result[k] for k in ("top1", "top5", "n")}))
    else:
        print(f"{bundle.meta.get('name', args.bundle)} on {args.datadir}: top-1 {100 * result['top1']:.2f}%  "
              f"top-5 {100 * result['top5']:.2f}%  ({result['n']} images, {result['skipped']} unreadable)")


if __name__ == "__main__":
    main()
