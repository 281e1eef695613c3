"""The transport to an Android device, through the real adb client: ``adb shell``, ``push`` and ``pull``.

``adb shell`` runs one command line, so each argv is quoted with ``shlex.join`` and a hostile file name
stays one argument. Whatever the device prints is read bounded and decoded leniently: a device can print
anything, of any size.
"""

import re
import shlex
import shutil
import subprocess
import threading
from pathlib import Path

from . import DeployError, Transport, explain

ABI = "arm64-v8a"
TIMEOUT_S = 120  # one adb command; the benchmark gets its own
INSTALL_ADB = "sudo apt install adb (Debian/Ubuntu), or put Android's platform-tools on PATH"


class Adb(Transport):
    """One device, by its serial."""

    def __init__(self, serial: str) -> None:
        self.binary = shutil.which("adb")
        if self.binary is None:
            raise DeployError(f"adb is not installed: {INSTALL_ADB}")
        self.serial, self.where = serial, f"the Android device {serial}"

    def adb(
        self, args: list[str], what: str, timeout: float = TIMEOUT_S, check: bool = True
    ) -> subprocess.CompletedProcess:
        return self.checked(lambda: run_bounded([self.binary, "-s", self.serial, *args], timeout), what, check)

    def execute(
        self, argv: list[str], cwd: str | None, capture: bool, timeout: float | None
    ) -> subprocess.CompletedProcess:
        """``capture`` is moot: adb's output is always read, bounded, and returned."""
        line = shlex.join(argv) if cwd is None else f"cd {shlex.quote(cwd)} && {shlex.join(argv)}"
        return run_bounded([self.binary, "-s", self.serial, "shell", line], timeout or TIMEOUT_S)

    def explain_failure(self, result: subprocess.CompletedProcess) -> str:
        """adb push and pull print their errors among the progress."""
        return explain_adb(result.stderr + "\n" + result.stdout, self.where)

    def push(self, local: Path, remote: str, what: str | None = None, *, bwlimit: int | None = None) -> None:
        """``bwlimit`` is moot: adb has no bandwidth limit (USB is rarely the slow link)."""
        self.adb(["push", str(local), remote], what or "pushing", timeout=1800)

    def pull(self, remote: str, local: Path, what: str | None = None) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        self.adb(["pull", remote, str(local)], what or f"fetching {remote}")


def explain_adb(text: str, where: str) -> str:
    """One line for adb's usual failures, else the deploy's own explanations of adb's error line."""
    errors = [line.strip() for line in text.replace("\r", "\n").splitlines() if "error:" in line]
    text = errors[-1] if errors else text
    if "No space left" in text:
        return explain(text, where)
    known = [
        ("not found", f"{where} is gone: is it still connected (adb devices)?"),
        ("device offline", f"{where} went offline: reconnect it (adb reconnect) and deploy again"),
        ("unauthorized", f"{where} is unauthorized: accept the USB debugging prompt on the phone"),
        ("couldn't read from device", f"{where} stopped answering: is it still connected (adb devices)?"),
        ("closed", f"{where} closed the connection: is it still connected (adb devices)?"),
    ]
    return next((message for needle, message in known if needle in text), None) or explain(text, where)


MAX_OUTPUT = 1 << 20  # bytes kept of each stream of one adb command; the rest is read and dropped


def run_bounded(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``argv`` with at most MAX_OUTPUT bytes of each stream kept, decoded with errors replaced: adb's output
    is a device's, and a device can print anything, of any size."""
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        kept: dict[str, list[bytes]] = {"out": [], "err": []}

        def drain(stream, into: list[bytes]) -> None:
            size = 0
            while chunk := stream.read(1 << 16):
                if size < MAX_OUTPUT:
                    into.append(chunk[: MAX_OUTPUT - size])
                size += len(chunk)

        readers = [
            threading.Thread(target=drain, args=(child.stdout, kept["out"]), daemon=True),
            threading.Thread(target=drain, args=(child.stderr, kept["err"]), daemon=True),
        ]
        for reader in readers:
            reader.start()
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            raise
        for reader in readers:
            reader.join()
    text = {k: b"".join(v).decode(errors="replace") for k, v in kept.items()}
    return subprocess.CompletedProcess(argv, child.returncode, text["out"], text["err"])


STATES = (
    "device",
    "unauthorized",
    "offline",
    "bootloader",
    "recovery",
    "sideload",
    "host",
    "authorizing",
    "connecting",
    "rescue",
    "no permissions",
    "unknown",
)


def parse_devices(text: str) -> dict[str, str]:
    """``adb devices`` (with or without ``-l``): serial -> state. Each row is a serial, white space, a known
    state and perhaps more fields (``product:... model:...``); a row that is not is refused, not guessed at."""
    devices = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("List of devices") or line.startswith("* "):
            continue
        serial, _, rest = line.partition("\t") if "\t" in line else line.partition(" ")
        state = next((s for s in STATES if rest.strip() == s or rest.strip().startswith(s + " ")), None)
        if not serial.isprintable() or not serial.isascii() or " " in serial or state is None:
            raise DeployError(
                f"adb devices printed a row this deploy does not understand: {line[:80].encode('unicode_escape')!r}"
            )
        devices[serial] = state
    return devices


def attached(binary: str) -> dict[str, str]:
    """``adb devices``: serial -> state (device, unauthorized, offline, ...)."""
    try:
        result = run_bounded([binary, "devices"], TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DeployError("adb devices did not answer: restart the adb server (adb kill-server)") from None
    if result.returncode != 0:
        raise DeployError(f"adb devices failed: {explain(result.stderr, 'adb')}")
    return parse_devices(result.stdout)


def pick(serial: str | None) -> Adb:
    """The device to deploy to: ``serial``, or the only one attached; ready, authorized and arm64-v8a."""
    binary = shutil.which("adb")
    if binary is None:
        raise DeployError(f"adb is not installed: {INSTALL_ADB}")
    devices = attached(binary)
    if serial and serial not in devices and re.fullmatch(r"[\w.-]+:\d+", serial):
        run_bounded([binary, "connect", serial], TIMEOUT_S)
        devices = attached(binary)
    if serial is None:
        if not devices:
            raise DeployError(
                "no Android device attached: connect one with USB debugging on (adb devices lists "
                "none), or start the emulated one (make android-emu)"
            )
        if len(devices) > 1:
            raise DeployError(
                f"{len(devices)} Android devices attached ({', '.join(sorted(devices))}): pick one with SERIAL="
            )
        serial = next(iter(devices))
    state = devices.get(serial)
    if state is None:
        raise DeployError(
            f"no Android device {serial} attached (adb devices lists "
            f"{', '.join(sorted(devices)) or 'none'}): check SERIAL="
        )
    if state != "device":
        raise DeployError(
            f"the Android device {serial} is {state}: "
            + {
                "unauthorized": "accept the USB debugging prompt on the phone, then deploy again",
                "authorizing": "accept the USB debugging prompt on the phone, then deploy again",
                "offline": "reconnect it (adb reconnect) and deploy again",
            }.get(state, "wait until adb devices says device")
        )
    adb = Adb(serial)
    abi = adb.run(["getprop", "ro.product.cpu.abi"], "reading the device's ABI").stdout.strip()
    if abi != ABI:
        raise DeployError(
            f"the Android device {serial} is {abi or 'of an unknown ABI'}: the runner is built for "
            f"{ABI} (64-bit ARM) only"
        )
    return adb
