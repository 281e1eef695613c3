"""Quantization-aware training in the PyTorch 2 export flow, inside Lightning.

The float model is exported with a dynamic batch, prepared with ExecuTorch's
XNNPACKQuantizer (symmetric int8, per-channel weights) and trained with fake
quantization; ``export`` later calls ``convert_pt2e`` and lowers it. Training
starts where PTQ ends (activation ranges calibrated on training images) and
learns from the frozen float model as well as from the labels (distillation).

Four things torchao 0.18 gets wrong are repaired here. For MobileNetV3, its QAT
conv-BN pattern and its train/eval switch rebuild ``batch_norm`` with eps=1e-5 and
momentum=0.1 (V3 uses 0.001 and 0.01), so the float model's values are written
back after every graph rewrite; ``convert_pt2e`` folds BN into the conv with
eps=1e-5 too (see :meth:`QATClassifier.convert`); and the exported graph ignores
``.train()``/``.eval()``, so :meth:`QATClassifier.train` routes Lightning's mode
switches to ``move_exported_model_to_train/eval``. For every model, the quantizer's fused weight
fake-quant trains on other scales than ``convert_pt2e`` quantizes with (see :func:`quantization_config`).
"""

import copy
from dataclasses import replace
from functools import partial, reduce
from typing import Literal

import torch
import torch.nn.functional as F
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
    XNNPACKQuantizer,
    get_symmetric_quantization_config,
)
from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.export import Dim
from torchao.quantization.pt2e import (
    FakeQuantize,
    FakeQuantizeBase,
    disable_fake_quant,
    disable_observer,
    enable_fake_quant,
    enable_observer,
    move_exported_model_to_eval,
    move_exported_model_to_train,
)
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer import QuantizationConfig

from .checkpoint import check_architecture, read_checkpoint
from .data import RESOLUTION
from .models import WeightsError
from .module import Arch, ImageClassifier

BATCH = Dim("batch", min=1, max=4096)
# The eps torchao's convert_pt2e folds BN with, whatever the model's BN uses.
CONVERT_FOLD_EPS = 1e-5


def quantization_config(qat: bool) -> QuantizationConfig:
    """Symmetric int8 with per-channel weights: per-tensor weights wreck depthwise layers.

    QAT fake-quantizes its weights with FakeQuantize, not the quantizer's fused module. The fused
    kernel derives a weight's scale with another formula than the observer ``convert_pt2e`` asks: 0.4%
    off for a symmetric [-127, 127] range (torchao #4824), and with a non-zero zero point for a channel
    of one sign, which XNNPACK's int8 weights cannot have. The int8 weights then lie on another grid than
    the trained one.
    """
    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    if not qat:
        return config
    weight = FakeQuantize.with_args(**config.weight.observer_or_fake_quant_ctr.p.keywords)
    return replace(config, weight=replace(config.weight, observer_or_fake_quant_ctr=weight))


def xnnpack_quantizer(qat: bool) -> XNNPACKQuantizer:
    return XNNPACKQuantizer().set_global(quantization_config(qat))


def export_float(model: nn.Module, resolution: int) -> torch.fx.GraphModule:
    """Export with a dynamic batch so the prepared graph runs at any batch size (executorch #13919)."""
    example = torch.randn(2, 3, resolution, resolution)
    return torch.export.export(model.eval(), (example,), dynamic_shapes=({0: BATCH},)).module()


