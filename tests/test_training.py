"""Float training through LightningCLI: a short fit, checkpoint contents, exact resume, DDP on CPU."""

import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import fixed_threads
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from training.cli import main
from training.models import create_model


class StopAfterFirstEpoch(L.Callback):
    """Interrupts a run after its first epoch, as a crash or Ctrl-C would."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


TINY = [
    "--config",
    "configs/train.yaml",
    "--config",
    "configs/model/v3_small.yaml",
    "--config",
    "configs/data/procedural.yaml",
    "--model.init_args.width_mult=0.5",
    "--data.resolution=32",
    "--data.batch_size=8",
    "--data.procedural_train_size=48",
    "--data.procedural_val_size=16",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.max_epochs=1",
]


def fit(tmp_path, name, *extra):
    main(
        [
            "fit",
            *TINY,
            f"--trainer.logger.init_args.save_dir={tmp_path / name}",
            f"--checkpoint.dirpath={tmp_path / name / 'ckpt'}",
            *extra,
        ]
    )
    return tmp_path / name / "ckpt"


def test_two_step_fit_writes_checkpoints_that_describe_the_data(tmp_path):
    ckpt = fit(tmp_path, "run", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2")
    state = torch.load(ckpt / "last.ckpt", weights_only=True)  # what export and QAT load with
    assert state["global_step"] == 2
    assert (ckpt / "best.ckpt").is_file()
    assert state["data"]["labels"][0] == "circle" and state["data"]["input"]["size"] == 32
    assert state["hyper_parameters"]["arch"] == "v3_small" and state["hyper_parameters"]["num_classes"] == 8
    assert (tmp_path / "run" / "version_0" / "metrics.csv").read_text().count("val/top1") == 1


@pytest.mark.repeat
@pytest.mark.parametrize("workers", [0, 1])
def test_resume_is_exact(tmp_path, workers):
    """A run stopped after its first epoch and resumed ends bit for bit where an unbroken run does. Both pin
    what resuming does not carry: the torch thread count and deterministic kernels (a thread count
    changes the order of float sums, and so the weights, in the last bits)."""
    common = ["--trainer.limit_train_batches=3", f"--data.num_workers={workers}", "--trainer.deterministic=true"]
    with fixed_threads(2):
        straight = fit(tmp_path, "straight", "--trainer.max_epochs=2", *common)
        first = fit(
            tmp_path,
            "resumed",
            "--trainer.max_epochs=2",
            "--trainer.callbacks+=test_training.StopAfterFirstEpoch",
            *common,
        )
        assert torch.load(first / "last.ckpt", weights_only=False)["global_step"] == 3
        fit(tmp_path, "resumed", "--trainer.max_epochs=2", f"--ckpt_path={first / 'last.ckpt'}", *common)
    a = torch.load(straight / "last.ckpt", weights_only=False)
    b = torch.load(first / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 6
    differ = {
        key: (value - b["state_dict"][key]).abs().max().item()
        for key, value in a["state_dict"].items()
        if not torch.equal(value, b["state_dict"][key])
    }
    assert not differ, (
        f"{len(differ)} of {len(a['state_dict'])} tensors differ, largest gaps: "
        f"{sorted(differ.items(), key=lambda item: -item[1])[:5]}"
    )


def test_ddp_on_two_cpu_processes(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "fit",
            *TINY,
            "--trainer.strategy=ddp",
            "--trainer.devices=2",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--data.num_workers=0",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--checkpoint.dirpath={tmp_path / 'ckpt'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 2


@pytest.mark.parametrize(
    "flag,message",
    [
        ("--model.init_args.weights={junk}", "cannot read weights file {junk}: not a PyTorch file"),
        ("--model.init_args.weights={pickled}", "holds Python objects that are not loaded"),
        ("--model.init_args.weights={missing}", "weights file {missing} does not exist"),
        ("--ckpt_path={junk}", "cannot read checkpoint {junk}: not a PyTorch file"),
        ("--ckpt_path={missing}", "checkpoint {missing} does not exist"),
        ("--data.resolution=0", "--data.resolution: Not of type PositiveInt"),
        ("--data.val_fraction=1.5", "--data.val_fraction: Not of type OpenUnitInterval"),
        (
            "--data.val_size=0",
            "--data.val_size: Not of type PositiveInt: does not conform to restriction v>0 (Given value: 0)",
        ),
        ("--model.init_args.width_mult=-1", "--model.width_mult: Not of type PositiveFloat"),
        ("--model.init_args.lr=nan", "--model.lr: Not of type PositiveFloat"),
        ("--model.init_args.arch=v9", "--model.arch: Expected a typing.Literal"),
        ("--trainer.max_epochs=-1", "--trainer.max_epochs=-1: give 1 or more epochs"),
        ("--trainer.max_epochs=0", "--trainer.max_epochs=0: give 1 or more epochs"),
        ("--trainer.logger.init_args.save_dir={junk}/run", "{junk} exists and is not a directory"),
        ("--checkpoint.dirpath={junk}", "--checkpoint.dirpath={junk}: {junk} exists and is not a directory"),
    ],
)
def test_bad_files_and_values_are_one_line_not_a_traceback(tmp_path, capsys, flag, message):
    files = {"junk": tmp_path / "junk.pt", "pickled": tmp_path / "pickled.pt", "missing": tmp_path / "missing.pt"}
    files["junk"].write_bytes(bytes(range(256)) * 4)
    torch.save({"layer": torch.nn.Linear(2, 2)}, files["pickled"])
    with pytest.raises(SystemExit) as exit:
        fit(tmp_path, "bad", "--trainer.max_epochs=1", flag.format(**files))
    printed = capsys.readouterr().err.strip().splitlines()
    text = exit.value.code if isinstance(exit.value.code, str) else printed[-1]
    assert exit.value.code != 0 and text.startswith("error: ") and message.format(**files) in text, (text, printed)
    assert "weights_only=False" not in text, "never the advice to unpickle an untrusted file"


def test_a_fit_prints_one_summary_line_and_no_known_noise(tmp_path):
    args = [a for a in TINY if a != "--trainer.enable_model_summary=false"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "fit",
            *args,
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.log_every_n_steps=1",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--checkpoint.dirpath={tmp_path / 'ckpt'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    params = sum(p.numel() for p in create_model("v3_small", 8, 0.5).parameters())
    summary = [line for line in output.splitlines() if line.startswith("model: ")]
    assert len(summary) == 1 and summary[0].startswith(
        f"model: MobileNetV3, {get_human_readable_count(params)} parameters"
    ), summary
    assert summary[0].endswith("FLOPs on an input of [2, 3, 32, 32]"), summary
    for noise in (
        "Seed set to",
        "GPU available: False",
        "TPU available",
        "estimate number of stepping",
        "Total params",
        "model summary callbacks",
        "LeafSpec",
        "_C_mxfp8",
    ):
        assert noise not in output, noise
    assert len(output.splitlines()) <= 4, output


def test_epoch_means_turn_step_rows_into_one_point_per_epoch(tmp_path):
    from training.curves import epoch_means

    (tmp_path / "metrics.csv").write_text(
        "epoch,step,train/loss,val/top1\n0,1,2.0,\n0,2,1.0,\n,3,,\n0,3,,0.5\n1,4,0.5,\n1,5,,0.75\n"
    )
    assert epoch_means(tmp_path / "metrics.csv") == {
        "step": {0: 2.0, 1: 4.5},
        "train/loss": {0: 1.5, 1: 0.5},
        "val/top1": {0: 0.5, 1: 0.75},
    }
