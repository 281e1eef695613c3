"""When two sets of logits count as the same answer: export's gate (program vs PyTorch) and the device
tests (this device vs the host) apply this one rule.

int8 kernels round differently from PyTorch's reference ops, and another CPU's kernels differently
again; the differences grow with depth, so a near-tie may flip. An input agrees when its logits are
within the tolerance of the reference's and its answer is the reference's or within the tolerance of
it (a near-tie that flipped); the raw top-1 agreement is reported beside it. Export needs 99% of its
held-out images to agree (one image's extreme is not a broken program), the device tests all of the
golden inputs.
"""

import numpy as np

# Measured on V3-Small: each int8 op is within 2 output steps of PyTorch's reference, and the
# differences accumulate to ~14 steps at the logits (CIFAR-10 QAT model); 8% of the logit range is
# about 20 steps. fp32 programs must match closely.
TOLERANCE = {"int8": 0.08, "fp32": 1e-3}  # of the reference logits' range
EXPORT_MIN_AGREEMENT = 0.99  # over export's held-out images; the device's few golden inputs need all


class ParityError(AssertionError):
    """Logits that do not count as the same answer; the message gives the figures, ``result`` all of them."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def logit_tolerance(reference: np.ndarray, scheme: str) -> float:
    """The largest logit difference allowed against ``reference`` for a program of ``scheme``."""
    spread = float(reference.max() - reference.min())
    return TOLERANCE["fp32" if scheme == "fp32" else "int8"] * spread + 1e-5


def compare(logits: np.ndarray, reference: np.ndarray, tolerance: float) -> dict:
    """Agreement figures of (N, classes) ``logits`` against ``reference``."""
    logits, reference = np.asarray(logits, np.float64), np.asarray(reference, np.float64)
    chosen = logits.argmax(1)
    lead = reference.max(1) - reference[np.arange(len(reference)), chosen]
    difference = np.abs(logits - reference).max(1)
    return {
        "images": len(reference),
        "top1_agreement": float((chosen == reference.argmax(1)).mean()),
        "top1_agreement_within_tolerance": float((lead <= tolerance).mean()),
        "agreement": float(((lead <= tolerance) & (difference <= tolerance)).mean()),
        "max_abs_logit_diff": float(difference.max()),
        "logit_tolerance": float(tolerance),
    }


def check(logits: np.ndarray, reference: np.ndarray, tolerance: float, min_agreement: float = 1.0) -> dict:
    """``compare``, raising ParityError when fewer than ``min_agreement`` of the inputs agree."""
    result = compare(logits, reference, tolerance)
    if result["agreement"] < min_agreement:
        raise ParityError(
            f"{result['agreement']:.3f} of the inputs agree within tolerance, need {min_agreement} (top-1 "
            f"agreement {result['top1_agreement']:.3f}, {result['top1_agreement_within_tolerance']:.3f} within "
            f"tolerance; max logit difference {result['max_abs_logit_diff']:.4f}, allowed {tolerance:.4f}) "
            f"on {result['images']} inputs",
            result,
        )
    return result
