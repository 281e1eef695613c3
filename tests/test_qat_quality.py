"""What makes QAT earn its keep: paired intervals, distillation, the PTQ-or-QAT choice, calibrated start."""

import numpy as np
import pytest
import torch
from torchao.quantization.pt2e import FakeQuantizeBase
from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

from export.flow import choose
from export.paired import paired_difference
from training.models import create_model
from training.qat import QATClassifier, calibrate, distillation_loss, export_float, xnnpack_quantizer


def test_paired_interval_matches_the_normal_approximation_of_a_known_case():
    """10,000 images, a right where b is wrong on 300 and the reverse on 100: the difference is exactly
    2 points, and its standard error sqrt((0.03 + 0.01 - 0.02^2) / n) gives 2 +- 0.39 points."""
    n = 10_000
    common = np.random.default_rng(1).random(n) < 0.6
    a, b = common.copy(), common.copy()
    a[:300], b[:300] = True, False
    a[300:400], b[300:400] = False, True
    difference = paired_difference(a, b)
    half = 1.96 * np.sqrt((0.04 - 0.02**2) / n)
    assert difference.delta == pytest.approx(0.02)
    assert difference.low == pytest.approx(0.02 - half, abs=6e-4)
    assert difference.high == pytest.approx(0.02 + half, abs=6e-4)
    assert difference.changed == pytest.approx(0.04) and difference.measurable
    assert str(difference).startswith("+2.00 pt (+1.6")


def test_an_interval_containing_zero_is_no_measurable_difference():
    n = 10_000
    a = np.random.default_rng(2).random(n) < 0.7
    b = a.copy()
    a[:12], b[:12] = True, False  # a better on 12 images, b on 10: +0.02 points, inside the noise
    a[12:22], b[12:22] = False, True
    difference = paired_difference(a, b)
    assert difference.low < 0 < difference.high and not difference.measurable
    assert str(difference).endswith("no measurable difference")
    same = paired_difference(a, a)
    assert (same.delta, same.low, same.high) == (0, 0, 0) and not same.measurable
    with pytest.raises(ValueError, match="same >= 2 images"):
        paired_difference(a, a[:-1])


def test_distillation_loss_is_zero_for_the_teacher_and_trains_only_the_student():
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    student, teacher = torch.nn.Linear(8, 5), torch.nn.Linear(8, 5)
    logits = teacher(x)
    assert distillation_loss(logits, logits, temperature=2.0).item() == pytest.approx(0, abs=1e-6)
    loss = distillation_loss(student(x), teacher(x), temperature=2.0)
    assert loss.item() > 0
    loss.backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert teacher.weight.grad is None and teacher.bias.grad is None
    # T^2 keeps the gradient's size: at a large T the loss approaches (1/2K) * sum of squared centred logit gaps.
    s, t = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 0.0, 0.0]])
    assert distillation_loss(s, t, temperature=100.0).item() == pytest.approx(2 / 6, rel=1e-2)


def test_the_teacher_is_the_frozen_float_model_and_is_not_trained_saved_or_exported(tmp_path):
    weights = tmp_path / "float.pt"
    torch.save(create_model("v3_small", 4, 0.5).state_dict(), weights)
    module = QATClassifier("v3_small", num_classes=4, width_mult=0.5, resolution=32, weights=str(weights))
    assert module.teacher is not None and not module.teacher.training
    assert not any(p.requires_grad for p in module.teacher.parameters())
    assert "teacher" not in dict(module.named_children())
    assert not any(k.startswith("teacher") for k in module.state_dict())
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    module.train()
    loss = module.training_loss(x, module(x), labels)
    loss.backward()
    assert any(p.grad is not None for p in module.model.parameters())
    assert all(p.grad is None for p in module.teacher.parameters())


def candidates(schemes: tuple[str, ...], delta: float, low: float, high: float) -> dict:
    """``build``'s result as ``choose`` reads it: the reports share the accuracy table."""
    vs_ptq = {"delta": delta, "low": low, "high": high, "changed": 0.05, "measurable": low > 0 or high < 0}
    report = {"accuracy": {"qat_pte": {"top1": 0.7, "vs_ptq": vs_ptq}}}
    return {scheme: (f"{scheme} meta", f"{scheme} files", report) for scheme in schemes}


