"""How the runtime reaches a Pi: its Python packages and its native runner, both prepared on this machine.

A Pi in the field may have no internet and no compiler. So the device's wheels are downloaded here
(deploy/environment/wheelhouse.py), copied over and installed with ``pip install --no-index``; and the runner is
cross-compiled here (deploy/environment/runner_package.py) and put where the device's own build would be. Only when
no cross-compiler is found here (or the device's C library is too old for that build) does the device
compile the runner itself, and the deploy says which. Each way is recorded on the device beside what it
made, so its device report says how the runtime got there.
"""

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from edge.native.build import ORIGIN_SUFFIX, PACKAGES_ORIGIN, library_name

from ..pins import device_requirements
from ..profile import Device
from ..transport import DeployError, Transport
from .runner_package import PackageError, build_library, compiler_version, cross_compiler, glibc_needed
from .wheelhouse import COMPLETE, Platform
from .wheelhouse import build as build_wheelhouse

# Runs on the device with its own Python: the facts that decide which wheels and which runner build fit it.
PROBE = r"""
import glob, json, platform, re, shutil, sys
cxx = []
for path in sum((glob.glob(p + "/libstdc++.so.6") for p in ("/usr/lib/*", "/lib/*", "/usr/lib*")), []):
    with open(path, "rb") as f:
        cxx += [tuple(map(int, v.split(b"."))) for v in re.findall(rb"GLIBCXX_(\d+\.\d+(?:\.\d+)?)", f.read())]
print(json.dumps({"python": "%d.%d" % sys.version_info[:2], "machine": platform.machine(),
                  "glibc": platform.libc_ver()[1], "glibcxx": ".".join(map(str, max(cxx))) if cxx else "",
                  "compiler": bool(shutil.which("c++") or shutil.which("g++"))}))
"""


@dataclass(frozen=True)
class DeviceFacts:
    python: str  # "3.11", of the interpreter the environment is made with
    machine: str  # "aarch64"
    glibc: str  # "2.36"
    glibcxx: str  # "3.4.30": the newest GLIBCXX version its libstdc++ has ("" when none was found)
    compiler: bool  # a C++ compiler is on its PATH

    def platform(self) -> Platform:
        return Platform(self.machine, self.glibc, self.python)


@dataclass(frozen=True)
class RunnerPlan:
    library: Path | None  # the runner built here, or None: the device builds its own (or has it)
    origin: str  # how the runner gets there, in words, as the device report quotes it
    present: bool = False  # the environment has this runner source's build already


def probe(target: Transport, python: str) -> DeviceFacts:
    result = target.run([python, "-c", PROBE], what=f"reading the Python version and C library of {target.where}")
    try:
        return DeviceFacts(**json.loads(result.stdout.strip().splitlines()[-1]))
    except (ValueError, TypeError, IndexError):
        raise DeployError(
            f"{python} on {target.where} did not describe itself ({result.stdout.strip()[:200]!r}): is it Python 3?"
        ) from None


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def runner_file(facts: DeviceFacts, venv: str) -> str:
    """Where the environment's ``python -m edge.native`` looks for this runner source's build."""
    return f"{venv}/lib/edge-runner/{library_name(facts.machine)}"


def plan_runner(target: Transport, facts: DeviceFacts, venv: str) -> RunnerPlan:
    """Nothing when the environment has this runner already. Else cross-compile here when this machine can
    and the device's C and C++ libraries are new enough for what that build needs; else the device's own
    compiler; else one line saying neither will do."""
    finished = ["test", "-f", f"{venv}/.complete", "-a", "-f", runner_file(facts, venv)]
    if target.run(finished, check=False).returncode == 0:
        return RunnerPlan(None, "already in the environment", present=True)
    if facts.machine != "aarch64":
        why = f"this machine cross-compiles for aarch64 only, the device is {facts.machine}"
    else:
        try:
            library = build_library(facts.python)
        except PackageError as e:
            why = str(e)
        else:
            if not (why := too_old(library, facts)):
                compiler = compiler_version(cross_compiler())
                return RunnerPlan(library, f"cross-compiled on the deploying host with {compiler}")
    if not facts.compiler:
        raise DeployError(
            f"cannot give the device a native runner: {why}, and the device has no C++ compiler "
            "(sudo apt install g++ there, or fix this machine's cross-compiler)"
        )
    print(f"the device will compile its native runner: {why}", file=sys.stderr)
    return RunnerPlan(None, f"compiled on the device ({why})")


