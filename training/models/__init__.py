"""The MobileNet zoo: ``create_model(name, ...)`` for ``v1``, ``v2``, ``v3_small``, ``v3_large``."""

from functools import partial
from pathlib import Path

import torch
from torch import nn

from edge.command import UserError

from ..checkpoint import safe_load
from .mobilenet_v1 import MobileNetV1
from .mobilenet_v2 import MobileNetV2
from .mobilenet_v3 import MobileNetV3

MODELS = {
    "v1": MobileNetV1,
    "v2": MobileNetV2,
    "v3_small": partial(MobileNetV3, "small"),
    "v3_large": partial(MobileNetV3, "large"),
}

MAX_WIDTH = 4.0  # the papers go to 1.4; far beyond, channel counts overflow what any device holds


class WeightsError(UserError, ValueError):
    """A weights file that does not fit the requested architecture."""


def create_model(
    name: str,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    dropout: float = 0.2,
    weights: str | Path | None = None,
) -> nn.Module:
    """Build a MobileNet; ``weights`` is a torchvision-format state dict file.

    When ``num_classes`` differs from the checkpoint's, every layer but the last
    classifier layer is loaded and that one keeps its fresh initialisation.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if not 0 < width_mult <= MAX_WIDTH:
        raise ValueError(f"width_mult must be in (0, {MAX_WIDTH}], got {width_mult}")
    model = MODELS[name](num_classes=num_classes, width_mult=width_mult, dropout=dropout)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, path: str | Path) -> bool:
    """Load a torchvision-format state dict; True when its last classifier layer fits and was loaded too."""
    path = Path(path)
    state = safe_load(path, "weights file", WeightsError)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a state dict of tensors (expected torchvision format)")
    own = model.state_dict()
    head = classifier_head_prefix(model)
    if state.get(f"{head}.weight", own[f"{head}.weight"]).shape != own[f"{head}.weight"].shape:
        state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
    missing = sorted(set(own) - set(state) - {f"{head}.weight", f"{head}.bias"})
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if missing or unexpected or wrong_shape:
        raise WeightsError(
            f"{path} does not fit {type(model).__name__} at this width: "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong_shape)} mis-shaped keys "
            f"(first: {(missing + unexpected + wrong_shape)[0]})"
        )
    model.load_state_dict(state, strict=False)
    return f"{head}.weight" in state


def classifier_head_prefix(model: nn.Module) -> str:
    """State-dict prefix of the last classifier layer, the one re-initialised for new classes."""
    return f"classifier.{len(model.classifier) - 1}"
