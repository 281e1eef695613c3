"""Reading training checkpoints and weights safely (``weights_only=True``) with one-line errors."""

import pickle
from pathlib import Path

import torch

from edge.command import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable or of the wrong kind."""


def safe_load(path: Path, what: str, error: type[Exception]):
    """``torch.load(weights_only=True)``; a failure is ``error`` with our own line.

    Torch's message for a file with arbitrary Python objects advises ``weights_only=False``: the wrong
    advice for a file from elsewhere, so it is never repeated.
    """
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.ckpt"))[:3]
        raise error(
            f"{what} {path} is a folder, not a file" + (f": give one in it ({', '.join(inside)})" if inside else "")
        )
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated, corrupt or non-torch files
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):
            raise error(
                f"{path} holds Python objects that are not loaded from a file that may not be trusted: "
                f"give a {what} written by this project (or a state dict saved with torch.save)"
            ) from None
        raise error(f"cannot read {what} {path}: not a PyTorch file, or a truncated or corrupt one") from None


def plain(hparams: dict) -> dict:
    """The same values as plain bool/int/float/str: jsonargparse's restricted types (PositiveInt, ...)
    are subclasses that a ``weights_only`` load refuses to unpickle."""
    return {
        key: next((kind(v) for kind in (bool, int, float, str) if isinstance(v, kind)), v) for key, v in hparams.items()
    }


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    checkpoint = safe_load(path, "checkpoint", CheckpointError)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"{path} is not a checkpoint written by `make train` or `make qat`")
    return checkpoint


def check_architecture(checkpoint: dict, path: str | Path, **expected) -> None:
    """Refuse a checkpoint whose arch/width/classes differ from what the caller builds."""
    hparams = checkpoint["hyper_parameters"]
    for key, value in expected.items():
        if value is not None and hparams.get(key) != value:
            raise CheckpointError(
                f"checkpoint {path} has {key}={hparams.get(key)!r} but {value!r} was asked for; "
                f"use a checkpoint of the same model or change MODEL/WIDTH"
            )
