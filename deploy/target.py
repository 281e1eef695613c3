"""Where a deploy goes: this machine, or a device over SSH. Commands are argv lists, never shell strings.

Over SSH the remote side runs one command line, so every argument is quoted with ``shlex.join``;
a hostile file name or host string stays one argument.
"""

import os
import shlex
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .profile import Device

KEEP_RELEASES = 3  # finished releases kept on a device, whatever the transport


class DeployError(RuntimeError):
    """A deploy step that failed; the message is one line that says what to do."""


def explain(stderr: str, where: str) -> str:
    """One line for the usual SSH/rsync failures, else the tool's own last line."""
    text = stderr.strip()
    known = [
        ("No space left on device", f"{where} is out of disk space: free some (old releases are under releases/)"),
        ("Permission denied (publickey", f"{where} refused the SSH key(s) offered: ssh-copy-id yours, or set KEY="),
        ("Could not resolve hostname", f"cannot resolve the host of {where}: check HOST="),
        ("Connection refused", f"{where} refused the connection: is sshd running, is PORT= right?"),
        ("Connection timed out", f"{where} did not answer: is it on the network, is HOST= right?"),
        ("No route to host", f"no route to {where}: is it on the network?"),
        ("Host key verification failed", f"{where}'s host key changed: check it, then fix ~/.ssh/known_hosts"),
        (
            "Permission denied (13)",
            f"{where} refused a write (permission denied): check who owns the deploy's directory there (REMOTE_DIR=)",
        ),
    ]
    for needle, message in known:
        if needle in text:
            return message
    return text.splitlines()[-1] if text else "failed without a message"


class Target:
    """Runs commands and copies directories on this machine (``Device.host`` is None)."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.where = "this machine"

    def command(self, argv: list[str], cwd: str | None = None) -> list[str]:
        return argv

    def run(
        self, argv: list[str], cwd: str | None = None, capture: bool = True, check: bool = True, what: str | None = None
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` (in ``cwd`` on the target); a failure is a DeployError naming ``what`` was being done."""
        local_cwd = cwd if not self.device.ssh else None
        result = subprocess.run(
            self.command(argv, cwd),
            cwd=local_cwd,
            text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE,
        )
        if check and result.returncode != 0:
            raise DeployError(f"{what or argv[0]} failed: {explain(result.stderr, self.where)}")
        return result

    def push(self, local_dir: Path, remote_dir: str, bwlimit_kbps: int | None = None) -> None:
        """Copy ``local_dir``'s contents into ``remote_dir`` (created)."""
        argv = [
            "rsync",
            "-a",
            "--delete",
            *self.rsync_options(bwlimit_kbps),
            f"{local_dir}/",
            self.rsync_path(remote_dir) + "/",
        ]
        if shutil.which("rsync") is None:
            raise DeployError("rsync is not installed on this machine: apt install rsync")
        result = subprocess.run(argv, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if result.returncode != 0:
            raise DeployError(f"copying to {self.where} failed: {explain(result.stderr, self.where)}")

    def pull(self, remote_path: str, local_path: Path) -> None:
        local_path.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["rsync", "-a", *self.rsync_options(None), self.rsync_path(remote_path), str(local_path)],
            text=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if result.returncode != 0:
            raise DeployError(f"fetching {remote_path} failed: {explain(result.stderr, self.where)}")

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


LOCK_STALE_S = 4 * 3600  # a lock older than the longest deploy (the emulated Pi's first, with its tests) is left over
OWNERLESS_STALE_S = 60  # the owner is written right after the lock is made: a lock without one this old was cut short


@contextmanager
def device_lock(target, root: str) -> Iterator[None]:
    """One deploy at a time per device: ``ROOT/.deploy.lock``, a directory (mkdir is atomic) naming its owner
    (host and pid), for the whole deploy. Two deploys would otherwise remove each other's unfinished release and
    race to switch ``current``. ``target`` is an SSH or adb target: both run an argv with ``what`` and ``check``.
    A lock whose owner was a process of this machine that has ended (a deploy killed, or whose device vanished
    so the lock could not be removed) is taken over at once, one without an owner after a minute, one from
    another machine once it is LOCK_STALE_S old. Until then the line says how to free it."""
    lock, me = f"{root}/.deploy.lock", f"{socket.gethostname()} {os.getpid()}"
    target.run(["mkdir", "-p", root], what=f"creating {root}")
    taken = target.run(["mkdir", lock], what="taking the device's deploy lock", check=False)
    if taken.returncode != 0:
        if target.run(["test", "-d", lock], what="reading the lock", check=False).returncode != 0:
            raise DeployError(f"cannot create {lock} on {target.where}: {explain(taken.stderr, target.where)}")
        owner = target.run(["cat", f"{lock}/owner"], what="reading the lock", check=False).stdout.strip()
        since = 'echo $(( $(date +%s) - $(stat -c %Y "$1") ))'
        age = target.run(["sh", "-c", since, "sh", lock], what="reading the lock", check=False).stdout.strip()
        seconds = int(age) if age.isdigit() else 0
        if not (_ended_here(owner) or seconds > LOCK_STALE_S or not owner and seconds > OWNERLESS_STALE_S):
            raise DeployError(
                f"another deploy to {target.where} is under way ({owner or 'owner unknown'}, its lock {lock} is "
                f"{age or '?'} s old): wait for it, or if none is running, remove that directory"
            )
        target.run(["sh", "-c", 'rm -rf "$1" && mkdir "$1"', "sh", lock], what="taking over a stale deploy lock")
    target.run(["sh", "-c", 'echo "$2" > "$1/owner"', "sh", lock, me], what="taking the device's deploy lock")
    try:
        yield
    finally:
        target.run(["rm", "-rf", lock], what="releasing the deploy lock", check=False)


def _ended_here(owner: str) -> bool:
    """Whether ``owner`` (``host pid``) was a process of this machine that is no longer running."""
    host, _, pid = owner.partition(" ")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False
