"""Device profiles (configs/devices/*.yaml) and the command-line overrides applied on top."""

import getpass
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edge.command import UserError
from edge.files import cache_root

PROFILES = Path(__file__).resolve().parent.parent / "configs" / "devices"
HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*|\[?[0-9A-Fa-f:.]+(%[A-Za-z0-9]+)?\]?")
USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
SERIAL = re.compile(r"[A-Za-z0-9_.:\[\]-]+")  # a USB serial, or HOST:PORT for adb over TCP


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ProfileError(UserError, ValueError):
    """A profile that is missing or incomplete; the message says which key to set."""


@dataclass
class Device:
    name: str
    remote_dir: str
    python: str
    threads: int
    camera: str | None = None
    host: str | None = None  # None: this machine, no SSH
    user: str | None = None
    port: int = 22
    key: str | None = None
    known_hosts: str | None = None
    venv: str | None = None  # created once on the device; None: use `python` as it is
    venv_flags: list[str] = field(default_factory=list)
    budgets_ms: dict = field(default_factory=dict)
    memory_budget_mb: float | None = None
    emulated: bool = False  # an emulated CPU: latency is recorded, never held to a budget
    transport: str = "ssh"  # ssh (or this machine, with no host), or adb: a phone, measured with edge-bench
    serial: str | None = None  # adb: the device's serial (None: the only one attached)
    runs: int = 200  # adb: timed runs per thread count

    def __post_init__(self) -> None:
        """Checked before anything reaches ssh: a host or user starting with "-" would be read as an option."""
        if self.host is not None and not HOST.fullmatch(str(self.host)):
            raise ProfileError(f"host {self.host!r} is not a host name or IP address: check HOST=")
        if self.user is not None and not USER.fullmatch(str(self.user)):
            raise ProfileError(f"user {self.user!r} is not a login name: check HOST=user@host")
        if self.transport not in ("ssh", "adb"):
            raise ProfileError(f"transport {self.transport!r} is not ssh or adb: check the profile")
        if self.serial is not None and not SERIAL.fullmatch(str(self.serial)):
            raise ProfileError(f"serial {self.serial!r} is not an adb serial (adb devices lists them): check SERIAL=")
        if not _is_int(self.runs) or self.runs < 1:
            raise ProfileError(f"runs {self.runs!r} must be a whole number >= 1: check the profile")
        if not _is_int(self.port) or not 1 <= self.port <= 65535:
            raise ProfileError(f"port {self.port!r} is not a TCP port (1-65535): check PORT=")
        if not _is_int(self.threads) or self.threads < 1:
            raise ProfileError(f"threads {self.threads!r} must be a whole number >= 1: check THREADS=")
        if self.key is not None and not Path(self.key).expanduser().is_file():
            raise ProfileError(
                f"SSH key {self.key} does not exist: check KEY= (or leave it out and ssh picks your usual keys)"
            )
        if self.known_hosts is not None and not Path(self.known_hosts).expanduser().parent.is_dir():
            raise ProfileError(
                f"the directory of known_hosts file {self.known_hosts} does not exist: check KNOWN_HOSTS="
            )

    @property
    def ssh(self) -> bool:
        return self.host is not None and self.transport == "ssh"

    @property
    def adb(self) -> bool:
        return self.transport == "adb"

    def facts(self) -> dict:
        """What the device tests need to know, shipped with each release as device.json."""
        return {
            "name": self.name,
            "threads": self.threads,
            "camera": self.camera,
            "budgets_ms": self.budgets_ms,
            "memory_budget_mb": self.memory_budget_mb,
            "emulated": self.emulated,
            "own_environment": self.venv is not None,
        }


def settings_from(path: str | None, name: str, what: str, start: str) -> dict:
    """Connection settings another tool wrote: ``make pi-emu`` the emulated Pi's free port and key,
    ``make android-emu`` the emulated phone's adb serial. A relative path is under the project's cache
    folder, where the emulators keep their state."""
    if not path:
        return {}
    file = cache_root() / Path(path).expanduser()
    if not file.is_file():
        raise ProfileError(
            f"the {name} profile reads its {what} settings from {file}, which is missing: "
            f"start the device first ({start})"
        )
    settings = yaml.safe_load(file.read_text())
    if not isinstance(settings, dict):
        raise ProfileError(f"{file} is not a YAML mapping of {what} settings: restart the device ({start})")
    return settings


def load_device(
    name: str,
    host: str | None = None,
    port: int | None = None,
    key: str | None = None,
    remote_dir: str | None = None,
    python: str | None = None,
    threads: int | None = None,
    known_hosts: str | None = None,
    serial: str | None = None,
) -> Device:
    """The profile ``name`` with overrides; ``host`` may be ``user@host``."""
    path = PROFILES / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml")))
        raise ProfileError(f"no device profile {name!r}: pick one of {known} or add {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    ssh_from = raw.pop("ssh_from", None)  # an explicit host wins over what the emulator wrote
    ssh = (raw.pop("ssh", None) or {}) | ({} if host else settings_from(ssh_from, name, "SSH", "make pi-emu"))
    adb_from = raw.pop("adb_from", None)  # likewise an explicit serial
    if not serial and adb_from:
        serial = settings_from(adb_from, name, "adb", "make android-emu").get("serial")
    if host:
        user, _, host = host.rpartition("@")
        ssh = {**ssh, "host": host, **({"user": user} if user else {})}
    values = {**raw, **{k: v for k, v in ssh.items() if k in ("host", "user", "port", "key", "known_hosts")}}
    overrides = {
        "port": port,
        "key": key,
        "remote_dir": remote_dir,
        "python": python,
        "threads": threads,
        "known_hosts": known_hosts,
        "serial": serial,
    }
    values |= {k: v for k, v in overrides.items() if v not in (None, "")}
    if values.get("host") and not values.get("user"):
        values["user"] = getpass.getuser()
    if values.get("transport") == "adb":
        values.setdefault("python", "none")  # a phone runs edge-bench, no Python
    for required, variable in (("remote_dir", "REMOTE_DIR"), ("python", "DEVICE_PYTHON"), ("threads", "THREADS")):
        if not values.get(required):
            raise ProfileError(f"profile {name} needs {required}: set it in {path} or pass {variable}= to make")
    try:
        return Device(**values)
    except TypeError as e:
        raise ProfileError(f"{path}: {e}") from None
