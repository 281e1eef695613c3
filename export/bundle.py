"""Writing a bundle directory so that it appears whole or not at all."""
import hashlib
import shutil
import tempfile
from pathlib import Path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_bundle(out: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into a temporary sibling of ``out``, then swap it in for any previous bundle."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    previous = out.with_name(f".{out.name}.previous")
    try:
        staging.chmod(0o755)
        for name, data in files.items():
            (staging / name).write_bytes(data)
        shutil.rmtree(previous, ignore_errors=True)
        if out.exists():
            out.rename(previous)
        try:
            staging.rename(out)
        except OSError:
            if previous.exists():
                previous.rename(out)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)
