"""Export as one linear flow over plain values, as ExecuTorch's ``aot_compiler.py`` reads: load the
checkpoint, build the reference models, lower, evaluate and compare, verify, describe, write.

``export(plan)`` is the whole of ``python -m export`` after its parser (export/cli.py); the pipeline calls
it the same way. Nothing here reads a command line.
"""

import hashlib
import io
import json
import shutil
import sys
import time
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np
import torch

from edge.bundle import (
    APP_METHOD,
    BUNDLED_PROGRAM,
    CONFUSION_PICTURE,
    BundleMeta,
    check_replaceable,
    declare_methods,
    sole_writer,
    write_bundle,
)
from edge.native import NativeError, Runner
from edge.parity import logit_tolerance
from edge.preprocess import InputSpec, Preprocessor
from training.checkpoint import CheckpointError
from training.data import ImageDataModule
from training.module import ImageClassifier
from training.qat import QATClassifier, ptq
from training.restore import load_module

from .bundled import bundled_program, check_bundled_program
from .lower import METHODS, Delegation, activation_scales, to_pte
from .paired import Difference
from .pictures import confusion_png
from .report import PROGRAM, add_comparisons, evaluate, markdown, per_class, table
from .verify import VerificationError, check_delegation, check_parity, latency_ms, load_program, run_pte

GOLDEN_IMAGES = 8


@dataclass(frozen=True)
class Plan:
    """What to export and how; the defaults are the parser's (export/cli.py)."""

    checkpoint: Path
    precision: str  # int8 or fp32
    out: Path | None  # None: artifacts/<arch>
    calibration_images: int  # training images PTQ calibrates on
    parity_images: int  # held-out images for runtime/PyTorch parity
    min_agreement: float  # share of parity images whose logits must agree
    baselines: bool  # the float, PTQ and fp32 comparisons
    candidates: bool  # QAT and PTQ bundles beside OUT, the better shipped


def float_module_of(module, checkpoint: dict):
    """The float model a QAT run started from, when its checkpoint is still there (for the baselines)."""
    if not isinstance(module, QATClassifier):
        return module
    path = checkpoint["hyper_parameters"].get("float_checkpoint")
    return load_module(path)[0] if path and Path(path).is_file() else None


CANDIDATES = ("qat-int8", "ptq-int8")  # make qat's two bundles, OUT-qat and OUT-ptq
REFERENCE = {"qat-int8": "converted", "ptq-int8": "ptq", "fp32": "float"}  # the model each program is lowered from
GOLDEN_FRAME_SIZES = ((53, 37), (67, 101), (160, 120), (45, 45))  # odd and non-square (width, height)


@dataclass
class Program:
    """A lowered program, its app method loaded on the native runner."""

    pte: bytes
    delegation: Delegation
    runner: Runner


def build(plan: Plan, module, checkpoint: dict) -> dict[str, tuple[BundleMeta, dict, dict]]:
    """Reference models -> lower -> evaluate and compare -> verify and describe each bundle -> golden.

    Returns ``{scheme: (meta, files, report)}`` for each bundle: the checkpoint's scheme first, and
    PTQ's too with ``--candidates``. The reports share the accuracy table.
    """
    scheme = scheme_of(module, plan)
    data = ImageDataModule(**{k: v for k, v in checkpoint["datamodule_hyper_parameters"].items() if k[0] != "_"})
    data.setup("fit")
    spec = InputSpec(**checkpoint["data"]["input"])
    models = reference_models(plan, module, checkpoint, scheme, data, spec.size)
    bundled = [scheme] + (["ptq-int8"] if plan.candidates and scheme == "qat-int8" and "ptq" in models else [])
    compared = [s for s in ("ptq-int8", "fp32") if plan.baselines and REFERENCE[s] in models]
    # A bundle's program has every method; one that is only compared needs the app's alone.
    programs = {
        s: lower(models[REFERENCE[s]], s, spec.size, METHODS if s in bundled else (APP_METHOD,))
        for s in dict.fromkeys(bundled + compared)
    }
    for s, program in programs.items():
        models[PROGRAM[s]] = partial(run_pte, program.runner)

    keep = {key: plan.parity_images for s in bundled for key in (REFERENCE[s], PROGRAM[s])}
    accuracy, kept, correct, confusion = evaluate(models, data.val_dataloader(), len(data.labels), keep=keep)
    add_comparisons(accuracy, correct)
    report = {
        "val_images": accuracy[PROGRAM[scheme]]["n"],
        "accuracy": accuracy,
        "programs": {
            PROGRAM[s]: {"bytes": len(p.pte), "latency_ms": latency_ms(p.runner, spec.size)}
            for s, p in programs.items()
        },
    }
    parities, left_out = verify_candidates(bundled, kept, plan.min_agreement)
    if left_out:
        report["left_out"] = left_out
    bundles = {}
    for s, parity in parities.items():
        program = kept[PROGRAM[s]]
        meta = describe(plan, module.hparams, checkpoint, s, spec, programs[s].pte, parity["logit_tolerance"])
        report_s = {
            "name": meta.name,
            "quantization": meta.quantization,
            **report,
            "parity": parity,
            "delegation": programs[s].delegation.to_json(),
            "per_class": per_class(confusion[PROGRAM[s]], meta.labels),
        }
        inputs, logits = kept["inputs"][:GOLDEN_IMAGES].numpy(), program[:GOLDEN_IMAGES].numpy()
        bpte = bundled_program(programs[s].pte, inputs, logits)
        check_bundled_program(bpte, len(inputs), meta.golden_logit_tolerance)
        picture = confusion_png(
            report_s["per_class"], f"{meta.name}: the .pte on {report['val_images']} validation images"
        )
        bundles[s] = (
            meta,
            {
                meta.pte: programs[s].pte,
                meta.golden: golden(inputs, logits, programs[s].runner, spec),
                BUNDLED_PROGRAM: bpte,
                "report.json": _json(report_s),
                CONFUSION_PICTURE: picture,
                "report.md": markdown(report_s, CONFUSION_PICTURE).encode(),
            },
            report_s,
        )
    return bundles


