"""torchvision's ImageNet-1k weights for our MobileNets (``weights: imagenet``), fetched once, checked and cached.

    python -m training.pretrained v3_small      # what WEIGHTS=imagenet does before training

The table holds torchvision's own file names and address. Each name ends in the first hex digits of
the file's sha256, which is what torchvision checks (``check_hash``), and so do we. The files go to
``$MOBILENET_EDGE_CACHE/weights`` (default ``~/.cache/mobilenet-edge/weights``).

The download is our own rather than ``torch.hub.download_url_to_file``: that one starts over after a
broken transfer and reports a short body as a wrong hash. Ours resumes with an HTTP range, names a
truncated body, and puts a file where it is looked for only once it is whole and checked.
"""

import argparse
import errno
import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from edge.command import HelpFormatter, UserError
from edge.files import cache_root

from .models import MODELS, WeightsError

IMAGENET = "imagenet"  # the value of WEIGHTS= / --weights that asks for these
# torchvision's IMAGENET1K_V1 weights: trained at 224 px, evaluated after a resize to 256 and a 224 crop,
# which is our default preprocessing (crop fraction 0.875). Its V2 weights of v2 and v3_large were trained
# with another recipe and a 232 resize; V1 keeps one preprocessing for all three. Top-1 is torchvision's.
FILES = {
    "v2": ("mobilenet_v2-b0353104.pth", 71.878),
    "v3_small": ("mobilenet_v3_small-047dcff4.pth", 67.668),
    "v3_large": ("mobilenet_v3_large-8738ca79.pth", 74.042),
}
URL = "https://download.pytorch.org/models/"
URL_VARIABLE = "MOBILENET_EDGE_WEIGHTS_URL"  # another base address: for the tests' loopback server only
TRAINED_AT = 224
CHUNK = 1 << 16


def imagenet_weights(arch: str, width_mult: float) -> Path:
    """The cached ImageNet weights file for ``arch`` at ``width_mult``, downloaded first if missing."""
    if arch not in FILES:
        have = ", ".join(FILES)
        raise WeightsError(
            f"torchvision publishes ImageNet weights for {have}, not {arch} ({', '.join(MODELS)} are built here): "
            "pick one of those, give a weights file, or train from scratch"
        )
    if width_mult != 1.0:
        raise WeightsError(
            f"ImageNet weights exist at width 1.0 only, not {width_mult:g}: every layer's shape depends on it "
            "(drop WIDTH=, or train from scratch)"
        )
    return fetch(FILES[arch][0])


def cache_dir() -> Path:
    return cache_root() / "weights"


def fetch(name: str) -> Path:
    """``name`` from the cache, or downloaded into it and checked; a broken download resumes next time."""
    dest = cache_dir() / name
    if dest.is_file():
        if matches(dest, name):
            return dest
        print(f"{dest} does not match its hash: downloading it again", file=sys.stderr)
        dest.unlink()
    url = os.environ.get(URL_VARIABLE, URL).rstrip("/") + "/" + name
    by_hand = f"download {URL}{name} by hand and put it at {dest}"
    partial = dest.with_name(f"{name}.partial")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        download(url, partial)
    except KeyboardInterrupt:
        kept = partial.stat().st_size if partial.is_file() else 0
        print(f"download of {url} interrupted: {kept} bytes kept in {partial}, run again to resume", file=sys.stderr)
        raise
    except OSError as e:
        if e.errno == errno.ENOSPC:
            partial.unlink(missing_ok=True)
            raise WeightsError(f"no space left for {dest}: free some, or {by_hand}") from None
        raise WeightsError(f"cannot download {url} ({reason(e)}); or {by_hand}") from None
    except DownloadError as e:
        raise WeightsError(f"cannot download {url} ({e}); or {by_hand}") from None
    if not matches(partial, name):
        partial.unlink()
        raise WeightsError(
            f"{url} arrived with another sha256 than its name says ({expected_prefix(name)}...): deleted; try "
            f"again, or {by_hand}"
        )
    partial.rename(dest)
    return dest


class DownloadError(UserError):
    """The server's answer cannot make a whole file; the message says how."""


def reason(error: OSError) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"offline or unreachable: {error.reason}"
    return error.strerror or str(error)


def download(url: str, partial: Path) -> None:
    """Fetch ``url`` into ``partial``, continuing what an earlier try left there when the server takes a range."""
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not have:  # 416: the range starts at the end, the file is whole
            raise
        return
    with response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        with (
            open(partial, "ab" if resumed else "wb") as out,
            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=f"downloading {partial.stem}") as bar,
        ):
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    got = partial.stat().st_size
    if total is not None and got != total:
        raise DownloadError(f"the connection closed after {got} of {total} bytes; run again to resume")


def expected_prefix(name: str) -> str:
    """torchvision's hash prefix: the hex digits after the last '-' of the file's stem."""
    return Path(name).stem.rsplit("-", 1)[-1]


def matches(path: Path, name: str) -> bool:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest().startswith(expected_prefix(name))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.pretrained",
        description="Download torchvision's ImageNet weights of a model into the cache (what WEIGHTS=imagenet does).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("model", choices=sorted(FILES))
    args = parser.parse_args(argv)
    print(imagenet_weights(args.model, 1.0))


if __name__ == "__main__":
    from edge.command import run_main

    run_main("training.pretrained")
