"""One loaded program per runtime, behind one interface: prepare an input, run, read logits.

Only numpy and the runtimes themselves are imported (each when first used), so this runs on a device.
``prepare`` puts an NCHW float32 image into the runtime's own input (layout, int8 quantisation) and
``logits`` turns its raw output into float32 logits: both outside the timed ``run``, which is the call
an application makes per frame.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.command import UserError

# What each file type is, and which runtime runs it.
RUNTIMES = {".pte": "ExecuTorch (our runner)", ".tflite": "LiteRT", ".onnx": "ONNX Runtime", ".param": "ncnn"}


class PeerError(UserError):
    """A program or runtime that cannot be used; the message says which and why."""


@dataclass
class Session:
    """A program loaded on its runtime with ``threads`` threads."""

    prepare: Callable[[np.ndarray], object]  # NCHW float32 (1, 3, H, W) -> the runtime's input
    run: Callable[[object], object]  # the timed call
    logits: Callable[[object], np.ndarray]  # raw output -> float32 logits, shape (classes,)


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: type) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def executorch(path: Path, threads: int) -> Session:
    from edge.bundle import APP_METHOD
    from edge.native import Runner

    runner = Runner(path.read_bytes(), threads, APP_METHOD)
    return Session(runner.laid_out, runner, lambda out: np.asarray(out).reshape(-1))


def litert(path: Path, threads: int) -> Session:
    """The LiteRT interpreter with its default XNNPACK delegate. An int8 program takes int8 NHWC input."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def prepare(x: np.ndarray) -> np.ndarray:
        nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1), np.float32)
        if inp["dtype"] == np.float32:
            return nhwc
        scale, zero_point = inp["quantization"]
        return quantize(nhwc, scale, zero_point, inp["dtype"])

    def run(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    def logits(raw: np.ndarray) -> np.ndarray:
        if out["dtype"] == np.float32:
            return raw.reshape(-1).astype(np.float32)
        scale, zero_point = out["quantization"]
        return ((raw.astype(np.float32) - zero_point) * scale).reshape(-1)

    return Session(prepare, run, logits)


def onnxruntime(path: Path, threads: int) -> Session:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return Session(
        lambda x: {name: np.ascontiguousarray(x, np.float32)},
        lambda feed: session.run(None, feed)[0],
        lambda out: np.asarray(out, np.float32).reshape(-1),
    )


def ncnn(path: Path, threads: int) -> Session:
    """ncnn from pnnx's param/bin pair: CHW input without the batch axis, one extractor per call.

    On ARM cores with half-precision arithmetic (a Pi 5's) ncnn computes in fp16 by default; the
    benchmark's row is fp32, so those options are off.
    """
    import ncnn as nc

    net = nc.Net()
    net.opt.num_threads = threads
    for option in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, option, False)
    if net.load_param(str(path)) != 0 or net.load_model(str(path.with_suffix(".bin"))) != 0:
        raise PeerError(f"ncnn cannot load {path} and its .bin")
    inputs, outputs = net.input_names(), net.output_names()

    def run(mat):
        extractor = net.create_extractor()
        extractor.input(inputs[0], mat)
        return extractor.extract(outputs[0])[1]

    return Session(
        lambda x: nc.Mat(np.ascontiguousarray(x[0], np.float32)),
        run,
        lambda out: np.array(out, np.float32).reshape(-1),
    )


LOADERS = {".pte": executorch, ".tflite": litert, ".onnx": onnxruntime, ".param": ncnn}


def load(path: Path, threads: int) -> Session:
    """The session for a program file; one line when its runtime is missing or refuses the file."""
    loader = LOADERS.get(path.suffix)
    if loader is None:
        raise PeerError(f"{path}: not a program of a known runtime ({', '.join(LOADERS)})")
    try:
        return loader(path, threads)
    except ImportError as error:
        raise PeerError(
            f"{RUNTIMES[path.suffix]} is not installed here ({error.name}): make bench-peers sets it up"
        ) from None
    except (RuntimeError, ValueError, OSError) as error:
        if isinstance(error, PeerError):
            raise
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise PeerError(f"{RUNTIMES[path.suffix]} cannot load {path.name}: {first[:300]}") from None
