"""LightningCLI entry point: ``python -m training fit --config configs/train.yaml ...``."""
import sys

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from .checkpoint import CheckpointError
from .data import DataError, ImageDataModule
from .models import WeightsError
from .module import ImageClassifier


class TrainingCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.resolution", "model.init_args.resolution")
        # Two callbacks, because ModelCheckpoint(save_last=True) only refreshes last.ckpt on epochs
        # that improve the monitored metric: "best" by val/top1, "last" after every epoch (for resume).
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.link_arguments("checkpoint.dirpath", "last_checkpoint.dirpath")
        parser.set_defaults({
            "checkpoint.monitor": "val/top1", "checkpoint.mode": "max", "checkpoint.filename": "best",
            "checkpoint.enable_version_counter": False,
            "last_checkpoint.filename": "last", "last_checkpoint.enable_version_counter": False,
        })


USER_ERRORS = (CheckpointError, DataError, WeightsError)


def user_error(error: BaseException | None) -> Exception | None:
    """Our own error behind ``error``: jsonargparse wraps what a subclass-mode model raises."""
    while error is not None and not isinstance(error, USER_ERRORS):
        error = error.__cause__ or error.__context__
    return error


def main(args: list[str] | None = None) -> None:
    try:
        TrainingCLI(
            ImageClassifier, ImageDataModule, subclass_mode_model=True,
            save_config_kwargs={"overwrite": True}, args=args,
        )
    except Exception as e:
        if user_error(e) is None:
            raise
        sys.exit(f"error: {user_error(e)}")


if __name__ == "__main__":
    main()
