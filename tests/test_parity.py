"""The one parity rule (edge.parity) that export's gate and the device tests both apply."""

import numpy as np
import pytest

from edge import parity


def test_a_near_tie_may_flip_but_a_clear_answer_may_not():
    reference = np.array([[2.0, 1.98, 0.0], [3.0, 0.0, 0.0]])
    tolerance = parity.logit_tolerance(reference, "int8")
    assert tolerance == pytest.approx(0.08 * 3.0 + 1e-5)
    flipped_tie = np.array([[1.97, 1.99, 0.0], [3.0, 0.01, 0.0]])
    result = parity.check(flipped_tie, reference, tolerance)
    assert result["top1_agreement"] == 0.5 and result["top1_agreement_within_tolerance"] == 1.0
    with pytest.raises(parity.ParityError, match="0.500 of the inputs agree"):
        parity.check(np.array([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]]), reference, tolerance)
    with pytest.raises(parity.ParityError, match="max logit difference 0.3000"):
        parity.check(reference + [[0, 0, 0.3], [0, 0, 0]], reference, tolerance)


def test_one_image_beyond_the_tolerance_in_a_hundred_passes_export_but_not_the_device():
    reference = np.tile([[3.0, 0.0, 0.0]], (100, 1))
    tolerance = parity.logit_tolerance(reference, "int8")
    logits = reference.copy()
    logits[7, 2] += 0.3
    result = parity.check(logits, reference, tolerance, min_agreement=parity.EXPORT_MIN_AGREEMENT)
    assert result["agreement"] == 0.99 and result["top1_agreement"] == 1.0
    assert result["max_abs_logit_diff"] == pytest.approx(0.3)
    logits[8, 2] += 0.3
    with pytest.raises(parity.ParityError, match="0.980 of the inputs agree"):
        parity.check(logits, reference, tolerance, min_agreement=parity.EXPORT_MIN_AGREEMENT)
    with pytest.raises(parity.ParityError):
        parity.check(logits[:8], reference[:8], tolerance)


def test_fp32_is_held_closer_and_agreement_below_one_can_be_allowed():
    reference = np.eye(4) * 10
    assert parity.logit_tolerance(reference, "fp32") == pytest.approx(1e-2 + 1e-5)
    one_wrong = reference.copy()
    one_wrong[0] = [5, 6, 0, 0]  # within 7 of the reference, but its answer flipped from a lead of 10
    with pytest.raises(parity.ParityError, match="0.750 of the inputs agree within tolerance, need 1.0"):
        parity.check(one_wrong, reference, tolerance=7.0)
    assert parity.check(one_wrong, reference, tolerance=7.0, min_agreement=0.75)["top1_agreement"] == 0.75


def test_export_names_rounding_and_the_flag_that_accepts_it_but_not_for_a_wrong_answer():
    """Seen with a PTQ program of a CIFAR-10 model: 88% within tolerance, every changed answer a near-tie."""
    import torch

    from export.verify import VerificationError, check_parity

    reference = torch.tensor([[3.0, 0.0, 0.0]]).repeat(100, 1)
    tolerance = parity.logit_tolerance(reference.numpy(), "int8")
    strayed = reference.clone()
    strayed[:12, 2] += 0.3  # 12 images beyond the tolerance, every answer kept
    with pytest.raises(
        VerificationError,
        match=r"0\.880 of the inputs agree.*int8 rounding rather than a wrong "
        r"program: if so, --min-agreement 0\.88 accepts it",
    ):
        check_parity(strayed, reference, parity.EXPORT_MIN_AGREEMENT, tolerance)
    assert check_parity(strayed, reference, 0.88, tolerance)["agreement"] == 0.88
    with pytest.raises(VerificationError) as error:  # every logit doubled: answers kept, but no rounding
        check_parity(reference * 2, reference, parity.EXPORT_MIN_AGREEMENT, tolerance)
    assert "min-agreement" not in str(error.value)
    strayed[:2] = torch.tensor([0.0, 3.0, 0.0])  # two clear answers changed: no hint
    with pytest.raises(VerificationError) as error:
        check_parity(strayed, reference, parity.EXPORT_MIN_AGREEMENT, tolerance)
    assert "min-agreement" not in str(error.value)