@pytest.mark.parametrize(
    "delta,low,high,shipped",
    [
        (-0.0064, -0.0116, -0.0009, "ptq-int8"),  # PTQ measurably better: ship it
        (-0.0036, -0.0092, 0.0019, "qat-int8"),  # no measurable difference: QAT stays
        (0.0050, 0.0010, 0.0090, "qat-int8"),
    ],
)
def test_ptq_is_shipped_only_when_measurably_better(delta, low, high, shipped):
    chosen, why = choose(candidates(("qat-int8", "ptq-int8"), delta, low, high))
    assert chosen == shipped and why.count("\n") == 0
    assert ("shipping PTQ" in why) == (shipped == "ptq-int8")
    assert choose(candidates(("qat-int8",), delta, low, high)) == ("qat-int8", "")


def quantizers_in_call_order(graph, x, wanted) -> list:
    called = []
    hooks = [m.register_forward_pre_hook(lambda m, args: called.append(m)) for m in graph.modules() if wanted(m)]
    with torch.no_grad():
        graph(x)
    for hook in hooks:
        hook.remove()
    return list(dict.fromkeys(called))


def test_calibrated_qat_starts_from_ptqs_scales_on_the_same_images(tmp_path):
    torch.manual_seed(0)
    float_model = create_model("v3_small", 4, 0.5)
    for bn in (m for m in float_model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)  # statistics a trained model could have, so folding matters
        bn.running_var.uniform_(0.5, 2.0)
    torch.save(float_model.state_dict(), tmp_path / "float.pt")
    module = QATClassifier("v3_small", num_classes=4, width_mult=0.5, resolution=32, weights=str(tmp_path / "float.pt"))
    images = [(torch.randn(8, 3, 32, 32), None) for _ in range(3)]
    is_activation = lambda m: isinstance(m, FakeQuantizeBase) and not m.is_per_channel  # noqa: E731
    uncalibrated = [q.scale.clone() for q in quantizers_in_call_order(module.model, images[0][0], is_activation)]

    module.eval()
    assert calibrate(module.model, images) == 24
    ptq = prepare_pt2e(export_float(float_model, 32), xnnpack_quantizer(qat=False))
    with torch.no_grad():
        for x, _ in images:
            ptq(x)
    qat = quantizers_in_call_order(module.model, images[0][0], is_activation)
    observers = quantizers_in_call_order(ptq, images[0][0], lambda m: type(m).__name__ == "HistogramObserver")
    assert len(qat) == len(observers) > 50
    ptq_params = [observer.calculate_qparams() for observer in observers]
    scales = torch.cat([q.scale for q in qat]), torch.cat([s for s, _ in ptq_params])
    zero_points = torch.cat([q.zero_point for q in qat]), torch.cat([z for _, z in ptq_params]).to(torch.int32)
    # The same histogram search on the same values, up to float rounding: the QAT graph's unfolded
    # conv-BN differs from PTQ's folded one in the last bits, and that moves the L2 search of an
    # observer now and then (measured: median difference 6e-8, 2 of 99 scales more than 1% apart,
    # the largest 6%).
    relative = (scales[0] - scales[1]).abs() / scales[1]
    assert relative.median() < 1e-5 and relative.max() < 0.1 and (relative > 0.01).sum() <= 5
    close = relative < 0.01
    assert (zero_points[0][close] - zero_points[1][close]).abs().max() <= 1
    assert not torch.allclose(torch.cat(uncalibrated), scales[1], rtol=0.5), "calibration changed nothing"


def test_v3_small_int8_lowers_whole_into_xnnpack_and_agrees_with_pytorch():
    """V3's hard-swish and squeeze-excite, quantized, all go into one XNNPACK subgraph with nothing left outside
    it (not even the hard-sigmoid's constants), and the runtime agrees with the PyTorch int8 model by the export
    gate's rule (the trained-model tests use V1: this is V3's)."""
    from edge.bundle import APP_METHOD
    from edge.native import Runner
    from edge.parity import check, logit_tolerance
    from export.lower import to_pte
    from export.verify import check_delegation
    from training.qat import ptq

    torch.manual_seed(0)
    images = torch.randn(16, 3, 32, 32)
    int8 = ptq(create_model("v3_small", 4, 0.5), 32, [(images[:8], None)])
    pte, delegation = to_pte(int8, 32)
    check_delegation(delegation)
    assert delegation.subgraphs == 1 and not delegation.undelegated_weighted_ops
    assert {op for op, (_, outside) in delegation.by_op.items() if outside} == {"getitem"}, delegation.summary()
    runner = Runner(pte, threads=1, method=APP_METHOD)
    logits = np.concatenate([runner(x[None].numpy()) for x in images])
    runner.close()
    with torch.no_grad():
        reference = int8(images).numpy()
    check(logits, reference, logit_tolerance(reference, "int8"), min_agreement=0.99)


