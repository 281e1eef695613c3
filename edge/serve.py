"""A small web view of a run: ``/`` (page), ``/frame.jpg`` (the next annotated frame with its own stats,
which the page shows), ``/stream.mjpg`` (annotated MJPEG, for players like VLC), ``/stats.json``.

Standard library HTTP server in daemon threads; each frame is JPEG-encoded once, when a client
first asks for it, so an unwatched server costs one array copy per frame. On a LAN anyone may
connect. A connection waits in a bounded waiting room until its request is in: its request line must
arrive within ``request_line_time`` seconds of the connection and all its headers within ``header_time``
(a client that sends nothing, or a line every few seconds, cannot hold on). Only then does it take one of
``max_clients`` slots, so idle and trickling connections never lock out a real client; beyond either
bound a connection gets 503. Idle clients time out, a malformed request gets 400, and a client that
hangs up is logged at debug level, never as a traceback.
"""

import html
import json
import logging
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedIOBase
from typing import cast
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

log = logging.getLogger(__name__)
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; background: #111; color: #eee; margin: 1em; }}
h2 {{ font-size: 1.2em; overflow-wrap: anywhere; }}
main {{ display: flex; gap: 1.5em; flex-wrap: wrap; }}
img {{ max-width: 100%; border: 1px solid #444; }}
table {{ align-self: flex-start; }}
td {{ padding: 0.15em 0.8em 0.15em 0; }} td.v {{ text-align: right; font-variant-numeric: tabular-nums; }}
ol {{ margin: 0.2em 0; padding-left: 1.4em; }} #history {{ color: #aaa; }}
</style></head>
<body><h2>{title}</h2>
<main><img id="stream" alt="live stream">
<table id="stats">
<tr><td colspan="2"><ol id="top"></ol></td></tr>
<tr><td>FPS</td><td class="v" id="fps">-</td></tr>
<tr><td>inference p50 / p90 ms</td><td class="v" id="latency">-</td></tr>
<tr><td>capture-to-result p50 / p90 ms</td><td class="v" id="c2r">-</td></tr>
<tr><td>frames / dropped</td><td class="v" id="frames">-</td></tr>
<tr><td>reconnects</td><td class="v" id="reconnects">-</td></tr>
<tr><td>threads</td><td class="v" id="threads">-</td></tr>
<tr><td>CPU temperature</td><td class="v" id="temperature">-</td></tr>
<tr><td colspan="2">recent labels<ol id="history"></ol></td></tr>
</table></main>
<script>
// Each frame comes with the figures of that same frame (its X-Stats header): the banner drawn on the
// image and the list beside it cannot disagree, as a separately polled stats.json would.
const $ = id => document.getElementById(id);
const pair = d => d.p50 === null ? "-" : d.p50.toFixed(2) + " / " + d.p90.toFixed(2);
const items = (list, text) => list.map(t => {{
  const li = document.createElement("li"); li.textContent = text(t); return li; }});
function show(s) {{
  $("top").replaceChildren(...items(s.top, t => t.label + " " + (100 * t.score).toFixed(1) + "%"));
  $("fps").textContent = s.fps === null ? "-" : s.fps.toFixed(1);
  $("latency").textContent = pair(s.latency_ms);
  $("c2r").textContent = pair(s.capture_to_result_ms);
  $("frames").textContent = s.frames + " / " + s.dropped;
  $("reconnects").textContent = s.reconnects;
  $("threads").textContent = s.threads;
  $("temperature").textContent = s.temperature_c === null ? "unknown" : s.temperature_c.toFixed(1) + " \u00b0C";
  $("history").replaceChildren(...items(s.history, h => h.time + "  " + h.label));
}}
async function frames() {{
  let after = 0;
  for (;;) {{
    try {{
      const r = await fetch("/frame.jpg?after=" + after, {{cache: "no-store"}});
      if (r.status === 200) {{
        after = Number(r.headers.get("X-Frame"));
        const old = $("stream").src;
        $("stream").src = URL.createObjectURL(await r.blob());
        if (old) URL.revokeObjectURL(old);
        show(JSON.parse(r.headers.get("X-Stats")));
      }} else if (r.status !== 204) throw new Error(r.status);
    }} catch (e) {{
      $("fps").textContent = "offline";
      await new Promise(done => setTimeout(done, 1000));
    }}
  }}
}}
frames();
</script></body></html>
"""


DEFAULT_ADDRESS = "127.0.0.1:8080"  # the page's address when none is given: this machine only


def parse_address(text: str) -> tuple[str, int]:
    """``PORT``, ``:PORT``, ``HOST:PORT`` or ``[IPv6]:PORT``; the host defaults to loopback so nothing is
    exposed by accident."""
    host, _, port = text.rpartition(":")
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"--serve wants HOST:PORT, [IPv6]:PORT or PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def url_host(host: str) -> str:
    """``host`` as a URL spells it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def lan_address() -> str | None:
    """The address this machine's default route leaves from, as the Edge Impulse runner prints it.
    Connecting a UDP socket sends nothing; it only picks the interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            return probe.getsockname()[0]
        except OSError:
            return None


class Broadcast:
    """The newest annotated frame and stats, handed from the run loop to any number of HTTP clients."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.frame: np.ndarray | None = None
        self.number = 0
        self.stats: dict = {}
        self.closed = False
        self._jpeg: tuple[int, bytes, dict] = (0, b"", {})

    def publish(self, frame: np.ndarray, stats: dict) -> None:
        with self.changed:
            self.frame, self.stats = frame, stats
            self.number += 1
            self.changed.notify_all()

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def next_jpeg(self, after: int, timeout: float = 5.0) -> tuple[int, bytes, dict] | None:
        """The first frame newer than ``after`` as JPEG, with the stats published with it;
        ``(after, b"", {})`` when none came within ``timeout``, None once the run has ended."""
        with self.changed:
            self.changed.wait_for(lambda: self.number > after or self.closed, timeout)
            if self.closed or self.number <= after:
                return None if self.closed else (after, b"", {})
            number, frame, stats = self.number, self.frame, self.stats
            if self._jpeg[0] == number:
                return self._jpeg
        if frame is None:  # published numbers always come with a frame; this keeps the type honest
            return after, b"", {}
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
        with self.changed:
            self._jpeg = (number, data.tobytes(), stats)
        return self._jpeg


class _HeaderDeadline:
    """The request's reader until its headers are in: the request line may take ``first_line`` seconds from
    the start, and each line only what is left of ``seconds``.

    The socket's own timeout restarts with every byte received, so on its own it lets a client that
    sends one header line every few seconds keep its connection for ever.
    """

    def __init__(self, rfile, connection: socket.socket, seconds: float, timeout: float, first_line: float) -> None:
        self.rfile, self.connection, self.timeout = rfile, connection, timeout
        start = time.monotonic()
        self.deadline, self.first_line_deadline = start + seconds, start + min(first_line, seconds)
        self.lines = 0

    def readline(self, limit: int = -1) -> bytes:
        self.lines += 1
        left = (self.first_line_deadline if self.lines == 1 else self.deadline) - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's headers took too long")
        self.connection.settimeout(min(left, self.timeout))
        return self.rfile.readline(limit)

    def __getattr__(self, name: str):
        return getattr(self.rfile, name)


def after_frame(query: str) -> int | None:
    """``after`` of ``/frame.jpg?after=N``: 0 when absent, None when it is not a plain decimal number."""
    values = parse_qs(query).get("after")
    if not values:
        return 0
    text = values[0]
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


# An action the page posts to (``edge collect``'s capture and undo): query -> (HTTP status, JSON object).
Action = Callable[[dict[str, list[str]]], tuple[int, dict]]


def make_handler(
    broadcast: Broadcast,
    title: str,
    idle_timeout: float,
    header_time: float,
    request_line_time: float,
    page: str | None = None,
    actions: dict[str, Action] | None = None,
):
    page_bytes = (page if page is not None else PAGE.format(title=html.escape(title))).encode()
    routes: dict[str, Action] = actions or {}

    class Handler(BaseHTTPRequestHandler):
        timeout = idle_timeout  # for every read and write: an idle or stalled client lets go of its thread

        def handle_one_request(self) -> None:
            reader = _HeaderDeadline(self.rfile, self.connection, header_time, idle_timeout, request_line_time)
            self.rfile = cast(BufferedIOBase, reader)  # it reads lines as the server's reader does
            try:
                super().handle_one_request()
            finally:
                self.rfile = reader.rfile

        def parse_request(self) -> bool:
            """The headers are in (or refused): the request takes a client slot, or gets 503, and writes get the
            whole idle timeout again."""
            parsed = super().parse_request()
            self.connection.settimeout(idle_timeout)
            if parsed and not cast(_HTTPServer, self.server).admit(self.request):
                self.send_response(HTTPStatus.SERVICE_UNAVAILABLE)
                self.send_header("Retry-After", "5")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False
            return parsed

        def log_message(self, format, *args):  # keep the terminal for the app's own output
            pass

        def _send(self, body: bytes, content_type: str, headers: dict | None = None) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/":
                self._send(page_bytes, "text/html; charset=utf-8")
            elif self.path == "/stats.json":
                with broadcast.changed:
                    stats = dict(broadcast.stats)
                self._send(json.dumps(stats).encode(), "application/json")
            elif self.path == "/stream.mjpg":
                self._stream()
            elif self.path.startswith("/frame.jpg"):
                self._frame()
            else:
                self.send_error(HTTPStatus.NOT_FOUND)

        do_HEAD = do_GET  # the same headers, no body

        def do_POST(self) -> None:
            """An action: ``/NAME?key=value``; the body, if any, is read and ignored (at most 64 kB)."""
            url = urlsplit(self.path)
            action = routes.get(url.path)
            length = self.headers.get("Content-Length", "0")
            if not length.isdigit() or int(length) > 1 << 16:
                self.send_error(HTTPStatus.BAD_REQUEST, "a body of at most 64 kB")
                return
            self.rfile.read(int(length))
            if action is None:
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            status, answer = action(parse_qs(url.query))
            body = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _frame(self) -> None:
            """``/frame.jpg?after=N``: the next frame after N with its own stats (X-Frame, X-Stats); 204 when
            none came within a second, 503 once the run has ended."""
            after = after_frame(urlsplit(self.path).query)
            if after is None:
                self.send_error(HTTPStatus.BAD_REQUEST, "after= wants a frame number")
                return
            item = broadcast.next_jpeg(after, timeout=1.0)
            if item is None:
                self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "the run has ended")
            elif not item[1]:
                self.send_response(HTTPStatus.NO_CONTENT)
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
            else:
                self._send(item[1], "image/jpeg", {"X-Frame": str(item[0]), "X-Stats": json.dumps(item[2])})

        def _stream(self) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            number = 0
            while self.command != "HEAD" and (item := broadcast.next_jpeg(number, timeout=1.0)) is not None:
                number, jpeg, _ = item
                if jpeg:
                    self.wfile.write(
                        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(jpeg), jpeg)
                    )
                elif self._gone():  # no new frame to write: notice a viewer that left while the run is stalled
                    return

        def _gone(self) -> bool:
            if not select.select([self.connection], [], [], 0)[0]:
                return False
            try:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

    return Handler


