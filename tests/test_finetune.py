"""Your own classes from weights: the float run fine-tunes them (head first), QAT starts from and distils from
that fine-tuned model, and the bundle carries the same baselines and shipping rule as one trained from scratch.

ImageNet's weights cannot be had here, so a stand-in plays them: the colour-trained float model of the test
suite, saved as a torchvision-format state dict with a 1000-class head, fine-tuned on another class set."""

import json
import math
import shutil
import types

import numpy as np
import pytest
import torch
from conftest import fixed_threads

from pipeline.cli import main as pipeline_main
from training.models import WeightsError, classifier_head_prefix, create_model
from training.module import ImageClassifier, warmup_cosine
from training.qat import QATClassifier

pytestmark = pytest.mark.slow
ARCH = ["--model", "v1", "--width", "0.25", "--res", "32"]


@pytest.fixture(scope="module")
def imagenet_like(tiny_float_run, tmp_path_factory):
    """The colour model's weights in torchvision's format, its head widened to 1000 random classes."""
    checkpoint = torch.load(tiny_float_run, weights_only=True)
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    head = classifier_head_prefix(create_model("v1", 3, 0.25))
    generator = torch.Generator().manual_seed(0)
    state[f"{head}.weight"] = torch.randn(1000, state[f"{head}.weight"].shape[1], generator=generator) * 0.01
    state[f"{head}.bias"] = torch.zeros(1000)
    path = tmp_path_factory.mktemp("weights") / "stand-in.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def blue_or_not(lit_colour_folder, tmp_path_factory):
    """Another class set on the same pictures: blue, and everything else."""
    root = tmp_path_factory.mktemp("blue_or_not")
    for name, source in (("blue", ["blue"]), ("not_blue", ["red", "green"])):
        (root / name).mkdir()
        for colour in source:
            for image in (lit_colour_folder / colour).iterdir():
                shutil.copy(image, root / name / f"{colour}-{image.name}")
    return root


@pytest.fixture(scope="module")
def finetuned(imagenet_like, blue_or_not, tmp_path_factory):
    """make qat WEIGHTS=<stand-in> DATA=<blue or not>, as the pipeline runs it (the finetune recipe)."""
    root = tmp_path_factory.mktemp("finetuned")
    args = "--data.num_workers=0 --data.val_fraction=0.25 --seed_everything=0 --trainer.deterministic=true"
    with fixed_threads():
        pipeline_main(
            [
                "--weights",
                str(imagenet_like),
                "--data",
                str(blue_or_not),
                *ARCH,
                "--epochs",
                "4",
                "--qat-epochs",
                "1",
                "--args",
                f"{args} --trainer.enable_progress_bar=false --trainer.enable_model_summary=false",
                "--export-args",
                "--calibration-images 32 --parity-images 30",
                "--run",
                str(root / "run"),
                "--out",
                str(root / "bundle"),
            ]
        )
    return root


def test_fine_tuning_runs_the_float_stage_then_qat_from_its_checkpoint(finetuned):
    run = finetuned / "run"
    qat = torch.load(run / "qat" / "checkpoints" / "best.ckpt", weights_only=True)
    float_run = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert (
        float_run["hyper_parameters"]["head_epochs"] == 1 and float_run["hyper_parameters"]["backbone_lr_scale"] == 0.1
    )
    assert qat["hyper_parameters"]["float_checkpoint"] == str(run / "checkpoints" / "best.ckpt")
    assert qat["data"]["labels"] == ["blue", "not_blue"]


def test_the_qat_teacher_is_the_fine_tuned_float_model_and_knows_the_new_classes(finetuned, blue_or_not):
    from training.data import ImageDataModule

    best = finetuned / "run" / "checkpoints" / "best.ckpt"
    module = QATClassifier(arch="v1", num_classes=2, width_mult=0.25, resolution=32, float_checkpoint=str(best))
    float_state = torch.load(best, weights_only=True)["state_dict"]
    teacher = module.teacher.state_dict()
    assert all(
        torch.equal(teacher[k.removeprefix("model.")], v) for k, v in float_state.items() if k.startswith("model.")
    )
    data = ImageDataModule(source=str(blue_or_not), resolution=32, val_fraction=0.25, num_workers=0, batch_size=16)
    data.setup("fit")
    right = total = 0
    with torch.no_grad():
        for images, labels in data.val_dataloader():
            right += int((module.teacher(images).argmax(1) == labels).sum())
            total += len(labels)
    # Chance is 1/2 (2/3 by always answering "not blue"); the fine-tuned model held 30 of 30 here.
    assert right / total >= 0.9, f"the teacher got {right} of {total} held-out images"


def test_the_bundle_has_the_baselines_and_the_shipping_rule_ran(finetuned, capsys):
    bundle = finetuned / "bundle"
    report = json.loads((bundle / "report.json").read_text())
    assert {"float", "qat", "converted", "ptq", "qat_pte", "ptq_pte", "fp32_pte"} <= set(report["accuracy"])
    assert set(report["accuracy"]["qat_pte"]["vs_ptq"]) == {"delta", "low", "high", "changed", "measurable"}
    assert (finetuned / "bundle-qat").is_dir() and (finetuned / "bundle-ptq").is_dir()
    assert json.loads((bundle / "model.json").read_text())["labels"] == ["blue", "not_blue"]


def test_qat_straight_from_weights_for_other_classes_is_refused(imagenet_like):
    with pytest.raises(WeightsError, match="classifier for other classes than these 2: QAT would start from"):
        QATClassifier(arch="v1", num_classes=2, width_mult=0.25, resolution=32, weights=str(imagenet_like))


def test_the_head_learns_alone_first_then_the_backbone_warms_up_at_its_own_scale():
    module = ImageClassifier(
        arch="v1",
        num_classes=2,
        width_mult=0.25,
        resolution=32,
        head_epochs=1,
        backbone_lr_scale=0.1,
        lr=0.01,
        warmup_epochs=1,
    )
    module._trainer = types.SimpleNamespace(estimated_stepping_batches=100, max_epochs=10)
    optimizer = module.configure_optimizers()["optimizer"]
    head = f"model.{classifier_head_prefix(module.model)}."
    names = {id(p): n for n, p in module.named_parameters()}
    in_head = [all(names[id(p)].startswith(head) for p in g["params"]) for g in optimizer.param_groups]
    assert in_head == [False, False, True, True] and sum(len(g["params"]) for g in optimizer.param_groups) == len(names)
    assert [g["initial_lr"] for g in optimizer.param_groups] == pytest.approx([0.001, 0.001, 0.01, 0.01])
    # 10 steps an epoch: the backbone waits 10 steps, then warms up over 10 from 1%; the head warms up at once.
    assert [warmup_cosine(s, 10, 10, 100) for s in (0, 9, 10, 15)] == pytest.approx([0, 0, 0.01, 0.505])
    assert [warmup_cosine(s, 0, 10, 100) for s in (0, 10)] == pytest.approx([0.01, 1.0])
    assert warmup_cosine(55, 10, 10, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 35 / 80)))
    assert np.isclose(warmup_cosine(100, 0, 10, 100), 0)
