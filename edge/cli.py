"""python -m edge {run,eval} ...: the device app's command line."""
import argparse
import json
import logging
import sys
from pathlib import Path

import cv2

from .bundle import BundleError, load_bundle
from .command import frame_size, non_negative_float, positive_float, positive_int
from .evaluate import evaluate_folder
from .native import NativeError
from .run import RunConfig, RunError, run
from .sources import SOURCE_HELP, SourceError
from .stats import format_summary


def _add_run(commands) -> None:
    p = commands.add_parser("run", help="classify live frames from a camera, video, stream or directory",
                            description="Classify live frames. Window by default; --headless with --jsonl and/or "
                                        "--serve on a device without a screen.")
    p.add_argument("bundle", type=Path, help="bundle directory (model.pte + model.json)")
    p.add_argument("--source", required=True, help=SOURCE_HELP)
    p.add_argument("--loop", action="store_true", help="replay a video file or directory forever")
    p.add_argument("--fps", type=non_negative_float,
                   help="pace a file/directory at this rate (default: the video's own, 30 for a directory); "
                        "0 = as fast as it decodes")
    p.add_argument("--threads", type=positive_int, help="XNNPACK threads (default: the runtime's, one per core)")
    p.add_argument("--top-k", type=positive_int, default=3, help="labels per result (default 3)")
    p.add_argument("--smooth", type=float, default=0.0, metavar="ALPHA",
                   help="exponential moving average of the scores over frames: weight of the past, in [0, 1)")
    p.add_argument("--headless", action="store_true", help="no window")
    p.add_argument("--jsonl", metavar="FILE", help="one JSON line per result to FILE, or - for stdout; FILE is "
                                                   "replaced once the source has opened, then written as results come")
    p.add_argument("--max-frames", type=positive_int, metavar="N", help="stop after N results")
    p.add_argument("--duration", type=positive_float, metavar="SECONDS", help="stop after this long")
    p.add_argument("--serve", metavar="HOST:PORT", help="web page with the annotated stream and live stats "
                                                        "(PORT alone binds 127.0.0.1; 0.0.0.0:PORT for the LAN)")
    p.add_argument("--camera-size", type=frame_size, metavar="WxH",
                   help="Picamera2 stream size (default 640x480, larger if the model needs it)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edge", description="Run a model bundle on the edge.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run(commands)
    ev = commands.add_parser("eval", help="accuracy of a bundle on an ImageFolder (DATADIR/<class>/*.jpg)")
    ev.add_argument("bundle", type=Path)
    ev.add_argument("datadir", type=Path)
    ev.add_argument("--json", action="store_true", help='print one line {"top1", "top5", "n"}')
    ev.add_argument("--limit", type=positive_int, help="evaluate at most this many images")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # our own messages say what failed
    try:
        if args.command == "run":
            config = RunConfig(**{k: v for k, v in vars(args).items() if k != "command"})
            summary = run(config)
            print(format_summary(summary), file=sys.stderr if config.jsonl == "-" else sys.stdout)
        else:
            evaluate(args)
    except (BundleError, NativeError, SourceError, RunError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")


def evaluate(args: argparse.Namespace) -> None:
    bundle = load_bundle(args.bundle)
    result = evaluate_folder(bundle, args.datadir, args.limit, progress=not args.json)
    if args.json:
        print(json.dumps({k: result[k] for k in ("top1", "top5", "n")}))
    else:
        print(f"{bundle.meta.name} on {args.datadir}: top-1 {100 * result['top1']:.2f}%  "
              f"top-5 {100 * result['top5']:.2f}%  ({result['n']} images, {result['skipped']} unreadable)")
