"""LightningCLI entry point: ``python -m training fit --config configs/train.yaml ...``."""

import argparse
import re
import sys
from pathlib import Path

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from edge.command import UserError
from edge.files import blocking_file

from .checkpoint import CheckpointError, read_checkpoint
from .curves import CurvesPicture
from .data import DataError, ImageDataModule
from .models import WeightsError
from .module import ImageClassifier


class OneLineSummary(ModelSummary):
    """Lightning's model summary in one line: the per-layer table of a model with one child says nothing.

    It still runs Lightning's forward pass on the example input (for the FLOPs), so a QAT run's
    observers see what they saw with the full table.
    """

    @staticmethod
    def summarize(
        summary_data,
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict,
        total_flops: int,
        **kwargs,
    ) -> None:
        columns = dict(summary_data)
        rank_zero_info(
            f"model: {columns['Type'][0]}, {get_human_readable_count(total_parameters)} parameters "
            f"({get_human_readable_count(trainable_parameters)} trainable, {model_size:.1f} MB), "
            f"{get_human_readable_count(total_flops)} FLOPs on an input of {columns['In sizes'][0]}"
        )


class TrainingCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict:
        """fit and validate: the modules define no test or predict step (a bundle is tested with edge eval)."""
        return {k: v for k, v in LightningCLI.subcommands().items() if k in ("fit", "validate")}

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.resolution", "model.init_args.resolution")
        # Two callbacks, because ModelCheckpoint(save_last=True) only refreshes last.ckpt on epochs
        # that improve the monitored metric: "best" by val/top1, "last" after every epoch (for resume).
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.link_arguments("checkpoint.dirpath", "last_checkpoint.dirpath")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/top1",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best",
                "checkpoint.enable_version_counter": False,
                "last_checkpoint.filename": "last",
                "last_checkpoint.enable_version_counter": False,
            }
        )

    def parse_arguments(self, parser, args) -> None:
        """A missing or unreadable --ckpt_path is one line, before Lightning loads it with a traceback."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and path not in ("last", "best", "hpc", "registry"):
            read_checkpoint(path)
        if subcommand == "fit":
            check_epochs(self.config[subcommand])
            check_output_dirs(self.config[subcommand])


def check_epochs(config) -> None:
    """A fit has a number of epochs, given: the learning-rate schedule and QAT's freeze epochs are fractions of
    it, so Lightning's -1 (no limit) ends in a traceback at the first step and 0 in a run with no checkpoint.
    The configs hold none, so that the pipeline's recipe is the one place epochs are set."""
    epochs = config.get("trainer.max_epochs")
    if epochs is None:  # Lightning's own default, 1000, is nobody's plan
        raise argparse.ArgumentError(
            None, "give the number of epochs: --trainer.max_epochs=N (make qat takes it from its recipe)"
        )
    if epochs < 1:
        raise argparse.ArgumentError(None, f"--trainer.max_epochs={epochs}: give 1 or more epochs")


class OutputError(UserError):
    """Where a run writes is taken by something that is not a directory."""


def check_output_dirs(config) -> None:
    """The log and checkpoint directories are directories or absent: a file there is one line now, not
    Lightning's traceback at the first write."""
    for key in ("trainer.logger.init_args.save_dir", "checkpoint.dirpath"):
        try:
            value = config.get(key)
        except (AttributeError, KeyError, TypeError):  # no logger, or a list of them
            continue
        if value and (where := blocking_file(Path(str(value)))):
            raise OutputError(
                f"--{key}={value}: {where} exists and is not a directory; move it away or give another RUN="
            )


USER_ERRORS = (CheckpointError, DataError, WeightsError, OutputError)


def user_error(error: BaseException | None) -> Exception | None:
    """Our own error behind ``error``: jsonargparse wraps what a subclass-mode model raises."""
    while error is not None and not isinstance(error, USER_ERRORS):
        error = error.__cause__ or error.__context__
    return error


def argument_error(error: argparse.ArgumentError) -> str:
    """jsonargparse's nested report as one line: the innermost key path and what is wrong with its value."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    keys = [re.search(r'Parser key "([^"]+)"', line) for line in lines]
    found = [i for i, key in enumerate(keys) if key]
    if not found or found[-1] + 1 >= len(lines):
        return lines[0] if lines else "invalid arguments"
    path = ".".join(keys[i].group(1) for i in found)
    reason = lines[found[-1] + 1]
    if reason.startswith("Does not validate against any of the Union subtypes"):  # an Optional[...] flag
        errors = [line[2:] for line in lines if line.startswith("- ") and "NoneType" not in line]
        given = [line for line in lines if line.startswith("Given value:")]
        reason = " ".join([errors[0] if errors else reason] + [f"({value})" for value in given[:1]])
    return f"--{path}: {reason}"


EXAMPLES = "examples:\n" + "\n".join(
    f"  python -m training fit --config configs/train.yaml {example}"
    for example in (
        "--config configs/model/v3_small.yaml --config configs/data/procedural.yaml",
        "--config configs/model/v2.yaml --config configs/data/folder.yaml --data.source=data/train "
        "--trainer.max_epochs=20",
        "--config configs/qat.yaml --config configs/data/procedural.yaml "
        "--model.init_args.float_checkpoint=runs/v3_small/checkpoints/best.ckpt",
    )
)


class ExamplesHelp(DefaultHelpFormatter):
    """jsonargparse's help (every flag with its type and default), with the examples kept one per line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


HELP = {
    "formatter_class": ExamplesHelp,
    "epilog": EXAMPLES,
    "description": "Train a MobileNet (float or QAT) with Lightning: the YAML in configs/ sets the recipe and "
    "any key can be given as a flag. `python -m training fit --help` lists every flag with its "
    "default.",
    "fit": {
        "formatter_class": ExamplesHelp,
        "epilog": EXAMPLES,
        "description": "Train: float, or QAT with configs/qat.yaml. Each flag shows its type and default; "
        "--model.help CLASS lists a model's own.",
    },
}


def main(args: list[str] | None = None) -> None:
    try:
        TrainingCLI(
            ImageClassifier,
            ImageDataModule,
            subclass_mode_model=True,
            trainer_defaults={"callbacks": [OneLineSummary(), CurvesPicture()]},
            save_config_kwargs={"overwrite": True},
            args=args,
            parser_kwargs={"prog": "python -m training", "exit_on_error": False, **HELP},
        )
    except argparse.ArgumentError as e:
        print(f"error: {argument_error(e)} (python -m training fit --help lists the options)", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if user_error(e) is None:
            raise
        sys.exit(f"error: {user_error(e)}")
