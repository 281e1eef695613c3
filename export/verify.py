"""Checks a program must pass before it becomes a bundle, and the runtime measurements in the report."""
import statistics
import time

import numpy as np
import torch
from executorch.runtime import Runtime

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
    """Top-1 agreement and logit closeness between the runtime and the PyTorch model it came from."""
    agreement = (pte_logits.argmax(1) == ref_logits.argmax(1)).float().mean().item()
    max_diff = (pte_logits - ref_logits).abs().max().item()
    result = {"images": len(ref_logits), "top1_agreement": agreement, "max_abs_logit_diff": max_diff}
    if agreement < min_agreement or max_diff > atol:
        raise VerificationError(
            f"runtime disagrees with PyTorch: top-1 agreement {agreement:.3f} (need {min_agreement}), "
            f"max logit difference {max_diff:.4f} (allowed {atol})")
    return result


def latency_ms(method, resolution: int, runs: int = 100, warmup: int = 10) -> dict:
    x = torch.randn(1, 3, resolution, resolution)
    for _ in range(warmup):
        method.execute([x])
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        method.execute([x])
        times.append((time.perf_counter() - start) * 1000)
    return {"p50": statistics.median(times), "p90": float(np.percentile(times, 90)), "runs": runs}
