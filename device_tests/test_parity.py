"""This device gives the host's answers, by the parity rule export applies (edge.parity): on the golden
inputs (the runtime), and on raw frames of odd sizes through this device's own OpenCV preprocessing."""

import numpy as np

from edge import parity
from edge.preprocess import Preprocessor


def test_golden_parity(bundle, golden, figures):
    got = np.concatenate([bundle.logits(x[None]) for x in golden["inputs"]])
    figures["parity"] = parity.compare(got, golden["logits"], bundle.meta.golden_logit_tolerance)  # kept on failure
    parity.check(got, golden["logits"], bundle.meta.golden_logit_tolerance)


def test_preprocessing_parity(bundle, golden, figures):
    preprocess = Preprocessor(bundle.input)
    got = np.concatenate([bundle.logits(preprocess(frame, order="BGR")) for frame in golden["frames"]])
    figures["preprocessing_parity"] = parity.compare(got, golden["frame_logits"], bundle.meta.golden_logit_tolerance)
    parity.check(got, golden["frame_logits"], bundle.meta.golden_logit_tolerance)
