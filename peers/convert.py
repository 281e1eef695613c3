"""One float model to every program the benchmark compares, each written into one folder.

Ours goes the way ``python -m export`` takes a float checkpoint: PT2E with the XNNPACK quantizer,
calibrated on the same images as the peers, lowered by ``export.lower.to_pte``. The peers:

- LiteRT (``litert-torch``): fp32, and int8 from PT2E with LiteRT's own quantizer (symmetric, per-channel
  weights, the same calibration images), both with NHWC input, the layout LiteRT programs take. The int8
  program is converted twice: with hard-swish as it is, and decomposed into ``x * relu6(x + 3) / 6``.
  LiteRT's XNNPACK delegate has no int8 HARD_SWISH, so only the decomposed graph stays in one partition.
- ONNX Runtime: fp32 from ``torch.onnx.export``, int8 from ``onnxruntime.quantization`` (static QDQ,
  per-channel int8 weights, int8 activations) on the same images.
- ncnn: fp32 through ``pnnx``. Its int8 path needs ncnn's ``ncnn2table``/``ncnn2int8`` tools, which the
  Python wheel does not ship, so there is no ncnn int8 program.

The folder also holds the images (``images.npy``, NCHW float32) and the eager model's logits on them
(``eager.npy``), which the checks on any machine compare with; ``programs.json`` lists the programs.
"""

import copy
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge.files import atomic_path
from edge.preprocess import InputSpec, Preprocessor

from .measure import PROGRAMS
from .runtimes import PeerError


@dataclass(frozen=True)
class Program:
    """One converted program: its file in the folder and what it is."""

    name: str  # the row's name in the table
    file: str
    runtime: str  # "ExecuTorch", "LiteRT", "ONNX Runtime", "ncnn"
    precision: str  # "int8" or "fp32"
    ours: bool = False


class HardSwish(nn.Module):
    """hard-swish as ``x * relu6(x + 3) / 6``: ops every int8 XNNPACK delegate has."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (nn.functional.relu6(x + 3.0) * (1.0 / 6.0))


class HardSigmoid(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu6(x + 3.0) * (1.0 / 6.0)


def decompose_hard_activations(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Hardswish``/``nn.Hardsigmoid`` decomposed (same function)."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Hardswish):
                setattr(module, name, HardSwish())
            elif isinstance(child, nn.Hardsigmoid):
                setattr(module, name, HardSigmoid())
    return model


def procedural_images(spec: InputSpec, count: int, seed: int) -> np.ndarray:
    """The project's procedural shapes, preprocessed as the edge app would: (count, 3, H, W) float32."""
    from training.procedural import CLASSES, render

    rng = np.random.default_rng(seed)
    prep = Preprocessor(spec)
    return np.concatenate(
        [prep(render(int(rng.integers(len(CLASSES))), rng, spec.resize)) for _ in range(count)]
    ).astype(np.float32)


