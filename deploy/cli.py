"""python -m deploy DEVICE --bundle DIR: ship bundle + edge app + device tests, atomically, and run the tests.

On the device, under ``remote_dir``::

    releases/<version>/   bundle/ edge/ device_tests/ Makefile requirements{,-nodeps}.txt device.json MANIFEST.sha256
    current -> releases/<version>
    venv-<hash>/          (when the profile has one) one per set of requirements, with the native runner built
                          in it; kept while a kept release uses it

A release is copied to ``<version>.partial``, checked against its manifest, given its environment and
smoke-run there, and only then renamed to ``<version>`` and made ``current`` by renaming a new symlink
over the old one. Anything that fails or is interrupted before that leaves the previous ``current``
untouched; a release that fails its smoke run is kept aside as ``<version>.failed`` until the next deploy,
and only finished releases count among the ones kept.
"""

import argparse
import hashlib
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from edge.bundle import BundleError, BundleMeta, load_bundle
from edge.command import positive_int, with_examples
from edge.native import NativeError
from edge.serve import parse_address

from . import android, pictures, provision
from .profile import Device, ProfileError, load_device
from .target import KEEP_RELEASES, DeployError, Target, connect, device_lock, explain
from .wheelhouse import device_requirements

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVE = "127.0.0.1:8080"
SERVICE = "mobilenet-edge.service"


def environment_dir(venv: str) -> str:
    """One environment per set of requirements: a release whose requirements change gets a new one,
    and the running release keeps its own until the switch (and until it is pruned)."""
    digest = hashlib.sha256("".join(device_requirements()).encode()).hexdigest()[:12]
    return f"{venv}-{digest}"


