"""Measure a converted folder on a device over SSH (a Pi, or the emulated one), as ``make deploy`` reaches it.

The measuring runs in the environment ``make deploy`` makes there (Python, numpy, the ExecuTorch
wheel and our runner), made the way deploy makes it when it is missing (``deploy.provision``: wheels
and runner from this machine, nothing from the device's network). The peers' runtimes go beside it,
not into it: their wheels are downloaded here for the device's Python, CPU and glibc, copied, and
installed with ``pip --no-index --target`` into ``<remote_dir>/peers/packages``, without numpy (the
environment's own is used). The programs, the images and the measuring code (``edge/``, ``peers/``)
follow, ``python -m peers.measure`` runs there, and its JSON comes back.
"""

import json
import shutil
import tempfile
import tomllib
from pathlib import Path

from deploy import provision, wheelhouse
from deploy.cli import environment_dir
from deploy.profile import Device
from deploy.target import DeployError, Target, connect
from deploy.wheelhouse import Platform, device_requirements

from .measure import command
from .runtimes import PeerError
from .timing import Plan

PROJECT = Path(__file__).resolve().parent.parent
SHIPPED = (".pte", ".tflite", ".onnx", ".param", ".bin", ".npy", ".json")


def requirements() -> list[str]:
    """The runtimes' pins: pyproject's ``peers-runtimes`` extra, the one place they are written."""
    return tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["peers-runtimes"]


def wheels_for(platform: Platform) -> Path:
    """The peers' wheels for the device, with their dependencies: deploy's wheelhouse, cached the same way."""
    try:
        return wheelhouse.build(platform, "\n".join(requirements()) + "\n", "")[0]
    except wheelhouse.WheelhouseError as error:
        raise PeerError(str(error)) from None


def runtime_wheels(wheels: Path) -> list[str]:
    """Every wheel but numpy's: the environment's numpy is the one the runner and OpenCV were installed with."""
    return sorted(w.name for w in wheels.glob("*.whl") if not w.name.startswith("numpy-"))


def stage(folder: Path, into: Path, wheels: Path, plan: provision.RunnerPlan) -> None:
    """What goes to the device: the programs, the code that measures them, the wheels, and what deploy's
    provisioning reads from a release (its requirements, the runner built here)."""
    (into / "work").mkdir(parents=True)
    for f in folder.iterdir():
        if f.suffix in SHIPPED:
            shutil.copy(f, into / "work" / f.name)
    for package in ("edge", "peers"):
        shutil.copytree(PROJECT / package, into / package, ignore=shutil.ignore_patterns("__pycache__"))
    (into / "wheels").mkdir()
    for name in runtime_wheels(wheels):
        shutil.copy(wheels / name, into / "wheels" / name)
    packages, runtime = device_requirements()
    (into / "requirements.txt").write_text(packages)
    (into / "requirements-nodeps.txt").write_text(runtime)
    provision.stage_runner(plan, into)


def environment(target: Target, device: Device) -> tuple[str, str, provision.DeviceFacts]:
    """(home, venv) on the device, as deploy names them, and what the device is."""
    if device.venv is None:
        raise PeerError(f"the {device.name} profile names no venv: the benchmark runs in the one deploy makes")
    home = target.run(["pwd"], what=f"connecting to {target.where}").stdout.strip()
    venv = environment_dir(device.venv if device.venv.startswith("/") else f"{home}/{device.venv}")
    return home, venv, provision.probe(target, device.python)


def measure_on(device: Device, folder: Path, threads: int, plan: Plan, say) -> dict:
    try:
        target = connect(device)
        home, venv, facts = environment(target, device)
        root = device.remote_dir if device.remote_dir.startswith("/") else f"{home}/{device.remote_dir}"
        remote, python = f"{root}/peers", f"{venv}/bin/python"
        runner = provision.plan_runner(target, facts, venv)
        wheels = wheels_for(facts.platform())
        with tempfile.TemporaryDirectory() as scratch:
            stage(folder, Path(scratch), wheels, runner)
            say(f"copying the programs, the code and the wheels to {target.where}")
            target.push(Path(scratch), remote)
        if target.run(["test", "-f", f"{venv}/.complete"], check=False).returncode != 0:
            say("setting up the deploy environment there (once; several minutes under emulation)")
            provision.install_packages(target, facts, root, venv, remote, None)
        provision.install_runner(target, runner, facts, venv, remote, python)
        say("installing the peers' runtimes there (pip --no-index)")
        target.run(
            [
                python,
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
            ["env", "PYTHONPATH=packages", *command(python, "work", threads, plan)],
            cwd=remote,
            what=f"measuring on {device.name}",
        )
    except DeployError as error:
        raise PeerError(str(error)) from None
    return json.loads(result.stdout.strip().splitlines()[-1])
