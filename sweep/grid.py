"""The grid of a sweep: its points, the recipe they share, and the key that names a point's results.

A point's key hashes everything that changes its bundle (model, width, resolution and the shared recipe),
so a finished point is skipped when the same sweep runs again and retrained when anything about it changes.
"""

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Recipe:
    """What every point shares: the pipeline recipe it starts from (configs/recipes/NAME.yaml) and what the
    sweep sets on top of it."""

    data: str  # "" (procedural), cifar10, or an ImageFolder directory
    epochs: int
    qat_epochs: int
    weights: str = ""  # torchvision-format weights, with {model} and {width} filled in per point; "": train first
    args: str = ""  # extra LightningCLI arguments on top of the recipe's, as make's ARGS=
    name: str = "sweep"
    recipe_args: tuple[str, ...] = ()  # the recipe file's own: a change to them makes new points


@dataclass(frozen=True)
class Point:
    model: str
    width: float
    resolution: int

    def key(self, recipe: Recipe) -> str:
        text = json.dumps({"point": asdict(self), "recipe": asdict(recipe)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def name(self, recipe: Recipe) -> str:
        return f"{self.model}-{self.width:g}-{self.resolution}-{self.key(recipe)}"

    def weights(self, recipe: Recipe) -> str:
        return recipe.weights.format(model=self.model, width=f"{self.width:g}") if recipe.weights else ""


def grid(models: list[str], widths: list[float], resolutions: list[int]) -> list[Point]:
    """Every combination, in the order given (models outermost), without repeats."""
    return list(dict.fromkeys(Point(m, w, r) for m, w, r in itertools.product(models, widths, resolutions)))


@dataclass(frozen=True)
class Layout:
    """Where a point's files live: ``out/points/NAME/`` (bundle, logs, device reports, results) and
    ``runs/NAME/`` (checkpoints and training logs)."""

    out: Path
    runs: Path

    def point(self, point: Point, recipe: Recipe) -> Path:
        return self.out / "points" / point.name(recipe)

    def bundle(self, point: Point, recipe: Recipe) -> Path:
        return self.point(point, recipe) / "bundle"

    def run(self, point: Point, recipe: Recipe) -> Path:
        return self.runs / point.name(recipe)