def check_bundle(bundle: Path) -> BundleMeta:
    """The edge app's own check, here before anything is copied: format, fields, files, the program's
    hash, and the program loaded with its shapes against model.json."""
    try:
        loaded = load_bundle(bundle, threads=1)
    except (BundleError, NativeError) as e:
        raise DeployError(str(e)) from None
    loaded.runner.close()
    return loaded.meta


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
    root: str,
    python: str,
    version: str,
    meta: BundleMeta,
    into: Path,
    serve: str = DEFAULT_SERVE,
) -> None:
    """Lay out a release in ``into``, with a manifest whose program line is model.json's own hash."""
    shutil.copytree(ROOT / "edge", into / "edge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "device_tests", into / "device_tests", ignore=shutil.ignore_patterns("__pycache__"))
    (into / "bundle").mkdir()
    for name in meta.files:
        shutil.copy2(bundle / name, into / "bundle" / name)
    shutil.copy2(ROOT / "deploy" / "device.mk", into / "Makefile")
    packages, runtime = device_requirements()
    (into / "requirements.txt").write_text(packages)
    (into / "requirements-nodeps.txt").write_text(runtime)
    (into / "device.json").write_text(json.dumps(device.facts(), indent=2) + "\n")
    (into / "python").write_text(python + "\n")
    (into / "release.json").write_text(
        json.dumps({"version": version, "model": meta.name, "pte_sha256": meta.pte_sha256, "device": device.name})
        + "\n"
    )
    (into / SERVICE).write_text(service_unit(root, serve))
    lines = []
    for path in sorted(p for p in into.rglob("*") if p.is_file()):
        rel = path.relative_to(into).as_posix()
        digest = meta.pte_sha256 if rel == f"bundle/{meta.pte}" else hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {rel}\n")
    (into / "MANIFEST.sha256").write_text("".join(lines))


def setup_python(
    target: Target,
    device: Device,
    venv: str | None,
    root: str,
    release: str,
    python: str,
    bwlimit: int | None,
    plan: provision.RunnerPlan | None,
    facts: provision.DeviceFacts | None,
) -> None:
    """Create the release's environment once (it is keyed by its requirements) from wheels fetched on this
    machine, and give it the native runner built here (or by the device); a no-op when both are there."""
    if venv and target.run(["test", "-f", f"{venv}/.complete"], check=False).returncode != 0:
        print(
            f"\nsetting up the Python environment on {target.where} (once per requirements; several minutes)",
            file=sys.stderr,
        )
        provision.install_packages(target, facts, root, venv, release, bwlimit)
    if venv:
        provision.install_runner(target, plan, facts, venv, release, python)
    else:
        target.run([python, "-m", "edge.native"], cwd=release, what="building the native runner on the device")


def deploy(args: argparse.Namespace) -> Path | None:
    device = load_device(
        args.device,
        args.host,
        args.port,
        args.key,
        args.remote_dir,
        args.python,
        args.threads,
        args.known_hosts,
        args.serial,
    )
    if device.adb:
        return deploy_android(args, device)
    target = connect(device)
    meta = check_bundle(args.bundle)
    version = release_name(meta)
    # Absolute paths on the device: relative ones in the profile are under the SSH login directory
    # (the project directory for DEVICE=local), and commands run from inside the release.
    home = target.run(["pwd"], what=f"connecting to {target.where}").stdout.strip()
    root, venv = (p if p is None or p.startswith("/") else f"{home}/{p}" for p in (device.remote_dir, device.venv))
    venv_base, venv = venv, environment_dir(venv) if venv else None
    python = f"{venv}/bin/python" if venv else device.python
    python = python if "/" not in python or python.startswith("/") else f"{home}/{python}"
    releases, release = f"{root}/releases", f"{root}/releases/{version}"
    # What the device is decides which wheels and which runner build fit it; both are prepared here.
    facts = provision.probe(target, device.python) if venv else None
    plan = provision.plan_runner(target, facts, venv) if venv else None
    steps = tqdm(total=6, desc=f"deploy to {device.name}", unit="step", file=sys.stderr)

    def step(text: str) -> None:
        steps.set_postfix_str(text)
        steps.update(1)

    with device_lock(target, root):  # the whole deploy, device tests included: one at a time
        target.run(["mkdir", "-p", releases], what=f"creating {releases}")
        target.run(
            [
                "find",
                releases,
                "-maxdepth",
                "1",
                "(",
                "-name",
                "*.partial",
                "-o",
                "-name",
                "*.failed",
                ")",
                "-exec",
                "rm",
                "-rf",
                "{}",
                "+",
            ],
            what="removing unfinished and failed releases",
        )
        step("staging")
        partial = f"{release}.partial"
        with tempfile.TemporaryDirectory(prefix="release-") as tmp:
            stage(args.bundle, device, root, python, version, meta, Path(tmp), args.serve)
            if plan:
                provision.stage_runner(plan, Path(tmp))
            step("copying")
            target.push(Path(tmp), partial, args.bwlimit)
        step("verifying")
        target.run(
            ["sha256sum", "--quiet", "--strict", "-c", "MANIFEST.sha256"],
            cwd=partial,
            what="checking the copy against its manifest",
        )
        step("environment")
        setup_python(target, device, venv, root, partial, python, args.bwlimit, plan, facts)
        step("smoke run")
        smoke_run(target, python, partial, release)
        target.run(["mv", "-T", partial, release], what="finishing the release")
        step("switching")
        target.run(["ln", "-sfn", f"releases/{version}", f"{root}/current.new"], what="linking the release")
        target.run(["mv", "-T", f"{root}/current.new", f"{root}/current"], what="switching current")
        prune(target, releases, version)
        if venv:
            prune_environments(target, releases, venv_base, venv)
        if args.service:
            install_service(target, root, home, args.serve)
        steps.close()
        print(f"deployed {meta.name} to {target.where} as {root}/current -> releases/{version}", file=sys.stderr)
        if args.no_tests:
            return None
        return run_device_tests(target, device, root, python, version, args.reports)


def release_name(meta: BundleMeta) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{meta.name}-{secrets.token_hex(2)}"


def deploy_android(args: argparse.Namespace, device) -> Path:
    """A phone over adb (deploy/android.py): the program measured with edge-bench, no Python on the device."""
    for flag, given in (
        ("--service", args.service),
        ("--no-tests", args.no_tests),
        ("--host", args.host),
        ("--bwlimit", args.bwlimit),
    ):
        if given:
            raise DeployError(f"{flag} is for a Raspberry Pi; on an Android device the deploy is the measurement")
    meta = check_bundle(args.bundle)
    return android.deploy(device, args.bundle, meta, release_name(meta), args.reports)


def smoke_run(target: Target, python: str, partial: str, release: str) -> None:
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
        target.run(["mv", "-T", partial, f"{release}.failed"], check=False)
        raise DeployError(
            f"the new release failed its first run ({explain(result.stderr, target.where)}); "
            f"current is unchanged, the failed copy is {release}.failed"
        )


def prune(target: Target, releases: str, keep: str) -> None:
    """Keep the newest finished releases; unfinished (.partial) and failed (.failed) ones never count."""
    listing = target.run(["ls", "-1", releases], what="listing releases").stdout.split()
    finished = (name for name in listing if not name.endswith((".partial", ".failed")) and name != keep)
    old = sorted(finished)[: -(KEEP_RELEASES - 1)]
    if old:
        target.run(["rm", "-rf", *(f"{releases}/{name}" for name in old)], what="removing old releases")


def prune_environments(target: Target, releases: str, base: str, keep: str) -> None:
    """Remove the environments (``<base>-<hash>``, and ``<base>`` of older deploys) no kept release uses."""
    used = target.run(
        ["sh", "-c", 'cat "$1"/*/python 2>/dev/null || true', "sh", releases], what="reading the releases' environments"
    ).stdout.split()
    parent, name = base.rsplit("/", 1)
    listing = target.run(["ls", "-1", parent], what="listing environments").stdout.split()
    stale = [
        f"{parent}/{entry}"
        for entry in listing
        if (entry == name or entry.startswith(f"{name}-"))
        and f"{parent}/{entry}" != keep
        and f"{parent}/{entry}/bin/python" not in used
    ]
    if stale:
        target.run(["rm", "-rf", *stale], what="removing unused environments")


def install_service(target: Target, root: str, home: str, serve: str) -> None:
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
        f"without a login run `sudo loginctl enable-linger {target.device.user or ''}` once on the device",
        file=sys.stderr,
    )


