"""ctypes binding of runner.cpp: load a .pte from bytes, run float32 arrays through it.

ctypes releases the GIL for each call, so other Python threads (capture, the web server) keep
running while a frame is inferred; the C++ side serialises what the shared thread pool requires.
"""

import ctypes
import platform
import threading
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .build import NativeError, library_path, runtime_lib_dir

MAX_DIMS = 8
MAX_THREADS = 1024  # the C ABI takes a uint32; a count past any CPU's cores is a typo, not a wish
# ELF e_machine -> platform.machine(): a build for another CPU gets a clear message, not dlopen's.
ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "armv7l", 243: "riscv64"}
CODES = {
    1: "not a program",
    2: "load failed",
    3: "unsupported program",
    4: "bad input",
    5: "execute failed",
    6: "the runner is closed",
}


def check_elf(path: Path) -> None:
    head = path.read_bytes()[:20]
    if head[:4] != b"\x7fELF" or len(head) < 20:
        raise NativeError(f"{path} is not a shared library: rebuild it with python -m edge.native --force")
    built_for = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    here = {"arm64": "aarch64"}.get(platform.machine(), platform.machine())
    if here in ELF_MACHINES.values() and ELF_MACHINES.get(built_for) != here:
        raise NativeError(
            f"{path} is built for {ELF_MACHINES.get(built_for, f'ELF machine {built_for}')}, not "
            f"{here}: rebuild it here with python -m edge.native --force"
        )


@cache
def library() -> ctypes.CDLL:
    """The runner for this environment and source, loaded once per process."""
    path = library_path()
    if not path.is_file():
        raise NativeError(
            "the native runner is not built for this Python environment: run `make setup` (or python -m edge.native)"
        )
    runtime_lib_dir()  # a clear line when the wheel's libraries went missing since the build
    check_elf(path)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise NativeError(
            f"cannot load the native runner {path}: {e}; rebuild it with python -m edge.native --force"
        ) from None
    error = (ctypes.c_char_p, ctypes.c_size_t)
    lib.edge_runner_open.argtypes = (
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_char_p,
        ctypes.c_uint32,
        ctypes.POINTER(ctypes.c_void_p),
        *error,
    )
    lib.edge_runner_shape.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int64), ctypes.c_int)
    lib.edge_runner_dim_order.argtypes = lib.edge_runner_shape.argtypes
    lib.edge_runner_run.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
    lib.edge_runner_error.argtypes = error
    lib.edge_runner_error.restype = ctypes.c_size_t
    lib.edge_runner_pool_threads.restype = ctypes.c_uint32
    lib.edge_runner_plan_counts.argtypes = (ctypes.POINTER(ctypes.c_uint64),) * 4
    lib.edge_runner_plan_counts.restype = None
    for name in ("edge_runner_close", "edge_runner_free"):
        getattr(lib, name).argtypes, getattr(lib, name).restype = (ctypes.c_void_p,), None
    return lib


def first_byte(array: np.ndarray):
    """A C-contiguous array's memory as ctypes passes it to a ``void*``. A ctypes view of a writable
    buffer costs under half of reading the address from ``__array_interface__``, which builds a dict, and
    holds the buffer exported: numpy will not resize the array under it. Read-only arrays take the slow way."""
    if array.flags.writeable:
        return ctypes.byref(ctypes.c_char.from_buffer(array))  # type: ignore[arg-type]  # numpy's stubs declare __buffer__ on 3.12+ only
    return array.__array_interface__["data"][0]


class PlanCounts(NamedTuple):
    """XNNPACK's plans of graphs (reshapes) and setups, made and reused, in this process (runner.cpp)."""

    made: int
    reused: int
    setups_made: int
    setups_reused: int


F32 = np.dtype(np.float32)  # numpy's own instance: `x.dtype is F32` is a test of identity, not a conversion


class _ThreadState:
    """One calling thread's output buffer and the input it last passed in place (``Runner.__call__``)."""

    __slots__ = ("address", "frame", "keep", "out", "out_address", "strides")

    def __init__(self, out: np.ndarray) -> None:
        self.out, self.out_address = out, out.__array_interface__["data"][0]
        self.frame: np.ndarray | None = None
        self.strides: tuple[int, ...] | None = None
        self.address: object = 0  # what ctypes passes for the frame (first_byte)
        self.keep = out