def batchnorm_settings(model: nn.Module) -> tuple[float, float]:
    """The (eps, momentum) all BN layers of a zoo model share."""
    settings = {(m.eps, m.momentum) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    if len(settings) != 1:
        raise ValueError(f"expected one BatchNorm setting, found {sorted(settings)}")
    return settings.pop()


def set_batchnorm_args(graph: torch.fx.GraphModule, eps: float, momentum: float, frozen: bool) -> None:
    """Put the float model's eps/momentum back into every BN node; ``frozen`` uses running statistics."""
    for node in graph.graph.nodes:
        if node.target == torch.ops.aten.batch_norm.default:
            args = list(node.args)  # input, weight, bias, mean, var, training, momentum, eps, cudnn
            args[6], args[7] = momentum, eps
            if frozen:
                args[5] = False
            node.args = tuple(args)
        elif (
            node.target == torch.ops.aten.add.Tensor
            and isinstance(node.args[1], float)
            and getattr(node.args[0], "op", None) == "get_attr"
            and node.args[0].target.endswith("running_var")
        ):
            node.args = (node.args[0], eps)  # running_std = sqrt(var + eps) in the fused conv-BN scale
    graph.recompile()


@torch.no_grad()
def ptq(model: nn.Module, resolution: int, loader) -> torch.fx.GraphModule:
    """Post-training quantization (the baseline QAT is compared with) with the same quantizer, its
    observers calibrated on ``loader``; ``model`` is left untouched."""
    prepared = prepare_pt2e(export_float(copy.deepcopy(model), resolution), xnnpack_quantizer(qat=False))
    for batch, _ in loader:
        prepared(batch)
    return convert_pt2e(prepared)


@torch.no_grad()
def observe_weights(graph: torch.fx.GraphModule, resolution: int) -> None:
    """Give each weight fake-quant its range now: unlike the fused module, FakeQuantize has no
    per-channel scale until it observes, and its input (the weight, BN folded in) needs no data.
    Call with ``graph`` in eval mode; its observers are left off."""
    graph.apply(disable_observer)
    for quantizer in graph.modules():
        if isinstance(quantizer, FakeQuantizeBase) and quantizer.is_per_channel:
            quantizer.enable_observer()
    graph(torch.zeros(1, 3, resolution, resolution))
    graph.apply(disable_observer)


@torch.no_grad()
def calibrate(graph: torch.fx.GraphModule, loader, device: torch.device | str = "cpu") -> int:
    """Start every activation fake-quant from the scale PTQ would choose on ``loader``'s images.

    Each one's input is fed to PTQ's own activation observer (the quantizer's non-QAT config) with
    quantization off, and its scale and zero point, and the range they span, become the fake-quant's:
    QAT's moving averages would otherwise start from one batch. Call with ``graph`` in eval mode, so
    BN uses its running statistics as PTQ's folded BN does; fake quantization is left on and the
    observers off. Returns the number of images seen.
    """
    spec = quantization_config(qat=False).input_activation
    make_observer = partial(
        spec.observer_or_fake_quant_ctr,
        dtype=spec.dtype,
        quant_min=spec.quant_min,
        quant_max=spec.quant_max,
        qscheme=spec.qscheme,
    )
    observers = {
        m: make_observer().to(device)
        for m in graph.modules()
        if isinstance(m, FakeQuantizeBase) and not m.is_per_channel
    }
    hooks = [quantizer.register_forward_pre_hook(lambda q, args: observers[q](args[0])) for quantizer in observers]
    graph.apply(disable_fake_quant)
    graph.apply(disable_observer)
    seen = 0
    try:
        for images, _ in loader:
            graph(images.to(device))
            seen += len(images)
    finally:
        for hook in hooks:
            hook.remove()
        graph.apply(enable_fake_quant)
    for quantizer, observer in observers.items():
        scale, zero_point = observer.calculate_qparams()
        quantizer.scale.resize_(scale.shape).copy_(scale)
        quantizer.zero_point.resize_(zero_point.shape).copy_(zero_point)
        moving = quantizer.activation_post_process
        moving.min_val.resize_(()).copy_((moving.quant_min - zero_point.squeeze()) * scale.squeeze())
        moving.max_val.resize_(()).copy_((moving.quant_max - zero_point.squeeze()) * scale.squeeze())
    return seen


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s KL(teacher || student) on temperature-softened logits, scaled by T^2 so its
    gradients keep their size whatever T; ``teacher`` is treated as a constant."""
    return (
        F.kl_div(
            F.log_softmax(student / temperature, 1),
            F.log_softmax(teacher.detach() / temperature, 1),
            log_target=True,
            reduction="batchmean",
        )
        * temperature**2
    )


def default_freeze_epoch(fraction: float, max_epochs: int | None) -> int:
    """``fraction`` of the run, but never epoch 0: observers frozen before they observed anything
    keep their initial scales (a 1-epoch QAT run at 224 px fell from 94% to 12% that way)."""
    return max(1, round(fraction * max_epochs)) if max_epochs and max_epochs > 0 else 1 << 30


class QATClassifier(ImageClassifier):
    """An :class:`ImageClassifier` whose network is the QAT-prepared exported graph.

    Start from ``float_checkpoint`` (a ``make train`` checkpoint), from
    torchvision-format ``weights``, or from scratch. Before the first step the
    activation ranges are calibrated on ``calibration_images`` training images, as
    PTQ's are (0: from the first batch instead). Observers learn only in training
    steps, up to epoch ``freeze_observer_epoch``; BN statistics are frozen from
    ``freeze_bn_epoch`` (by default 40% and 30% into the run, torchvision's 4-of-10
    and 3-of-10). With a float start point, the float model is a frozen teacher:
    the loss is ``distill_weight`` of the distillation loss at ``distill_temperature``
    and the rest the label loss (``distill_weight=0``: labels only). Other arguments
    are :class:`ImageClassifier`'s; ``configs/qat.yaml`` sets QAT's optimiser.

    Args:
        arch: v1, v2, v3_small or v3_large (must match float_checkpoint's).
        num_classes: output classes (set from the data).
        width_mult: the width multiplier alpha (must match float_checkpoint's).
        resolution: the input size (set from the data).
        float_checkpoint: a make train checkpoint to start from, and the distillation teacher.
        freeze_observer_epoch: epoch from which activation ranges stop moving (default: 40% of the run).
        freeze_bn_epoch: epoch from which BN statistics are frozen (default: 30% of the run).
        bn_momentum: BatchNorm momentum (default: the float run's).
        calibration_images: training images that set the starting ranges, as PTQ does (0: none).
        distill_weight: the share of the loss that is distillation from the float model (0: labels only).
        distill_temperature: softmax temperature of the distillation loss.
    """

    phase = "qat"

    def __init__(
        self,
        arch: Arch,
        num_classes: PositiveInt = 1000,
        width_mult: PositiveFloat = 1.0,
        resolution: PositiveInt = RESOLUTION,
        float_checkpoint: str | None = None,
        freeze_observer_epoch: NonNegativeInt | None = None,
        freeze_bn_epoch: NonNegativeInt | None = None,
        bn_momentum: ClosedUnitInterval | None = None,
        calibration_images: NonNegativeInt = 512,
        distill_weight: ClosedUnitInterval = 0.5,
        distill_temperature: PositiveFloat = 2.0,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: PositiveFloat = 0.005,
        weight_decay: NonNegativeFloat = 1e-5,
        warmup_epochs: NonNegativeFloat = 0.0,
        **kwargs,
    ) -> None:
        checkpoint = read_checkpoint(float_checkpoint) if float_checkpoint else None
        if checkpoint is not None:
            check_architecture(checkpoint, float_checkpoint, arch=arch, width_mult=width_mult, num_classes=num_classes)
            if bn_momentum is None:  # keep what the float run trained with
                bn_momentum = checkpoint["hyper_parameters"].get("bn_momentum")
        super().__init__(
            arch=arch,
            num_classes=num_classes,
            width_mult=width_mult,
            resolution=resolution,
            bn_momentum=bn_momentum,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            **kwargs,
        )
        self.hparams.bn_momentum = bn_momentum  # LightningCLI records the config's value, not the inherited one
        if checkpoint is not None:
            self.model.load_state_dict({k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()})
        self._bn_eps, self._bn_momentum = batchnorm_settings(self.model)
        if kwargs.get("weights") is not None and not self.head_from_weights:
            raise WeightsError(
                f"{kwargs['weights']} holds a classifier for other classes than these {num_classes}: QAT would "
                "start from, and distil from, a head nothing trained. Fine-tune it first (make qat WEIGHTS=... "
                "does: float fine-tuning, then QAT from its checkpoint)"
            )
        starts_from_float = checkpoint is not None or kwargs.get("weights") is not None
        teacher = copy.deepcopy(self.model).eval().requires_grad_(False) if starts_from_float else None
        object.__setattr__(self, "teacher", teacher)  # not a submodule: not trained, checkpointed or exported
        self.model = prepare_qat_pt2e(export_float(self.model, resolution), xnnpack_quantizer(qat=True))
        self._sync_graph_mode(training=False)
        observe_weights(self.model, resolution)

    def _freeze_epoch(self, explicit: int | None, fraction: float) -> int:
        if explicit is not None:
            return explicit
        return default_freeze_epoch(fraction, self.trainer.max_epochs if self._trainer is not None else None)

    def _sync_graph_mode(self, training: bool) -> None:
        """BN mode and settings, and observers: on in training until their freeze epoch, never in
        evaluation (validation images must not move the ranges)."""
        (move_exported_model_to_train if training else move_exported_model_to_eval)(self.model)
        fitting = self._trainer is not None
        frozen = fitting and self.current_epoch >= self._freeze_epoch(self.hparams.freeze_bn_epoch, 0.3)
        set_batchnorm_args(self.model, self._bn_eps, self._bn_momentum, frozen)
        observing = training and not (
            fitting and self.current_epoch >= self._freeze_epoch(self.hparams.freeze_observer_epoch, 0.4)
        )
        self.model.apply(enable_observer if observing else disable_observer)

    def train(self, mode: bool = True) -> "QATClassifier":
        """Lightning's train/eval switch, applied to the exported graph the only way it understands."""
        self.training = mode
        for child in self.children():
            if child is not self.model:
                child.train(mode)
        self._sync_graph_mode(mode)
        return self

    def convert(self) -> torch.fx.GraphModule:
        """The int8 model (``convert_pt2e``), with BN folded exactly; this module is left untouched.

        convert_pt2e folds with ``gamma / sqrt(running_var + 1e-5)``; shifting running_var by
        ``eps - 1e-5`` first makes that ``gamma / sqrt(running_var + eps)``, what QAT trained with.
        """
        graph = copy.deepcopy(self.model)
        move_exported_model_to_eval(graph)
        for node in graph.graph.nodes:
            if node.target == torch.ops.aten.batch_norm.default:
                running_var = reduce(getattr, node.args[4].target.split("."), graph)
                running_var.add_(self._bn_eps - CONVERT_FOLD_EPS)
        set_batchnorm_args(graph, CONVERT_FOLD_EPS, self._bn_momentum, frozen=True)
        return convert_pt2e(graph)

    def on_fit_start(self) -> None:
        """Calibrate a fresh run (a resumed one keeps its ranges); move the teacher with the model."""
        if self.teacher is not None:
            self.teacher.to(self.device)
        if self.hparams.calibration_images and self.trainer.ckpt_path is None:
            training = self.training
            self._sync_graph_mode(training=False)
            loader = self.trainer.datamodule.calibration_dataloader(self.hparams.calibration_images)
            seen = calibrate(self.model, loader, self.device)
            self._sync_graph_mode(training)
            rank_zero_info(f"QAT: activation ranges calibrated on {seen} training images")

    def on_train_epoch_start(self) -> None:
        self._sync_graph_mode(training=True)

    def training_loss(self, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = super().training_loss(images, logits, labels)
        weight = self.hparams.distill_weight
        if self.teacher is None or weight == 0:
            return loss
        with torch.no_grad():
            teacher = self.teacher(images)
        distill = distillation_loss(logits, teacher, self.hparams.distill_temperature)
        self.log("train/distill", distill)
        return (1 - weight) * loss + weight * distill
