"""Loading a bundle: model.json, the sha256-checked model.pte, and the program on the native runner."""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .native import NativeError, Runner

REQUIRED = ("labels", "input", "pte", "pte_sha256")
PTE_MAGIC_AT = slice(4, 6)  # a .pte is a flatbuffer whose file identifier starts "ET" at byte 4


class BundleError(RuntimeError):
    """A bundle that cannot be used; the message says what is wrong."""


@dataclass
class Bundle:
    path: Path
    meta: dict
    runner: Runner

    @property
    def labels(self) -> list[str]:
        return self.meta["labels"]

    @property
    def input(self) -> dict:
        return self.meta["input"]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Run one preprocessed (1, 3, H, W) float32 input; returns (1, classes) logits."""
        return self.runner(batch)


def read_bundle(path: str | Path) -> tuple[dict, bytes]:
    """model.json and the .pte bytes, checked against its pte_sha256; no runtime needed (deploy uses it too)."""
    path = Path(path)
    meta_path = path / "model.json"
    if not meta_path.is_file():
        raise BundleError(f"{path} is not a bundle: no model.json (build one with `make qat` or `make export`)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{meta_path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path} is not a JSON object; re-export the bundle")
    missing = [key for key in REQUIRED if key not in meta]
    if missing:
        raise BundleError(f"{meta_path} lacks {', '.join(missing)}; re-export the bundle")
    pte_path = path / meta["pte"]
    if not pte_path.is_file():
        raise BundleError(f"{pte_path} is missing; copy the whole bundle directory")
    data = pte_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta["pte_sha256"]:
        raise BundleError(f"{pte_path} does not match pte_sha256 in model.json: corrupt or mixed-up copy")
    if data[PTE_MAGIC_AT] != b"ET":
        raise BundleError(f"{pte_path} is not an ExecuTorch program (no ET identifier); re-export the bundle")
    return meta, data


def check_shapes(meta: dict, runner: Runner, where: Path) -> None:
    """The program's own input and output shapes must be the ones model.json promises."""
    try:
        size = int(meta["input"]["size"])
    except (KeyError, TypeError, ValueError):
        raise BundleError(f"{where.parent / 'model.json'} has no valid input size; re-export the bundle") from None
    if runner.input_shape != (1, 3, size, size):
        raise BundleError(f"{where}: the program takes {runner.input_shape}, model.json says (1, 3, {size}, {size}); "
                          "re-export the bundle")
    classes = len(meta["labels"])
    if runner.output_shape != (1, classes) or meta.get("num_classes", classes) != classes:
        raise BundleError(f"{where}: the program returns {runner.output_shape}, model.json has {classes} labels "
                          f"and num_classes {meta.get('num_classes')}; re-export the bundle")


def load_bundle(path: str | Path, threads: int | None = None) -> Bundle:
    """Check and load a bundle; ``threads`` sizes XNNPACK's thread pool (None: one per performance core)."""
    path = Path(path)
    meta, data = read_bundle(path)
    try:
        runner = Runner(data, threads)
    except NativeError as e:
        raise BundleError(f"cannot load {path / meta['pte']}: {e}") from None
    check_shapes(meta, runner, path / meta["pte"])
    return Bundle(path, meta, runner)