def test_v3_small_fp32_gates_fold_into_their_convolutions_and_leave_the_model_as_it_was():
    """Each float squeeze-excitation gate lowers to its convolution with a clamp (no add, divide or the
    transposes they bring), computes what the model does, and the model's own weights are not touched."""
    from edge.bundle import APP_METHOD
    from edge.native import Runner
    from export.lower import to_pte

    torch.manual_seed(0)
    model, images = create_model("v3_small", 4, 0.5), torch.randn(8, 3, 32, 32)
    with torch.no_grad():  # logits of order one, which a gate's error moves: BN fitted to the images, a wider head
        for layer in model.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.momentum = None
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
        model.train()(images)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pte, delegation = to_pte(model, 32)
    gates = sum(isinstance(m, torch.nn.Hardsigmoid) for m in model.modules())
    assert gates == 9 and delegation.by_op["aten_hardtanh_default"] == (gates, 0), delegation.by_op
    assert not any("div" in op or "clamp" in op for op in delegation.by_op), delegation.by_op
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    runner = Runner(pte, threads=1, method=APP_METHOD)
    logits = np.concatenate([runner(x[None].numpy()) for x in images])
    runner.close()
    with torch.no_grad():
        reference = model(images).numpy()
    assert reference.std() > 0.1
    np.testing.assert_allclose(logits, reference, atol=1e-4, rtol=1e-4)


def test_an_int8_gate_is_left_as_quantization_made_it():
    """An int8 squeeze-excitation gate keeps the rounding of its convolution's output that QAT trained with:
    the fold leaves the graph, its weights and its answers as they were."""
    from export.lower import gates_folded_into_convolutions
    from training.models.blocks import SqueezeExcitation
    from training.qat import ptq

    torch.manual_seed(0)
    images = torch.randn(8, 3, 8, 8)
    program = torch.export.export(ptq(SqueezeExcitation(3, 8), 8, [(images, None)]), (images[:1],))
    code, state = program.graph_module.code, {k: v.clone() for k, v in program.state_dict.items()}
    gates_folded_into_convolutions(program)
    assert program.graph_module.code == code
    assert all(torch.equal(state[k], v) for k, v in program.state_dict.items())


def test_qat_fake_quantizes_weights_with_the_scales_convert_will_use():
    """convert_pt2e takes each weight fake-quant's scale and zero point from its observer; a training
    step must have used exactly those (the quantizer's fused module did not: scales 0.4% off, and
    zero points of +-127 for a channel whose weights share one sign)."""
    torch.manual_seed(0)
    module = QATClassifier("v1", num_classes=4, width_mult=0.25, resolution=32).train()
    with torch.no_grad():
        module(torch.randn(8, 3, 32, 32))
    weights = [m for m in module.model.modules() if isinstance(m, FakeQuantizeBase) and m.is_per_channel]
    assert len(weights) == 28, "every conv and the classifier"
    for quantizer in weights:
        scale, zero_point = quantizer.calculate_qparams()
        assert torch.equal(quantizer.scale, scale) and torch.equal(quantizer.zero_point, zero_point.int())
        assert not zero_point.any(), "XNNPACK's int8 weights are symmetric"


