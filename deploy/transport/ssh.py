"""The transport to this machine, or to a device over OpenSSH (keys only, no prompts).

Over SSH the remote side runs one command line, so every argument is quoted with ``shlex.join``;
a hostile file name or host string stays one argument. Directories are copied with rsync.
"""

import shlex
import shutil
import subprocess
from pathlib import Path

from ..profile import Device
from . import DeployError, Transport, explain


class Target(Transport):
    """Runs commands and copies directories on this machine (``Device.host`` is None)."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.where = "this machine"

    def command(self, argv: list[str], cwd: str | None = None) -> list[str]:
        return argv

    def execute(
        self, argv: list[str], cwd: str | None, capture: bool, timeout: float | None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(argv, cwd),
            cwd=cwd if not self.device.ssh else None,
            text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )

    def push(self, local: Path, remote: str, what: str | None = None, *, bwlimit: int | None = None) -> None:
        argv = [
            "rsync",
            "-a",
            "--delete",
            *self.rsync_options(bwlimit),
            f"{local}/",
            self.rsync_path(remote) + "/",
        ]
        if shutil.which("rsync") is None:
            raise DeployError("rsync is not installed on this machine: apt install rsync")
        result = subprocess.run(argv, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if result.returncode != 0:
            raise DeployError(f"{what or 'copying'} to {self.where} failed: {explain(result.stderr, self.where)}")

    def pull(self, remote: str, local: Path, what: str | None = None) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["rsync", "-a", *self.rsync_options(None), self.rsync_path(remote), str(local)],
            text=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if result.returncode != 0:
            raise DeployError(f"{what or f'fetching {remote}'} failed: {explain(result.stderr, self.where)}")

    def rsync_options(self, bwlimit_kbps: int | None) -> list[str]:
        return [f"--bwlimit={bwlimit_kbps}"] if bwlimit_kbps else []

    def rsync_path(self, path: str) -> str:
        return path


class SSHTarget(Target):
    """The same operations on ``user@host`` over OpenSSH, non-interactively (keys only, no prompts)."""

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        self.where = f"{device.user}@{device.host}:{device.port}"

    def ssh_argv(self) -> list[str]:
        d = self.device
        argv = [
            "ssh",
            "-p",
            str(d.port),
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "StrictHostKeyChecking=accept-new",
        ]
        if d.key:  # only the key asked for; without one, ssh tries the user's usual keys and agent
            argv += ["-i", str(Path(d.key).expanduser()), "-o", "IdentitiesOnly=yes"]
        if d.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={Path(d.known_hosts).expanduser()}"]
        return argv

    def command(self, argv: list[str], cwd: str | None = None) -> list[str]:
        remote = shlex.join(argv) if cwd is None else f"cd {shlex.quote(cwd)} && {shlex.join(argv)}"
        return [*self.ssh_argv(), "--", f"{self.device.user}@{self.device.host}", remote]

    def rsync_options(self, bwlimit_kbps: int | None) -> list[str]:
        return ["-e", shlex.join(self.ssh_argv()), *super().rsync_options(bwlimit_kbps)]

    def rsync_path(self, path: str) -> str:
        return f"{self.device.user}@{self.device.host}:{path}"


def connect(device: Device) -> Target:
    return SSHTarget(device) if device.ssh else Target(device)
