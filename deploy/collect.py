"""Collect training images with a device's own camera, and bring them home.

    python -m deploy.collect rpi5 --host you@raspberrypi.local --classes cat,dog --into data/
    (make collect DEVICE=rpi5 HOST=you@raspberrypi.local CLASSES=cat,dog DATA=data/)

It runs ``edge collect`` in the device's deployed release (``make deploy`` first), with the profile's camera
unless ``--source`` names another. By default the page is served on the device's own 127.0.0.1 and forwarded
over the SSH connection, so it opens at http://127.0.0.1:PORT/ here and nothing is exposed on the network;
``--serve 0.0.0.0:8080`` serves it on the LAN instead, as the demo does. Ctrl-C stops it there too (the SSH
session has a terminal), and the images are then copied into ``--into``, next to any already there.
``--label CLASS --count N`` captures without a page.
"""

import argparse
import signal
import subprocess
import sys
from pathlib import Path

from edge.collect import parse_classes
from edge.command import non_negative_float, positive_int, with_examples
from edge.serve import DEFAULT_ADDRESS, parse_address

from .profile import load_device
from .transport import DeployError
from .transport.ssh import SSHTarget, connect

REMOTE_OUT = "collected"  # under the device's release root: what a later collect adds to


def collect_argv(root: str, args: argparse.Namespace, source: str, serve: str | None) -> list[str]:
    """``edge collect`` in the current release with its own Python, as an argv run by the device's sh."""
    options = ["--source", source, "--classes", args.classes, "--out", f"{root}/{REMOTE_OUT}"]
    if args.label:
        options += ["--label", args.label, "--count", str(args.count), "--every", str(args.every)]
    else:
        options += ["--serve", serve or ""]
    script = 'cd "$1" && shift && exec "$(cat python)" -m edge collect "$@"'
    return ["sh", "-c", script, "sh", f"{root}/current", *options]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.collect",
        description=__doc__.splitlines()[0],
        **with_examples(
            "python -m deploy.collect rpi5 --host you@raspberrypi.local --classes cat,dog --into data/",
            "python -m deploy.collect rpi5 --host you@pi --classes cat,dog --label cat --count 100 --into data/",
        ),
    )
    parser.add_argument("device", help="a profile in configs/devices/ with SSH (rpi5, rpi5-emu, local-ssh, local)")
    parser.add_argument("--classes", required=True, help="the class names, comma-separated (required)")
    parser.add_argument("--into", type=Path, required=True, help="the folder here the images are added to (required)")
    parser.add_argument("--source", help="the device's source (default: the profile's camera, else procedural)")
    parser.add_argument(
        "--serve",
        default=DEFAULT_ADDRESS,
        help="where the device serves the page",
    )
    parser.add_argument(
        "--local-port", type=positive_int, help="the port here the page is forwarded to (default: the device's port)"
    )
    parser.add_argument("--label", help="capture this class without a page (default: the page)")
    parser.add_argument("--count", type=positive_int, default=100, help="captures with --label")
    parser.add_argument("--every", type=non_negative_float, default=0.2, help="seconds apart with --label")
    parser.add_argument("--host", help="user@host (default: the profile's)")
    parser.add_argument("--port", type=positive_int, help="SSH port (default: the profile's)")
    parser.add_argument("--key", help="SSH private key (default: ssh's usual keys and agent)")
    parser.add_argument("--known-hosts", help="SSH known_hosts file (default ~/.ssh/known_hosts)")
    parser.add_argument("--remote-dir", help="the release root on the device (default: the profile's)")
    args = parser.parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    try:
        parse_classes(args.classes)
        host, port = parse_address(args.serve)
        device = load_device(
            args.device, args.host, args.port, args.key, args.remote_dir, None, None, args.known_hosts, None
        )
        if device.adb:
            raise DeployError("collecting runs the Python app, which a phone does not have: use a Raspberry Pi")
        run(device, args, host, port)
    except ValueError as e:  # the address or the class list as given
        sys.exit(f"error: {e}")


def run(device, args: argparse.Namespace, host: str, port: int) -> None:
    target = connect(device)
    home = target.run(["pwd"], what=f"connecting to {target.where}").stdout.strip()
    root = device.remote_dir if device.remote_dir.startswith("/") else f"{home}/{device.remote_dir}"
    if target.run(["test", "-f", f"{root}/current/python"], check=False).returncode != 0:
        raise DeployError(f"no release on {target.where} under {root}: deploy one first (make deploy DEVICE=...)")
    command = target.command(collect_argv(root, args, args.source or device.camera or "procedural", args.serve))
    if isinstance(target, SSHTarget):  # a terminal there, so Ctrl-C and a lost connection stop it there too
        local = args.local_port or port
        forward = ["-L", f"{local}:127.0.0.1:{port}"] if host in ("127.0.0.1", "localhost") and not args.label else []
        command = [command[0], "-tt", *forward, *command[1:]]
        if forward:
            print(f"the page: http://127.0.0.1:{local}/ (forwarded from {target.where}); Ctrl-C stops", file=sys.stderr)
    try:
        finished = subprocess.run(command, stdin=None if sys.stdin.isatty() else subprocess.DEVNULL)
    except KeyboardInterrupt:
        finished = None
    args.into.mkdir(parents=True, exist_ok=True)
    target.pull(f"{root}/{REMOTE_OUT}/", args.into)
    print(f"images of {target.where} copied into {args.into}", file=sys.stderr)
    if finished is not None and finished.returncode not in (0, 130):
        raise DeployError(f"edge collect on {target.where} ended with exit {finished.returncode}")


if __name__ == "__main__":
    from edge.command import run_main

    run_main("deploy.collect")
