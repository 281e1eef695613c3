"""A recipe: every default of the pipeline, in one place, named and kept in ``configs/recipes/<name>.yaml``.

A recipe file may start from another (``base: default``) and change only what differs. Values are checked
as the recipe is built, so a typo in a file is one line naming the key, before any training starts.
"""

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from edge.command import UserError
from training.models import MAX_WIDTH, MODELS

RECIPES = Path(__file__).resolve().parent.parent / "configs" / "recipes"


class RecipeError(UserError, ValueError):
    """A recipe that cannot be used; the message names the file or key."""


@dataclass(frozen=True)
class Recipe:
    model: str  # v1, v2, v3_small, v3_large
    data: str  # "": procedural shapes; cifar10; or a folder with a folder per class
    resolution: int  # input size in pixels
    width: float  # width multiplier alpha
    epochs: int  # float training epochs
    qat_epochs: int
    args: tuple[str, ...] = ()  # extra LightningCLI arguments, for both runs
    float_args: tuple[str, ...] = ()  # extra LightningCLI arguments for the float run alone (fine-tuning's schedule)
    export_args: tuple[str, ...] = ()  # extra python -m export options
    weights: str = ""  # torchvision-format weights (a file, or imagenet) the float run fine-tunes
    ckpt: str = ""  # a float checkpoint to start QAT from (no float training)
    seed: int | None = None  # --seed_everything for both runs (None: the configs' own)
    seeds: tuple[int, ...] = ()  # the seeds a benchmark repeats the recipe with (make bench-qat)
    sweep_models: tuple[str, ...] = ()  # make sweep's grid over this recipe (empty: the recipe's model)
    sweep_widths: tuple[float, ...] = ()  # (empty: the recipe's width)
    sweep_resolutions: tuple[int, ...] = ()  # (empty: the recipe's resolution)

    def __post_init__(self) -> None:
        for name in ("model", "data", "weights", "ckpt"):
            if not isinstance(getattr(self, name), str):
                raise RecipeError(f"{name} must be a string, got {short(getattr(self, name))}")
        if self.model not in MODELS:
            raise RecipeError(f"model {short(self.model)} is not one of {', '.join(MODELS)}")
        for name in ("resolution", "epochs", "qat_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RecipeError(f"{name} must be a whole number >= 1, got {short(value)}")
        if isinstance(self.width, bool) or not isinstance(self.width, int | float) or not 0 < self.width <= MAX_WIDTH:
            raise RecipeError(f"width must be in (0, {MAX_WIDTH}], got {short(self.width)}")
        if self.weights and self.ckpt:
            raise RecipeError("give a float checkpoint or torchvision weights to start from, not both")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise RecipeError(f"seed must be a whole number, got {short(self.seed)}")
        checks = {
            "seeds": (lambda v: isinstance(v, int) and not isinstance(v, bool), "whole numbers"),
            "sweep_models": (lambda v: v in MODELS, f"of {', '.join(MODELS)}"),
            "sweep_widths": (
                lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= MAX_WIDTH,
                f"in (0, {MAX_WIDTH}]",
            ),
            "sweep_resolutions": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "whole >= 1"),
        }
        for name, (valid, want) in checks.items():
            if not all(valid(v) for v in getattr(self, name)):
                raise RecipeError(f"{name} must be a list {want}, got {short(list(getattr(self, name)))}")

    def replace(self, **changes) -> "Recipe":
        """This recipe with ``changes`` (None leaves a value as it is)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


MAX_BYTES = 64 * 1024  # a recipe is a screenful of keys
MAX_DEPTH = 4  # a mapping of keys, some of them lists of strings


def cut(text: str, limit: int = 60) -> str:
    """Text for an error line, cut to ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short(value: object) -> str:
    return cut(repr(value))


def read_yaml(path: Path) -> object:
    """A recipe file's YAML, read without anchors or aliases and nested at most ``MAX_DEPTH`` deep.

    A recipe needs neither; an alias bomb (each alias doubling the one before) grows past any memory, and
    deep nesting exhausts the composer's recursion. The parser's events are checked before anything is built.
    """
    if path.stat().st_size > MAX_BYTES:
        raise RecipeError(f"{path} is {path.stat().st_size} bytes, more than a recipe's {MAX_BYTES}")
    try:
        text = path.read_text()
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise RecipeError(f"{path}: anchors and aliases (& and *) are not allowed in a recipe")
            depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(event, yaml.CollectionEndEvent)
            if depth > MAX_DEPTH:
                raise RecipeError(f"{path} nests deeper than a recipe's {MAX_DEPTH} levels")
        return yaml.safe_load(text) or {}
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as e:
        raise RecipeError(f"{path} is not valid YAML: {cut(' '.join(str(e).split()), 200)}") from None


def names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def load_recipe(name: str, seen: tuple[str, ...] = ()) -> Recipe:
    """The recipe ``configs/recipes/<name>.yaml``, its ``base`` applied first."""
    return Recipe(**_values(name, seen))


def _values(name: str, seen: tuple[str, ...]) -> dict:
    path = RECIPES / f"{name}.yaml"
    if (
        not isinstance(name, str) or name not in names()
    ):  # a name, never a path: ../qat would read another config as a recipe
        raise RecipeError(f"no recipe {short(name)}: pick one of {', '.join(names())} (configs/recipes/)")
    if name in seen:
        raise RecipeError(f"recipe {name!r} is its own base ({' -> '.join([*seen, name])})")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise RecipeError(f"{path} must be a mapping of recipe keys")
    values = _values(raw.pop("base"), (*seen, name)) if "base" in raw else {}
    known = {f.name for f in fields(Recipe)}
    if unknown := sorted(map(str, set(raw) - known)):
        raise RecipeError(f"{path}: unknown key {cut(', '.join(unknown))} (known: {', '.join(sorted(known))})")
    for key in ("args", "float_args", "export_args"):
        if key in raw:
            if not isinstance(raw[key], list) or not all(isinstance(a, str) for a in raw[key]):
                raise RecipeError(f"{path}: {key} must be a list of strings")
            raw[key] = tuple(raw[key])
    for key in ("seeds", "sweep_models", "sweep_widths", "sweep_resolutions"):
        if key in raw:
            if not isinstance(raw[key], list):
                raise RecipeError(f"{path}: {key} must be a list")
            raw[key] = tuple(raw[key])
    return values | raw


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline.recipe NAME KEY``: one value of a recipe, a list as words, for the Makefile
    (make bench-qat's seeds), which then restates none of them."""
    import argparse
    import sys

    from edge.command import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.recipe", description=main.__doc__.split(":")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("name", help=f"one of {', '.join(names())}")
    parser.add_argument("key", choices=[f.name for f in fields(Recipe)])
    args = parser.parse_args(argv)
    try:
        value = getattr(load_recipe(args.name), args.key)
    except RecipeError as e:
        sys.exit(f"error: {e}")
    print(" ".join(map(str, value)) if isinstance(value, tuple) else value)


if __name__ == "__main__":
    main()
