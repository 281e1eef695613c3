"""Checks a program must pass before it becomes a bundle, and the runtime measurements in the report."""
import torch
from executorch.runtime import Runtime

from edge import parity
from edge.stats import time_calls

from .lower import Delegation


class VerificationError(RuntimeError):
    """The lowered program does not do what the PyTorch model does."""


def load_method(pte: bytes):
    return Runtime.get().load_program(pte).load_method("forward")


def run_pte(method, inputs: torch.Tensor) -> torch.Tensor:
    """Logits for a batch, one image per call as the program is exported at batch 1."""
    return torch.cat([method.execute([x.unsqueeze(0).contiguous()])[0] for x in inputs])


def check_delegation(delegation: Delegation) -> None:
    left = delegation.undelegated_weighted_ops
    if left:
        raise VerificationError(f"layers left outside XNNPACK: {left}; the program would run them slowly on the CPU")


def check_parity(pte_logits: torch.Tensor, ref_logits: torch.Tensor, min_agreement: float, atol: float) -> dict:
    """Runtime vs the PyTorch model it came from, by the rule the device tests use too (edge.parity)."""
    try:
        return parity.check(pte_logits.numpy(), ref_logits.numpy(), atol, min_agreement)
    except parity.ParityError as e:
        raise VerificationError(f"runtime disagrees with PyTorch: {e}") from None


def latency_ms(method, resolution: int, runs: int = 100) -> dict:
    x = torch.randn(1, 3, resolution, resolution)
    return time_calls(lambda: method.execute([x]), runs)
