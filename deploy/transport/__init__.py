"""How a deploy reaches a device: one protocol, with an SSH (or this machine) and an adb implementation.

Every flow (the Pi's, the phone's, collecting images, the peers' benchmark) talks to a device through these
four operations only, so the release lifecycle (deploy/release.py) is written once for both transports.
Commands are argv lists, never shell strings: each transport quotes them into the one command line its
remote side runs, so a hostile file name stays one argument.
"""

import subprocess
from collections.abc import Callable
from pathlib import Path

from edge.command import UserError


class DeployError(UserError):
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


class Transport:
    """A device as a deploy sees it. ``where`` names it in messages ("pi@raspberrypi:22")."""

    where: str

    def run(
        self,
        argv: list[str],
        what: str | None = None,
        *,
        cwd: str | None = None,
        check: bool = True,
        capture: bool = True,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` on the device (in ``cwd`` there); with ``check``, a failure is a DeployError naming
        ``what`` was being done."""
        return self.checked(lambda: self.execute(argv, cwd, capture, timeout), what or argv[0], check)

    def checked(
        self, start: Callable[[], subprocess.CompletedProcess], what: str, check: bool
    ) -> subprocess.CompletedProcess:
        """``start()``'s result; a timeout, or with ``check`` a non-zero exit, as one DeployError line."""
        try:
            result = start()
        except subprocess.TimeoutExpired as e:
            raise DeployError(f"{what}: {self.where} did not answer within {e.timeout:.0f} s") from None
        if check and result.returncode != 0:
            raise DeployError(f"{what} failed: {self.explain_failure(result)}")
        return result

    def execute(
        self, argv: list[str], cwd: str | None, capture: bool, timeout: float | None
    ) -> subprocess.CompletedProcess:
        """Start ``argv`` on the device and wait for it; TimeoutExpired after ``timeout`` seconds."""
        raise NotImplementedError

    def explain_failure(self, result: subprocess.CompletedProcess) -> str:
        """One line for why a command failed."""
        return explain(result.stderr, self.where)

    def push(self, local: Path, remote: str, what: str | None = None, *, bwlimit: int | None = None) -> None:
        """Copy the directory ``local`` to ``remote`` (created), contents and all."""
        raise NotImplementedError

    def pull(self, remote: str, local: Path, what: str | None = None) -> None:
        """Copy the file or directory ``remote`` to ``local``."""
        raise NotImplementedError

    def free_space(self, path: str) -> int:
        """Bytes free for an unprivileged writer on the file system that holds ``path``: POSIX ``df -P``,
        which the Pi's coreutils, Android's toybox and busybox all print alike."""
        result = self.run(["df", "-Pk", path], what=f"reading the free space under {path}")
        try:
            return int(result.stdout.strip().splitlines()[-1].split()[3]) * 1024
        except (IndexError, ValueError):
            raise DeployError(f"df on {self.where} printed no free space for {path}: {result.stdout[:200]!r}") from None
