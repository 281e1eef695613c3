"""A program's first load on a machine happens in a child process, so a program that crashes the runtime ends
the child and not the app.

ExecuTorch 1.5 parses an XNNPACK delegate's payload without verifying it: a corrupt or hostile payload can
crash the process that loads it (a segfault, a double free). model.json's sha256 does not help here, since
whoever can write a bundle can rewrite its hash too. So the first time a machine sees a program's bytes (by
their sha256, per method), a child loads that method and runs one input of zeros; a child ended by a signal
makes the program refused in one line. Other payloads make the runtime allocate without end (4 GB within
seconds): the child's address space is bounded, and its time. A program that loads is remembered as an empty
file under the cache folder (``vetted/``), so later loads cost nothing.

    python -m edge.native.vet METHOD < model.pte     the child: exit 0, or one error line and exit 1
"""

import hashlib
import resource
import signal
import subprocess
import sys

import numpy as np

from ..files import cache_root
from .build import NativeError
from .runner import Runner

TIMEOUT_S = 60  # a MobileNet loads and runs once within seconds, on a Pi too
# The child's address space: the interpreter, numpy and the runtime take about 200 MB, a program a few times
# its size; a payload that makes the runtime allocate without end stops here, not at the device's memory.
BASE_MEMORY = 1 << 30
MEMORY_PER_PROGRAM_BYTE = 16


def marker(pte: bytes, method: str):
    key = hashlib.sha256(pte + b"\0" + method.encode()).hexdigest()
    return cache_root() / "vetted" / key


def vet(pte: bytes, method: str) -> None:
    """Load ``method`` of ``pte`` and run it once in a child process, unless this machine did so before."""
    seen = marker(pte, method)
    if seen.is_file():
        return
    try:
        child = subprocess.run(
            [sys.executable, "-m", "edge.native.vet", method], input=pte, capture_output=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise NativeError(
            f"the program's {method} did not load and run within {TIMEOUT_S} s: a corrupt or hostile program; "
            "re-export it"
        ) from None
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        raise NativeError(
            f"the program crashes the ExecuTorch runtime when its {method} is loaded and run ({name}; or it asked "
            "for more memory than any MobileNet needs): a corrupt or hostile program; re-export it"
        )
    if child.returncode != 0:
        lines = child.stderr.decode(errors="replace").strip().splitlines() or ["no output"]
        raise NativeError(lines[-1].removeprefix("error: ")[:500])
    try:
        seen.parent.mkdir(parents=True, exist_ok=True)
        seen.touch()
    except OSError:  # a read-only cache: vetted again next time
        pass


def main() -> None:
    method, pte = sys.argv[1], sys.stdin.buffer.read()
    limit = BASE_MEMORY + MEMORY_PER_PROGRAM_BYTE * len(pte)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        runner = Runner(pte, 1, method)
        runner(np.zeros(runner.input_shape, np.float32))
        runner.close()
    except NativeError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
