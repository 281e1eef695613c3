"""Compile the native runner against the installed ExecuTorch wheel's lib/ and include/.

    python -m edge.native [--force]

It builds with the machine's own C++ compiler, for the machine it runs on (a device builds its own
during `make deploy`). The library lands in this Python environment (``sys.prefix``), under a name
keyed by the source's hash and the CPU architecture, so a stale or foreign build is never loaded.
Nothing here imports torch or the executorch Python package: the wheel's files are found through
its installed metadata.
"""

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from edge.command import UserError

from ..files import atomic_path

SOURCE = Path(__file__).resolve().with_name("runner.cpp")
COMMAND_SOURCE = SOURCE.with_name(
    "bench_main.cpp"
)  # edge-bench: the runner as a command (deploy/environment/runner_package.py)
# Linked with --no-as-needed: the XNNPACK backend and the kernels register themselves when loaded.
LIBRARIES = ("executorch", "executorch_backend_xnnpack", "executorch_threadpool", "executorch_kernels_optimized")


class NativeError(UserError):
    """The native runner cannot be built or loaded; the message says what to install or run."""


def executorch_dir() -> Path:
    """The installed executorch package directory (wheel files only: its Python code is never imported)."""
    try:
        dist = distribution("executorch")
    except PackageNotFoundError:
        raise NativeError(
            "the ExecuTorch runtime is not installed: pip install --no-deps executorch (the version in pyproject.toml)"
        ) from None
    return Path(str(dist.locate_file("executorch")))


def runtime_lib_dir() -> Path:
    lib = executorch_dir() / "lib"
    missing = [name for name in LIBRARIES if not (lib / f"lib{name}.so").is_file()]
    if missing:
        raise NativeError(
            f"the ExecuTorch runtime libraries are missing from {lib} ({', '.join(missing)}): "
            "reinstall with pip install --force-reinstall --no-deps executorch"
        )
    return lib


def source_key() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]


def library_name(machine: str) -> str:
    """The runner's file name for a CPU architecture and the current source: a deploy that builds it on the
    host for a device names it so, and the device loads it as its own build."""
    return f"libedge_runner-{machine}-{source_key()}.so"


def library_path() -> Path:
    """Where this environment's build of the current source lives."""
    return Path(sys.prefix) / "lib" / "edge-runner" / library_name(platform.machine())


PACKAGES_ORIGIN = "edge-packages.origin"  # in an environment's root: how deploy installed its packages
ORIGIN_SUFFIX = ".origin"  # beside the runner: how it got there


def origins() -> dict[str, str | None]:
    """How this environment's packages and runner got here, as deploy recorded it (None: not by deploy)."""
    runner = library_path()
    files = {"packages": Path(sys.prefix) / PACKAGES_ORIGIN, "runner": runner.with_name(runner.name + ORIGIN_SUFFIX)}
    return {what: path.read_text().strip() if path.is_file() else None for what, path in files.items()}


def compile_flags(include: Path) -> list[str]:
    """The flags every build of the runner uses, this machine's library and the cross-built command alike."""
    if not (include / "executorch" / "runtime" / "executor" / "program.h").is_file():
        raise NativeError(
            f"the ExecuTorch headers are missing from {include}: "
            "reinstall with pip install --force-reinstall --no-deps executorch"
        )
    # C10_USING_CUSTOM_GENERATED_MACROS: the wheel lacks the generated cmake_macros.h, which this replaces.
    return [
        "-std=c++17",
        "-O2",
        "-DC10_USING_CUSTOM_GENERATED_MACROS",
        f"-I{include}",
        f"-I{include}/executorch/runtime/core/portable_type/c10",
    ]


def link_flags(lib: Path) -> list[str]:
    # -ldl: dlsym, with which the runner passes XNNPACK's calls on (runner.cpp; in libc itself since glibc 2.34).
    return [f"-L{lib}", "-Wl,--no-as-needed", *(f"-l{name}" for name in LIBRARIES), "-Wl,--as-needed", "-ldl"]


def compile_command(out: Path) -> list[str]:
    include, lib = executorch_dir() / "include", runtime_lib_dir()
    flags = compile_flags(include)
    if os.environ.get("CXX") and not shutil.which(os.environ["CXX"]):
        raise NativeError(f"CXX={os.environ['CXX']} is not a compiler found on this machine: fix or unset CXX")
    compiler = shutil.which(os.environ.get("CXX") or "c++") or shutil.which("g++")
    if not compiler:
        raise NativeError(
            "no C++ compiler found to build the native runner: install one "
            "(Debian/Raspberry Pi OS: sudo apt install g++), or set CXX="
        )
    return [
        compiler,
        *flags,
        "-fPIC",
        "-shared",
        str(SOURCE),
        "-o",
        str(out),
        *link_flags(lib),
        f"-Wl,-rpath,{lib.resolve()}",
    ]


def build(force: bool = False) -> Path:
    """Compile unless this source is already built here; written to a temporary name, then renamed."""
    out = library_path()
    if out.is_file() and not force:
        return out
    with atomic_path(out) as tmp:
        result = subprocess.run(compile_command(tmp), capture_output=True, text=True)
        if result.returncode != 0:
            first = next((line for line in result.stderr.splitlines() if "error" in line), result.stderr.strip())
            raise NativeError(f"compiling the native runner failed: {first[:400]}")
    return out
