"""python -m deploy DEVICE --bundle DIR: ship bundle + edge app + device tests, atomically, and run the tests.

The parser only: the profile (deploy/profile.py) picks the flow, a Pi's over SSH (deploy/pi.py) or a
phone's over adb (deploy/android.py); both keep releases the one way (deploy/release.py).
"""

import argparse
import signal
import sys
from pathlib import Path

from edge.command import positive_int, with_examples
from edge.serve import DEFAULT_ADDRESS, parse_address

from . import android, pi
from .profile import load_device
from .release import check_bundle, release_name
from .transport import DeployError

ROOT = Path(__file__).resolve().parent.parent
PI_ONLY = ("service", "no_tests", "host", "bwlimit")  # flags that mean nothing to a phone, where the deploy measures


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
    if device.adb and (given := [name for name in PI_ONLY if getattr(args, name)]):
        flag = "--" + given[0].replace("_", "-")
        raise DeployError(f"{flag} is for a Raspberry Pi; on an Android device the deploy is the measurement")
    meta = check_bundle(args.bundle)
    if device.adb:
        return android.deploy(device, args.bundle, meta, release_name(meta), args.reports)
    return pi.deploy(device, args.bundle, meta, release_name(meta), args)


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
        help="where device reports land, as DEVICE/VERSION/",
    )
    parser.add_argument(
        "--no-tests", action="store_true", help="deploy without running the device tests (default: run them)"
    )
    parser.add_argument(
        "--service", action="store_true", help="install a systemd user unit that starts the demo (default: none)"
    )
    parser.add_argument(
        "--serve",
        default=DEFAULT_ADDRESS,
        metavar="HOST:PORT",
        help="where the service serves its page (127.0.0.1: the device only; 0.0.0.0:8080 for the LAN)",
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
    except KeyboardInterrupt:
        sys.exit("\ninterrupted: the device keeps its previous release")
