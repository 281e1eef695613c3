"""The native runner as a self-contained aarch64 Linux package, built on this machine for a device.

    python -m deploy.environment.runner_package [--cache DIR] [--force]

The package holds ``edge-bench`` (the app's runner as a command: edge/native/bench_main.cpp over runner.cpp),
ExecuTorch's runtime libraries from the pinned ``executorch`` manylinux aarch64 wheel, and the C and C++
libraries they need with glibc's own loader. So it runs where there is no compatible C library at all (an
Android phone, from ``adb shell``), started through that loader::

    lib/ld-linux-aarch64.so.1 --library-path lib ./edge-bench model.pte

The wheel comes from ``pip download --platform``, the compiler is Debian's ``aarch64-linux-gnu-g++``, the
libraries come from its cross sysroot, and ``readelf`` checks that every library any file in the package
needs is in the package. The result is cached under ``--cache``, keyed by the sources, the wheel's version
and the compiler's, so a second build (and a second deploy) does nothing.
"""

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from edge.command import HelpFormatter, UserError
from edge.files import blocking_file, cache_root
from edge.native.build import COMMAND_SOURCE, LIBRARIES, SOURCE, compile_flags, library_name, link_flags

from ..pins import executorch_pin
from .wheelhouse import Platform, WheelhouseError, download

CROSS_COMPILER = "aarch64-linux-gnu-g++"
CROSS_PACKAGE = "g++-aarch64-linux-gnu"  # Debian and Ubuntu
SYSROOT_LIB = Path("/usr/aarch64-linux-gnu/lib")  # where that package's libc6-arm64-cross puts the libraries
LOADER = "ld-linux-aarch64.so.1"
GLIBC = {LOADER, "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0"}  # shipped, and the device's own
WHEEL_GLIBC = "2.28"  # the executorch wheel's manylinux: the glibc its libraries need
WHEEL_PLATFORM = f"manylinux_2_{WHEEL_GLIBC.split('.')[1]}_aarch64"
COMMAND = "edge-bench"
DEFAULT_CACHE = cache_root() / "runner-packages"
SIZE_GOAL_MB = 20


class PackageError(UserError):
    """The package cannot be built here; the message says what to install or do."""


def cross_compiler() -> str:
    found = shutil.which(CROSS_COMPILER)
    if not found:
        raise PackageError(f"no aarch64 cross-compiler ({CROSS_COMPILER}): sudo apt install {CROSS_PACKAGE}")
    if not (SYSROOT_LIB / LOADER).is_file():
        raise PackageError(f"the aarch64 C library is missing from {SYSROOT_LIB}: sudo apt install {CROSS_PACKAGE}")
    return found


def package_key(compiler: str, runtime: str) -> str:
    """The sources, this builder, the runtime's version and the compiler's: any change builds anew."""
    digest = hashlib.sha256()
    for path in (SOURCE, COMMAND_SOURCE, Path(__file__)):
        digest.update(path.read_bytes())
    compiler_version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    digest.update(f"{runtime}\n{compiler_version}".encode())
    return digest.hexdigest()[:16]