def verify_candidates(bundled: list[str], kept: dict, min_agreement: float) -> tuple[dict, dict[str, str]]:
    """Each program's parity with its PyTorch model, and the reason of each left out. The first (the
    checkpoint's own) must pass; another candidate that fails is left out, as make qat can still ship the first."""
    parities, left_out = {}, {}
    for s in bundled:
        reference = kept[REFERENCE[s]]
        try:
            parities[s] = check_parity(
                kept[PROGRAM[s]], reference, min_agreement, logit_tolerance(reference.numpy(), s)
            )
        except VerificationError as e:
            if s == bundled[0]:
                raise
            left_out[s] = str(e)
            print(f"{s} candidate left out: {e}", file=sys.stderr)
    return parities, left_out


def scheme_of(module, plan: Plan) -> str:
    if isinstance(module, QATClassifier):
        if plan.precision == "fp32":
            raise CheckpointError(f"{plan.checkpoint} is a QAT checkpoint; export its float checkpoint for fp32")
        return "qat-int8"
    if plan.candidates:
        raise CheckpointError(f"--candidates compares QAT with PTQ: give a QAT checkpoint, not {plan.checkpoint}")
    return {"int8": "ptq-int8", "fp32": "fp32"}[plan.precision]


def reference_models(plan: Plan, module, checkpoint: dict, scheme: str, data, size: int) -> dict:
    """The PyTorch models evaluated beside the program: the one it is lowered from, and the baselines."""
    is_qat = scheme == "qat-int8"
    models = {}
    wants_float = plan.baselines or plan.candidates or not is_qat
    float_module = float_module_of(module, checkpoint) if wants_float else None
    if float_module is None and plan.candidates:
        print("no PTQ candidate: the float checkpoint this QAT run started from is not at hand", file=sys.stderr)
    if float_module is not None and (plan.baselines or scheme == "fp32"):
        models["float"] = float_module
    if is_qat:
        models["qat"] = module
        models["converted"] = module.convert()
    if float_module is not None and (scheme == "ptq-int8" or (plan.baselines or plan.candidates) and is_qat):
        print(f"PTQ: calibrating on {plan.calibration_images} training images", file=sys.stderr)
        models["ptq"] = ptq(float_module.model, size, data.calibration_dataloader(plan.calibration_images))
    return models


def lower(model, scheme: str, size: int, methods: tuple[str, ...]) -> Program:
    """Lower ``model`` to a program of ``methods``, check that XNNPACK took every weighted layer, load the app's."""
    print(f"lowering {scheme} to ExecuTorch/XNNPACK ({', '.join(methods)})", file=sys.stderr)
    pte, delegation = to_pte(model.model if isinstance(model, ImageClassifier) else model, size, methods)
    print(f"{scheme}: {delegation.summary()}", file=sys.stderr)
    check_delegation(delegation)
    try:
        return Program(pte, delegation, load_program(pte, APP_METHOD))
    except NativeError as e:
        scales = activation_scales(model) if isinstance(model, torch.fx.GraphModule) else None
        if scales is None:
            raise
        raise VerificationError(
            f"XNNPACK would not load the {scheme} program ({e}); its int8 activation scales span {scales[0]:.2g} "
            f"to {scales[1]:.2g}. Seen here with a barely trained QAT model whose scales span 1e5: its kernels "
            "refuse scales out of their range. Train longer or with a lower learning rate (the run's curves.png "
            "shows a diverged run)"
        ) from None


