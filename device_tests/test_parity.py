"""The golden inputs shipped in the bundle give the host's logits here too, within the export's tolerance."""
import numpy as np


def test_golden_parity(bundle, golden, figures):
    tolerance = bundle.meta.golden_logit_tolerance
    expected = golden["logits"]
    got = np.concatenate([bundle.logits(x[None]) for x in golden["inputs"]])
    ranked = np.sort(expected, axis=1)
    clear = ranked[:, -1] - ranked[:, -2] > tolerance  # a near-tie may flip on another CPU's rounding
    agree = got.argmax(1) == expected.argmax(1)
    diff = float(np.abs(got - expected).max())
    figures["parity"] = {"n": len(expected), "top1_agree": int(agree.sum()), "max_abs_logit_diff": round(diff, 5),
                         "tolerance": tolerance}
    assert diff <= tolerance, f"logits differ from the host's by {diff:.4f} (tolerance {tolerance:.4f})"
    assert agree[clear].all(), f"top-1 differs on golden inputs {np.flatnonzero(clear & ~agree).tolist()}"
