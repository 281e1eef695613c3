"""Export a training checkpoint to a verified ExecuTorch bundle.

    python -m export CHECKPOINT [--precision int8|fp32] [--out artifacts/<model>]

A QAT checkpoint gives ``qat-int8``; a float checkpoint gives ``ptq-int8`` (int8)
or ``fp32``. The bundle is written only after the program passes verification:
runtime-vs-PyTorch parity on held-out images and every conv/linear in XNNPACK.
Every model is compared with fp32 and with PTQ on the same validation images, with
paired 95% intervals; ``--candidates`` (make qat) ships PTQ when it is measurably better.

The parser only: the flow is export/flow.py.
"""

import argparse
from pathlib import Path

from edge.command import fraction, positive_int, with_examples
from edge.parity import EXPORT_MIN_AGREEMENT

from .flow import Plan, export


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description=__doc__.splitlines()[0],
        **with_examples(
            "python -m export runs/v3_small/qat/checkpoints/best.ckpt --candidates",
            "python -m export runs/v3_small/checkpoints/best.ckpt --out artifacts/v3_small_ptq",
            "python -m export runs/v3_small/checkpoints/best.ckpt --precision fp32 --no-baselines",
        ),
    )
    parser.add_argument("checkpoint", type=Path, help="a .ckpt written by `make train` or `make qat`")
    parser.add_argument(
        "--precision",
        choices=["int8", "fp32"],
        default="int8",
        help="int8: the QAT model converted, or a float one quantized after training (PTQ); fp32: the float program",
    )
    parser.add_argument("--out", type=Path, help="bundle directory (default: artifacts/<arch>)")
    parser.add_argument(
        "--calibration-images", type=positive_int, default=512, help="training images PTQ calibrates on"
    )
    parser.add_argument(
        "--parity-images",
        type=positive_int,
        default=1000,
        help="held-out images for runtime/PyTorch parity",
    )
    parser.add_argument(
        "--min-agreement",
        type=fraction,
        default=EXPORT_MIN_AGREEMENT,
        help="share of parity images whose logits must agree",
    )
    parser.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="skip the float, PTQ and fp32 comparisons (faster; the report has only this program; default: compare)",
    )
    parser.add_argument(
        "--candidates",
        action="store_true",
        help="QAT checkpoint: write the QAT and the PTQ bundle to OUT-qat and OUT-ptq, and copy to "
        "OUT the QAT one, unless PTQ is measurably better on validation (default: one bundle)",
    )
    return parser


def parse_args(argv: list[str] | None) -> Plan:
    return Plan(**vars(build_parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    export(parse_args(argv))
