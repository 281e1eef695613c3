"""Accuracy of every form of the model on the validation set, and the table people compare."""
from collections.abc import Callable

import torch
from torchmetrics.classification import MulticlassAccuracy
from tqdm import tqdm


@torch.no_grad()
def evaluate(models: dict[str, Callable[[torch.Tensor], torch.Tensor]], loader, num_classes: int,
             keep: dict[str, int] | None = None) -> tuple[dict[str, dict], dict[str, torch.Tensor]]:
    """Top-1/top-5 of each model in one pass over ``loader``; ``keep`` retains the first N logits per model."""
    keep = keep or {}
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
            if name in keep and keep[name] > count:
                kept[name].append(logits[: keep[name] - count])
        count += len(y)
    kept_tensors = {name: torch.cat(parts) for name, parts in kept.items()}
    if inputs:
        kept_tensors["inputs"] = torch.cat(inputs)
    metrics = {name: {"top1": top1[name].compute().item(), "top5": top5[name].compute().item(), "n": count}
               for name in models}
    return metrics, kept_tensors


ROWS = [  # (report key, label)
    ("float", "float (PyTorch)"),
    ("qat", "QAT fake-quant (PyTorch)"),
    ("converted", "QAT int8 converted (PyTorch)"),
    ("ptq", "PTQ int8 (PyTorch)"),
    ("pte", "bundle .pte (ExecuTorch)"),
    ("fp32_pte", "fp32 .pte (ExecuTorch)"),
]


def table(report: dict) -> str:
    """Markdown table of accuracy, size and latency for each form of the model."""
    accuracy, programs = report["accuracy"], report["programs"]
    lines = ["| model | top-1 | top-5 | .pte size | latency p50 (ms) |", "|---|---:|---:|---:|---:|"]
    for key, label in ROWS:
        if key not in accuracy and key not in programs:
            continue
        acc, prog = accuracy.get(key, {}), programs.get(key, {})
        label = label.replace("bundle", report["quantization"]["scheme"])
        lines.append(
            f"| {label} | {_pct(acc.get('top1'))} | {_pct(acc.get('top5'))} | "
            f"{_mb(prog.get('bytes'))} | {_ms(prog.get('latency_ms', {}).get('p50'))} |")
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}%"


def _mb(x: int | None) -> str:
    return "" if x is None else f"{x / 1e6:.2f} MB"


def _ms(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"
