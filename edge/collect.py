"""python -m edge collect: pictures to train on, taken with the camera (or any source) that will run the model.

The frames come through the same sources, orientation and colour conversion as ``edge run``'s, so the images a
model trains on look like the ones it will see. Each capture is a frame no capture took before, written once
and atomically, full size as the source delivered it, as ``OUT/<class>/<YYYYmmdd-HHMMSS>-<n>.jpg`` (JPEG quality
95 by default): an ImageFolder that ``make qat DATA=OUT`` takes as it is.

With ``--serve`` (the default without ``--label``) a page shows the live view, a button per class (keys 1-9),
bursts of N frames at M per second, holding a button to record, counts per class, the last captures and undo.
With ``--label CLASS --count N --every S`` it captures without a page.
"""

import base64
import json
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .capture import Capture
from .command import UserError
from .files import IMAGE_SUFFIXES, atomic_path
from .preprocess import resize
from .serve import Broadcast, Server, parse_address
from .sources import open_source

QUALITY = 95
CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]{0,63}")  # a folder name on every system, no path in it
MAX_CLASSES = 32
RECENT = 6  # thumbnails on the page
THUMB = 96  # their longer side, pixels
FRAME_WAIT_S = 2.0  # how long a capture waits for a frame no capture took yet


class CollectError(UserError):
    """Collecting cannot start or go on; the message says what to do."""


def parse_classes(text: str) -> list[str]:
    """``cat,dog,nothing``: each a safe folder name (letters, digits, space . _ + -, not starting with them)."""
    classes = [c.strip() for c in text.split(",")]
    for name in classes:
        if not CLASS_NAME.fullmatch(name) or name.endswith((".", " ")):
            shown = name.encode("unicode_escape").decode()[:70]
            raise CollectError(
                f"class {shown!r} is not a safe folder name: use letters, digits, space, . _ + - (at most 64, "
                "starting with a letter or digit)"
            )
    if len(set(c.casefold() for c in classes)) != len(classes) or not 1 <= len(classes) <= MAX_CLASSES:
        raise CollectError(f"give 1 to {MAX_CLASSES} different classes, comma-separated, got {text[:80]!r}")
    return classes