def download_wheel(runtime: str, cache: Path) -> Path:
    """The pinned executorch wheel for aarch64 Linux (its runtime libraries and headers only are used)."""
    wheels = cache / "wheels"
    found = sorted(wheels.glob(f"executorch-{runtime}-*{WHEEL_PLATFORM}.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    print(f"downloading executorch {runtime} for {WHEEL_PLATFORM}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        platform = Platform("aarch64", WHEEL_GLIBC, f"{sys.version_info.major}.{sys.version_info.minor}")
        try:
            download(platform, ["--no-deps", f"executorch=={runtime}"], Path(tmp))
        except WheelhouseError as e:
            raise PackageError(f"cannot download the executorch {runtime} wheel: {e}") from None
        downloaded = sorted(Path(tmp).glob("executorch-*.whl"))
        if not downloaded:
            raise PackageError(f"pip downloaded no executorch {runtime} wheel for {platform.describe()}")
        wheel = wheels / downloaded[0].name
        downloaded[0].replace(wheel)
    return wheel


def extract_runtime(wheel: Path, into: Path) -> tuple[Path, Path]:
    """The wheel's executorch/lib/*.so and executorch/include/ under ``into``: (lib, include)."""
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if (
                name.startswith("executorch/include/") or re.fullmatch(r"executorch/lib/lib[\w.-]+\.so", name)
            ) and not name.endswith("/"):
                archive.extract(name, into)
    lib, include = into / "executorch" / "lib", into / "executorch" / "include"
    missing = [name for name in LIBRARIES if not (lib / f"lib{name}.so").is_file()]
    if missing:
        raise PackageError(f"{wheel.name} lacks {', '.join(missing)}: delete it and build again")
    return lib, include


def needed(elf: Path) -> list[str]:
    """The NEEDED entries of an ELF file's dynamic section, as ``readelf -d`` lists them."""
    result = subprocess.run(["readelf", "-d", str(elf)], capture_output=True, text=True)
    if result.returncode != 0:
        raise PackageError(f"readelf cannot read {elf.name}: {result.stderr.strip()[:200]} (sudo apt install binutils)")
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", result.stdout)


def glibc_needed(elf: Path, library: str = "GLIBC") -> tuple[int, ...]:
    """The newest ``GLIBC_x.y`` (or ``GLIBCXX_3.4.z`` for ``library="GLIBCXX"``) symbol version ``elf`` asks
    for: the oldest C (C++) library it loads with."""
    result = subprocess.run(["readelf", "-V", str(elf)], capture_output=True, text=True)
    found = [tuple(int(p) for p in v.split(".")) for v in re.findall(rf"\b{library}_(\d+(?:\.\d+)+)", result.stdout)]
    return max(found, default=(0,))


def copy_closure(command: Path, lib_out: Path, search: list[Path]) -> None:
    """Copy every library ``command`` needs, and what they need in turn, from ``search`` into ``lib_out``."""
    shutil.copy2(SYSROOT_LIB / LOADER, lib_out / LOADER)
    pending, seen = [command], set()
    while pending:
        for name in needed(pending.pop()):
            if name in seen:
                continue
            seen.add(name)
            source = next((d / name for d in search if (d / name).is_file()), None)
            if source is None:
                raise PackageError(f"{name} is needed but found in none of {', '.join(map(str, search))}")
            shutil.copy2(source.resolve(), lib_out / name)
            pending.append(lib_out / name)


def check_complete(package: Path) -> None:
    """Every NEEDED of every ELF file in the package is a file in the package's lib/."""
    present = {p.name for p in (package / "lib").iterdir()}
    for elf in [package / COMMAND, *sorted((package / "lib").iterdir())]:
        missing = [name for name in needed(elf) if name not in present]
        if missing:
            raise PackageError(f"{elf.name} needs {', '.join(missing)}, which is not in the package")


def compile_command(compiler: str, include: Path, lib: Path, out: Path) -> None:
    """Build edge-bench with ``compiler`` against a runtime's headers and libraries (stripped: smaller)."""
    result = subprocess.run(
        # -rdynamic: the runner's XNNPACK definitions come before the wheel's only if the command exports them.
        [compiler, *compile_flags(include), str(SOURCE), str(COMMAND_SOURCE), "-s", "-rdynamic", "-o", str(out)]
        + link_flags(lib),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        first = next((line for line in result.stderr.splitlines() if "error" in line), result.stderr.strip())
        raise PackageError(f"compiling {COMMAND} failed: {first[:400]}")


def build_library(python: str, cache: Path = DEFAULT_CACHE) -> Path:
    """The runner library for an aarch64 Linux device whose environment is Python ``python`` ("3.11").

    What ``python -m edge.native`` would build there, with the same flags, named as the device names its
    own build and found by it in place of one. It loads ExecuTorch's libraries from the environment's
    executorch wheel, by a path relative to itself (the environment's ``lib/edge-runner/``).
    """
    compiler, runtime = cross_compiler(), executorch_pin()
    out = cache / f"library-{package_key(compiler, runtime)}-py{python}" / library_name("aarch64")
    if out.is_file():
        return out
    wheel = download_wheel(runtime, cache)
    print(f"cross-compiling the native runner for aarch64 (Python {python}, executorch {runtime})", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as work:
        lib, include = extract_runtime(wheel, Path(work))
        tmp = Path(work) / out.name
        result = subprocess.run(
            [
                compiler,
                *compile_flags(include),
                "-fPIC",
                "-shared",
                str(SOURCE),
                "-s",
                "-o",
                str(tmp),
                *link_flags(lib),
                f"-Wl,-rpath,$ORIGIN/../python{python}/site-packages/executorch/lib",
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            first = next((line for line in result.stderr.splitlines() if "error" in line), result.stderr.strip())
            raise PackageError(f"cross-compiling the native runner failed: {first[:400]}")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.replace(out)
    return out


def compiler_version(compiler: str) -> str:
    """``aarch64-linux-gnu-g++ 12.2.0``: the compiler's name and version, as reports quote it."""
    result = subprocess.run([compiler, "-dumpfullversion"], capture_output=True, text=True)
    return f"{Path(compiler).name} {result.stdout.strip() or 'unknown version'}"


def build(cache: Path = DEFAULT_CACHE, force: bool = False) -> Path:
    """The package directory for this runner source and runtime, built unless it is in ``cache``."""
    compiler, runtime = cross_compiler(), executorch_pin()
    out = cache / f"aarch64-{package_key(compiler, runtime)}"
    if (out / "package.json").is_file() and not force:
        return out
    wheel = download_wheel(runtime, cache)
    print(f"cross-compiling the native runner for aarch64 ({COMMAND}, executorch {runtime})", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as work:
        lib, include = extract_runtime(wheel, Path(work))
        tmp = Path(work) / "package"
        (tmp / "lib").mkdir(parents=True)
        compile_command(compiler, include, lib, tmp / COMMAND)
        copy_closure(tmp / COMMAND, tmp / "lib", [lib, SYSROOT_LIB])
        check_complete(tmp)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        glibc = max(glibc_needed(p) for p in files if p.name not in GLIBC)
        (tmp / "package.json").write_text(
            json.dumps(
                {
                    "command": COMMAND,
                    "loader": f"lib/{LOADER}",
                    "executorch": runtime,
                    "platform": "linux-aarch64",
                    "glibc_shipped": glibc_of_sysroot(),
                    "glibc_needed": ".".join(map(str, glibc)),
                    "bytes": sum(p.stat().st_size for p in files),
                    "files": {p.relative_to(tmp).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
                },
                indent=2,
            )
            + "\n"
        )
        shutil.rmtree(out, ignore_errors=True)  # --force, or a copy without package.json: never used
        tmp.rename(out)
    return out


def glibc_of_sysroot() -> str:
    """The version of the glibc shipped: the cross sysroot's libc.so.6 names it in its version string."""
    text = (SYSROOT_LIB / "libc.so.6").read_bytes()
    found = re.search(rb"GNU C Library[^\n]*?version (\d+\.\d+)", text)
    return found.group(1).decode() if found else "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.environment.runner_package",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help="where packages and the downloaded wheel are kept",
    )
    parser.add_argument("--force", action="store_true", help="build again even when the package is cached")
    args = parser.parse_args(argv)
    if where := blocking_file(args.cache.absolute()):
        parser.error(f"--cache {args.cache}: {where} exists and is not a directory")
    package = build(args.cache, args.force)
    info = json.loads((package / "package.json").read_text())
    size = info["bytes"] / 1e6  # MB, as every size the project prints
    goal = "within" if size <= SIZE_GOAL_MB else "over"
    print(
        f"{package}: {size:.1f} MB ({goal} the {SIZE_GOAL_MB} MB goal), {len(info['files'])} files, executorch "
        f"{info['executorch']}, glibc {info['glibc_shipped']} shipped (needs {info['glibc_needed']})"
    )


if __name__ == "__main__":
    from edge.command import run_main

    run_main("deploy.environment.runner_package")
