"""A recipe: every default of the pipeline, in one place, named and kept in ``configs/recipes/<name>.yaml``.

A recipe file may start from another (``base: default``) and change only what differs. Values are checked
as the recipe is built, so a typo in a file is one line naming the key, before any training starts.
"""

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from training.models import MAX_WIDTH, MODELS

RECIPES = Path(__file__).resolve().parent.parent / "configs" / "recipes"


class RecipeError(ValueError):
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
    export_args: tuple[str, ...] = ()  # extra python -m export options
    weights: str = ""  # torchvision-format weights to start from (QAT directly, no float training)
    ckpt: str = ""  # a float checkpoint to start QAT from (no float training)
    seed: int | None = None  # --seed_everything for both runs (None: the configs' own)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise RecipeError(f"model {self.model!r} is not one of {', '.join(MODELS)}")
        for name in ("resolution", "epochs", "qat_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RecipeError(f"{name} must be a whole number >= 1, got {value!r}")
        if isinstance(self.width, bool) or not isinstance(self.width, int | float) or not 0 < self.width <= MAX_WIDTH:
            raise RecipeError(f"width must be in (0, {MAX_WIDTH}], got {self.width!r}")
        if self.weights and self.ckpt:
            raise RecipeError("give a float checkpoint or torchvision weights to start from, not both")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise RecipeError(f"seed must be a whole number, got {self.seed!r}")

    def replace(self, **changes) -> "Recipe":
        """This recipe with ``changes`` (None leaves a value as it is)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def load_recipe(name: str, seen: tuple[str, ...] = ()) -> Recipe:
    """The recipe ``configs/recipes/<name>.yaml``, its ``base`` applied first."""
    return Recipe(**_values(name, seen))


def _values(name: str, seen: tuple[str, ...]) -> dict:
    path = RECIPES / f"{name}.yaml"
    if name not in names():  # a name, never a path: ../qat would read another config as a recipe
        raise RecipeError(f"no recipe {name!r}: pick one of {', '.join(names())} (configs/recipes/)")
    if name in seen:
        raise RecipeError(f"recipe {name!r} is its own base ({' -> '.join([*seen, name])})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path} must be a mapping of recipe keys")
    values = _values(raw.pop("base"), (*seen, name)) if "base" in raw else {}
    known = {f.name for f in fields(Recipe)}
    if unknown := sorted(set(raw) - known):
        raise RecipeError(f"{path}: unknown key {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    for key in ("args", "export_args"):
        if key in raw:
            if not isinstance(raw[key], list) or not all(isinstance(a, str) for a in raw[key]):
                raise RecipeError(f"{path}: {key} must be a list of strings")
            raw[key] = tuple(raw[key])
    return values | raw
