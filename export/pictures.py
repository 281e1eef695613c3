"""confusion.png: where the bundle's own program goes wrong, class by class, on the validation images."""

import io

import torch
from torchmetrics.utilities.plot import plot_confusion_matrix

from .report import shown_classes

DRAWN_MATRIX_MAX_CLASSES = 30  # more, and the cells are too small to read: the per-class bars only
COUNTS_MAX_CLASSES = 12  # counts written in the cells up to this many classes


def confusion_png(classes: dict, title: str) -> bytes:
    """The confusion matrix (torchmetrics draws it) beside each class's top-1 as bars, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    labels, matrix = classes["labels"], classes["confusion"]
    draw_matrix = matrix is not None and len(labels) <= DRAWN_MATRIX_MAX_CLASSES
    fig, axes = plt.subplots(1, 2 if draw_matrix else 1, figsize=(12 if draw_matrix else 6, 5.5), squeeze=False)
    if draw_matrix:
        plot_confusion_matrix(
            torch.tensor(matrix), ax=axes[0, 0], add_text=len(labels) <= COUNTS_MAX_CLASSES, labels=labels, cmap="Blues"
        )
        matrix_ax = axes[0, 0]
        matrix_ax.set_title("confusion matrix (validation images)", fontsize=11)
        for text in (matrix_ax.xaxis.label, matrix_ax.yaxis.label, *matrix_ax.texts):  # torchmetrics' are 15 pt
            text.set_fontsize(8 if text in matrix_ax.texts else 10)
    bars = axes[0, -1]
    shown = shown_classes(classes)
    top1 = [100 * (classes["top1"][i] or 0) for i in shown]
    bars.barh(range(len(shown)), top1, color="tab:blue")
    bars.set_yticks(range(len(shown)), [labels[i] for i in shown], fontsize=8)
    bars.invert_yaxis()
    images = classes["images"]
    overall = 100 * sum((t or 0) * n for t, n in zip(classes["top1"], images, strict=True)) / max(1, sum(images))
    bars.axvline(overall, color="grey", linestyle="--", label=f"all classes {overall:.1f}%")
    bars.legend(fontsize=8, loc="lower right")
    worst = "" if len(shown) == len(labels) else f" (the {len(shown)} worst of {len(labels)})"
    bars.set(title=f"top-1 per class{worst}", xlabel="top-1 (%)", xlim=(0, 100))
    bars.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
