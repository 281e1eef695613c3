"""Turning a checkpoint into the PyTorch models the exporter compares: float, QAT, converted int8, PTQ."""
import copy

import torch
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

from training.checkpoint import CheckpointError, read_checkpoint
from training.module import ImageClassifier
from training.qat import QATClassifier, prepare_ptq

CLASSES = {"training.module.ImageClassifier": ImageClassifier, "training.qat.QATClassifier": QATClassifier}


def load_module(path: str) -> tuple[ImageClassifier, dict]:
    """Rebuild the LightningModule a checkpoint was written by, in eval mode, with its weights."""
    checkpoint = read_checkpoint(path)
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    cls = CLASSES.get(checkpoint["hyper_parameters"].get("_class_path"), ImageClassifier)
    if "data" not in checkpoint:
        raise CheckpointError(f"{path} has no data description (labels, input); re-train with `make train`")
    if cls is QATClassifier:
        hparams.update(float_checkpoint=None, weights=None)  # the state dict below has the trained weights
    else:
        hparams.update(weights=None)
    module = cls(**hparams)
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval(), checkpoint


@torch.no_grad()
def ptq(model: torch.nn.Module, resolution: int, loader) -> torch.fx.GraphModule:
    """Post-training quantization with the same quantizer, its observers calibrated on ``loader``."""
    prepared = prepare_ptq(copy.deepcopy(model), resolution)
    for batch, _ in loader:
        prepared(batch)
    return convert_pt2e(prepared)
