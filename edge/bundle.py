"""Loading a bundle: model.json, the sha256-checked model.pte, and the ExecuTorch method."""
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REQUIRED = ("labels", "input", "pte", "pte_sha256")


class BundleError(RuntimeError):
    """A bundle that cannot be used; the message says what is wrong."""


@dataclass
class Bundle:
    path: Path
    meta: dict
    method: object  # executorch.runtime.Method
    program: object  # executorch.runtime.Program: owns the .pte bytes the method runs from; must outlive it

    @property
    def labels(self) -> list[str]:
        return self.meta["labels"]

    @property
    def input(self) -> dict:
        return self.meta["input"]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Run one preprocessed (1, 3, H, W) float32 input (made C-contiguous: the runtime ignores strides)."""
        return self.method.execute([torch.from_numpy(np.ascontiguousarray(batch))])[0].numpy()


def read_bundle(path: str | Path) -> tuple[dict, bytes]:
    """model.json and the .pte bytes, checked against its pte_sha256; no runtime needed (deploy uses it too)."""
    path = Path(path)
    meta_path = path / "model.json"
    if not meta_path.is_file():
        raise BundleError(f"{path} is not a bundle: no model.json (build one with `make qat` or `make export`)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{meta_path} is not valid JSON ({e})") from None
    missing = [key for key in REQUIRED if key not in meta]
    if missing:
        raise BundleError(f"{meta_path} lacks {', '.join(missing)}; re-export the bundle")
    pte_path = path / meta["pte"]
    if not pte_path.is_file():
        raise BundleError(f"{pte_path} is missing; copy the whole bundle directory")
    data = pte_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta["pte_sha256"]:
        raise BundleError(f"{pte_path} does not match pte_sha256 in model.json: corrupt or mixed-up copy")
    return meta, data


def load_bundle(path: str | Path, threads: int | None = None) -> Bundle:
    """Check and load a bundle; ``threads`` sizes the runtime's threadpool (XNNPACK runs on it) first.

    The pool can only be resized before a program is loaded: a method loaded earlier keeps a pointer
    to the old pool and crashes on its next run (measured: segfault), so sizing lives here.
    """
    path = Path(path)
    meta, data = read_bundle(path)
    # Deferred: the import is slow (it pulls in executorch.exir and torchao) and not needed for the errors above.
    # Those packages warn about GPU kernels and tracing details that mean nothing on a device: keep them quiet.
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime

    if threads:
        _unsafe_reset_threadpool(threads)

    try:
        program = Runtime.get().load_program(data)
        method = program.load_method("forward")
    except Exception as e:  # the runtime raises RuntimeError/ValueError subtypes depending on the failure
        raise BundleError(f"ExecuTorch cannot load {path / meta['pte']}: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return Bundle(path, meta, method, program)