def check_out(out: Path) -> None:
    """``out`` can hold the class folders: a directory (made if missing) that this process may write in."""
    if out.exists() and not out.is_dir():
        raise CollectError(f"--out {out} is a file: give a folder (the class folders go in it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".collect-{threading.get_ident()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CollectError(f"--out {out} cannot be written ({e.strerror or e}): give a folder you can write") from None


class Frames:
    """The newest frame from the capture thread, numbered, for the page and for captures."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.number = 0
        self.image: np.ndarray | None = None

    def put(self, image: np.ndarray) -> None:
        with self.changed:
            self.number, self.image = self.number + 1, image
            self.changed.notify_all()

    def newer_than(self, number: int, timeout: float) -> tuple[int, np.ndarray] | None:
        with self.changed:
            if not self.changed.wait_for(lambda: self.number > number, timeout) or self.image is None:
                return None
            return self.number, self.image


@dataclass
class Collector:
    """Writes captures into ``out/<class>/``; thread-safe: captures from two pages at once each get their own
    frame and their own file."""

    out: Path
    classes: list[str]
    frames: Frames
    quality: int = QUALITY
    clock: Callable[[], float] = time.time
    counts: dict[str, int] = field(init=False)
    stopped: str | None = field(init=False, default=None)  # why capturing stopped (a full disk, ...)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = {c: _images_in(self.out / c) for c in self.classes}
        self.saved: list[tuple[str, Path]] = []  # this session's captures, newest last: what undo takes back
        self.recent: deque[dict] = deque(maxlen=RECENT)
        self.last_number, self.sequence = 0, 0

    def capture(self, label: str) -> Path:
        """Write the next frame no capture took yet as a JPEG of ``label``; CollectError when it cannot."""
        if label not in self.classes:
            raise CollectError(f"{label[:64]!r} is not one of the classes ({', '.join(self.classes)})")
        with self.lock:
            if self.stopped:
                raise CollectError(self.stopped)
            got = self.frames.newer_than(self.last_number, FRAME_WAIT_S)
            if got is None:
                raise CollectError(f"no new frame from the source within {FRAME_WAIT_S:.0f} s: is it still there?")
            number, image = got
            path = self._write(label, image)
            self.last_number = number
            self.saved.append((label, path))
            self.counts[label] += 1
            self.recent.appendleft({"label": label, "name": path.name, "thumb": _thumbnail(image)})
            return path

    def _write(self, label: str, image: np.ndarray) -> Path:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise CollectError("OpenCV could not encode the frame as JPEG")
        folder = self.out / label
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.clock()))
        while True:
            self.sequence += 1
            path = folder / f"{stamp}-{self.sequence}.jpg"
            if not path.exists():
                break
        try:
            folder.mkdir(exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_bytes(data.tobytes())
        except OSError as e:
            self.stopped = f"cannot write {path} ({e.strerror or e}): capture stopped; {self.total()} images saved"
            raise CollectError(self.stopped) from None
        return path

    def undo(self) -> Path | None:
        """Delete this session's newest capture; None when there is none left to take back."""
        with self.lock:
            if not self.saved:
                return None
            label, path = self.saved.pop()
            path.unlink(missing_ok=True)
            self.counts[label] -= 1
            self.recent = deque((r for r in self.recent if r["name"] != path.name), maxlen=RECENT)
            return path

    def total(self) -> int:
        return sum(self.counts.values())

    def state(self) -> dict:
        with self.lock:
            return {"counts": dict(self.counts), "recent": list(self.recent), "stopped": self.stopped}


def _images_in(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else 0


def _thumbnail(image: np.ndarray) -> str:
    """A small JPEG of the frame as a data URL, for the page's last captures."""
    scale = THUMB / max(image.shape[:2])
    small = resize(image, max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    ok, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 70])
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode() if ok else ""


def actions(collector: Collector) -> dict:
    """The page's POST actions: capture one frame of a class, undo the newest capture, read the state."""

    def capture(query: dict) -> tuple[int, dict]:
        try:
            path = collector.capture((query.get("label") or [""])[0])
        except CollectError as e:
            status = 507 if collector.stopped else 409 if "no new frame" in str(e) else 400
            return status, collector.state() | {"error": str(e)}
        return 200, collector.state() | {"saved": str(path.relative_to(collector.out))}

    def undo(query: dict) -> tuple[int, dict]:
        path = collector.undo()
        return 200, collector.state() | {"undone": str(path.relative_to(collector.out)) if path else None}

    return {"/capture": capture, "/undo": undo, "/state": lambda query: (200, collector.state())}


def collect(
    source_spec: str,
    classes: list[str],
    out: Path,
    serve: str | None = None,
    label: str | None = None,
    count: int | None = None,
    every: float = 0.0,
    loop: bool = False,
    quality: int = QUALITY,
    log=sys.stderr,
) -> int:
    """Collect until ``count`` captures of ``label`` (headless), or Ctrl-C (the page); returns the images saved."""
    if label is not None and label not in classes:
        raise CollectError(f"--label {label[:64]!r} is not one of --classes ({', '.join(classes)})")
    address = parse_address(serve) if serve else None
    check_out(out)
    source = open_source(source_spec, loop)
    frames, broadcast = Frames(), Broadcast()
    collector = Collector(out, classes, frames, quality)
    with ExitStack() as stack:
        if address:
            server = Server(address, broadcast, "collect", page=page(classes), actions=actions(collector))
            stack.callback(server.close)
            lan = f" (on your network: {server.lan_url})" if server.lan_url else ""
            print(f"collecting into {out}: open {server.url}{lan}", file=log, flush=True)
        source.open()
        capture = Capture(source)
        capture.start()
        stack.callback(capture.stop)
        feeder = threading.Thread(target=_feed, args=(capture, frames, broadcast), daemon=True)
        feeder.start()
        try:
            if label is not None:
                _headless(collector, label, count or 1, every, log)
            else:
                while feeder.is_alive() and collector.stopped is None:
                    feeder.join(0.2)
        except KeyboardInterrupt:
            pass
        if collector.stopped:
            raise CollectError(collector.stopped)
    return len(collector.saved)


def _feed(capture: Capture, frames: Frames, broadcast: Broadcast) -> None:
    """Frames from the capture thread to captures and to the page's live view, until the source ends."""
    while (item := capture.get(timeout=0.2)) is not None or not capture.ended:
        if item is not None:
            frames.put(item.frame.image)
            broadcast.publish(item.frame.image, {"frames": frames.number})
    broadcast.close()


def _headless(collector: Collector, label: str, count: int, every: float, log) -> None:
    next_due = time.monotonic()
    for _ in tqdm(range(count), desc=f"collecting {label}", unit="img", file=log):
        time.sleep(max(0.0, next_due - time.monotonic()))
        next_due = max(next_due + every, time.monotonic())
        collector.capture(label)


def page(classes: list[str]) -> str:
    """The collecting page: live view, a button per class, burst and hold to record, counts, last captures, undo.
    The classes reach the script as JSON and the page as text nodes, never as HTML."""
    data = json_for_script(classes)
    return PAGE.replace("__CLASSES__", data)


def json_for_script(value) -> str:
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>collect</title>
<style>
body { font-family: sans-serif; background: #111; color: #eee; margin: 1em; }
main { display: flex; gap: 1.5em; flex-wrap: wrap; }
img#live { max-width: 100%; border: 1px solid #444; }
button { font-size: 1.1em; margin: 0.2em; padding: 0.5em 0.9em; }
#recent img { height: 64px; margin: 2px; border: 1px solid #444; }
#error { color: #f66; }
label { margin-right: 1em; }
</style></head>
<body><main><img id="live" alt="live view">
<section>
<div id="buttons"></div>
<p><label><input type="checkbox" id="burst"> burst of <input id="n" type="number" value="10" min="1" max="500"
 style="width:4em"> at <input id="rate" type="number" value="5" min="0.5" max="30" style="width:3em"> per second</label>
 (or hold a button)</p>
<p><button id="undo">undo (u)</button> <span id="total"></span></p>
<p id="error"></p>
<div id="recent"></div>
</section></main>
<script>
const CLASSES = __CLASSES__;
const $ = id => document.getElementById(id);
const counts = {};
function show(s) {
  for (const c of CLASSES) counts[c].textContent = s.counts[c];
  $("total").textContent = Object.values(s.counts).reduce((a, b) => a + b, 0) + " images";
  $("recent").replaceChildren(...s.recent.map(r => {
    const img = document.createElement("img"); img.src = r.thumb; img.title = r.label + " " + r.name; return img; }));
  $("error").textContent = s.stopped || s.error || "";
}
async function post(path) {
  const r = await fetch(path, {method: "POST"});
  show(await r.json());
  return r.ok;
}
const one = label => post("/capture?label=" + encodeURIComponent(label));
async function burst(label) {
  const n = Math.max(1, Number($("n").value)), gap = 1000 / Math.max(0.5, Number($("rate").value));
  for (let i = 0; i < n; i++) { if (!await one(label)) return; await new Promise(ok => setTimeout(ok, gap)); }
}
let held = null;
async function hold(label) {
  held = label;
  const gap = 1000 / Math.max(0.5, Number($("rate").value));
  while (held === label) { if (!await one(label)) break; await new Promise(ok => setTimeout(ok, gap)); }
}
CLASSES.forEach((c, i) => {
  const b = document.createElement("button"), count = document.createElement("span");
  b.append((i < 9 ? (i + 1) + ": " : "") + c + " (", count, ")");
  b.id = "class-" + i; counts[c] = count;
  let down = 0;
  b.addEventListener("pointerdown", () => { down = Date.now(); setTimeout(() => {
    if (down && Date.now() - down >= 400) hold(c); }, 400); });
  b.addEventListener("pointerup", () => { const quick = Date.now() - down < 400; down = 0; held = null;
    if (quick) $("burst").checked ? burst(c) : one(c); });
  $("buttons").append(b);
});
$("undo").addEventListener("click", () => post("/undo"));
document.addEventListener("keydown", e => {
  if (e.target.tagName === "INPUT" || e.repeat) return;
  const i = Number(e.key) - 1;
  if (i >= 0 && i < Math.min(9, CLASSES.length)) $("burst").checked ? burst(CLASSES[i]) : one(CLASSES[i]);
  if (e.key === "u" || e.key === "Backspace") post("/undo");
});
async function frames() {
  let after = 0;
  for (;;) {
    try {
      const r = await fetch("/frame.jpg?after=" + after, {cache: "no-store"});
      if (r.status === 200) {
        after = Number(r.headers.get("X-Frame"));
        const old = $("live").src;
        $("live").src = URL.createObjectURL(await r.blob());
        if (old) URL.revokeObjectURL(old);
      } else if (r.status !== 204) throw new Error(r.status);
    } catch (e) { await new Promise(ok => setTimeout(ok, 1000)); }
  }
}
post("/state");
frames();
</script></body></html>
"""
