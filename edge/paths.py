"""What path arguments name: the files of `edge predict` and the images of an `edge run --source` folder.

One walk for folders and globs, so the two forms agree:
- A name that exists is taken as written, even when it holds ``[``, ``]`` or ``*``.
- Folders give their images (by suffix), recursively, in name order; globs give what they match
  (``**`` for any depth), a matched folder its images.
- Neither descends into a symlinked folder below where it starts: it leads out of the tree or back
  into it (a loop would list the same images without end). Each is reported, so it can be named itself.
- Hidden names (a leading dot) are left out, as the shell's globs do.
- A file reached twice (a symlink beside its target, overlapping matches) is listed once.

Nothing here opens a file: a FIFO named ``x.jpg`` is listed and the reader refuses it (``edge.images``).
"""

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from .files import IMAGE_SUFFIXES, is_image


@dataclass
class Expansion:
    """The files, in argument order, and one line per symlinked folder left out."""

    paths: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def expand(args: list[str]) -> Expansion:
    """Files in argument order. A name that is neither a file, a folder nor a glob that matches stays in the
    list, so the reader's line for it says it does not exist; a folder without images is a skipped line."""
    found = Expansion()
    for arg in args:
        literal = os.path.lexists(arg) or not glob.has_magic(arg)
        matches = [Path(arg)] if literal else sorted(_match(_root(arg), _wild_parts(arg), found.skipped))
        files = _once([file for m in matches for file in (_files(m, found.skipped) if m.is_dir() else [m])])
        if not files and matches:
            found.skipped.append(f"skipped {arg}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in it")
        found.paths += files or ([] if matches else [Path(arg)])
    return found


def folder_images(root: Path) -> Expansion:
    """The images under ``root`` (a folder), as ``expand`` gives them."""
    found = Expansion()
    found.paths = _once(list(_files(root, found.skipped)))
    return found


def _once(paths: list[Path]) -> list[Path]:
    """``paths`` without a second name for the same file; names that cannot be stat'ed stay (their reader says why)."""
    seen: set[object] = set()
    kept: list[Path] = []
    for path in paths:
        key: object
        try:
            st = path.stat()
            key = (st.st_dev, st.st_ino)
        except OSError:
            key = path
        if key not in seen:
            seen.add(key)
            kept.append(path)
    return kept


def _entries(folder: Path, hidden: bool = False) -> list[os.DirEntry]:
    """The entries of ``folder`` in name order; names with a leading dot only when ``hidden``."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if hidden or not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:
        return []


def _descend(entry: os.DirEntry, skipped: list[str]) -> bool:
    """Whether a walk goes into ``entry``: a real folder, not a symlink to one (which is reported)."""
    if entry.is_symlink():
        _symlinked_folder(entry, skipped)
        return False
    return entry.is_dir(follow_symlinks=False)


def _leaf(entry: os.DirEntry, skipped: list[str]) -> bool:
    """Whether a match at the end of a pattern is kept: anything but a symlink to a folder (reported)."""
    return not (entry.is_symlink() and _symlinked_folder(entry, skipped))


def _symlinked_folder(entry: os.DirEntry, skipped: list[str]) -> bool:
    if not entry.is_dir():
        return False
    line = f"skipped {entry.path}: a symlink to a folder (name it as an argument to include it)"
    if line not in skipped:
        skipped.append(line)
    return True


def _files(root: Path, skipped: list[str]) -> Iterator[Path]:
    """The images under ``root``, depth first in name order (the order ``sorted`` gives their paths)."""
    for entry in _entries(root):
        if _descend(entry, skipped):
            yield from _files(Path(entry.path), skipped)
        elif is_image(entry.name) and not entry.is_dir():
            yield Path(entry.path)


def _fixed(pattern: str) -> int:
    """How many leading parts of ``pattern`` have no wildcard: they are its root, taken as written."""
    parts = Path(pattern).parts
    return next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))


def _root(pattern: str) -> Path:
    return Path(*Path(pattern).parts[: _fixed(pattern)] or ["."])


def _wild_parts(pattern: str) -> tuple[str, ...]:
    return Path(pattern).parts[_fixed(pattern) :]


def _match(base: Path, parts: tuple[str, ...], skipped: list[str]) -> Iterator[Path]:
    """What ``parts`` match below ``base``; ``**`` is any depth, a trailing ``**`` everything below."""
    if not parts:
        yield base
        return
    head, rest = parts[0], parts[1:]
    if head == "**":
        yield from _match(base, rest, skipped) if rest else [base]
        for entry in _entries(base):
            if _descend(entry, skipped):
                yield from _match(Path(entry.path), parts, skipped)
            elif not rest and _leaf(entry, skipped):
                yield Path(entry.path)
    elif not glob.has_magic(head):
        if os.path.lexists(base / head):
            yield from _match(base / head, rest, skipped)
    else:
        for entry in _entries(base, hidden=head.startswith(".")):
            if fnmatchcase(entry.name, head) and (_descend(entry, skipped) if rest else _leaf(entry, skipped)):
                yield from _match(Path(entry.path), rest, skipped)
