"""python -m edge {run,predict,eval,collect} ...: the device app's command line."""

import argparse
import json
import logging
import sys
from pathlib import Path

import cv2

from .api import load
from .bundle import load_bundle
from .collect import QUALITY, collect, parse_classes
from .command import frame_size, non_negative_float, positive_float, positive_int, probability, with_examples
from .evaluate import evaluate_folder
from .predict import format_counts, predict
from .run import RunConfig, run
from .serve import DEFAULT_ADDRESS
from .sources import SOURCE_HELP
from .stats import format_summary


def _add_run(commands) -> None:
    p = commands.add_parser(
        "run",
        help="classify live frames from a camera, video, stream or directory",
        description="Classify live frames. A window where there is a display, else headless; --jsonl and --serve "
        "show the results without one.",
        **with_examples(
            "python -m edge run artifacts/v3_small --source picamera --serve 0.0.0.0:8080",
            "python -m edge run artifacts/v3_small --source 0 --rotate 180 --camera-size 1280x720",
            "python -m edge run artifacts/v3_small --source clip.mp4 --headless --jsonl - --max-frames 300",
        ),
    )
    p.add_argument("bundle", type=Path, help="bundle directory (model.pte + model.json)")
    p.add_argument("--source", required=True, help=f"{SOURCE_HELP} (required)")
    p.add_argument("--loop", action="store_true", help="replay a video file or directory forever (default: once)")
    p.add_argument(
        "--fps",
        type=non_negative_float,
        help="pace a file/directory at this rate (default: the video's own, 30 for a directory); "
        "0 = as fast as it decodes",
    )
    p.add_argument("--threads", type=positive_int, help="XNNPACK threads (default: the runtime's, one per core)")
    p.add_argument("--top-k", type=positive_int, default=3, help="labels per result, at most the model's labels")
    p.add_argument(
        "--smooth",
        type=float,
        default=0.0,
        metavar="ALPHA",
        help="exponential moving average of the scores over frames: weight of the past, in [0, 1) (0: none)",
    )
    p.add_argument(
        "--headless",
        action="store_true",
        help="no window (default: a window when there is a display and OpenCV has a GUI)",
    )
    p.add_argument(
        "--jsonl",
        metavar="FILE",
        help="one JSON line per result to FILE, or - for stdout; FILE is "
        "replaced once the source has opened (default: none)",
    )
    p.add_argument("--max-frames", type=positive_int, metavar="N", help="stop after N results (default: no limit)")
    p.add_argument(
        "--duration",
        type=positive_float,
        metavar="SECONDS",
        help="stop after this long (default: no limit; Ctrl-C or q in the window stops)",
    )
    p.add_argument(
        "--serve",
        metavar="HOST:PORT",
        nargs="?",
        const=DEFAULT_ADDRESS,
        help=f"web page with the annotated stream and live stats (PORT alone binds 127.0.0.1; 0.0.0.0:PORT for the "
        f"LAN; --serve alone: {DEFAULT_ADDRESS}; default: none)",
    )
    p.add_argument(
        "--camera-size",
        type=frame_size,
        metavar="WxH",
        help="size asked of a Pi camera or webcam (default 640x480, larger if the model needs it)",
    )
    p.add_argument(
        "--rotate",
        type=int,
        choices=(0, 90, 180, 270),
        default=0,
        help="turn frames clockwise by this many degrees, for a camera mounted sideways or upside down",
    )
    p.add_argument("--flip", choices=("horizontal", "vertical"), help="mirror frames after --rotate (default: none)")


def _add_predict(commands) -> None:
    p = commands.add_parser(
        "predict",
        help="label image files, folders and globs: one line per file",
        description="Label image files, folders (recursively) and globs. One line per file: JSON lines, CSV, or a "
        "table when stdout is a terminal. Unreadable files get a line saying why, and do not stop the "
        "others; the exit status is 1 only when no file could be read.",
        **with_examples(
            "python -m edge predict artifacts/v3_small photos/",
            "python -m edge predict artifacts/v3_small 'photos/**/*.jpg' --top-k 1 --csv > labels.csv",
            "python -m edge predict artifacts/v3_small cat.jpg --threshold 0.2",
        ),
    )
    p.add_argument("bundle", type=Path, help="bundle directory (model.pte + model.json)")
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="image files, folders and globs (quote a glob for recursive **; at least one)",
    )
    p.add_argument("--top-k", type=positive_int, default=5, help="labels per file, at most the model's labels")
    p.add_argument(
        "--threshold",
        type=probability,
        default=0.0,
        help="leave out labels scored below this, in [0, 1] (0: keep all)",
    )
    p.add_argument("--threads", type=positive_int, help="XNNPACK threads (default: the runtime's, one per core)")
    form = p.add_mutually_exclusive_group()
    form.add_argument(
        "--csv",
        dest="fmt",
        action="store_const",
        const="csv",
        help="CSV: path,label_1,score_1,...,error (default: a table on a terminal, else JSON lines)",
    )
    form.add_argument(
        "--jsonl",
        dest="fmt",
        action="store_const",
        const="jsonl",
        help='JSON lines {"path", "top": [{"label", "score"}]} or {"path", "error"}, '
        "also on a terminal (default: JSON lines unless stdout is a terminal)",
    )