class Runner:
    """One method of a loaded program: ``runner(x)`` -> the first output, for a float32 input of ``input_shape``
    (NCHW, whatever its strides: the runner lays it out in the method's ``input_order``).

    ``threads`` sizes the XNNPACK pool (None: leave it as it is, one thread per performance core
    by default). The pool is shared by the process: runners with different counts take turns,
    each re-loading its method when the pool was resized under it.

    Any thread may call it, and ``close()`` from any thread frees the program after the call under way:
    the native side serialises calls and closing, and a later call (a server's request racing its model's
    reload) gets "the runner is closed", not a crash. The handle itself is freed only when the runner is.
    """

    def __init__(self, pte: bytes, threads: int | None = None, method: str = "forward") -> None:
        self._lib, self._handle = library(), ctypes.c_void_p()
        if threads is not None and not 1 <= threads <= MAX_THREADS:
            raise NativeError(f"threads must be between 1 and {MAX_THREADS}, got {threads}")
        if not method or "\0" in method:
            raise NativeError(f"method must be a non-empty name without NUL, got {method!r}")
        self.method = method
        self._call("edge_runner_open", pte, len(pte), method.encode(), threads or 0, ctypes.byref(self._handle))
        self.input_shape, self.output_shape = self._shape(0), self._shape(1)
        self.input_order, self.output_order = self._shape(0, "dim_order"), self._shape(1, "dim_order")
        # Worked out once: __call__ is on every frame's path, where each microsecond of Python shows at 64 px.
        self._run = self._lib.edge_runner_run
        self._out_memory_shape = tuple(self.output_shape[d] for d in self.output_order)
        out_to_logical = tuple(int(d) for d in np.argsort(self.output_order))
        self._out_to_logical = None if out_to_logical == tuple(range(len(out_to_logical))) else out_to_logical
        self._threads = threading.local()  # per calling thread: its output buffer and its last input

    def _shape(self, which: int, what: str = "shape") -> tuple[int, ...]:
        dims = (ctypes.c_int64 * MAX_DIMS)()
        rank = getattr(self._lib, f"edge_runner_{what}")(self._handle, which, dims, MAX_DIMS)
        return tuple(dims[:rank])

    def _call(self, name: str, *args) -> None:
        err = ctypes.create_string_buffer(512)
        code = getattr(self._lib, name)(*args, err, len(err))
        if code != 0:
            raise NativeError(err.value.decode(errors="replace") or CODES.get(code, f"native runner error {code}"))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        state = self._thread_state()
        if x is not state.frame or x.strides != state.strides or x.shape != self.input_shape or x.dtype is not F32:
            state.address, state.keep = self._address(x, state)
        code = self._run(self._handle, state.address, state.out_address)
        if code != 0:
            raise NativeError(self._error(code))
        return state.out.copy() if self._out_to_logical is None else state.out.transpose(self._out_to_logical).copy()

    def _address(self, x: np.ndarray, state: _ThreadState) -> tuple[object, np.ndarray]:
        """Where the program reads ``x`` from, and the array that memory belongs to.

        An array already in the program's memory order is read in place, and this thread remembers it, its
        strides and its address: calling again with the same array (a frame buffer refilled in place) skips
        this. Numpy moves an array's memory only in ``resize``, which refuses while a reference to it is held
        (this one) or its buffer exported (``first_byte``'s); shape, strides and dtype can be reassigned, so
        every call compares them. Any other array is copied into the program's order for this call only, so
        its later contents are never read from a stale copy."""
        if x.shape != self.input_shape:
            raise NativeError(f"input shape {tuple(x.shape)} differs from the program's {self.input_shape}")
        laid = x.transpose(self.input_order)
        in_place = x.dtype is F32 and laid.flags.c_contiguous
        if not in_place:
            laid = np.ascontiguousarray(laid, np.float32)
        state.frame, state.strides = (x, x.strides) if in_place else (None, None)
        return first_byte(laid), laid

    def _error(self, code: int) -> str:
        """This thread's last failure, as the native side wrote it."""
        err = ctypes.create_string_buffer(512)
        self._lib.edge_runner_error(err, len(err))
        return err.value.decode(errors="replace") or CODES.get(code, f"native runner error {code}")

    def _thread_state(self) -> _ThreadState:
        """This thread's output array and last input, made on its first call: the runner writes the logits
        there and the caller gets a copy, so threads never share one and a frame's logits outlive the next
        call, while nothing but the copy is allocated per call."""
        state = getattr(self._threads, "state", None)
        if state is None:
            state = self._threads.state = _ThreadState(np.empty(self._out_memory_shape, np.float32))
        return state

    def in_memory_order(self, x: np.ndarray) -> np.ndarray:
        """NCHW ``x`` (a batch of them too) as the program reads its memory: C-contiguous in ``input_order``.
        A channels-last program reads NHWC, which an array of NCHW shape over NHWC memory (the
        preprocessor's) already is: the transpose then copies nothing."""
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        return np.ascontiguousarray(x.transpose(self.input_order))

    def laid_out(self, x: np.ndarray) -> np.ndarray:
        """NCHW ``x`` copied once into the program's memory order and viewed as NCHW again, as the
        preprocessor gives its frames: calls on it copy nothing (benchmarks prepare inputs so)."""
        return self.in_memory_order(x).transpose(np.argsort(self.input_order))

    @staticmethod
    def pool_threads() -> int:
        return library().edge_runner_pool_threads()

    @staticmethod
    def plan_counts() -> PlanCounts:
        """How often, in this process, XNNPACK planned a graph for its shapes and set its pointers up, and how
        many executions reused an earlier plan and setup (runner.cpp does each again only when needed)."""
        counts = [ctypes.c_uint64() for _ in PlanCounts._fields]
        library().edge_runner_plan_counts(*map(ctypes.byref, counts))
        return PlanCounts(*(count.value for count in counts))

    def close(self) -> None:
        """Free the program once the call under way (if any) is over; later calls raise NativeError."""
        if self._handle.value is not None:
            self._lib.edge_runner_close(self._handle)

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value is not None:
            self._lib.edge_runner_free(handle)
