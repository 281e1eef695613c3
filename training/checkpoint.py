"""Reading training checkpoints safely (``weights_only=True``) with one-line errors."""
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or of the wrong kind."""


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or non-torch files
        raise CheckpointError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
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
                f"use a checkpoint of the same model or change MODEL/WIDTH")
