"""python -m edge predict BUNDLE PATH...: label image files, folders and globs, one output line per file.

Every file named, found in a folder or matched by a glob gets a line: its labels, or why it could not
be read. Nothing is dropped, unlike ``edge run`` on a directory, which paces frames and drops late ones.
"""

import csv
import io
import json
import os
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from .api import Model
from .command import UserError
from .paths import expand
from .stats import process_age_s

PROGRESS_FROM = 100  # files; fewer finish before a bar would say anything


class PredictError(UserError):
    """Nothing to label; the message says why."""


def label_all(model: Model, paths: list[Path], top_k: int, threshold: float) -> Iterator[dict]:
    """One result per path, in order: ``{"path", "top": [{"label", "score"}]}`` or ``{"path", "error"}``."""
    for path in paths:
        try:
            top = model.predict(path, top_k, threshold)
        except (OSError, ValueError) as e:
            yield {"path": str(path), "error": _reason(e)}
            continue
        yield {"path": str(path), "top": [{"label": label, "score": score} for label, score in top]}


def _reason(e: Exception) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


def json_line(result: dict) -> str:
    return json.dumps(result)


def shown(text: str) -> str:
    """A file name or label as inert text for a terminal, a log or one CSV record: bytes that are not UTF-8
    (a name from another system) as ``\\xff`` escapes, where ``str`` holds unencodable surrogates, and
    control and format characters (a newline, ``\\x1b[2J``, a right-to-left override) as ``\\x1b``-style
    escapes, so a name can neither start a record of its own nor drive the terminal."""
    text = os.fsencode(text).decode("utf-8", "backslashreplace")
    return "".join(_escaped(c) if unicodedata.category(c) in INERT_CATEGORIES else c for c in text)


INERT_CATEGORIES = {"Cc", "Cf", "Zl", "Zp"}  # control, format, line and paragraph separators


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def inert(cell: str) -> str:
    """A CSV cell a spreadsheet shows as text: one starting with = + - @ or a control character would be
    run as a formula (OWASP's CSV injection), so it gets a leading apostrophe."""
    return f"'{cell}" if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


def csv_format(top_k: int) -> tuple[str, Callable[[dict], str]]:
    """``path,label_1,score_1,...,error``: a header, then one line per file, every cell quoted."""
    header = ["path", *(f"{kind}_{rank}" for rank in range(1, top_k + 1) for kind in ("label", "score")), "error"]

    def row(result: dict) -> str:
        cells = [c for t in result.get("top", []) for c in (inert(shown(t["label"])), f"{t['score']:.4f}")]
        return _csv_line(
            [
                inert(shown(result["path"])),
                *cells,
                *[""] * (2 * top_k - len(cells)),
                inert(shown(result.get("error", ""))),
            ]
        )

    return _csv_line(header), row


def _csv_line(cells: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="", quoting=csv.QUOTE_ALL).writerow(cells)
    return buffer.getvalue()


def table_format(width: int) -> tuple[str, Callable[[dict], str]]:
    """Aligned columns for a person at a terminal: the path, then each label with its score."""

    def row(result: dict) -> str:
        path = shown(result["path"])
        if "error" in result:
            return f"{path:<{width}}  unreadable: {shown(result['error'])}"
        labels = "  ".join(f"{shown(t['label'])} ({t['score']:.2f})" for t in result["top"]) or "(none above threshold)"
        return f"{path:<{width}}  {labels}"

    return f"{'file':<{width}}  labels (score)", row


def predict(
    model: Model,
    args: list[str],
    top_k: int = 5,
    threshold: float = 0.0,
    fmt: str | None = None,
    out: TextIO = sys.stdout,
    log: TextIO = sys.stderr,
) -> dict:
    """Label everything ``args`` names, writing one line per file to ``out``; returns the counts and times.

    ``fmt``: "jsonl", "csv" or "table"; None picks a table when ``out`` is a terminal, else JSON lines.
    """
    found = expand(args)
    for skipped in found.skipped:
        print(shown(skipped), file=log)
    paths, top_k = found.paths, min(top_k, len(model.labels))
    if not paths:
        raise PredictError("no files to label: give image files, folders or globs")
    fmt = fmt or ("table" if out.isatty() else "jsonl")
    header, line = {
        "jsonl": lambda: (None, json_line),
        "csv": lambda: csv_format(top_k),
        "table": lambda: table_format(min(60, max(len(str(p)) for p in paths))),
    }[fmt]()
    if header:
        out.write(header + "\n")
    counts, first_result_s, start = {"labelled": 0, "unreadable": 0}, None, time.perf_counter()
    bar = tqdm(
        total=len(paths),
        desc="edge predict",
        unit="img",
        file=log,
        leave=False,
        disable=True if len(paths) < PROGRESS_FROM else None,
    )
    with bar:
        for result in label_all(model, paths, top_k, threshold):
            first_result_s = first_result_s or process_age_s()
            counts["unreadable" if "error" in result else "labelled"] += 1
            bar.clear()
            out.write(line(result) + "\n")
            out.flush()
            bar.update()
    seconds = time.perf_counter() - start
    return counts | {"files": len(paths), "seconds": round(seconds, 3), "first_result_s": first_result_s}


def format_counts(counts: dict) -> str:
    first = "" if counts["first_result_s"] is None else f"; first result {counts['first_result_s']:.2f} s after start"
    rate = counts["files"] / counts["seconds"] if counts["seconds"] else 0.0
    return (
        f"labelled {counts['labelled']} of {counts['files']} files ({counts['unreadable']} unreadable) "
        f"in {counts['seconds']:.1f} s, {rate:.0f} files/s{first}"
    )
