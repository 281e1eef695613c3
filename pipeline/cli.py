"""python -m pipeline [--recipe NAME] [overrides]: float training -> QAT -> int8 bundle, verified and compared.

What make qat runs. The recipe (configs/recipes/NAME.yaml) holds every default; each flag overrides one. The
recipe is "default", or "finetune" when --weights is given and no recipe is named. The float model is
trained first (fine-tuned, from --weights), unless --ckpt gives one.
"""

import argparse
import shlex
import sys
from pathlib import Path

from edge.bundle import sole_writer
from edge.command import positive_float, positive_int, with_examples

from .recipe import load_recipe, names
from .run import run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description=__doc__.split("\n\n")[0],
        **with_examples(
            "python -m pipeline",
            "python -m pipeline --model v2 --data data/train --res 96 --epochs 20",
            "python -m pipeline --recipe bench-qat --data cifar10 --seed 1 --out artifacts/bench-qat-seed1",
            "python -m pipeline --ckpt runs/v3_small/checkpoints/best.ckpt --qat-epochs 3",
            "python -m pipeline --weights imagenet --data photos/",
        ),
    )
    parser.add_argument(
        "--recipe",
        help=f"configs/recipes/NAME.yaml: {', '.join(names())} (default: finetune with --weights, else default)",
    )
    parser.add_argument("--model", help="v1, v2, v3_small or v3_large (default: the recipe's)")
    parser.add_argument(
        "--data", help="empty: procedural shapes; cifar10; or a folder per class (default: the recipe's)"
    )
    parser.add_argument("--res", type=positive_int, help="input size in pixels (default: the recipe's)")
    parser.add_argument("--width", type=positive_float, help="width multiplier alpha (default: the recipe's)")
    parser.add_argument("--epochs", type=positive_int, help="float training epochs (default: the recipe's)")
    parser.add_argument("--qat-epochs", type=positive_int, help="QAT epochs (default: the recipe's)")
    parser.add_argument("--ckpt", help="a float checkpoint to start QAT from: no float training (default: train)")
    parser.add_argument(
        "--weights",
        help="imagenet (torchvision's, downloaded once; v2, v3_small, v3_large) or a torchvision-format file: "
        "the float run fine-tunes them (default: train from scratch)",
    )
    parser.add_argument("--seed", type=int, help="--seed_everything for both runs (default: the configs')")
    parser.add_argument("--args", default="", help="extra LightningCLI arguments, one string")
    parser.add_argument("--export-args", default="", help="extra python -m export options, one string")
    parser.add_argument("--run", type=Path, help="training runs' directory (default runs/MODEL)")
    parser.add_argument("--out", type=Path, help="the bundle's directory (default artifacts/MODEL)")
    parser.add_argument(
        "--float-only",
        action="store_true",
        help="stop after float training, as make train does (default: all three stages)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        name = args.recipe or ("finetune" if args.weights else "default")
        if not args.recipe and args.weights:
            print(
                "recipe: finetune (configs/recipes/finetune.yaml), for weights; --recipe picks another", file=sys.stderr
            )
        base = load_recipe(name)
        recipe = base.replace(
            model=args.model,
            data=args.data,
            resolution=args.res,
            width=args.width,
            epochs=args.epochs,
            qat_epochs=args.qat_epochs,
            ckpt=args.ckpt,
            weights=args.weights,
            seed=args.seed,
            args=(*base.args, *shlex.split(args.args)),
            export_args=(*base.export_args, *shlex.split(args.export_args)),
        )
    except ValueError as e:
        sys.exit(f"error: {e}")
    out = args.out or Path("artifacts") / recipe.model
    with sole_writer(out):  # a second make qat to the same OUT stops at its start, not after training
        run(recipe, args.run or Path("runs") / recipe.model, out, args.float_only)