def _add_eval(commands) -> None:
    p = commands.add_parser(
        "eval",
        help="accuracy of a bundle on an ImageFolder (DATADIR/<class>/*.jpg)",
        description="Top-1 and top-5 accuracy of a bundle on DATADIR/<class>/*, through the app's own "
        "preprocessing and runtime. The class folders must be the bundle's labels.",
        **with_examples(
            "python -m edge eval artifacts/v3_small data/val",
            "python -m edge eval artifacts/v3_small data/val --limit 1000 --json",
        ),
    )
    p.add_argument("bundle", type=Path, help="bundle directory (model.pte + model.json)")
    p.add_argument("datadir", type=Path, help="a folder per class, named as the bundle's labels")
    p.add_argument("--json", action="store_true", help='print one line {"top1", "top5", "n"} (default: a sentence)')
    p.add_argument(
        "--limit",
        type=positive_int,
        help="evaluate at most this many images, taken from every class in turn (default: all)",
    )


def _add_collect(commands) -> None:
    p = commands.add_parser(
        "collect",
        help="save frames from a camera, video or stream as training images, one folder per class",
        description="Collect training images through the app's own sources: a page with a button per class "
        "(--serve), or a headless run of one class (--label). Each frame is written once, atomically, as "
        "OUT/<class>/<time>-<n>.jpg; make qat DATA=OUT trains on the folder as it is.",
        **with_examples(
            "python -m edge collect --source picamera --classes cat,dog,nothing --out data/ --serve 0.0.0.0:8080",
            "python -m edge collect --source 0 --classes cat,dog --out data/ --label cat --count 200 --every 0.2",
        ),
    )
    p.add_argument("--source", required=True, help=f"{SOURCE_HELP} (required)")
    p.add_argument("--loop", action="store_true", help="replay a video file or directory forever (default: once)")
    p.add_argument("--classes", required=True, help="the class names, comma-separated: the folders (required)")
    p.add_argument("--out", type=Path, required=True, help="the folder that gets a folder per class (required)")
    p.add_argument(
        "--serve",
        help=f"HOST:PORT of the collecting page (default {DEFAULT_ADDRESS} without --label; 0.0.0.0:8080 for the LAN)",
    )
    p.add_argument("--label", help="capture this class without a page (default: the page)")
    p.add_argument("--count", type=positive_int, default=100, help="captures with --label")
    p.add_argument("--every", type=non_negative_float, default=0.2, help="seconds between captures with --label")
    p.add_argument("--quality", type=quality, default=QUALITY, help="JPEG quality, 1 to 100")


def quality(text: str) -> int:
    value = positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"want 1 to 100, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m edge",
        description="Run a model bundle on the edge: live frames, files, or accuracy.",
        **with_examples(
            "python -m edge run artifacts/v3_small --source picamera --serve 0.0.0.0:8080",
            "python -m edge predict artifacts/v3_small photos/",
            "python -m edge eval artifacts/v3_small data/val",
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run(commands)
    _add_predict(commands)
    _add_eval(commands)
    _add_collect(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):  # a label a strict or narrow locale cannot encode is escaped, not fatal
        sys.stdout.reconfigure(errors="backslashreplace")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # our own messages say what failed
    try:
        if args.command == "run":
            config = RunConfig(**{k: v for k, v in vars(args).items() if k != "command"})
            summary = run(config)
            print(format_summary(summary), file=sys.stderr if config.jsonl == "-" else sys.stdout)
        elif args.command == "predict":
            with load(args.bundle, args.threads) as model:
                counts = predict(model, args.paths, args.top_k, args.threshold, args.fmt)
            print(format_counts(counts), file=sys.stderr)
            if counts["labelled"] == 0:
                sys.exit(f"error: none of the {counts['files']} files could be read as an image")
        elif args.command == "collect":
            serve = args.serve or (None if args.label else DEFAULT_ADDRESS)
            classes = parse_classes(args.classes)
            saved = collect(
                args.source, classes, args.out, serve, args.label, args.count, args.every, args.loop, args.quality
            )
            print(f"saved {saved} images in {args.out}", file=sys.stderr)
        else:
            evaluate(args)
    except ValueError as e:  # a value the user gave (an address, a class list) that did not parse
        sys.exit(f"error: {e}")


def evaluate(args: argparse.Namespace) -> None:
    bundle = load_bundle(args.bundle)
    result = evaluate_folder(bundle, args.datadir, args.limit, progress=not args.json)
    if args.json:
        print(json.dumps({k: result[k] for k in ("top1", "top5", "n")}))
    else:
        print(
            f"{bundle.meta.name} on {args.datadir}: top-1 {100 * result['top1']:.2f}%  "
            f"top-5 {100 * result['top5']:.2f}%  ({result['n']} images, {result['skipped']} unreadable)"
        )
