"""Export a training checkpoint to a verified ExecuTorch bundle.

    python -m export CHECKPOINT [--precision int8|fp32] [--out artifacts/<model>]

A QAT checkpoint gives ``qat-int8``; a float checkpoint gives ``ptq-int8`` (int8)
or ``fp32``. The bundle is written only after the program passes verification:
runtime-vs-PyTorch parity on held-out images and every conv/linear in XNNPACK.
"""
import argparse
import hashlib
import io
import json
import sys
import time
from functools import partial
from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np

from edge.bundle import BundleError, BundleMeta, check_replaceable, write_bundle
from edge.command import fraction, positive_int
from edge.native import NativeError, Runner
from edge.parity import EXPORT_MIN_AGREEMENT, logit_tolerance
from edge.preprocess import InputSpec, Preprocessor
from training.checkpoint import CheckpointError, load_module
from training.data import DataError, ImageDataModule
from training.models import WeightsError
from training.qat import QATClassifier, ptq

from .lower import to_pte
from .report import evaluate, table
from .verify import VerificationError, check_delegation, check_parity, latency_ms, load_program, run_pte

GOLDEN_IMAGES = 8


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a .ckpt written by `make train` or `make qat`")
    parser.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    parser.add_argument("--out", type=Path, help="bundle directory (default: artifacts/<arch>)")
    parser.add_argument("--calibration-images", type=positive_int, default=512, help="training images for PTQ")
    parser.add_argument("--parity-images", type=positive_int, default=1000, help="held-out images for runtime parity")
    parser.add_argument("--min-agreement", type=fraction, default=EXPORT_MIN_AGREEMENT,
                        help=f"runtime/PyTorch top-1 agreement (default {EXPORT_MIN_AGREEMENT})")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false",
                        help="skip the float, PTQ and fp32 comparisons (faster; the report has only this program)")
    return parser.parse_args(argv)


def float_module_of(module, checkpoint: dict):
    """The float model a QAT run started from, when its checkpoint is still there (for the baselines)."""
    if not isinstance(module, QATClassifier):
        return module
    path = checkpoint["hyper_parameters"].get("float_checkpoint")
    return load_module(path)[0] if path and Path(path).is_file() else None


REFERENCE = {"qat-int8": "converted", "ptq-int8": "ptq", "fp32": "float"}  # the model each program is lowered from
GOLDEN_FRAME_SIZES = ((53, 37), (67, 101), (160, 120), (45, 45))  # odd and non-square (width, height)


def build(args: argparse.Namespace, module, checkpoint: dict) -> tuple[BundleMeta, dict[str, bytes], dict]:
    """Reference models -> lower and verify -> describe -> golden: the bundle's files and the report."""
    scheme = scheme_of(module, args)
    data = ImageDataModule(**{k: v for k, v in checkpoint["datamodule_hyper_parameters"].items() if k[0] != "_"})
    data.setup("fit")
    spec = InputSpec(**checkpoint["data"]["input"])
    models = reference_models(args, module, checkpoint, scheme, data, spec.size)
    pte_bytes, delegation, programs, runner = lower(models, scheme, spec.size, args.baselines)

    reference = REFERENCE[scheme]
    accuracy, kept = evaluate(models, data.val_dataloader(), len(data.labels),
                              keep={reference: args.parity_images, "pte": args.parity_images})
    parity = check_parity(kept["pte"], kept[reference], args.min_agreement,
                          logit_tolerance(kept[reference].numpy(), scheme))
    meta = describe(args, module.hparams, checkpoint, scheme, spec, pte_bytes, parity["logit_tolerance"])
    report = {"name": meta.name, "quantization": meta.quantization, "val_images": accuracy["pte"]["n"],
              "accuracy": accuracy, "programs": programs, "parity": parity, "delegation": delegation.to_json()}
    inputs, logits = kept["inputs"][:GOLDEN_IMAGES].numpy(), kept["pte"][:GOLDEN_IMAGES].numpy()
    files = {meta.pte: pte_bytes, meta.golden: golden(inputs, logits, runner, spec),
             "report.json": _json(report), "report.md": (table(report) + "\n").encode()}
    return meta, files, report


def scheme_of(module, args: argparse.Namespace) -> str:
    if isinstance(module, QATClassifier):
        if args.precision == "fp32":
            raise CheckpointError(f"{args.checkpoint} is a QAT checkpoint; export its float checkpoint for fp32")
        return "qat-int8"
    return {"int8": "ptq-int8", "fp32": "fp32"}[args.precision]