def choose(bundles: dict[str, tuple]) -> tuple[str, str]:
    """The bundle to ship, QAT's unless PTQ is measurably better on validation, and one line saying so."""
    report = next(iter(bundles.values()))[2]
    qat = report["accuracy"].get(PROGRAM["qat-int8"], {}).get("vs_ptq")
    if "ptq-int8" not in bundles or qat is None:
        return next(iter(bundles)), ""
    difference = Difference(**{k: qat[k] for k in ("delta", "low", "high", "changed")})
    if difference.high < 0:
        return "ptq-int8", f"PTQ int8 is measurably better than QAT int8 on validation (QAT {difference}): shipping PTQ"
    return "qat-int8", f"QAT int8 vs PTQ int8 on validation: {difference}: shipping QAT"


def describe(
    plan: Plan, hp, checkpoint: dict, scheme: str, spec: InputSpec, pte_bytes: bytes, tolerance: float
) -> BundleMeta:
    return BundleMeta(
        name=f"{hp.arch}-{hp.width_mult:g}-{spec.size}-{scheme}",
        arch=hp.arch,
        width_mult=hp.width_mult,
        num_classes=hp.num_classes,
        labels=tuple(checkpoint["data"]["labels"]),
        input=spec,
        quantization={"scheme": scheme}
        | (
            {}
            if scheme == "fp32"
            else {"weights": "int8 symmetric per-channel", "activations": "int8 affine per-tensor"}
        ),
        pte_sha256=hashlib.sha256(pte_bytes).hexdigest(),
        golden_logit_tolerance=tolerance,
        source_checkpoint=str(plan.checkpoint),
        source_checkpoint_sha256=file_sha256(plan.checkpoint),
        versions={pkg: version(pkg) for pkg in ("torch", "executorch", "torchao")},
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        method=APP_METHOD,
        methods=declare_methods(pte_bytes, METHODS),
    )


def golden(inputs: np.ndarray, logits: np.ndarray, runner: Runner, spec: InputSpec) -> bytes:
    """golden.npz: preprocessed inputs with the program's logits, and raw BGR frames of odd sizes (made
    from the same images) with the logits the program gives for their preprocessing here, so a device
    checks its own OpenCV resize and crop as well as its runtime."""
    rgb = inputs.transpose(0, 2, 3, 1) * np.array(spec.std) + np.array(spec.mean)
    rgb = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
    frames = [
        np.ascontiguousarray(cv2.resize(rgb[i % len(rgb)], size, interpolation=cv2.INTER_LINEAR)[..., ::-1])
        for i, size in enumerate(GOLDEN_FRAME_SIZES)
    ]
    preprocess = Preprocessor(spec)
    frame_logits = np.concatenate([runner(preprocess(f, order="BGR")) for f in frames])
    buffer = io.BytesIO()
    np.savez(
        buffer,
        inputs=inputs,
        logits=logits,
        frame_logits=frame_logits,
        **{f"frame_{i}": frame for i, frame in enumerate(frames)},
    )
    return buffer.getvalue()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _json(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def candidate_dir(out: Path, scheme: str) -> Path:
    return out.with_name(f"{out.name}-{scheme.split('-')[0]}")


def export(plan: Plan) -> None:
    """Export ``plan``: the bundle (and the candidates) written only once verified, then its table printed."""
    if plan.out:
        for path in outputs(plan.out, plan.candidates):
            check_replaceable(path)  # before loading, minutes of work, and again when writing
    module, checkpoint = load_module(plan.checkpoint)
    out = plan.out or Path("artifacts") / module.hparams.arch
    with sole_writer(out):  # a second export to OUT stops here, before the work
        for path in outputs(out, plan.candidates):
            check_replaceable(path)
        bundles = build(plan, module, checkpoint)
        shipped, why = choose(bundles)
        if plan.candidates:
            write_candidates(out, bundles)
        meta, files, report = bundles[shipped]
        write_bundle(out, meta, files)
    parity = report["parity"]
    print(
        f"\n{meta.name} on {report['val_images']} validation images; runtime vs PyTorch on "
        f"{parity['images']}: {100 * parity['agreement']:.1f}% agree within tolerance (top-1 agreement "
        f"{100 * parity['top1_agreement']:.1f}%), max logit difference {parity['max_abs_logit_diff']:.3f}"
    )
    print(table(report))
    if plan.candidates:
        print(f"candidates: {', '.join(str(candidate_dir(out, s)) for s in bundles)}")
    if why:
        print(why)
    print(f"bundle: {out}/ ({', '.join([meta.files[0], *files])})")


def write_candidates(out: Path, bundles: dict[str, tuple]) -> None:
    """OUT-qat and OUT-ptq; a candidate left out loses an earlier run's bundle there (checked replaceable), so
    that what sits beside OUT is always this run's."""
    for scheme in CANDIDATES:
        path = candidate_dir(out, scheme)
        if scheme in bundles:
            meta, files, _ = bundles[scheme]
            write_bundle(path, meta, files)
        elif path.is_dir():
            shutil.rmtree(path)
            print(f"removed {path}: the {scheme} candidate of an earlier run", file=sys.stderr)


def outputs(out: Path, candidates: bool) -> list[Path]:
    return [out] + ([candidate_dir(out, s) for s in CANDIDATES] if candidates else [])
