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
    """Runtime vs the PyTorch model it came from: logits within ``atol``, and top-1 agreement.

    int8 kernels round differently from PyTorch's reference ops and the differences
    grow with depth, so a near-tie may flip. A flip counts against agreement only when
    the reference's top-1 leads the runtime's choice by more than ``atol``; the raw
    agreement is reported beside it.
    """
    chosen = pte_logits.argmax(1)
    lead = ref_logits.max(1).values - ref_logits.gather(1, chosen[:, None])[:, 0]
    result = {
        "images": len(ref_logits),
        "top1_agreement": (chosen == ref_logits.argmax(1)).float().mean().item(),
        "top1_agreement_within_tolerance": (lead <= atol).float().mean().item(),
        "max_abs_logit_diff": (pte_logits - ref_logits).abs().max().item(),
        "logit_tolerance": atol,
    }
    if result["top1_agreement_within_tolerance"] < min_agreement or result["max_abs_logit_diff"] > atol:
        raise VerificationError(
            f"runtime disagrees with PyTorch: top-1 agreement {result['top1_agreement']:.3f} "
            f"({result['top1_agreement_within_tolerance']:.3f} within tolerance, need {min_agreement}), "
            f"max logit difference {result['max_abs_logit_diff']:.4f} (allowed {atol:.4f})")
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
