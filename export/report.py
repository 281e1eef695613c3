"""Accuracy of every form of the model on the validation set, paired comparisons, and the table people compare."""
from collections.abc import Callable

import numpy as np
import torch
from torchmetrics.classification import MulticlassAccuracy
from tqdm import tqdm

from .paired import paired_difference


@torch.no_grad()
def evaluate(models: dict[str, Callable[[torch.Tensor], torch.Tensor]], loader, num_classes: int,
             keep: dict[str, int] | None = None) -> tuple[dict[str, dict], dict[str, torch.Tensor], dict]:
    """Top-1/top-5 of each model in one pass over ``loader``, each model's per-image top-1 correctness (for
    paired comparisons), and the first N logits of the models in ``keep``, with their inputs."""
    keep = keep or {}
    correct: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    top1 = {name: MulticlassAccuracy(num_classes, top_k=1, average="micro") for name in models}
    top5 = {name: MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro") for name in models}
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
            correct[name].append(logits.argmax(1) == y)
            if name in keep and keep[name] > count:
                kept[name].append(logits[: keep[name] - count])
        count += len(y)
    kept_tensors = {name: torch.cat(parts) for name, parts in kept.items()}
    if inputs:
        kept_tensors["inputs"] = torch.cat(inputs)
    metrics = {name: {"top1": top1[name].compute().item(), "top5": top5[name].compute().item(), "n": count}
               for name in models}
    return metrics, kept_tensors, {name: torch.cat(parts).numpy() for name, parts in correct.items()}


BASELINES = {"vs_fp32": ("fp32_pte", "float"), "vs_ptq": ("ptq_pte", "ptq")}  # the program if built, else PyTorch


def add_comparisons(accuracy: dict[str, dict], correct: dict[str, np.ndarray]) -> None:
    """Each model against fp32 and against PTQ, paired on the same images, into ``accuracy[model]``."""
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
    lines = ["| model | top-1 | vs fp32, pt (95% interval) | vs PTQ, pt (95% interval) | top-5 | .pte size "
             "| latency p50 (ms) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for key, label in ROWS:
        if key not in accuracy and key not in programs:
            continue
        acc, prog = accuracy.get(key, {}), programs.get(key, {})
        if key == PROGRAM.get(report["quantization"]["scheme"]):
            label = f"**{label}** (this bundle)"
        lines.append(
            f"| {label} | {_pct(acc.get('top1'))} | {_vs(acc.get('vs_fp32'))} | {_vs(acc.get('vs_ptq'))} | "
            f"{_pct(acc.get('top5'))} | {_mb(prog.get('bytes'))} | {_ms(prog.get('latency_ms', {}).get('p50'))} |")
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
