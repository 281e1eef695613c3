"""One release lifecycle for every device, over any transport (deploy/transport/).

Under the device's ``root``::

    releases/<version>.partial   a release being copied and checked
    releases/<version>           a finished one (the newest KEEP_RELEASES are kept)
    releases/<version>.failed    one that failed its check on the device, kept aside until the next deploy
    current -> releases/<version>
    .deploy.lock/                while a deploy runs (its owner inside)

A release is staged here with a manifest, checked for room on the device, copied to ``.partial`` and
checked there against its manifest. The flow then runs its own checks on the device (the Pi's smoke run,
the phone's parity); only then is it renamed and made ``current`` by renaming a new symlink over the old
one. Anything that fails or is interrupted before that leaves the previous ``current`` untouched.
"""

import hashlib
import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge.bundle import BundleMeta, load_bundle

from .transport import DeployError, Transport, explain

KEEP_RELEASES = 3  # finished releases kept on a device, whatever the transport
MANIFEST = "MANIFEST.sha256"
HEADROOM = 1.1  # room asked for beyond a release's own bytes: the file system's blocks and directories


def release_name(meta: BundleMeta) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{meta.name}-{secrets.token_hex(2)}"


def check_bundle(bundle: Path) -> BundleMeta:
    """The edge app's own check, here before anything is copied: format, fields, files, the program's
    hash, and the program loaded with its shapes against model.json."""
    loaded = load_bundle(bundle, threads=1)
    loaded.runner.close()
    return loaded.meta


def write_manifest(root: Path, known: dict[str, str] | None = None) -> None:
    """``sha256sum`` lines for every file under ``root``. ``known`` gives digests that must not be computed
    from the file here (the program's is model.json's own, so a program changed since export fails)."""
    known = known or {}
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(root).as_posix()
        lines.append(f"{known.get(rel) or hashlib.sha256(path.read_bytes()).hexdigest()}  {rel}\n")
    (root / MANIFEST).write_text("".join(lines))


def check_copy(transport: Transport, directory: str, what: str) -> None:
    """The copy on the device against its manifest, with the device's own sha256sum."""
    transport.run(["sh", "-c", f'cd "$1" && sha256sum -c {MANIFEST} >/dev/null', "sh", directory], what=what)


def check_room(transport: Transport, directory: str, staged: Path) -> None:
    """Refuse before copying when the device has no room for the release: a full disk mid-copy would
    leave a half copy to remove, and a line from whichever tool ran out first."""
    need = sum(p.stat().st_size for p in staged.rglob("*") if p.is_file()) * HEADROOM
    free = transport.free_space(directory)
    if free < need:
        raise DeployError(
            f"{transport.where} is out of disk space: the release needs {need / 1e6:.1f} MB under {directory}, "
            f"{free / 1e6:.1f} MB are free: free some (old releases are under releases/)"
        )


class Releases:
    """The releases of one device under ``root``, while its deploy lock is held (see ``releases``)."""

    def __init__(self, transport: Transport, root: str) -> None:
        self.transport, self.root, self.dir = transport, root, f"{root}/releases"

    def partial(self, version: str) -> str:
        return f"{self.dir}/{version}.partial"

    def clear_unfinished(self) -> None:
        self.transport.run(["mkdir", "-p", self.dir], what=f"creating {self.dir}")
        self.transport.run(
            ["sh", "-c", 'rm -rf "$1"/*.partial "$1"/*.failed', "sh", self.dir],
            what="removing unfinished and failed releases",
        )

    def push(self, staged: Path, version: str, bwlimit: int | None = None) -> str:
        """``staged`` (with its manifest) to ``<version>.partial``, checked there; returns that path."""
        partial = self.partial(version)
        check_room(self.transport, self.dir, staged)
        self.transport.push(staged, partial, "copying the release", bwlimit=bwlimit)
        check_copy(self.transport, partial, "checking the copy against its manifest")
        return partial

    def set_aside(self, version: str) -> str:
        """A release that failed on the device, kept as ``<version>.failed`` until the next deploy."""
        failed = f"{self.dir}/{version}.failed"
        self.transport.run(["mv", self.partial(version), failed], what="keeping the failed release aside", check=False)
        return failed

    def finish(self, version: str) -> list[str]:
        """Rename the checked release, switch ``current`` to it atomically, prune; returns the kept releases."""
        self.transport.run(["mv", self.partial(version), f"{self.dir}/{version}"], what="finishing the release")
        self.transport.run(
            [
                "sh",
                "-c",
                'ln -sfn "releases/$2" "$1/current.new" && mv -T "$1/current.new" "$1/current"',
                "sh",
                self.root,
                version,
            ],
            what="switching current",
        )
        return self.prune(version)

    def prune(self, keep: str) -> list[str]:
        """Keep the newest finished releases; unfinished (.partial) and failed (.failed) ones never count."""
        listing = self.transport.run(["ls", "-1", self.dir], what="listing releases").stdout.split()
        finished = sorted(n for n in listing if not n.endswith((".partial", ".failed")))
        old = [n for n in finished if n != keep][: -(KEEP_RELEASES - 1) or None]
        if old:
            self.transport.run(["rm", "-rf", *(f"{self.dir}/{n}" for n in old)], what="removing old releases")
        return [n for n in finished if n not in old]


@contextmanager
def releases(transport: Transport, root: str) -> Iterator[Releases]:
    """The device's releases for one deploy: its lock taken, what an earlier one left unfinished removed."""
    with device_lock(transport, root):
        kept = Releases(transport, root)
        kept.clear_unfinished()
        yield kept


LOCK_STALE_S = 4 * 3600  # a lock older than the longest deploy (the emulated Pi's first, with its tests) is left over
OWNERLESS_STALE_S = 60  # the owner is written right after the lock is made: a lock without one this old was cut short


@contextmanager
def device_lock(target: Transport, root: str) -> Iterator[None]:
    """One deploy at a time per device: ``ROOT/.deploy.lock``, a directory (mkdir is atomic) naming its owner
    (host and pid), for the whole deploy. Two deploys would otherwise remove each other's unfinished release and
    race to switch ``current``.
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
