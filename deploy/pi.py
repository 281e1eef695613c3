"""``make deploy DEVICE=rpi5``: the bundle, the edge app and the device tests to a Pi over SSH, and the tests run.

On the device, under ``remote_dir`` (the release lifecycle is deploy/release.py's)::

    releases/<version>/   bundle/ edge/ device_tests/ Makefile requirements{,-nodeps}.txt device.json MANIFEST.sha256
    current -> releases/<version>
    venv-<hash>/          (when the profile has one) one per set of requirements, with the native runner built
                          in it; kept while a kept release uses it

A release is copied, checked against its manifest, given its environment (deploy/environment/) and smoke-run
as ``<version>.partial`` before it may become ``current``; one that fails its smoke run is kept aside as
``<version>.failed`` until the next deploy.
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from edge.bundle import BundleMeta
from edge.serve import DEFAULT_ADDRESS, parse_address

from . import pictures
from .environment import Environment, locate, prune_environments
from .profile import Device
from .release import Releases, releases, write_manifest
from .transport import DeployError, Transport, explain
from .transport.ssh import connect

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "mobilenet-edge.service"


def service_unit(root: str, serve: str) -> str:
    """A systemd user unit that starts the release's ``make demo`` at boot (with `loginctl enable-linger`),
    serving on ``serve``: the same command as by hand, with the profile's camera and threads."""
    return (
        f"[Unit]\nDescription=mobilenet-edge live classification\nAfter=network-online.target\n\n"
        f"[Service]\nWorkingDirectory={root}/current\n"
        f"ExecStart=/usr/bin/make -s demo SERVE={serve}\nRestart=on-failure\nRestartSec=5\n\n"
        f"[Install]\nWantedBy=default.target\n"
    )


def stage(
    bundle: Path,
    device: Device,
    env: Environment,
    version: str,
    meta: BundleMeta,
    into: Path,
    serve: str = DEFAULT_ADDRESS,
) -> None:
    """Lay out a release in ``into``, with a manifest whose program line is model.json's own hash."""
    shutil.copytree(ROOT / "edge", into / "edge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "device_tests", into / "device_tests", ignore=shutil.ignore_patterns("__pycache__"))
    (into / "bundle").mkdir()
    for name in meta.files:
        shutil.copy2(bundle / name, into / "bundle" / name)
    shutil.copy2(ROOT / "deploy" / "device.mk", into / "Makefile")
    env.stage(into)
    (into / "device.json").write_text(json.dumps(device.facts(), indent=2) + "\n")
    (into / "python").write_text(env.python + "\n")
    (into / "release.json").write_text(
        json.dumps({"version": version, "model": meta.name, "pte_sha256": meta.pte_sha256, "device": device.name})
        + "\n"
    )
    (into / SERVICE).write_text(service_unit(env.root, serve))
    write_manifest(into, {f"bundle/{meta.pte}": meta.pte_sha256})


def deploy(device: Device, bundle: Path, meta: BundleMeta, version: str, options) -> Path | None:
    """``options``: the command line's bwlimit, serve, service, no_tests and reports."""
    target = connect(device)
    # What the device is decides which wheels and which runner build fit it; both are prepared here.
    env = locate(target, device)
    with tqdm(total=6, desc=f"deploy to {device.name}", unit="step", file=sys.stderr) as steps:

        def step(text: str) -> None:
            steps.set_postfix_str(text)
            steps.update(1)

        with releases(target, env.root) as kept:  # the whole deploy, device tests included: one at a time
            step("staging")
            with tempfile.TemporaryDirectory(prefix="release-") as tmp:
                stage(bundle, device, env, version, meta, Path(tmp), options.serve)
                step("copying")
                partial = kept.push(Path(tmp), version, options.bwlimit)
            step("environment")
            env.install(target, device, partial, options.bwlimit)
            step("smoke run")
            smoke_run(target, env.python, partial, kept, version)
            step("switching")
            kept.finish(version)
            prune_environments(target, kept.dir, env)
            if options.service:
                install_service(target, device, env.root, env.home, options.serve)
            steps.close()
            print(
                f"deployed {meta.name} to {target.where} as {env.root}/current -> releases/{version}", file=sys.stderr
            )
            if options.no_tests:
                return None
            return run_device_tests(target, device, env.root, env.python, version, options.reports)


def smoke_run(target: Transport, python: str, partial: str, kept: Releases, version: str) -> None:
    """A few frames through the new release before it may become a release at all; a failure is kept
    aside as ``<version>.failed`` (removed by the next deploy), never counted among the kept releases."""
    result = target.run(
        [
            python,
            "-m",
            "edge",
            "run",
            "bundle",
            "--source",
            "procedural",
            "--fps",
            "0",
            "--headless",
            "--max-frames",
            "5",
        ],
        cwd=partial,
        check=False,
    )
    if result.returncode != 0:
        failed = kept.set_aside(version)
        raise DeployError(
            f"the new release failed its first run ({explain(result.stderr, target.where)}); "
            f"current is unchanged, the failed copy is {failed}"
        )


def install_service(target: Transport, device: Device, root: str, home: str, serve: str) -> None:
    units = f"{home}/.config/systemd/user"
    target.run(["test", "-x", "/usr/bin/make"], what="looking for make, which the unit runs (sudo apt install make)")
    target.run(["mkdir", "-p", units], what="creating the systemd user directory")
    target.run(["cp", f"{root}/current/{SERVICE}", f"{units}/{SERVICE}"], what="installing the unit")
    target.run(["systemctl", "--user", "daemon-reload"], what="systemctl --user daemon-reload")
    target.run(["systemctl", "--user", "enable", "--now", SERVICE], what=f"enabling {SERVICE}")
    host, port = parse_address(serve)
    reach = (
        "from the LAN at this device's address"
        if host in ("0.0.0.0", "::")
        else f"only on the device itself (SERVE=0.0.0.0:{port} to reach it from the LAN)"
    )
    print(
        f"{SERVICE} enabled: the demo page is served on {host}:{port}, {reach}; for it to start at boot "
        f"without a login run `sudo loginctl enable-linger {device.user or ''}` once on the device",
        file=sys.stderr,
    )


def run_device_tests(target: Transport, device: Device, root: str, python: str, version: str, reports: Path) -> Path:
    """pytest on the device; the report comes home whatever the outcome, and failures fail the deploy."""
    print(f"running device tests on {target.where}", file=sys.stderr)
    result = target.run(
        [
            python,
            "-m",
            "pytest",
            "-c",
            "device_tests/pytest.ini",
            "device_tests",
            "-q",
            "--report",
            "device_report.json",
        ],
        cwd=f"{root}/current",
        capture=False,
        check=False,
    )
    local = reports / device.name / version
    for name in ("device_report.json", "device_report.md"):
        target.pull(f"{root}/current/{name}", local / name)
    picture = pictures.render(local / "device_report.json")
    print((local / "device_report.md").read_text())
    if choice := json.loads((local / "device_report.json").read_text()).get("threads"):
        print(f"threads: {choice['threads']} chosen for the release's app ({choice['why']})", file=sys.stderr)
    print(f"report: {local}/device_report.json{f' and {picture.name}' if picture else ''}", file=sys.stderr)
    if result.returncode != 0:
        raise DeployError(
            f"device tests failed on {target.where} (exit {result.returncode}): see {local}/device_report.md"
        )
    return local
