"""LightningCLI entry point: ``python -m training fit --config configs/train.yaml ...``."""
import sys

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from .data import DataError, ImageDataModule
from .models import WeightsError
from .module import ImageClassifier


class TrainingCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/top1", "checkpoint.mode": "max",
            "checkpoint.filename": "best", "checkpoint.save_last": True,
        })


def main(args: list[str] | None = None) -> None:
    try:
        TrainingCLI(
            ImageClassifier, ImageDataModule, subclass_mode_model=True,
            save_config_kwargs={"overwrite": True}, args=args,
        )
    except (DataError, WeightsError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