class _HTTPServer(ThreadingHTTPServer):
    """At most ``max_waiting`` connections whose request is not in yet, and ``max_clients`` being answered, so
    at most the sum of threads; errors are one log line each."""

    daemon_threads = True

    def __init__(self, address, handler, max_clients: int, max_waiting: int) -> None:
        self.waiting, self.slots = threading.BoundedSemaphore(max_waiting), threading.BoundedSemaphore(max_clients)
        self.admitted: set[int] = set()  # ids of the connections that hold a slot rather than a waiting place
        self.lock = threading.Lock()
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self.waiting.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def admit(self, request) -> bool:
        """A connection whose request is in leaves the waiting room for a client slot, if one is free."""
        if not self.slots.acquire(blocking=False):
            return False
        with self.lock:
            self.admitted.add(id(request))
        self.waiting.release()
        return True

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                admitted = id(request) in self.admitted
                self.admitted.discard(id(request))
            (self.slots if admitted else self.waiting).release()

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # reset, broken pipe, timeout: the client went away
            log.debug("client %s: %s", client_address[0], error)
        else:
            log.warning("serving %s failed: %r", client_address[0], error)


class Server:
    """Serves ``broadcast`` on ``address`` in a background thread; ``url`` says where (port 0 picks one)."""

    def __init__(
        self,
        address: tuple[str, int],
        broadcast: Broadcast,
        title: str,
        timeout: float = 10.0,
        max_clients: int = 16,
        header_time: float = 10.0,
        request_line_time: float = 2.0,
        max_waiting: int = 64,
        page: str | None = None,
        actions: dict[str, Action] | None = None,
    ) -> None:
        handler = make_handler(broadcast, title, timeout, header_time, request_line_time, page, actions)
        try:
            self.httpd = _HTTPServer(address, handler, max_clients, max_waiting)
        except (OSError, OverflowError) as e:
            raise OSError(f"cannot serve on {address[0]}:{address[1]}: {getattr(e, 'strerror', None) or e}") from None
        self.broadcast = broadcast
        host, port = str(self.httpd.server_address[0]), self.httpd.server_address[1]
        self.url = f"http://{url_host(host)}:{port}/"
        lan = lan_address() if host in ("0.0.0.0", "::") else None
        self.lan_url = f"http://{lan}:{port}/" if lan else None  # what to open on a phone or laptop
        threading.Thread(target=self.httpd.serve_forever, name="serve", daemon=True).start()

    def close(self) -> None:
        self.broadcast.close()
        self.httpd.shutdown()
        self.httpd.server_close()
