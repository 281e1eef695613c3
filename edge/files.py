"""Files that appear whole or not at all, and the image folders every stage reads (training imports these)."""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CACHE_VARIABLE = "MOBILENET_EDGE_CACHE"  # moves the cache folder (downloaded weights)


def cache_root() -> Path:
    """The project's cache folder: ``$MOBILENET_EDGE_CACHE``, else ``~/.cache/mobilenet-edge``."""
    return Path(os.environ.get(CACHE_VARIABLE) or "~/.cache/mobilenet-edge").expanduser()


def is_image(path: Path | str) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def class_folders(root: Path) -> list[str]:
    """The class names of an ImageFolder (``root/<class>/``), sorted; hidden folders are not classes."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_images(root: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(path, class index) of the images in ``root/<class>/``, in name order."""
    return [
        (entry.path, label)
        for label, name in enumerate(classes)
        if (root / name).is_dir()
        for entry in sorted(os.scandir(root / name), key=lambda e: e.name)
        if is_image(entry.name) and not entry.name.startswith(".")  # hidden: a temporary file, not an image
    ]


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name next to ``path`` (same suffix, so tools that go by it still do) to write to;
    renamed over ``path`` when the block ends without an error, removed when it does not."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(3)}.tmp{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def blocking_file(path: Path) -> Path | None:
    """The first of ``path`` and its parents that exists and is not a directory: what stops a mkdir there."""
    return next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)


def output_problem(path: Path, make_parents: bool = False) -> str | None:
    """Why ``path`` cannot be written as a file, checked before the work that fills it; None when it can.

    ``make_parents``: the writer creates missing folders (``atomic_path`` does), so only a file in the way
    of one stops it.
    """
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder: give a file name for the output"
    if make_parents:
        blocker = blocking_file(path.parent)
        return f"cannot create {path.parent}: {blocker} is a file" if blocker else None
    if not path.parent.is_dir():
        return f"{path.parent} does not exist: create it, or give another output path"
    return None


def write_atomic(path: Path, data: str | bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
