"""Image files to BGR frames, as every reader here decodes them (predict, eval, run, the API, training).

A file is checked before it is decoded: it must be a regular file (a FIFO or /dev/stdin would block the
read), not larger on disk than ``MAX_FILE_BYTES``, and its header must promise at most ``MAX_PIXELS``.
A few hundred bytes of PNG can claim 60000x60000 pixels: decoded, that is gigabytes, and on a 4 GB Pi the
out-of-memory killer ends the app rather than the file being reported as unreadable.
"""

import os
import stat
import warnings
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 50_000_000  # a 50-megapixel phone photo (8160x6120); OpenCV holds it twice while decoding: 300 MB
MAX_FILE_BYTES = 256 * 2**20
FILE_KINDS = {
    stat.S_ISFIFO: "a FIFO",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
    stat.S_ISDIR: "a folder",
}


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as an image file (without blocking, within MAX_FILE_BYTES), or None.

    ``stat`` follows symlinks, so /dev/stdin (a pipe or a terminal) is named for what it is.
    """
    st = os.stat(path)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        if st.st_size > MAX_FILE_BYTES:
            return f"{path} is {st.st_size / 2**20:.0f} MB, over the {MAX_FILE_BYTES // 2**20} MB an image file may be"
        return None
    kind = next((name for test, name in FILE_KINDS.items() if test(mode)), "not a regular file")
    hint = ": save what it holds to a file and give that" if not stat.S_ISDIR(mode) else ""
    return f"{path} is {kind}, not an image file{hint}"


def check_header(data: bytes, name: str) -> None:
    """Refuse a file whose header claims more than ``MAX_PIXELS``, read without decoding the pixels.

    A file Pillow cannot identify is refused too: OpenCV would still decode some of those (Radiance
    HDR, for one), with no size check short of its own billion pixels, as 4-byte floats.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError:  # Pillow's own limit is above ours: the same answer
        width = height = MAX_PIXELS
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ValueError(
            f"{name} is not an image in a format this app reads (JPEG, PNG, BMP, WebP, TIFF, ...)"
        ) from None
    if width * height > MAX_PIXELS:
        claim = "" if width == height == MAX_PIXELS else f" {width}x{height} pixels,"
        raise ValueError(
            f"{name} claims{claim} more than the {MAX_PIXELS // 10**6} megapixels this app decodes: scale it down first"
        )


def read_bgr(path: str | Path) -> np.ndarray:
    """An image file as a BGR uint8 frame; ValueError (or OSError for a missing file) saying why it is not one.

    The file is read once, as bytes: Pillow reads the header from them and OpenCV decodes a view of them
    (no copy). Reading it ourselves rather than ``imread`` makes a missing or unreadable file an OSError
    saying why, instead of ``imread``'s silent None.
    """
    if problem := file_problem(path):
        raise ValueError(problem)
    return decode_bgr(Path(path).read_bytes(), str(path))


def decode_bgr(data: bytes, name: str) -> np.ndarray:
    """Encoded image bytes as a BGR uint8 frame, refused before decoding when the header is too large."""
    if not data:
        raise ValueError(f"{name} is empty")
    check_header(data, name)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None:
        raise ValueError(f"{name} is not an image OpenCV can decode")
    return image


def unreadable(path: str | Path, error: OSError | ValueError) -> str:
    """One line for a file ``read_bgr`` refused, naming it once: ``x.jpg: No such file or directory``."""
    if isinstance(error, OSError):
        return f"{path}: {error.strerror or error}"
    return str(error)
