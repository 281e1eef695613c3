"""Measure a converted folder on a device over SSH (a Pi, or the emulated one), as ``make deploy`` reaches it.

The measuring runs in the environment ``make deploy`` makes there (Python, numpy, the ExecuTorch
wheel and our runner), made by deploy's own step when it is missing (``deploy.environment``: wheels
and runner from this machine, nothing from the device's network). The peers' runtimes go beside it,
not into it: their wheels are downloaded here for the device's Python, CPU and glibc, copied, and
installed with ``pip --no-index --target`` into ``<remote_dir>/peers/packages``, without numpy (the
environment's own is used). The programs, the images and the measuring code (``edge/``, ``peers/``)
follow, ``python -m peers.measure`` runs there, and its JSON comes back.
"""

import json
import shutil
import tempfile
from pathlib import Path

from deploy.environment import Environment, locate, wheelhouse
from deploy.environment.wheelhouse import Platform
from deploy.pins import extra
from deploy.profile import Device
from deploy.transport.ssh import connect

from .measure import command
from .runtimes import PeerError
from .timing import Plan

PROJECT = Path(__file__).resolve().parent.parent
SHIPPED = (".pte", ".tflite", ".onnx", ".param", ".bin", ".npy", ".json")


def requirements() -> list[str]:
    """The runtimes' pins: pyproject's ``peers-runtimes`` extra."""
    return extra("peers-runtimes")


def wheels_for(platform: Platform) -> Path:
    """The peers' wheels for the device, with their dependencies: deploy's wheelhouse, cached the same way."""
    return wheelhouse.build(platform, "\n".join(requirements()) + "\n", "")[0]


def runtime_wheels(wheels: Path) -> list[str]:
    """Every wheel but numpy's: the environment's numpy is the one the runner and OpenCV were installed with."""
    return sorted(w.name for w in wheels.glob("*.whl") if not w.name.startswith("numpy-"))


def stage(folder: Path, into: Path, wheels: Path, env: Environment) -> None:
    """What goes to the device: the programs, the code that measures them, the wheels, and what deploy's
    environment step reads (its requirements, the runner built here)."""
    (into / "work").mkdir(parents=True)
    for f in folder.iterdir():
        if f.suffix in SHIPPED:
            shutil.copy(f, into / "work" / f.name)
    for package in ("edge", "peers"):
        shutil.copytree(PROJECT / package, into / package, ignore=shutil.ignore_patterns("__pycache__"))
    (into / "wheels").mkdir()
    for name in runtime_wheels(wheels):
        shutil.copy(wheels / name, into / "wheels" / name)
    env.stage(into)


def measure_on(device: Device, folder: Path, threads: int, plan: Plan, say) -> dict:
    if device.venv is None:
        raise PeerError(f"the {device.name} profile names no venv: the benchmark runs in the one deploy makes")
    target = connect(device)
    env = locate(target, device)
    remote = f"{env.root}/peers"
    wheels = wheels_for(env.facts.platform())
    with tempfile.TemporaryDirectory() as scratch:
        stage(folder, Path(scratch), wheels, env)
        say(f"copying the programs, the code and the wheels to {target.where}")
        target.push(Path(scratch), remote)
    say("the deploy environment there (made once; several minutes under emulation)")
    env.install(target, device, remote)
    say("installing the peers' runtimes there (pip --no-index)")
    target.run(
        [
            env.python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--disable-pip-version-check",
            "--target",
            "packages",
            *[f"wheels/{name}" for name in runtime_wheels(wheels)],
        ],
        cwd=remote,
        what="installing the peers' runtimes",
    )
    say(f"measuring on {device.name}: {plan.rounds} rounds of {plan.calls} calls")
    result = target.run(
        ["env", "PYTHONPATH=packages", *command(env.python, "work", threads, plan)],
        cwd=remote,
        what=f"measuring on {device.name}",
    )
    return json.loads(result.stdout.strip().splitlines()[-1])
