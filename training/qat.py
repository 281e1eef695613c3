"""Quantization-aware training in the PyTorch 2 export flow, inside Lightning.

The float model is exported with a dynamic batch, prepared with ExecuTorch's
XNNPACKQuantizer (symmetric int8, per-channel weights) and trained with fake
quantization; ``export`` later calls ``convert_pt2e`` and lowers it.

Three things torchao 0.18 gets wrong for MobileNetV3 are repaired here: its QAT
conv-BN pattern and its train/eval switch rebuild ``batch_norm`` with eps=1e-5 and
momentum=0.1 (V3 uses 0.001 and 0.01), so the float model's values are written
back after every graph rewrite; ``convert_pt2e`` folds BN into the conv with
eps=1e-5 too (see :meth:`QATClassifier.convert`); and the exported graph ignores
``.train()``/``.eval()``, so :meth:`QATClassifier.train` routes Lightning's mode
switches to ``move_exported_model_to_train/eval``.
"""
import copy
from functools import reduce

import torch
from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt, PositiveFloat, PositiveInt
from torch import nn
from torch.export import Dim
from torchao.quantization.pt2e import (
    disable_observer,
    move_exported_model_to_eval,
    move_exported_model_to_train,
)
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
    XNNPACKQuantizer,
    get_symmetric_quantization_config,
)

from .checkpoint import check_architecture, read_checkpoint
from .module import Arch, ImageClassifier

BATCH = Dim("batch", min=1, max=4096)
# The eps torchao's convert_pt2e folds BN with, whatever the model's BN uses.
CONVERT_FOLD_EPS = 1e-5


def xnnpack_quantizer(qat: bool) -> XNNPACKQuantizer:
    """Symmetric int8 with per-channel weights: per-tensor weights wreck depthwise layers."""
    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))


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
        elif (node.target == torch.ops.aten.add.Tensor and isinstance(node.args[1], float)
              and getattr(node.args[0], "op", None) == "get_attr" and node.args[0].target.endswith("running_var")):
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


def default_freeze_epoch(fraction: float, max_epochs: int | None) -> int:
    """``fraction`` of the run, but never epoch 0: observers frozen before they observed anything
    keep their initial scales (a 1-epoch QAT run at 224 px fell from 94% to 12% that way)."""
    return max(1, round(fraction * max_epochs)) if max_epochs and max_epochs > 0 else 1 << 30


class QATClassifier(ImageClassifier):
    """An :class:`ImageClassifier` whose network is the QAT-prepared exported graph.

    Start from ``float_checkpoint`` (a ``make train`` checkpoint), from
    torchvision-format ``weights``, or from scratch. Observers are frozen from
    epoch ``freeze_observer_epoch`` and BN statistics from ``freeze_bn_epoch``
    (by default 40% and 30% into the run, torchvision's 4-of-10 and 3-of-10).
    Other arguments are :class:`ImageClassifier`'s; ``configs/qat.yaml`` sets
    QAT's optimiser (SGD, small learning rate, no warm-up).
    """

    def __init__(
        self,
        arch: Arch = "v3_small",
        num_classes: PositiveInt = 1000,
        width_mult: PositiveFloat = 1.0,
        resolution: PositiveInt = 96,
        float_checkpoint: str | None = None,
        freeze_observer_epoch: NonNegativeInt | None = None,
        freeze_bn_epoch: NonNegativeInt | None = None,
        bn_momentum: ClosedUnitInterval | None = None,
        **kwargs,
    ) -> None:
        checkpoint = read_checkpoint(float_checkpoint) if float_checkpoint else None
        if checkpoint is not None:
            check_architecture(checkpoint, float_checkpoint, arch=arch, width_mult=width_mult, num_classes=num_classes)
            if bn_momentum is None:  # keep what the float run trained with
                bn_momentum = checkpoint["hyper_parameters"].get("bn_momentum")
        super().__init__(arch=arch, num_classes=num_classes, width_mult=width_mult, resolution=resolution,
                         bn_momentum=bn_momentum, **kwargs)
        self.hparams.bn_momentum = bn_momentum  # LightningCLI records the config's value, not the inherited one
        if checkpoint is not None:
            self.model.load_state_dict({k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()})
        self._bn_eps, self._bn_momentum = batchnorm_settings(self.model)
        self.model = prepare_qat_pt2e(export_float(self.model, resolution), xnnpack_quantizer(qat=True))
        self._sync_graph_mode(training=False)

    def _freeze_epoch(self, explicit: int | None, fraction: float) -> int:
        if explicit is not None:
            return explicit
        return default_freeze_epoch(fraction, self.trainer.max_epochs if self._trainer is not None else None)

    def _sync_graph_mode(self, training: bool) -> None:
        (move_exported_model_to_train if training else move_exported_model_to_eval)(self.model)
        frozen = self._trainer is not None and self.current_epoch >= self._freeze_epoch(self.hparams.freeze_bn_epoch, 0.3)
        set_batchnorm_args(self.model, self._bn_eps, self._bn_momentum, frozen)

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

    def on_train_epoch_start(self) -> None:
        self._sync_graph_mode(training=True)
        if self.current_epoch >= self._freeze_epoch(self.hparams.freeze_observer_epoch, 0.4):
            self.model.apply(disable_observer)