def folder_images(spec: InputSpec, folder: Path, count: int) -> np.ndarray:
    """``count`` images spread over a folder's sorted files, preprocessed as the edge app would."""
    from edge.images import read_bgr
    from edge.paths import folder_images as listing

    paths = sorted(listing(folder).paths)
    if len(paths) < count:
        raise ValueError(f"{folder} has {len(paths)} images, the benchmark needs {count}: give a larger folder")
    picked = [paths[i * len(paths) // count] for i in range(count)]
    prep = Preprocessor(spec)
    return np.concatenate([prep(read_bgr(p), "BGR") for p in picked]).astype(np.float32)


def ours(model: nn.Module, calibration: np.ndarray, resolution: int, int8: bool) -> bytes:
    from export.lower import to_pte
    from training.qat import ptq

    if int8:
        loader = [(torch.from_numpy(x[None]), None) for x in calibration]
        model = ptq(model, resolution, loader)
    return to_pte(model, resolution)[0]


def litert(model: nn.Module, calibration: np.ndarray, resolution: int, int8: bool) -> bytes:
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    litert_torch.config.show_progress = False  # convert_all prints one line per program
    nhwc = litert_torch.to_channel_last_io(model.eval(), args=[0]).eval()
    example = (torch.zeros(1, resolution, resolution, 3),)
    if not int8:
        return litert_torch.convert(nhwc, example).model_content()
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    )
    graph = prepare_pt2e(torch.export.export(nhwc, example).module(), quantizer)
    with torch.no_grad():
        for x in calibration:
            graph(torch.from_numpy(x[None]).permute(0, 2, 3, 1))
    graph = convert_pt2e(graph, fold_quantize=False)
    graph.training = False  # exported from an eval model, its ops are eval ops: the flag is what LiteRT checks
    return litert_torch.convert(graph, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).model_content()


def onnx_fp32(model: nn.Module, resolution: int, out: Path) -> None:
    example = (torch.zeros(1, 3, resolution, resolution),)
    torch.onnx.export(
        model.eval(),
        example,
        str(out),
        input_names=["input"],
        output_names=["logits"],
        dynamo=True,
        external_data=False,
    )


def onnx_int8(fp32: Path, calibration: np.ndarray, out: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": x[None]} for x in calibration])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        str(fp32),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )


@contextmanager
def captured_output(log: Path) -> Iterator[None]:
    """pnnx prints every pass from C++ on the process's stdout and stderr: into ``log`` meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(log, "wb") as file:
            os.dup2(file.fileno(), 1)
            os.dup2(file.fileno(), 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def ncnn_fp32(model: nn.Module, resolution: int, out: Path) -> None:
    """pnnx writes its files beside the TorchScript it is given: run it in a scratch folder, keep the pair."""
    import pnnx

    with tempfile.TemporaryDirectory() as scratch:
        traced, log = Path(scratch) / "model.pt", Path(scratch) / "pnnx.log"
        with captured_output(log):
            pnnx.export(model.eval(), str(traced), (torch.zeros(1, 3, resolution, resolution),))
        if not (Path(scratch) / "model.ncnn.param").is_file():
            said = log.read_text(errors="replace").strip().splitlines() or ["no output"]
            raise RuntimeError(f"pnnx wrote no ncnn model: {said[-1][:300]}")
        shutil.copy(Path(scratch) / "model.ncnn.param", out)
        shutil.copy(Path(scratch) / "model.ncnn.bin", out.with_suffix(".bin"))


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def convert_all(
    model: nn.Module,
    images: np.ndarray,
    calibration: int,
    resolution: int,
    folder: Path,
    say: Callable[[str], None],
) -> list[Program]:
    """Write every program and the reference into ``folder``; the first ``calibration`` images calibrate."""
    model = model.eval()
    calib = images[:calibration]
    decomposed = decompose_hard_activations(model)
    steps: list[tuple[Program, Callable[[Path], None]]] = [
        (
            Program("ours int8", "ours-int8.pte", "ExecuTorch", "int8", True),
            lambda p: write_bytes(p, ours(model, calib, resolution, True)),
        ),
        (
            Program("ours fp32", "ours-fp32.pte", "ExecuTorch", "fp32", True),
            lambda p: write_bytes(p, ours(model, calib, resolution, False)),
        ),
        (
            Program("LiteRT int8, hard-swish decomposed", "litert-int8.tflite", "LiteRT", "int8"),
            lambda p: write_bytes(p, litert(decomposed, calib, resolution, True)),
        ),
        (
            Program("LiteRT int8, hard-swish kept", "litert-int8-hardswish.tflite", "LiteRT", "int8"),
            lambda p: write_bytes(p, litert(model, calib, resolution, True)),
        ),
        (
            Program("LiteRT fp32", "litert-fp32.tflite", "LiteRT", "fp32"),
            lambda p: write_bytes(p, litert(model, calib, resolution, False)),
        ),
        (
            Program("ONNX Runtime fp32", "onnx-fp32.onnx", "ONNX Runtime", "fp32"),
            lambda p: onnx_fp32(model, resolution, p),
        ),
        (
            Program("ONNX Runtime int8 (QDQ)", "onnx-int8.onnx", "ONNX Runtime", "int8"),
            lambda p: onnx_int8(folder / "onnx-fp32.onnx", calib, p),
        ),
        (Program("ncnn fp32", "ncnn-fp32.param", "ncnn", "fp32"), lambda p: ncnn_fp32(model, resolution, p)),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        eager = model(torch.from_numpy(images)).numpy()
    np.save(folder / "images.npy", images)
    np.save(folder / "eager.npy", eager)
    for i, (program, write) in enumerate(steps, 1):
        started = time.monotonic()
        say(f"[{i}/{len(steps)}] {program.name} ...")
        try:
            write(folder / program.file)
        except Exception as error:  # each converter is another project's: whatever it raises becomes one line
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            raise PeerError(f"converting {program.name} failed: {type(error).__name__}: {first}") from None
        say(
            f"[{i}/{len(steps)}] {program.name}: {(folder / program.file).stat().st_size / 1e6:.2f} MB "
            f"in {time.monotonic() - started:.0f} s"
        )
    programs = [program for program, _ in steps]
    (folder / PROGRAMS).write_text(json.dumps([asdict(p) for p in programs], indent=2) + "\n")
    return programs
