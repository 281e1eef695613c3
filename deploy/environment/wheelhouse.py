"""The device's Python packages as wheels, downloaded on this machine: a Pi in the field may have no internet.

``pip download --platform`` fetches binary wheels for the device's CPU, C library and Python version, so
the device installs them with ``pip install --no-index --find-links`` and never reaches an index. A
wheelhouse is cached per (platform, Python version, requirements), so a second deploy downloads nothing.
"""

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edge.command import UserError
from edge.files import blocking_file, cache_root

DEFAULT_CACHE = cache_root() / "wheelhouses"
OLDEST_MANYLINUX = 17  # manylinux_2_17 (manylinux2014): the oldest glibc PyPI's aarch64 wheels are built for
COMPLETE = "wheelhouse.json"


class WheelhouseError(UserError):
    """The wheels cannot be fetched for this device; the message says why and what to do."""


@dataclass(frozen=True)
class Platform:
    """What decides which wheels a device can install: its CPU, its glibc and its Python."""

    machine: str  # aarch64
    glibc: str  # 2.36
    python: str  # 3.11

    def tags(self) -> list[str]:
        """Every manylinux tag this glibc runs, newest first: pip takes the best wheel among them."""
        major, minor = (int(part) for part in self.glibc.split(".")[:2])
        if major != 2 or minor < OLDEST_MANYLINUX:
            raise WheelhouseError(
                f"the device's glibc {self.glibc} is older than any wheel on PyPI is built for "
                f"(2.{OLDEST_MANYLINUX}): update its operating system"
            )
        return [f"manylinux_2_{m}_{self.machine}" for m in range(minor, OLDEST_MANYLINUX - 1, -1)] + [
            f"manylinux2014_{self.machine}"
        ]

    def describe(self) -> str:
        return f"Python {self.python} on {self.machine} with glibc {self.glibc}"


def key(platform: Platform, packages: str, runtime: str) -> str:
    return hashlib.sha256(
        json.dumps([platform.machine, platform.glibc, platform.python, packages, runtime]).encode()
    ).hexdigest()[:16]


def build(platform: Platform, packages: str, runtime: str, cache: Path = DEFAULT_CACHE) -> tuple[Path, bool]:
    """The wheelhouse for ``platform``: ``packages`` (requirements lines) with their dependencies, and
    ``runtime`` (may be empty) without them. Returns (directory, whether it was downloaded now rather than cached)."""
    if where := blocking_file(cache.absolute()):
        raise WheelhouseError(f"the wheel cache {cache} cannot be created: {where} is a file")
    out = cache / f"{platform.machine}-py{platform.python}-{key(platform, packages, runtime)}"
    if (out / COMPLETE).is_file():
        return out, False
    cache.mkdir(parents=True, exist_ok=True)
    print(f"downloading the device's wheels for {platform.describe()} (once; cached in {cache})", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        wheels = Path(tmp) / "wheels"
        (Path(tmp) / "packages.txt").write_text(packages)
        (Path(tmp) / "runtime.txt").write_text(runtime)
        download(platform, ["-r", str(Path(tmp) / "packages.txt")], wheels)
        if runtime.strip():
            download(platform, ["--no-deps", "-r", str(Path(tmp) / "runtime.txt")], wheels)
        files = sorted(wheels.iterdir())
        (wheels / COMPLETE).write_text(
            json.dumps(
                {
                    "platform": platform.__dict__,
                    "tags": platform.tags(),
                    "packages": packages,
                    "runtime": runtime,
                    "wheels": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
                    "bytes": sum(p.stat().st_size for p in files),
                },
                indent=2,
            )
            + "\n"
        )
        shutil.rmtree(out, ignore_errors=True)  # a copy without wheelhouse.json is never used
        wheels.rename(out)
    return out, True


def download(platform: Platform, requirements: list[str], into: Path) -> None:
    """``pip download`` of binary wheels for ``platform`` only: a source package would need a compiler there."""
    tags = [flag for tag in platform.tags() for flag in ("--platform", tag)]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            platform.python,
            "--abi",
            "cp" + platform.python.replace(".", ""),
            *tags,
            "--dest",
            str(into),
            *requirements,
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise WheelhouseError(explain(result.stderr, platform))


def explain(stderr: str, platform: Platform) -> str:
    """One line for pip's usual failures: no wheel for this device, or no index reachable from here."""
    missing = re.search(r"No matching distribution found for (\S+)", stderr)
    if missing:
        return (
            f"no wheel of {missing.group(1)} for {platform.describe()}: PyPI has none for this device "
            "(its Python or its glibc too old or too new for it); set python: in its profile to another Python"
        )
    if re.search(r"Max retries exceeded|Temporary failure in name resolution|Network is unreachable", stderr):
        return "cannot reach the package index from this machine to fetch the device's wheels: check its network"
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return f"downloading the device's wheels failed: {lines[-1] if lines else 'pip gave no reason'}"
