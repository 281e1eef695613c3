"""A small web view of a run: ``/`` (page), ``/stream.mjpg`` (annotated MJPEG), ``/stats.json``.

Standard library HTTP server in daemon threads; each frame is JPEG-encoded once, when a client
first asks for it, so an unwatched server costs one array copy per frame. On a LAN anyone may
connect: clients are capped (503 beyond), idle ones time out, and a client that hangs up is
logged at debug level, never as a traceback.
"""
import html
import json
import logging
import select
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

log = logging.getLogger(__name__)
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; background: #111; color: #eee; margin: 1em; }}
main {{ display: flex; gap: 1.5em; flex-wrap: wrap; }}
img {{ max-width: 100%; border: 1px solid #444; }}
table {{ align-self: flex-start; }}
td {{ padding: 0.15em 0.8em 0.15em 0; }} td.v {{ text-align: right; font-variant-numeric: tabular-nums; }}
</style></head>
<body><h2>{title}</h2>
<main><img id="stream" src="/stream.mjpg" alt="live stream">
<table id="stats">
<tr><td>FPS</td><td class="v" id="fps">-</td></tr>
<tr><td>inference p50 / p90 ms</td><td class="v" id="latency">-</td></tr>
<tr><td>capture-to-result p50 / p90 ms</td><td class="v" id="c2r">-</td></tr>
<tr><td>frames / dropped</td><td class="v" id="frames">-</td></tr>
<tr><td>reconnects</td><td class="v" id="reconnects">-</td></tr>
<tr><td colspan="2"><ol id="top"></ol></td></tr>
</table></main>
<script>
const pair = d => d.p50 === null ? "-" : d.p50.toFixed(2) + " / " + d.p90.toFixed(2);
async function refresh() {{
  try {{
    const s = await (await fetch("/stats.json", {{cache: "no-store"}})).json();
    document.getElementById("fps").textContent = s.fps === null ? "-" : s.fps.toFixed(1);
    document.getElementById("latency").textContent = pair(s.latency_ms);
    document.getElementById("c2r").textContent = pair(s.capture_to_result_ms);
    document.getElementById("frames").textContent = s.frames + " / " + s.dropped;
    document.getElementById("reconnects").textContent = s.reconnects;
    document.getElementById("top").replaceChildren(...s.top.map(t => {{
      const li = document.createElement("li");
      li.textContent = t.label + " " + (100 * t.score).toFixed(1) + "%";
      return li;
    }}));
  }} catch (e) {{ document.getElementById("fps").textContent = "offline"; }}
}}
setInterval(refresh, 500); refresh();
</script></body></html>
"""


def parse_address(text: str) -> tuple[str, int]:
    """``PORT``, ``:PORT`` or ``HOST:PORT``; the host defaults to loopback so nothing is exposed by accident."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--serve wants HOST:PORT or PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class Broadcast:
    """The newest annotated frame and stats, handed from the run loop to any number of HTTP clients."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.frame: np.ndarray | None = None
        self.number = 0
        self.stats: dict = {}
        self.closed = False
        self._jpeg: tuple[int, bytes] = (0, b"")

    def publish(self, frame: np.ndarray, stats: dict) -> None:
        with self.changed:
            self.frame, self.stats = frame, stats
            self.number += 1
            self.changed.notify_all()

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def next_jpeg(self, after: int, timeout: float = 5.0) -> tuple[int, bytes] | None:
        """The first frame newer than ``after`` as JPEG; None once the run has ended."""
        with self.changed:
            self.changed.wait_for(lambda: self.number > after or self.closed, timeout)
            if self.closed or self.number <= after:
                return None if self.closed else (after, b"")
            number, frame = self.number, self.frame
            if self._jpeg[0] == number:
                return self._jpeg
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
        with self.changed:
            self._jpeg = (number, data.tobytes())
        return self._jpeg


def make_handler(broadcast: Broadcast, title: str, timeout: float):
    page = PAGE.format(title=html.escape(title)).encode()

    class Handler(BaseHTTPRequestHandler):
        def setup(self) -> None:
            self.timeout = timeout  # for every read and write: an idle or stalled client lets go of its thread
            super().setup()

        def log_message(self, format, *args):  # keep the terminal for the app's own output
            pass

        def _send(self, body: bytes, content_type: str) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/":
                self._send(page, "text/html; charset=utf-8")
            elif self.path == "/stats.json":
                with broadcast.changed:
                    stats = dict(broadcast.stats)
                self._send(json.dumps(stats).encode(), "application/json")
            elif self.path == "/stream.mjpg":
                self._stream()
            else:
                self.send_error(HTTPStatus.NOT_FOUND)

        do_HEAD = do_GET  # the same headers, no body

        def _stream(self) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            number = 0
            while self.command != "HEAD" and (item := broadcast.next_jpeg(number, timeout=1.0)) is not None:
                number, jpeg = item
                if jpeg:
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                     b"Content-Length: %d\r\n\r\n%s\r\n" % (len(jpeg), jpeg))
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
    """At most ``max_clients`` connections at a time; errors are one log line each."""

    daemon_threads = True

    def __init__(self, address, handler, max_clients: int) -> None:
        self.slots = threading.BoundedSemaphore(max_clients)
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # reset, broken pipe, timeout: the client went away
            log.debug("client %s: %s", client_address[0], error)
        else:
            log.warning("serving %s failed: %r", client_address[0], error)


class Server:
    """Serves ``broadcast`` on ``address`` in a background thread; ``url`` says where (port 0 picks one)."""

    def __init__(self, address: tuple[str, int], broadcast: Broadcast, title: str, timeout: float = 10.0,
                 max_clients: int = 16) -> None:
        try:
            self.httpd = _HTTPServer(address, make_handler(broadcast, title, timeout), max_clients)
        except OSError as e:
            raise OSError(f"cannot serve on {address[0]}:{address[1]}: {e.strerror}") from None
        self.broadcast = broadcast
        host, port = self.httpd.server_address[:2]
        self.url = f"http://{host}:{port}/"
        threading.Thread(target=self.httpd.serve_forever, name="serve", daemon=True).start()

    def close(self) -> None:
        self.broadcast.close()
        self.httpd.shutdown()
        self.httpd.server_close()
