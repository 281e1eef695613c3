"""Checks a program must pass before it becomes a bundle, and the runtime measurements in the report.

Programs run on the device's own runtime, edge's native runner: what is verified here is what runs there.
"""

import math

import numpy as np
import torch

from edge import parity
from edge.command import UserError
from edge.native import Runner
from edge.stats import time_calls

from .lower import Delegation


class VerificationError(UserError):
    """The lowered program does not do what the PyTorch model does."""


def load_program(pte: bytes, method: str) -> Runner:
    return Runner(pte, method=method)


def run_pte(runner: Runner, inputs: torch.Tensor) -> torch.Tensor:
    """Logits for a batch, one image per call as the program is exported at batch 1."""
    return torch.from_numpy(np.concatenate([runner(np.ascontiguousarray(x[None].numpy())) for x in inputs]))


def check_delegation(delegation: Delegation) -> None:
    left = delegation.undelegated_weighted_ops
    if left:
        raise VerificationError(f"layers left outside XNNPACK: {left}; the program would run them slowly on the CPU")


def check_parity(pte_logits: torch.Tensor, ref_logits: torch.Tensor, min_agreement: float, atol: float) -> dict:
    """Runtime vs the PyTorch model it came from, by the rule the device tests use too (edge.parity).

    When only the logits stray and every changed answer is a near-tie (seen with PTQ programs of trained
    models), the error says so and what accepts the program: that is rounding, not a wrong lowering."""
    try:
        return parity.check(pte_logits.numpy(), ref_logits.numpy(), atol, min_agreement)
    except parity.ParityError as e:
        result, hint = e.result, ""
        # Most images within tolerance, every answer kept: a lowering bug would move (nearly) all of them.
        if result["top1_agreement_within_tolerance"] >= min_agreement and result["agreement"] >= 0.5:
            hint = (
                f"; its answers agree (each changed one a near-tie), as with int8 rounding rather than a wrong "
                f"program: if so, --min-agreement {math.floor(100 * result['agreement']) / 100:.2f} accepts it "
                "(docs/verification.md)"
            )
        raise VerificationError(f"runtime disagrees with PyTorch: {e}{hint}") from None


def latency_ms(runner: Runner, resolution: int, runs: int = 100) -> dict:
    x = runner.laid_out(np.random.default_rng(0).standard_normal((1, 3, resolution, resolution), dtype=np.float32))
    return time_calls(lambda: runner(x), runs)
