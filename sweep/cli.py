"""Sweep architecture, width α and resolution ρ: a verified int8 bundle per point, its accuracy, MACs, size and
latency on the device, the Pareto fronts, and the best bundle within a latency budget.

    python -m sweep --models v3_small v1 --widths 0.5 1.0 --res 64 [--device local] [--budget-ms 10]

Each point is `python -m pipeline` with the sweep's recipe (float training, QAT, export; configs/recipes/sweep.yaml
by default) and then `python -m deploy DEVICE` (the device tests).
A point that is done is skipped when the same sweep runs again; one that fails is reported, and the rest go on.
"""

import argparse
import json
import os
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import partial
from pathlib import Path

from tqdm import tqdm

from deploy.profile import ProfileError, load_device
from edge.bundle import BundleError
from edge.command import positive_float, positive_int, with_examples
from edge.files import blocking_file, write_atomic
from pipeline.recipe import RecipeError, load_recipe
from pipeline.recipe import names as recipe_names
from training.models import MODELS
from training.pretrained import IMAGENET

from . import report
from .grid import Layout, Point, Recipe, grid
from .steps import PointFailed, build, measure, stop_all

BUILT, FAILED = "built.json", "failed.json"


def latency_file(device: str) -> str:
    return f"latency-{device}.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sweep",
        description=__doc__.split("\n\n")[0],
        **with_examples(
            "python -m sweep --models v3_small v1 --widths 0.5 1.0 --res 64",
            "python -m sweep --data path/to/train --models v3_small v3_large --widths 0.75 1.0 "
            "--res 64 96 --epochs 8 --qat-epochs 2 --budget-ms 10",
            "python -m sweep ... --device rpi5 --deploy-args '--host you@raspberrypi.local'",
        ),
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=list(MODELS),
        metavar="MODEL",
        help=f"architectures, of {', '.join(MODELS)} (default: the recipe's grid)",
    )
    parser.add_argument(
        "--widths",
        nargs="+",
        type=positive_float,
        metavar="ALPHA",
        help="width multipliers α (default: the recipe's grid)",
    )
    parser.add_argument(
        "--recipe",
        default="sweep",
        help=f"the points' recipe, configs/recipes/NAME.yaml: {', '.join(recipe_names())}",
    )
    parser.add_argument(
        "--res",
        nargs="+",
        type=positive_int,
        metavar="PIXELS",
        help="input resolutions ρ in pixels (default: the recipe's grid)",
    )
    parser.add_argument(
        "--data", help="an ImageFolder directory, cifar10, or empty for procedural shapes (default: the recipe's)"
    )
    parser.add_argument("--epochs", type=positive_int, help="float epochs per point (default: the recipe's)")
    parser.add_argument("--qat-epochs", type=positive_int, help="QAT epochs per point (default: the recipe's)")
    parser.add_argument(
        "--weights",
        default="",
        help="weights each point's float run fine-tunes: imagenet, or a torchvision-format file with {model} and "
        "{width} filled in; empty: train from scratch",
    )
    parser.add_argument("--args", default="", help="extra LightningCLI arguments for every run, as make's ARGS=")
    parser.add_argument(
        "--device",
        default="local",
        help="the device profile latency is measured on: local (this machine), rpi5, rpi5-emu",
    )
    parser.add_argument("--deploy-args", default="", help="extra `python -m deploy` options, e.g. '--host you@pi'")
    parser.add_argument(
        "--export-args",
        default="",
        help="extra `python -m export` options for every point, as make's EXPORT_ARGS=, e.g. '--min-agreement 0.97' ",
    )
    parser.add_argument(
        "--budget-ms",
        type=positive_float,
        help="copy the most accurate bundle whose p90 latency is within this to OUT/best (default: no pick)",
    )
    parser.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="points built at once, each with its share of the cores; latency is always measured one point at a time",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("artifacts/sweep"),
        help="points, table, plots and best/",
    )
    parser.add_argument("--runs", type=Path, default=Path("runs/sweep"), help="training runs, a folder per point")
    return parser


