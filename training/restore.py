"""A checkpoint back as the LightningModule that wrote it: above ``module`` and ``qat``, which import
``checkpoint`` (a leaf), so the tree has no import cycle."""

from pathlib import Path

from .checkpoint import CheckpointError, read_checkpoint
from .module import ImageClassifier
from .qat import QATClassifier


def load_module(path: str | Path):
    """The LightningModule a checkpoint was written by (float or QAT), rebuilt in eval mode with its
    weights, and the checkpoint."""
    checkpoint = read_checkpoint(path)
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    classes = {"training.module.ImageClassifier": ImageClassifier, "training.qat.QATClassifier": QATClassifier}
    cls = classes.get(checkpoint["hyper_parameters"].get("_class_path"), ImageClassifier)
    if "data" not in checkpoint:
        raise CheckpointError(f"{path} has no data description (labels, input); re-train with `make train`")
    hparams.update(weights=None)  # the state dict below has the trained weights
    if cls is QATClassifier:
        hparams.update(float_checkpoint=None)
    module = cls(**hparams)
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval(), checkpoint
