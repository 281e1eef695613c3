"""The stages of a recipe, in this process: float training, QAT, export. Each is the project's own command
(``python -m training fit``, ``python -m export``) called with the arguments the recipe implies."""

import sys
from pathlib import Path
from unittest import mock

from export.cli import main as export_main
from training.cli import main as train_main

from .recipe import Recipe

CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # absolute: the pipeline runs from any directory


def data_args(recipe: Recipe) -> list[str]:
    """The data config for the recipe's data: procedural shapes, the CIFAR-10 archive, or a folder per class."""
    kind = "procedural" if not recipe.data else "cifar10" if recipe.data == "cifar10" else "folder"
    return [
        "--config",
        str(CONFIGS / "data" / f"{kind}.yaml"),
        *([f"--data.source={recipe.data}"] if recipe.data else []),
    ]


def common_args(recipe: Recipe) -> list[str]:
    seed = [f"--seed_everything={recipe.seed}"] if recipe.seed is not None else []
    return [
        *data_args(recipe),
        f"--data.resolution={recipe.resolution}",
        f"--model.init_args.arch={recipe.model}",
        f"--model.init_args.width_mult={recipe.width:g}",
        *seed,
    ]


def float_args(recipe: Recipe, run: Path) -> list[str]:
    weights = [f"--model.init_args.weights={recipe.weights}"] if recipe.weights else []
    return [
        "fit",
        "--config",
        str(CONFIGS / "train.yaml"),
        "--config",
        str(CONFIGS / "model" / f"{recipe.model}.yaml"),
        *common_args(recipe),
        f"--trainer.max_epochs={recipe.epochs}",
        *weights,
        f"--trainer.logger.init_args.save_dir={run}",
        f"--checkpoint.dirpath={run}/checkpoints",
        *recipe.args,
        *recipe.float_args,
    ]


def qat_args(recipe: Recipe, run: Path) -> list[str]:
    """QAT from a float checkpoint, always: the given one, or the float run's (trained or fine-tuned from
    weights). It is the distillation teacher and the model of export's PTQ and fp32 baselines."""
    start = f"--model.init_args.float_checkpoint={recipe.ckpt or run / 'checkpoints' / 'best.ckpt'}"
    return [
        "fit",
        "--config",
        str(CONFIGS / "train.yaml"),
        "--config",
        str(CONFIGS / "qat.yaml"),
        *common_args(recipe),
        f"--trainer.max_epochs={recipe.qat_epochs}",
        start,
        f"--trainer.logger.init_args.save_dir={run}/qat",
        f"--checkpoint.dirpath={run}/qat/checkpoints",
        *recipe.args,
    ]


def export_args(recipe: Recipe, run: Path, out: Path) -> list[str]:
    return [str(run / "qat" / "checkpoints" / "best.ckpt"), "--out", str(out), "--candidates", *recipe.export_args]


def train(argv: list[str]) -> None:
    """``python -m training`` with ``argv``, in this process. LightningCLI takes ``argv`` as given and warns
    when the process's own command line (the pipeline's flags) has arguments too, so it sees none there."""
    with mock.patch.object(sys, "argv", ["python -m training"]):
        train_main(argv)


def stage(number: int, total: int, text: str) -> None:
    print(f"== {number}/{total}: {text}", file=sys.stderr, flush=True)


def run(recipe: Recipe, run_dir: Path, out: Path, float_only: bool = False) -> None:
    """Every stage the recipe asks for; a stage that fails ends the run with its own one-line error."""
    trains_float = not recipe.ckpt
    total = 1 if float_only else 2 + trains_float
    if trains_float or float_only:
        start = f"fine-tuning {recipe.weights}" if recipe.weights else "training"
        stage(1, total, f"float {start} ({recipe.model}, {recipe.epochs} epochs, {recipe.resolution} px)")
        train(float_args(recipe, run_dir))
        if float_only:
            return
    stage(total - 1, total, f"quantization-aware training ({recipe.qat_epochs} epochs)")
    train(qat_args(recipe, run_dir))
    stage(
        total,
        total,
        "convert to int8 (QAT, and PTQ to compare), lower to ExecuTorch/XNNPACK, verify, compare, write the bundles",
    )
    export_main(export_args(recipe, run_dir, out))
