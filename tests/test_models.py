"""The MobileNet zoo: shapes, the papers' cost tables, torchvision-format weights, torch.export."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import run_module
from torch.export import Dim

from training.models import MODELS, WeightsError, create_model
from training.models.blocks import make_divisible
from training.models.cost import count

# (model, width, resolution) -> (MACs, params) from the papers; None where the paper gives none.
PAPER = {
    ("v1", 1.0, 224): (569e6, 4.2e6),
    ("v1", 0.75, 224): (325e6, 2.6e6),
    ("v1", 0.5, 224): (149e6, 1.3e6),
    ("v1", 0.25, 224): (41e6, 0.5e6),
    ("v1", 1.0, 192): (418e6, None),
    ("v1", 1.0, 160): (290e6, None),
    ("v1", 1.0, 128): (186e6, None),
    ("v2", 1.0, 224): (300e6, 3.4e6),
    ("v3_large", 1.0, 224): (217e6, 5.4e6),
    ("v3_small", 1.0, 224): (56e6, 2.5e6),
}


@pytest.mark.parametrize("key", PAPER, ids=lambda k: f"{k[0]}-{k[1]}-{k[2]}")
def test_costs_match_the_papers(key):
    name, width, resolution = key
    macs, params = PAPER[key]
    got = count(name, width, resolution)
    assert got["macs"] == pytest.approx(macs, rel=0.05)
    if params is not None:
        # The papers print parameters to 0.1M: V1-0.25 has 0.47M, which the paper prints as 0.5M.
        assert got["params"] == pytest.approx(params, rel=0.05, abs=0.05e6)


def test_cli_prints_one_json_line():

    out = subprocess.run(
        [sys.executable, "-m", "training.models", "v1", "--width", "0.75", "--resolution", "160"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == count("v1", 0.75, 160)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("width,resolution", [(0.5, 96), (1.0, 160), (0.75, 224)])
def test_output_shape(name, width, resolution):
    model = create_model(name, num_classes=7, width_mult=width).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, resolution, resolution)).shape == (2, 7)


def test_make_divisible_rounds_to_eight_without_losing_ten_percent():
    assert make_divisible(32 * 0.75) == 24
    assert make_divisible(72 // 4) == 24
    assert make_divisible(10) == 16
    assert all(make_divisible(v) % 8 == 0 and make_divisible(v) >= 0.9 * v for v in range(1, 2000))


# Key names and shapes as published in torchvision's ImageNet checkpoints.
TORCHVISION_KEYS = {
    "v2": {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.0.1.running_var": (32,),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.1.conv.2.weight": (16,),
        "features.2.conv.0.0.weight": (96, 16, 1, 1),
        "features.2.conv.1.0.weight": (96, 1, 3, 3),
        "features.2.conv.2.weight": (24, 96, 1, 1),
        "features.17.conv.2.weight": (320, 960, 1, 1),
        "features.18.0.weight": (1280, 320, 1, 1),
        "classifier.1.weight": (1000, 1280),
        "classifier.1.bias": (1000,),
    },
    "v3_small": {
        "features.0.0.weight": (16, 3, 3, 3),
        "features.1.block.0.0.weight": (16, 1, 3, 3),
        "features.1.block.1.fc1.weight": (8, 16, 1, 1),
        "features.1.block.1.fc2.bias": (16,),
        "features.1.block.2.0.weight": (16, 16, 1, 1),
        "features.2.block.0.0.weight": (72, 16, 1, 1),
        "features.4.block.2.fc1.weight": (24, 96, 1, 1),
        "features.12.0.weight": (576, 96, 1, 1),
        "classifier.0.weight": (1024, 576),
        "classifier.3.weight": (1000, 1024),
    },
    "v3_large": {
        "features.1.block.0.0.weight": (16, 1, 3, 3),
        "features.1.block.1.0.weight": (16, 16, 1, 1),
        "features.4.block.2.fc1.weight": (24, 72, 1, 1),
        "features.4.block.3.0.weight": (40, 72, 1, 1),
        "features.16.0.weight": (960, 160, 1, 1),
        "classifier.0.weight": (1280, 960),
        "classifier.3.weight": (1000, 1280),
    },
}


@pytest.mark.parametrize("name", TORCHVISION_KEYS)
def test_state_dict_uses_torchvision_names_and_shapes(name):
    state = create_model(name).state_dict()
    for key, shape in TORCHVISION_KEYS[name].items():
        assert tuple(state[key].shape) == shape, key


def test_v3_batchnorm_and_head_match_torchvision():
    model = create_model("v3_small")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {(m.eps, m.momentum) for m in bns} == {(0.001, 0.01)}
    assert [type(m).__name__ for m in model.classifier] == ["Linear", "Hardswish", "Dropout", "Linear"]
    assert type(model.features[1].block[1].scale_activation).__name__ == "Hardsigmoid"
    v2 = create_model("v2")
    assert {(m.eps, m.momentum) for m in v2.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {(1e-5, 0.1)}
    assert [type(m).__name__ for m in v2.classifier] == ["Dropout", "Linear"]


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Give BN non-trivial statistics so that a loading bug shows in the logits."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("name", ["v2", "v3_small", "v3_large"])
def test_weights_reproduce_logits_and_reinit_only_the_head(name, tmp_path):
    source = _randomised(create_model(name))
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    x = torch.randn(2, 3, 128, 128)
    loaded = create_model(name, weights=path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
    torch.manual_seed(1)
    fresh_head = create_model(name, num_classes=10, weights=path)
    src, new = source.state_dict(), fresh_head.state_dict()
    head = f"classifier.{len(fresh_head.classifier) - 1}"
    assert new[f"{head}.weight"].shape[0] == 10
    assert all(torch.equal(src[k], v) for k, v in new.items() if not k.startswith(head))


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "v2.pth"
    torch.save(create_model("v2").state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit"):
        create_model("v3_small", weights=path)
    with pytest.raises(WeightsError, match="does not fit"):
        create_model("v2", width_mult=0.5, weights=path)
    with pytest.raises(WeightsError, match="does not exist"):
        create_model("v2", weights=tmp_path / "missing.pth")


@pytest.mark.parametrize("name", MODELS)
def test_exports_with_dynamic_batch(name):
    model = create_model(name, num_classes=5, width_mult=0.5).eval()
    program = torch.export.export(model, (torch.randn(2, 3, 96, 96),), dynamic_shapes=({0: Dim("batch", max=256)},))
    for batch in (1, 3):
        x = torch.randn(batch, 3, 96, 96)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x))


@pytest.mark.parametrize("args", [["--width", "1e300"], ["--width", "50"], ["--resolution", "99999999"]])
def test_model_counts_refuse_absurd_shapes_in_one_line(args):
    result = run_module("-m", "training.models", "v1", *args, text=True)
    assert result.returncode > 0 and "Traceback" not in result.stderr and "error:" in result.stderr
