"""The pipeline's recipes (every default in one file each) and what make qat passes to it."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.recipe import RECIPES, Recipe, RecipeError, load_recipe, names
from pipeline.run import export_args, float_args, qat_args

ROOT = Path(__file__).resolve().parent.parent


def test_every_recipe_loads_and_names_no_path_outside_the_project():
    assert {"default", "sweep", "bench-qat", "bench-sweep"} <= set(names())
    for name in names():
        recipe = load_recipe(name)
        assert recipe.data in ("", "cifar10") or not Path(recipe.data).is_absolute() and ".." not in recipe.data


def test_a_recipe_starts_from_its_base_and_changes_only_what_it_says():
    default, sweep = load_recipe("default"), load_recipe("sweep")
    assert (sweep.epochs, sweep.qat_epochs) == (5, 1) and sweep.epochs * 2 == default.epochs
    assert sweep.replace(epochs=None, qat_epochs=None) == sweep
    assert (sweep.model, sweep.resolution, sweep.width, sweep.args) == (
        default.model,
        default.resolution,
        default.width,
        default.args,
    )
    assert load_recipe("bench-sweep").data == load_recipe("bench-qat").data == "cifar10"
    with pytest.raises(RecipeError, match="no recipe '../qat'"):
        load_recipe("../qat")  # a name, never a path to another config


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochs: 0\nbase: default\n", "epochs must be"),
        ("base: default\nepoch: 3\n", "unknown key epoch"),
        ("base: loop\n", "its own base"),
        ("base: default\nargs: --x\n", "list of strings"),
        ("[1, 2]\n", "mapping"),
        # Hostile files: an alias bomb, deep nesting, values of the wrong type, bytes that are not text.
        ("base: default\na: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n", "anchors and aliases"),
        ("base: default\nargs: " + "[" * 30_000 + "]" * 30_000 + "\n", "nests deeper than a recipe's 4 levels"),
        ("base: default\nargs: [" + "x, " * 40_000 + "]\n", "bytes, more than a recipe's 65536"),
        ("base: default\nmodel: [v1]\n", "model must be a string, got ['v1']"),
        ("base: default\ndata: 5\n", "data must be a string, got 5"),
        ("base: default\nweights: 5\n", "weights must be a string"),
        ("base: default\nckpt: [a]\n", "ckpt must be a string"),
        ("base: [default]\n", "no recipe ['default']"),
        ("base: default\nepochs: " + "9" * 5000 + "\n", "not valid YAML: Exceeds the limit"),
        ("\udcff\udcfe", "not valid YAML"),
    ],
)
def test_a_bad_recipe_is_one_line_naming_the_key(tmp_path, monkeypatch, text, message):
    monkeypatch.setattr("pipeline.recipe.RECIPES", tmp_path)
    (tmp_path / "default.yaml").write_text((RECIPES / "default.yaml").read_text())
    (tmp_path / "loop.yaml").write_bytes(text.encode(errors="surrogateescape"))
    with pytest.raises(RecipeError, match=re.escape(message)) as error:
        load_recipe("loop")
    assert "\n" not in str(error.value) and len(str(error.value)) < 400


def test_the_stages_get_the_recipe_as_arguments(tmp_path):
    recipe = Recipe("v2", "data/train", 96, 0.5, 3, 1, args=("--data.batch_size=8",), seed=4)
    run = tmp_path / "run"
    fit = float_args(recipe, run)
    assert "--trainer.max_epochs=3" in fit and "--data.resolution=96" in fit and "--seed_everything=4" in fit
    assert "--model.init_args.width_mult=0.5" in fit and fit[-1] == "--data.batch_size=8"
    assert any(a.endswith("configs/data/folder.yaml") for a in fit) and "--data.source=data/train" in fit
    qat = qat_args(recipe, run)
    assert f"--model.init_args.float_checkpoint={run}/checkpoints/best.ckpt" in qat and "--trainer.max_epochs=1" in qat
    assert export_args(recipe, run, tmp_path / "out")[0] == str(run / "qat" / "checkpoints" / "best.ckpt")
    with pytest.raises(RecipeError, match="not both"):
        recipe.replace(ckpt="a.ckpt", weights="w.pth")
    weights = load_recipe("finetune").replace(weights="imagenet")
    fit, qat = float_args(weights, run), qat_args(weights, run)
    assert "--model.init_args.weights=imagenet" in fit and "--model.init_args.head_epochs=1" in fit
    assert f"--model.init_args.float_checkpoint={run}/checkpoints/best.ckpt" in qat, "QAT from the fine-tuned model"
    assert not any("weights" in a or "head_epochs" in a for a in qat)


def make_n(*variables: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "qat", *variables],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return next(line for line in out.splitlines() if "-m pipeline" in line)


def test_make_passes_only_the_variables_given():
    assert shlex.split(make_n().split("-m pipeline")[1]) == [], "every default is the recipe's"
    assert shlex.split(make_n("MODEL=v1", "OUT=x").split("-m pipeline")[1]) == ["--model=v1", "--out=x"]
    words = shlex.split(make_n("EPOCHS=3", "DATA=", "ARGS=--a=1 --b=2", "RES=96").split("-m pipeline")[1])
    assert {"--epochs=3", "--data=", "--args=--a=1 --b=2", "--res=96"} <= set(words)


def test_a_missing_recipe_is_one_error_line():
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "--recipe", "nope"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("error: no recipe 'nope'")


def test_code_defaults_agree_with_the_default_recipe():
    """LightningCLI run without the pipeline takes the code's input size: the default recipe's."""
    from training.data import RESOLUTION

    assert load_recipe("default").resolution == RESOLUTION
