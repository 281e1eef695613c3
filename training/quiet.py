"""Known noise from the libraries we build on, filtered narrowly: each filter names one message.

Nothing here hides a warning class or a logger wholesale; anything new still shows.
"""

import functools
import logging
import re
import warnings


class _DropMessages(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


@functools.cache  # once per process, whichever package imports first
def silence_known_noise() -> None:
    # torchao's wheel ships CUDA-only kernels (mxfp8, cutlass sm90a) that cannot load on a CPU build.
    logging.getLogger("torchao").addFilter(_DropMessages(r"^Failed to load .*/torchao/_C_(mxfp8|cutlass_90a)\."))
    # torchao registers an Enum with torch's pytree at import; torch 2.13 deprecates that call.
    logging.getLogger("torch.utils._pytree").addFilter(_DropMessages(r"register_constant\(\) on Enum subclasses"))
    # Lightning advertises its cloud services at every fit, reports accelerators that are absent (a GPU
    # that is present is still reported), a step it takes, and that our one-line summary replaces its table.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        _DropMessages(
            r"^(💡 Tip: For seamless cloud|GPU available: False, used: False$|TPU available: False, using: 0 TPU cores$"
            r"|Loading `train_dataloader` to estimate number of stepping batches\.$"
            r"|Trainer already configured with model summary callbacks: \[<class 'training\.cli\.OneLineSummary'>\]\.)"
        )
    )
    # Lightning repeats the seed the config already shows.
    logging.getLogger("lightning.fabric.utilities.seed").addFilter(_DropMessages(r"^Seed set to \d+$"))
    # torch.export's own pytree specs, deep-copied with each graph we copy (QAT convert, PTQ, export).
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