def test_convert_folds_batchnorm_with_the_models_own_eps(monkeypatch):
    """convert_pt2e folds BN with eps 1e-5 whatever the model's (V3: 1e-3); ``convert`` repairs that, so the int8
    model answers as the fake-quant one does. A V1 given V3's eps, with every running variance at that eps (where
    eps matters), keeps this to one convert; the trained V1 fixture has eps 1e-5 and cannot show it."""
    import training.module
    from training.qat import CONVERT_FOLD_EPS, set_batchnorm_args

    v3_eps = 1e-3

    def with_v3_eps(*args, **kwargs):
        """Running statistics from a batch, then each conv scaled so its BN's variance is eps (same function)."""
        model = create_model(*args, **kwargs)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for bn in bns:
            bn.momentum = 1.0
        model.train()(torch.randn(64, 3, 32, 32))
        for conv, bn in zip(convs, bns, strict=True):
            k = (v3_eps / bn.running_var).sqrt()
            conv.weight.data.mul_(k[:, None, None, None])
            bn.running_mean.mul_(k)
            bn.running_var.fill_(v3_eps)
            bn.weight.data.fill_(2**0.5)  # gamma / sqrt(var + eps) = 1 / sqrt(eps): unit scale again
            bn.eps, bn.momentum = v3_eps, 0.01
        return model.eval()

    torch.manual_seed(0)
    monkeypatch.setattr(training.module, "create_model", with_v3_eps)
    module = QATClassifier("v1", num_classes=4, width_mult=0.25, resolution=32)
    x = torch.randn(16, 3, 32, 32)
    module.train()
    set_batchnorm_args(module.model, v3_eps, 0.01, frozen=True)  # observe weights folded with the running statistics
    with torch.no_grad():
        module(x)
        module.eval()
        fake_quant, converted = module(x), module.convert()(x)
        set_batchnorm_args(module.model, CONVERT_FOLD_EPS, 0.01, frozen=True)
        folded_with_1e_5 = module(x)  # what an unrepaired convert computes, up to int8 rounding (measured: 0.27)
    spread = (fake_quant.max() - fake_quant.min()).item()
    rounding, wrong_eps = (converted - fake_quant).abs().mean(), (folded_with_1e_5 - fake_quant).abs().mean()
    # Measured: spread 0.68, rounding 0 (0.08 when QAT's fused weight fake-quant trained on other scales
    # than convert's), wrong eps 0.31.
    assert rounding < 0.01 * spread, f"int8 rounding apart: {rounding:.4f} of a {spread:.3f} spread"
    assert wrong_eps > 2.5 * rounding, f"eps matters here: {wrong_eps:.4f} against {rounding:.4f}"


def test_a_program_xnnpack_will_not_load_is_explained_with_its_scales(monkeypatch):
    """A lowered int8 program XNNPACK refuses at load (seen with a barely trained QAT model) is one error that
    gives the activation scales' span and what to do, not the runtime's bare "Init failed"."""
    import export.flow
    from edge.native import NativeError
    from export.lower import Delegation
    from export.verify import VerificationError
    from training.qat import ptq

    model = ptq(create_model("v1", 3, 0.25).eval(), 32, [(torch.randn(4, 3, 32, 32), None)])
    monkeypatch.setattr(export.flow, "to_pte", lambda *_: (b"", Delegation(1, {})))

    def refuse(*_):
        raise NativeError("cannot load method forward: error 0x1 (Init failed for backend XnnpackBackend: 0x1)")

    monkeypatch.setattr(export.flow, "load_program", refuse)
    with pytest.raises(
        VerificationError,
        match=r"would not load the ptq-int8 program .*Init failed.*scales span "
        r"[0-9.e-]+ to [0-9.e-]+\. .*Train longer",
    ):
        export.flow.lower(model, "ptq-int8", 32, ("forward_channels_last",))


def test_one_validation_image_makes_no_comparison_and_says_so(capsys):
    """A few photos split into one held-out image: no interval means anything there, so none is made (and the
    shipping rule keeps QAT), in one line rather than a traceback."""
    from export.flow import choose
    from export.report import add_comparisons

    accuracy = {name: {"top1": 1.0, "n": 1} for name in ("qat_pte", "ptq_pte", "fp32_pte")}
    add_comparisons(accuracy, {name: np.array([1]) for name in accuracy})
    assert all("vs_ptq" not in a and "vs_fp32" not in a for a in accuracy.values())
    assert "no paired comparisons: 1 validation image(s)" in capsys.readouterr().err
    report = {"accuracy": accuracy}
    assert choose({"qat-int8": (None, None, report), "ptq-int8": (None, None, report)}) == ("qat-int8", "")
