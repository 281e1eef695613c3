"""The LightningModule for float classification training."""

import math
import sys
from functools import partial
from typing import Literal

import lightning as L
import torch
from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from .checkpoint import plain
from .data import RESOLUTION, UnitFraction
from .models import MODELS, classifier_head_prefix, create_model, load_weights
from .pretrained import IMAGENET, TRAINED_AT, imagenet_weights

Arch = Literal[tuple(MODELS)]


def warmup_cosine(step: int, start: int, warmup: int, total: int) -> float:
    """The learning-rate factor at ``step`` for parameters that start learning at ``start``: 0 before it, then
    a linear warm-up from 1% over ``warmup`` steps, then a cosine decay that reaches 0 at ``total``."""
    if step < start:
        return 0.0
    t, length = step - start, max(1, total - start)
    warmup = min(warmup, length - 1)
    if t < warmup:
        return 0.01 + 0.99 * t / warmup
    return 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, length - warmup)))


class ImageClassifier(L.LightningModule):
    """Cross-entropy with label smoothing, SGD or AdamW, linear warm-up then cosine decay per step.

    Fine-tuning from ``weights`` (a file, or ``imagenet``: torchvision's, downloaded once) trains the new
    classifier layer alone for ``head_epochs``, then the whole network with the backbone at
    ``backbone_lr_scale`` of the learning rate, warmed up again from where it joins: a random head's
    first gradients would otherwise run back through, and wreck, the features the weights learnt.

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
        weights: torchvision-format state dict (.pth) to start from, or imagenet (torchvision's, downloaded once);
            a classifier for other classes is re-initialised.
        head_epochs: epochs in which only the last classifier layer learns (fine-tuning; 0: all from the start).
        backbone_lr_scale: the learning rate of every layer but the last, as a share of lr (fine-tuning).
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
        arch: Arch,
        num_classes: PositiveInt = 1000,
        width_mult: PositiveFloat = 1.0,
        resolution: PositiveInt = RESOLUTION,
        dropout: UnitFraction = 0.2,
        weights: str | None = None,
        head_epochs: NonNegativeFloat = 0.0,
        backbone_lr_scale: ClosedUnitInterval = 1.0,
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
        self.model = create_model(arch, num_classes, width_mult, dropout)
        # Whether the last layer came from the weights too (their classes are ours): QAT needs a trained head.
        self.head_from_weights = weights is not None and load_weights(self.model, self._weights_file())
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

    def _weights_file(self) -> str:
        hp = self.hparams
        if hp.weights != IMAGENET:
            return hp.weights
        if hp.resolution != TRAINED_AT:
            print(
                f"note: the ImageNet weights were trained at {TRAINED_AT} px; fine-tuning at {hp.resolution} px "
                "works, but starts further from what they learnt (docs/training-and-qat.md)",
                file=sys.stderr,
            )
        return str(imagenet_weights(hp.arch, hp.width_mult))

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

    def _head(self) -> str | None:
        """The last classifier layer's parameter prefix when fine-tuning gives it a schedule of its own, else
        None (one schedule for all; QAT's exported graph has no classifier Sequential to split)."""
        hp = self.hparams
        split = hp.head_epochs > 0 or hp.backbone_lr_scale < 1
        if not split or not isinstance(getattr(self.model, "classifier", None), nn.Sequential):
            return None
        return f"model.{classifier_head_prefix(self.model)}."

    def configure_optimizers(self):
        """The backbone's parameters and the head's, each with and without weight decay (none on BN and biases:
        torchvision's MobileNet recipe); the backbone waits ``head_epochs``, then warms up at its own scale."""
        hp, head = self.hparams, self._head()
        total = max(1, self.trainer.estimated_stepping_batches)
        per_epoch = total / max(1, self.trainer.max_epochs)
        warmup, head_only = int(hp.warmup_epochs * per_epoch), min(total - 1, int(hp.head_epochs * per_epoch))
        groups, schedules = [], []
        for in_head, scale, start in ((False, hp.backbone_lr_scale, head_only), (True, 1.0, 0)):
            params = [p for n, p in self.named_parameters() if (head is not None and n.startswith(head)) == in_head]
            for decay in (True, False):
                chosen = [p for p in params if (p.ndim > 1) == decay]
                if chosen:
                    groups.append({"params": chosen, "weight_decay": hp.weight_decay if decay else 0.0})
                    groups[-1]["lr"] = hp.lr * scale
                    schedules.append(partial(warmup_cosine, start=start, warmup=warmup, total=total))
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=True)
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
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
