"""The environment for this device: what the app's runtime needs on a device over SSH, made from this machine.

Three steps, the same for ``make deploy`` and for the peers' benchmark on a Pi:

- ``locate``: the device's home, the environment's path (one per set of requirements) and Python, what
  the device is (Python, CPU, C library, compiler) and how its native runner gets there;
- ``Environment.stage``: the requirements and the runner built here, into a directory being staged;
- ``Environment.install``: once that directory is on the device, the environment made from wheels fetched
  here (only when missing) and the runner put in it (only when it changed).

A profile without a venv uses the device's own Python, and the device builds the runner in the release.
"""

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from ..pins import device_requirements
from ..profile import Device
from ..transport import Transport
from . import provision


def environment_dir(venv: str) -> str:
    """One environment per set of requirements: a release whose requirements change gets a new one,
    and the running release keeps its own until the switch (and until it is pruned)."""
    digest = hashlib.sha256("".join(device_requirements()).encode()).hexdigest()[:12]
    return f"{venv}-{digest}"


@dataclass(frozen=True)
class Environment:
    home: str  # the login's home on the device: relative paths in a profile are under it
    root: str  # the profile's remote_dir, absolute
    python: str  # the interpreter releases run with, absolute (or a bare name on PATH)
    venv: str | None  # <venv>-<hash of requirements>, or None: the device's own Python
    venv_base: str | None  # <venv>: every environment of this profile starts with it
    facts: provision.DeviceFacts | None
    plan: provision.RunnerPlan | None

    def stage(self, into: Path) -> None:
        """What ``install`` reads from the copied directory: the requirements, and the runner built here."""
        packages, runtime = device_requirements()
        (into / "requirements.txt").write_text(packages)
        (into / "requirements-nodeps.txt").write_text(runtime)
        if self.plan:
            provision.stage_runner(self.plan, into)

    def install(self, transport: Transport, device: Device, staged: str, bwlimit: int | None = None) -> None:
        """Make the environment once (it is keyed by its requirements) from wheels fetched here, and give it
        the native runner built here (or by the device); a no-op when both are there. ``staged`` is the
        directory on the device that ``stage`` filled."""
        if not self.venv:
            transport.run(
                [self.python, "-m", "edge.native"], cwd=staged, what="building the native runner on the device"
            )
            return
        if transport.run(["test", "-f", f"{self.venv}/.complete"], check=False).returncode != 0:
            print(
                f"\nsetting up the Python environment on {transport.where} (once per requirements; several minutes)",
                file=sys.stderr,
            )
            provision.install_packages(transport, device, self.facts, self.root, self.venv, staged, bwlimit)
        provision.install_runner(transport, self.plan, self.facts, self.venv, staged, self.python)


def absolute(path: str | None, home: str) -> str | None:
    return path if path is None or path.startswith("/") else f"{home}/{path}"


def locate(transport: Transport, device: Device) -> Environment:
    """Where the device's environment is and what goes into it; nothing on the device changes yet."""
    home = transport.run(["pwd"], what=f"connecting to {transport.where}").stdout.strip()
    venv_base = absolute(device.venv, home)
    venv = environment_dir(venv_base) if venv_base else None
    python = f"{venv}/bin/python" if venv else device.python
    python = python if "/" not in python else absolute(python, home)
    facts = provision.probe(transport, device.python) if venv else None
    plan = provision.plan_runner(transport, facts, venv) if venv else None
    return Environment(home, absolute(device.remote_dir, home), python, venv, venv_base, facts, plan)


def prune_environments(transport: Transport, releases: str, env: Environment) -> None:
    """Remove the environments (``<base>-<hash>``, and ``<base>`` of older deploys) no kept release uses:
    each release names its Python in its ``python`` file."""
    if not env.venv_base:
        return
    used = transport.run(
        ["sh", "-c", 'cat "$1"/*/python 2>/dev/null || true', "sh", releases], what="reading the releases' environments"
    ).stdout.split()
    parent, name = env.venv_base.rsplit("/", 1)
    listing = transport.run(["ls", "-1", parent], what="listing environments").stdout.split()
    stale = [
        f"{parent}/{entry}"
        for entry in listing
        if (entry == name or entry.startswith(f"{name}-"))
        and f"{parent}/{entry}" != env.venv
        and f"{parent}/{entry}/bin/python" not in used
    ]
    if stale:
        transport.run(["rm", "-rf", *stale], what="removing unused environments")