def too_old(library: Path, facts: DeviceFacts) -> str | None:
    """Why ``library`` would not load on the device (its glibc or libstdc++ older than it needs), or None."""
    for name, have in (("GLIBC", facts.glibc), ("GLIBCXX", facts.glibcxx)):
        needs = glibc_needed(library, name)
        if have and version(have) < needs:
            return (
                f"the runner built here needs {name} {'.'.join(map(str, needs))} and the device has {have} "
                "(build on a machine whose cross toolchain is as old as the device's system)"
            )
    return None


def install_packages(
    target: Transport, device: Device, facts: DeviceFacts, root: str, venv: str, release: str, bwlimit: int | None
) -> None:
    """Make the environment from wheels fetched here: the device reaches no index (``--no-index``)."""
    packages, runtime = device_requirements()
    wheels, downloaded = build_wheelhouse(facts.platform(), packages, runtime)
    info = json.loads((wheels / COMPLETE).read_text())
    size = f"{len(info['wheels'])} wheels, {info['bytes'] / 1e6:.0f} MB"
    print(
        f"copying the wheelhouse ({size}, {'downloaded now' if downloaded else 'cached here'}) to {target.where}",
        file=sys.stderr,
    )
    remote = f"{root}/wheelhouse"
    target.push(wheels, remote, "copying the wheelhouse", bwlimit=bwlimit)
    target.run(["rm", "-rf", venv], what="removing an unfinished environment")
    target.run([device.python, "-m", "venv", *device.venv_flags, venv], what="creating the venv")
    pip = [
        f"{venv}/bin/python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-index",
        "--find-links",
        remote,
    ]
    target.run([*pip, "-r", f"{release}/requirements.txt"], what="installing numpy/OpenCV/pytest from the wheelhouse")
    target.run(
        [*pip, "--no-deps", "-r", f"{release}/requirements-nodeps.txt"],
        what="installing the ExecuTorch runtime libraries from the wheelhouse",
    )
    record(
        target,
        f"{venv}/{PACKAGES_ORIGIN}",
        f"wheels downloaded on the deploying host ({size}, for "
        f"{facts.platform().describe()}), installed with pip --no-index",
    )
    target.run(["touch", f"{venv}/.complete"], what="recording the environment")
    target.run(["rm", "-rf", remote], what="removing the copied wheelhouse")


def install_runner(
    target: Transport, plan: RunnerPlan, facts: DeviceFacts, venv: str, release: str, python: str
) -> None:
    """Put the runner where the environment's ``python -m edge.native`` finds it, once per runner source:
    the one built here, else the device's own build."""
    if plan.present:
        return
    library = runner_file(facts, venv)
    runners = library.rsplit("/", 1)[0]
    if plan.library is not None:
        target.run(["mkdir", "-p", runners], what="creating the runner's directory")
        target.run(["cp", f"{release}/runner/{plan.library.name}", f"{library}.tmp"], what="installing the runner")
        target.run(["mv", "-f", f"{library}.tmp", library], what="installing the runner")
    target.run(
        [python, "-m", "edge.native"],
        cwd=release,
        what="checking the native runner" if plan.library else "building the native runner on the device",
    )
    record(target, library + ORIGIN_SUFFIX, plan.origin)


def record(target: Transport, path: str, line: str) -> None:
    target.run(["sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh", line, path], what=f"writing {path}")


def stage_runner(plan: RunnerPlan, into: Path) -> None:
    """The runner built here goes with the release, to be installed into its environment."""
    if plan.library is not None:
        (into / "runner").mkdir()
        shutil.copy2(plan.library, into / "runner" / plan.library.name)
