"""The LightningModule for float classification training."""

from typing import Literal

import lightning as L
import torch
from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, PositiveFloat, PositiveInt, restricted_number_type
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from .checkpoint import plain
from .data import RESOLUTION
from .models import MODELS, create_model

Arch = Literal[tuple(MODELS)]
UnitFraction = restricted_number_type("UnitFraction", float, [(">=", 0), ("<", 1)])  # [0, 1)


class ImageClassifier(L.LightningModule):
    """Cross-entropy with label smoothing, SGD or AdamW, linear warm-up then cosine decay per step.

    ``bn_momentum`` overrides the architecture's BatchNorm momentum: V3's 0.01 suits
    ImageNet's thousands of steps per epoch, but on short runs the running statistics
    lag so far behind that validation sits at chance for several epochs.

    Argument types are jsonargparse's restricted types, so LightningCLI rejects an out-of-range value
    with one line naming the flag. Checkpoints also carry what the exporter needs (``checkpoint["data"]``: labels
    and the eval input spec) and the global RNG state, so resuming is exact.

    Args:
        arch: v1, v2, v3_small or v3_large.
        num_classes: output classes (set from the data).
        width_mult: the width multiplier alpha: channels of every layer scaled by it.
        resolution: the input size (set from the data); the summary's example input.
        dropout: dropout before the classifier.
        weights: torchvision-format state dict (.pth) to start from; a different classifier is re-initialised.
        bn_momentum: BatchNorm momentum for every layer (default: the architecture's).
        label_smoothing: cross-entropy label smoothing.
        optimizer: sgd or adamw.
        lr: peak learning rate, after warm-up.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        momentum: SGD momentum.
        warmup_epochs: linear warm-up length, then cosine decay to 0.
    """

    phase = "float"  # its name in the training curves

    def __init__(
        self,
        arch: Arch = "v3_small",
        num_classes: PositiveInt = 1000,
        width_mult: PositiveFloat = 1.0,
        resolution: PositiveInt = RESOLUTION,
        dropout: UnitFraction = 0.2,
        weights: str | None = None,
        bn_momentum: ClosedUnitInterval | None = None,
        label_smoothing: UnitFraction = 0.1,
        optimizer: Literal["sgd", "adamw"] = "adamw",
        lr: PositiveFloat = 2e-3,
        weight_decay: NonNegativeFloat = 0.02,
        momentum: UnitFraction = 0.9,
        warmup_epochs: NonNegativeFloat = 1.0,
    ) -> None:
        super().__init__()
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {optimizer!r}")
        self.save_hyperparameters()
        self.model = create_model(arch, num_classes, width_mult, dropout, weights)
        if bn_momentum is not None:
            for m in self.model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.momentum = bn_momentum
        self.example_input_array = torch.zeros(2, 3, resolution, resolution)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # micro: the fraction of images right, the usual meaning of top-1 (torchmetrics defaults to macro)
        self.train_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.training_loss(images, logits, labels)
        self.train_top1(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/top1", self.train_top1, on_step=False, on_epoch=True)
        return loss

    def training_loss(self, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss minimised (label-smoothed cross-entropy); QAT adds distillation from the float model."""
        return self.criterion(logits, labels)

    def validation_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.val_top1(logits, labels)
        self.val_top5(logits, labels)
        self.log("val/loss", self.criterion(logits, labels), sync_dist=True)
        self.log("val/top1", self.val_top1, prog_bar=True)
        self.log("val/top5", self.val_top5)

    def configure_optimizers(self):
        hp = self.hparams
        # No weight decay on BN and biases (torchvision's MobileNet recipe).
        decay = [p for p in self.parameters() if p.ndim > 1]
        no_decay = [p for p in self.parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=True)
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        total = max(1, self.trainer.estimated_stepping_batches)
        warmup = min(total - 1, int(hp.warmup_epochs * total / max(1, self.trainer.max_epochs)))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup)
        scheduler = (
            cosine
            if warmup <= 0
            else torch.optim.lr_scheduler.SequentialLR(
                optimizer, [torch.optim.lr_scheduler.LinearLR(optimizer, 0.01, 1.0, warmup), cosine], [warmup]
            )
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            if key in checkpoint:
                checkpoint[key] = plain(checkpoint[key])
        checkpoint["rng_state"] = torch.get_rng_state()
        datamodule = self.trainer.datamodule
        if datamodule is not None:
            checkpoint["data"] = {"labels": list(datamodule.labels), "input": datamodule.input_spec.to_json()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng_state" in checkpoint and self._trainer is not None:
            torch.set_rng_state(checkpoint["rng_state"])