def run_device_tests(target: Target, device: Device, root: str, python: str, version: str, reports: Path) -> Path:
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
    print(f"report: {local}/device_report.json{f' and {picture.name}' if picture else ''}", file=sys.stderr)
    if result.returncode != 0:
        raise DeployError(
            f"device tests failed on {target.where} (exit {result.returncode}): see {local}/device_report.md"
        )
    return local


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy",
        description=__doc__.split("\n\n")[0],
        **with_examples(
            "python -m deploy rpi5 --bundle artifacts/v3_small --host you@raspberrypi.local",
            "python -m deploy rpi5 --bundle artifacts/v3_small --host you@pi --service --serve 0.0.0.0:8080",
            "python -m deploy local --bundle artifacts/v3_small",
            "python -m deploy android --bundle artifacts/v3_small --serial R58M123ABC",
        ),
    )
    parser.add_argument(
        "device", help="a profile in configs/devices/ (rpi5, rpi5-emu, android, android-emu, local, local-ssh)"
    )
    parser.add_argument("--bundle", type=Path, required=True, help="the bundle directory to ship (required)")
    parser.add_argument("--host", help="user@host or host (default: the profile's; without user@, your login name)")
    parser.add_argument("--port", type=positive_int, help="SSH port (default: the profile's, 22)")
    parser.add_argument("--key", help="SSH private key (default: ssh's usual keys and agent)")
    parser.add_argument("--known-hosts", help="SSH known_hosts file (default ~/.ssh/known_hosts)")
    parser.add_argument(
        "--remote-dir",
        help="where releases live on the device; over SSH a relative path is under "
        "the user's home (default: the profile's)",
    )
    parser.add_argument(
        "--python",
        help="the device's Python; a venv is created from it when the profile has one (default: the profile's)",
    )
    parser.add_argument("--threads", type=positive_int, help="XNNPACK threads for the app (default: the profile's)")
    parser.add_argument(
        "--serial",
        help="adb: the Android device's serial when several are attached (adb devices "
        "lists them; default: the profile's, else the only one attached)",
    )
    parser.add_argument(
        "--bwlimit",
        type=positive_int,
        metavar="KBPS",
        help="limit the copy's bandwidth, for slow links (default: no limit)",
    )
    parser.add_argument(
        "--reports",
        type=Path,
        default=ROOT / "artifacts" / "devices",
        help="where device reports land, as DEVICE/VERSION/ (default artifacts/devices)",
    )
    parser.add_argument(
        "--no-tests", action="store_true", help="deploy without running the device tests (default: run them)"
    )
    parser.add_argument(
        "--service", action="store_true", help="install a systemd user unit that starts the demo (default: none)"
    )
    parser.add_argument(
        "--serve",
        default=DEFAULT_SERVE,
        metavar="HOST:PORT",
        help=f"where the service serves its page (default {DEFAULT_SERVE}: the device only; 0.0.0.0:8080 for the LAN)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        parse_address(args.serve)
    except ValueError as e:
        parser.error(str(e))
    # Ctrl-C and a stop from outside both end in the "interrupted" line below, even when started
    # from a context that ignores SIGINT (background jobs inherit that).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    try:
        deploy(args)
    except (DeployError, ProfileError) as e:
        sys.exit(f"\nerror: {e}")
    except KeyboardInterrupt:
        sys.exit("\ninterrupted: the device keeps its previous release")