def reference_models(args: argparse.Namespace, module, checkpoint: dict, scheme: str, data, size: int) -> dict:
    """The PyTorch models evaluated beside the program: the one it is lowered from, and the baselines."""
    is_qat = scheme == "qat-int8"
    models = {}
    float_module = float_module_of(module, checkpoint) if args.baselines or not is_qat else None
    if float_module is not None and (args.baselines or scheme == "fp32"):
        models["float"] = float_module
    if is_qat:
        models["qat"] = module
        models["converted"] = module.convert()
    if float_module is not None and (scheme == "ptq-int8" or args.baselines and scheme != "fp32"):
        print(f"PTQ: calibrating on {args.calibration_images} training images", file=sys.stderr)
        models["ptq"] = ptq(float_module.model, size, data.calibration_dataloader(args.calibration_images))
    return models


def lower(models: dict, scheme: str, size: int, baselines: bool) -> tuple[bytes, object, dict, Runner]:
    """Lower the reference to a program (and the float model too, for comparison), check delegation,
    time both; ``models`` gains ``pte`` (and ``fp32_pte``) as runtime-backed models. Returns the
    program, its delegation, the programs' figures and the program loaded on the native runner."""
    print(f"lowering {scheme} to ExecuTorch/XNNPACK", file=sys.stderr)
    pte_bytes, delegation = to_pte(models[REFERENCE[scheme]], size)
    print(delegation.summary(), file=sys.stderr)
    check_delegation(delegation)
    runners, programs = {"pte": load_program(pte_bytes)}, {"pte": {"bytes": len(pte_bytes)}}
    if baselines and scheme != "fp32" and "float" in models:
        print("lowering fp32 for comparison", file=sys.stderr)
        fp32_bytes, _ = to_pte(models["float"].model, size)
        runners["fp32_pte"], programs["fp32_pte"] = load_program(fp32_bytes), {"bytes": len(fp32_bytes)}
    for name, runner in runners.items():
        programs[name]["latency_ms"] = latency_ms(runner, size)
        models[name] = partial(run_pte, runner)
    return pte_bytes, delegation, programs, runners["pte"]


def describe(args, hp, checkpoint: dict, scheme: str, spec: InputSpec, pte_bytes: bytes,
             tolerance: float) -> BundleMeta:
    return BundleMeta(
        name=f"{hp.arch}-{hp.width_mult:g}-{spec.size}-{scheme}", arch=hp.arch, width_mult=hp.width_mult,
        num_classes=hp.num_classes, labels=tuple(checkpoint["data"]["labels"]), input=spec,
        quantization={"scheme": scheme} | ({} if scheme == "fp32" else {
            "weights": "int8 symmetric per-channel", "activations": "int8 affine per-tensor"}),
        pte_sha256=hashlib.sha256(pte_bytes).hexdigest(), golden_logit_tolerance=tolerance,
        source_checkpoint=str(args.checkpoint), source_checkpoint_sha256=file_sha256(args.checkpoint),
        versions={pkg: version(pkg) for pkg in ("torch", "executorch", "torchao")},
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def golden(inputs: np.ndarray, logits: np.ndarray, runner: Runner, spec: InputSpec) -> bytes:
    """golden.npz: preprocessed inputs with the program's logits, and raw BGR frames of odd sizes (made
    from the same images) with the logits the program gives for their preprocessing here, so a device
    checks its own OpenCV resize and crop as well as its runtime."""
    rgb = inputs.transpose(0, 2, 3, 1) * np.array(spec.std) + np.array(spec.mean)
    rgb = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
    frames = [np.ascontiguousarray(cv2.resize(rgb[i % len(rgb)], size, interpolation=cv2.INTER_LINEAR)[..., ::-1])
              for i, size in enumerate(GOLDEN_FRAME_SIZES)]
    preprocess = Preprocessor(spec)
    frame_logits = np.concatenate([runner(preprocess(f, order="BGR")) for f in frames])
    buffer = io.BytesIO()
    np.savez(buffer, inputs=inputs, logits=logits, frame_logits=frame_logits,
             **{f"frame_{i}": frame for i, frame in enumerate(frames)})
    return buffer.getvalue()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _json(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.out:
            check_replaceable(args.out)  # before loading, minutes of work, and again when writing
        module, checkpoint = load_module(args.checkpoint)
        out = args.out or Path("artifacts") / module.hparams.arch
        check_replaceable(out)
        meta, files, report = build(args, module, checkpoint)
        write_bundle(out, meta, files)
    except (BundleError, CheckpointError, DataError, NativeError, WeightsError, VerificationError) as e:
        sys.exit(f"error: {e}")
    parity = report["parity"]
    print(f"\n{meta.name} on {report['val_images']} validation images; runtime vs PyTorch on "
          f"{parity['images']}: top-1 agreement {100 * parity['top1_agreement']:.1f}% "
          f"({100 * parity['top1_agreement_within_tolerance']:.1f}% within tolerance), "
          f"max logit difference {parity['max_abs_logit_diff']:.3f}")
    print(table(report))
    print(f"bundle: {out}/ ({', '.join(meta.files)})")
