"""Training throughput (images/s) of every model at several input sizes, on this machine's CPU.

    python -m training.bench [--models v1 v2] [--resolutions 64 128 224] [--batch-size 32]

One training step is forward, cross-entropy, backward and an SGD update on a
random batch, so data loading is excluded: this is the model's cost.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from tqdm import tqdm

from edge.command import HelpFormatter, positive_float, positive_int

from .models import MODELS, create_model


def throughput(name: str, resolution: int, batch_size: int, seconds: float, warmup: int = 2) -> float:
    model = create_model(name, num_classes=1000).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch_size, 3, resolution, resolution), torch.randint(0, 1000, (batch_size,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    steps, start = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.bench", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--resolutions", nargs="+", type=positive_int, default=[64, 128, 224])
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--seconds", type=positive_float, default=5.0, help="timed duration per cell")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/train.json"))
    args = parser.parse_args()
    cells = [(m, r) for m in args.models for r in args.resolutions]
    results = {f"{m}@{r}": throughput(m, r, args.batch_size, args.seconds) for m, r in tqdm(cells, desc="bench-train")}
    header = "| model | " + " | ".join(f"{r} px" for r in args.resolutions) + " |"
    lines = [header, "|---" * (len(args.resolutions) + 1) + "|"] + [
        f"| {m} | " + " | ".join(f"{results[f'{m}@{r}']:.0f}" for r in args.resolutions) + " |" for m in args.models
    ]
    print(
        f"training images/s, batch {args.batch_size}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"batch_size": args.batch_size, "threads": torch.get_num_threads(), "images_per_s": results}, indent=2
        )
    )


if __name__ == "__main__":
    main()
