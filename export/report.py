"""Accuracy of every form of the model on the validation set, paired comparisons, and the table people compare."""

import sys
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from tqdm import tqdm

from .paired import paired_difference


class Evaluation(NamedTuple):
    metrics: dict[str, dict]  # model -> top1, top5, n
    kept: dict[str, torch.Tensor]  # the first N logits of the kept models, and "inputs"
    correct: dict[str, np.ndarray]  # model -> per-image top-1 correctness, for paired comparisons
    confusion: dict[str, np.ndarray]  # model -> counts, rows the true class, columns the predicted one


@torch.no_grad()
def evaluate(
    models: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    loader,
    num_classes: int,
    keep: dict[str, int] | None = None,
) -> Evaluation:
    """Top-1/top-5 and the confusion matrix of each model in one pass over ``loader``, each model's per-image
    top-1 correctness, and the first N logits of the models in ``keep``, with their inputs."""
    keep = keep or {}
    correct: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    top1 = {name: MulticlassAccuracy(num_classes, top_k=1, average="micro") for name in models}
    top5 = {name: MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro") for name in models}
    confusion = {name: MulticlassConfusionMatrix(num_classes) for name in models}
    kept: dict[str, list[torch.Tensor]] = {name: [] for name in keep}
    inputs: list[torch.Tensor] = []
    count = 0
    for x, y in tqdm(loader, desc=f"evaluating {', '.join(models)}", unit="batch"):
        want = max(keep.values(), default=0) - count
        if want > 0:
            inputs.append(x[:want])
        for name, model in models.items():
            logits = model(x)
            top1[name].update(logits, y)
            top5[name].update(logits, y)
            confusion[name].update(logits, y)
            correct[name].append(logits.argmax(1) == y)
            if name in keep and keep[name] > count:
                kept[name].append(logits[: keep[name] - count])
        count += len(y)
    kept_tensors = {name: torch.cat(parts) for name, parts in kept.items()}
    if inputs:
        kept_tensors["inputs"] = torch.cat(inputs)
    metrics = {
        name: {"top1": top1[name].compute().item(), "top5": top5[name].compute().item(), "n": count} for name in models
    }
    return Evaluation(
        metrics,
        kept_tensors,
        {name: torch.cat(parts).numpy() for name, parts in correct.items()},
        {name: matrix.compute().numpy() for name, matrix in confusion.items()},
    )


BASELINES = {"vs_fp32": ("fp32_pte", "float"), "vs_ptq": ("ptq_pte", "ptq")}  # the program if built, else PyTorch


def add_comparisons(accuracy: dict[str, dict], correct: dict[str, np.ndarray]) -> None:
    """Each model against fp32 and against PTQ, paired on the same images, into ``accuracy[model]``; none on
    fewer than two images, where no interval means anything (then QAT ships: nothing shows PTQ better)."""
    images = min((len(c) for c in correct.values()), default=0)
    if images < 2:
        print(f"no paired comparisons: {images} validation image(s); hold out more to compare", file=sys.stderr)
        return
    for key, candidates in BASELINES.items():
        baseline = next((name for name in candidates if name in correct), None)
        for name in correct:
            if baseline is not None and name not in candidates:
                accuracy[name][key] = paired_difference(correct[name], correct[baseline]).to_json()


PROGRAM = {"qat-int8": "qat_pte", "ptq-int8": "ptq_pte", "fp32": "fp32_pte"}  # a program's key among the models
ROWS = [  # (report key, label)
    ("float", "float (PyTorch)"),
    ("qat", "QAT fake-quant (PyTorch)"),
    ("converted", "QAT int8 converted (PyTorch)"),
    ("ptq", "PTQ int8 (PyTorch)"),
    ("qat_pte", "qat-int8 .pte (ExecuTorch)"),
    ("ptq_pte", "ptq-int8 .pte (ExecuTorch)"),
    ("fp32_pte", "fp32 .pte (ExecuTorch)"),
]


def table(report: dict) -> str:
    """Markdown table of accuracy (with paired 95% intervals against fp32 and PTQ), size and latency."""
    accuracy, programs = report["accuracy"], report["programs"]
    lines = [
        "| model | top-1 | vs fp32, pt (95% interval) | vs PTQ, pt (95% interval) | top-5 | .pte size "
        "| latency p50 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in ROWS:
        if key not in accuracy and key not in programs:
            continue
        acc, prog = accuracy.get(key, {}), programs.get(key, {})
        if key == PROGRAM.get(report["quantization"]["scheme"]):
            label = f"**{label}** (this bundle)"
        lines.append(
            f"| {label} | {_pct(acc.get('top1'))} | {_vs(acc.get('vs_fp32'))} | {_vs(acc.get('vs_ptq'))} | "
            f"{_pct(acc.get('top5'))} | {_mb(prog.get('bytes'))} | {_ms(prog.get('latency_ms', {}).get('p50'))} |"
        )
    return "\n".join(lines)


def _vs(difference: dict | None) -> str:
    if difference is None:
        return ""
    figures = f"{100 * difference['delta']:+.2f} ({100 * difference['low']:+.2f}..{100 * difference['high']:+.2f})"
    return figures if difference["measurable"] else f"{figures} no measurable difference"


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}%"


def _mb(x: int | None) -> str:
    return "" if x is None else f"{x / 1e6:.2f} MB"


def _ms(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


PER_CLASS_SHOWN = 30  # classes listed and drawn; with more, the worst ones
MATRIX_MAX_CLASSES = 100  # the confusion counts go into report.json up to this many classes


def per_class(confusion: np.ndarray, labels: tuple[str, ...]) -> dict:
    """Each class's validation images, top-1 and the class it is most often taken for, from a confusion matrix."""
    images, hits = confusion.sum(1), np.diag(confusion)
    wrong = confusion - np.diag(hits)
    return {
        "labels": list(labels),
        "images": images.tolist(),
        "top1": [round(float(h / n), 4) if n else None for h, n in zip(hits, images, strict=True)],
        "taken_for": [labels[j] if wrong[i, j] else None for i, j in enumerate(wrong.argmax(1))],
        "confusion": confusion.tolist() if len(labels) <= MATRIX_MAX_CLASSES else None,
    }


def shown_classes(classes: dict) -> list[int]:
    """Every class in label order, or the PER_CLASS_SHOWN worst (by top-1) when there are more."""
    order = range(len(classes["labels"]))
    if len(order) <= PER_CLASS_SHOWN:
        return list(order)
    return sorted(order, key=lambda i: (classes["top1"][i] is not None, classes["top1"][i] or 0))[:PER_CLASS_SHOWN]


def per_class_table(classes: dict) -> str:
    shown = shown_classes(classes)
    worst = "" if len(shown) == len(classes["labels"]) else f", the {len(shown)} worst of {len(classes['labels'])}"
    lines = [
        f"Per class, this bundle's program on the validation images{worst}:",
        "",
        "| class | images | top-1 | most often taken for |",
        "|---|---:|---:|---|",
    ]
    lines += [
        f"| {classes['labels'][i]} | {classes['images'][i]} | {_pct(classes['top1'][i]) or '-'} | "
        f"{classes['taken_for'][i] or '-'} |"
        for i in shown
    ]
    return "\n".join(lines)


def markdown(report: dict, picture: str | None) -> str:
    """report.md: the comparison table, then the bundle's own program class by class, with its picture."""
    parts = [table(report)]
    parts += [f"{scheme} candidate left out: {why}" for scheme, why in report.get("left_out", {}).items()]
    if "per_class" in report:
        parts.append(per_class_table(report["per_class"]))
    if picture:
        parts.append(f"![confusion matrix and per-class top-1]({picture})")
    return "\n\n".join(parts) + "\n"