def done(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def build_all(
    points: list[Point], recipe: Recipe, layout: Layout, jobs: int, failed: dict[str, str], export_args: str = ""
) -> None:
    """The pipeline for each point not built yet, ``jobs`` at a time; failures are noted in ``failed``."""
    todo = [p for p in points if done(layout.point(p, recipe) / BUILT) is None]
    if len(todo) < len(points):
        print(f"{len(points) - len(todo)} of {len(points)} points already built: skipped", file=sys.stderr)
    if not todo:
        return
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    print(
        f"building {len(todo)} of {len(points)} points, {jobs} at a time; logs: {layout.out}/points/<point>/build.log",
        file=sys.stderr,
    )
    pool = ThreadPoolExecutor(jobs)
    try:
        with tqdm(total=len(todo), desc="building", unit="point") as bar:
            futures = {pool.submit(build, p, recipe, layout, threads, export_args): p for p in todo}
            for future in as_completed(futures):
                point = futures[future]
                _record(layout.point(point, recipe), BUILT, future.result, point.name(recipe), failed, bar)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # on Ctrl-C: no point starts after it


def measure_all(
    points: list[Point], recipe: Recipe, layout: Layout, device: str, deploy_args: list[str], failed: dict[str, str]
) -> None:
    """The device tests on each built point without figures for ``device``, one at a time (a point being built
    meanwhile would slow the one being timed)."""
    todo = [
        p
        for p in points
        if done(layout.point(p, recipe) / BUILT) is not None
        and done(layout.point(p, recipe) / latency_file(device)) is None
    ]
    if not todo:
        return
    print(
        f"measuring {len(todo)} of {len(points)} points on {device}; logs: "
        f"{layout.out}/points/<point>/deploy-{device}.log",
        file=sys.stderr,
    )
    with tqdm(total=len(todo), desc=f"deploy {device}", unit="point") as bar:
        for point in todo:
            _record(
                layout.point(point, recipe),
                latency_file(device),
                partial(measure, point, recipe, layout, device, deploy_args),
                point.name(recipe),
                failed,
                bar,
            )


def _record(folder: Path, name: str, step, point: str, failed: dict[str, str], bar: tqdm) -> None:
    """``step()``'s figures into ``folder/name``, or its failure into failed.json and ``failed``."""
    try:
        figures = step()
    except (PointFailed, BundleError, OSError, ValueError, KeyError) as e:
        failed[point] = str(e)
        step_name = "build" if name == BUILT else name.removesuffix(".json")
        write_atomic(folder / FAILED, json.dumps({"step": step_name, "error": str(e)}, indent=2) + "\n")
        bar.write(f"{point}: FAILED: {e}", file=sys.stderr)
    else:
        write_atomic(folder / name, json.dumps(figures, indent=2) + "\n")
        (folder / FAILED).unlink(missing_ok=True)
        bar.write(f"{point}: {name.removesuffix('.json')} done", file=sys.stderr)
    bar.update(1)


def rows_of(points: list[Point], recipe: Recipe, layout: Layout, device: str) -> list[dict]:
    rows = []
    for point in points:
        folder = layout.point(point, recipe)
        built = done(folder / BUILT)
        if built is not None:
            rows.append(built | {"point": point.name(recipe)} | (done(folder / latency_file(device)) or {}))
    return rows


def write_report(rows: list[dict], failed: dict[str, str], args: argparse.Namespace, recipe: Recipe) -> str:
    """report.md and the two front plots in OUT; returns the table."""
    text = report.table(rows, failed)
    data = recipe.data or "procedural shapes"
    emulated = (
        " (EMULATED device: the latency orders models, it does not predict real hardware)"
        if any(r.get("emulated") for r in rows)
        else ""
    )
    plots = []
    for cost, (key, _, name) in report.FRONTS.items():
        if any(r.get(key) is not None for r in rows):
            out = report.plot_front(
                rows, cost, args.out / f"front-{cost}.png", f"int8 .pte on {data}: accuracy vs {name}"
            )
            plots.append(f"![accuracy vs {name}]({out.name})")
    write_atomic(
        args.out / "report.md",
        "\n\n".join(
            [
                f"# Sweep on {data}: {recipe.epochs} float + {recipe.qat_epochs} QAT epochs, latency on {args.device}"
                f"{emulated}",
                text,
                *plots,
            ]
        )
        + "\n",
    )
    return text


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # a wrong profile name or data path is one line now, not after hours of training
        load_device(args.device)
        deploy_args = shlex.split(args.deploy_args)
    except (ProfileError, ValueError) as e:
        parser.error(str(e))
    for flag, path in (("--out", args.out), ("--runs", args.runs)):
        if where := blocking_file(path.absolute()):
            parser.error(f"{flag} {path}: {where} exists and is not a directory")
    try:
        base = load_recipe(args.recipe)
    except RecipeError as e:
        parser.error(str(e))
    data = base.data if args.data is None else args.data
    if data and data != "cifar10" and not Path(data).is_dir():
        parser.error(f"--data {data} is not a directory (an ImageFolder: one folder per class) or cifar10")
    data = str(Path(data).resolve()) if data and data != "cifar10" else data
    # A file absolute, as every path a point gets; imagenet as it is.
    weights = str(Path(args.weights).absolute()) if args.weights not in ("", IMAGENET) else args.weights
    recipe = Recipe(
        data, args.epochs or base.epochs, args.qat_epochs or base.qat_epochs, weights, args.args, args.recipe, base.args
    )
    args.models = args.models or list(base.sweep_models or [base.model])
    args.widths = args.widths or list(base.sweep_widths or [base.width])
    args.res = args.res or list(base.sweep_resolutions or [base.resolution])
    layout, points = Layout(args.out.resolve(), args.runs.resolve()), grid(args.models, args.widths, args.res)
    failed: dict[str, str] = {}
    print(
        f"sweep: {len(points)} points ({' '.join(args.models)} × α {' '.join(f'{w:g}' for w in args.widths)} × "
        f"ρ {' '.join(map(str, args.res))})",
        file=sys.stderr,
    )
    try:
        build_all(points, recipe, layout, args.jobs, failed, args.export_args)
        measure_all(points, recipe, layout, args.device, deploy_args, failed)
    except KeyboardInterrupt:
        stop_all()
        print("\ninterrupted: finished points are kept; run the same command again to go on", file=sys.stderr)
        sys.exit(130)
    rows = rows_of(points, recipe, layout, args.device)
    print(write_report(rows, failed, args, recipe))
    print(f"report: {args.out / 'report.md'}", file=sys.stderr)
    if args.budget_ms:
        pick_best(rows, args)
    if failed:
        sys.exit(f"{len(failed)} of {len(points)} points failed: see the table; run again to retry them")


def pick_best(rows: list[dict], args: argparse.Namespace) -> None:
    best = report.pick(rows, args.budget_ms)
    if best is None:
        print(
            f"no point's p90 latency is within {args.budget_ms:g} ms on {args.device}: nothing copied", file=sys.stderr
        )
        return
    report.copy_bundle(Path(best["bundle"]), args.out / "best")
    print(
        f"best within {args.budget_ms:g} ms (p90) on {args.device}: {best['name']}, top-1 "
        f"{100 * best['top1']:.2f}%, p90 {best['p90']:.2f} ms -> {args.out / 'best'}/ "
        f"(make deploy BUNDLE={args.out / 'best'})"
    )
