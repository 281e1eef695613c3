"""A model's cost: parameters, and multiply-accumulates counted by torch's own FlopCounterMode."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import create_model


def count(name: str, width_mult: float = 1.0, resolution: int = 224, num_classes: int = 1000) -> dict[str, int]:
    """MACs as counted by torch's FlopCounterMode (which reports 2 FLOPs per MAC).

    On the meta device: shapes only, so no resolution or width costs memory or time.
    """
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, width_mult=width_mult).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, 3, resolution, resolution))
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "macs": counter.get_total_flops() // 2,
    }
