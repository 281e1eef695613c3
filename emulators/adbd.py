"""An adbd for the emulated phone: the device side of the ADB protocol over TCP, running commands in a root.

    python -m emulators.adbd ROOT [--port 0] [--port-file F] [--refuse-auth | --mute] [--kbps N]

The real ``adb`` client connects to it (``adb connect 127.0.0.1:PORT``), so what ``make test-android`` checks
is the client's own behaviour. It speaks what that client uses (AOSP's protocol.txt, SYNC.TXT and
shell_protocol.h): CNXN without AUTH, streams (OPEN/OKAY/WRTE/CLSE, one write in flight each way), the
``shell,v2:`` service with its stdout/stderr/exit packets (and plain ``shell:``), and ``sync:`` with STAT,
LIST, SEND and RECV. Commands run as ``chroot ROOT /system/bin/sh -c COMMAND``; files are read and written
under ROOT, never outside it. For tests of what goes wrong: ``--refuse-auth`` answers every connection with
an AUTH challenge it never accepts (an unauthorized phone), ``--mute`` never answers at all (an offline one),
and ``--kbps`` receives pushed files no faster than that (a slow USB link, to interrupt a push midway).

It binds to 127.0.0.1 only and is for tests: it trusts whoever connects, as adbd with auth off does.
"""

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from edge.command import HelpFormatter

VERSION = 0x01000001
MAX_PAYLOAD = 256 * 1024
SYNC_DATA_MAX = 64 * 1024
AUTH_TOKEN, AUTH_SIGNATURE = 1, 2
COMMANDS = {name: struct.unpack("<I", name.encode())[0] for name in ("CNXN", "AUTH", "OPEN", "OKAY", "CLSE", "WRTE")}
FEATURES = "shell_v2,cmd,fixed_push_mkdir"  # stat_v2 and sendrecv_v2 left out: the client falls back to v1
SHELL_STDIN, SHELL_STDOUT, SHELL_STDERR, SHELL_EXIT, SHELL_CLOSE_STDIN = 0, 1, 2, 3, 4
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
SHELL_ENV = {
    "PATH": "/system/bin:/system/xbin",
    "HOME": "/data/local/tmp",
    "TMPDIR": "/data/local/tmp",
    "ANDROID_DATA": "/data",
    "ANDROID_ROOT": "/system",
}


class Connection:
    """One client connection: a reader dispatching packets, and the streams it opened."""

    def __init__(self, sock: socket.socket, root: Path, banner: str, mode: str | None, kbps: float | None) -> None:
        self.sock, self.root, self.banner, self.mode, self.kbps = sock, root, banner, mode, kbps
        self.send_lock, self.streams, self.next_id = threading.Lock(), {}, 1

    def send(self, command: str, arg0: int, arg1: int, data: bytes = b"") -> None:
        code = COMMANDS[command]
        header = struct.pack("<6I", code, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, code ^ 0xFFFFFFFF)
        with self.send_lock:
            self.sock.sendall(header + data)

    def receive(self) -> tuple[str, int, int, bytes] | None:
        header = self._exactly(24)
        if header is None:
            return None
        code, arg0, arg1, length, _, magic = struct.unpack("<6I", header)
        if magic != code ^ 0xFFFFFFFF or length > 16 * MAX_PAYLOAD:
            return None
        data = self._exactly(length) if length else b""
        name = next((n for n, c in COMMANDS.items() if c == code), None)
        return None if data is None or name is None else (name, arg0, arg1, data)

    def _exactly(self, n: int) -> bytes | None:
        chunks = []
        while n:
            chunk = self.sock.recv(min(n, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def serve(self) -> None:
        try:
            while (packet := self.receive()) is not None:
                self.dispatch(*packet)
        except OSError:
            pass
        finally:
            for stream in list(self.streams.values()):
                stream.closed()
            self.sock.close()

    def dispatch(self, command: str, arg0: int, arg1: int, data: bytes) -> None:
        if self.mode == "mute":
            return
        if command == "CNXN":
            if self.mode == "refuse-auth":
                self.send("AUTH", AUTH_TOKEN, 0, secrets.token_bytes(20))  # a token to sign: the client cannot pass
            else:
                self.send("CNXN", VERSION, MAX_PAYLOAD, self.banner.encode())
        elif command == "AUTH" and arg0 == AUTH_SIGNATURE:
            # Every signature is refused with a new token; the client then offers its public key, which
            # a phone would show in its "Allow USB debugging?" prompt: here nobody answers it.
            self.send("AUTH", AUTH_TOKEN, 0, secrets.token_bytes(20))
        elif command == "OPEN":
            service = data.rstrip(b"\0").decode(errors="replace")
            local = self.next_id
            self.next_id += 1
            stream = open_stream(self, local, arg0, service)
            if stream is None:
                self.send("CLSE", 0, arg0)
                return
            self.streams[local] = stream
            self.send("OKAY", local, arg0)
            stream.start()
        elif command in ("OKAY", "WRTE", "CLSE") and (stream := self.streams.get(arg1)) is not None:
            if command == "OKAY":
                stream.acknowledged()
            elif command == "WRTE":
                self.send("OKAY", arg1, arg0)
                stream.received(data)
            else:
                self.streams.pop(arg1, None)
                stream.closed()


class Stream:
    """A service's end of one stream: ``write`` waits for the client's OKAY before the next WRTE."""

    def __init__(self, connection: Connection, local: int, remote: int) -> None:
        self.connection, self.local, self.remote = connection, local, remote
        self.ready, self.finished = threading.Event(), threading.Event()
        self.ready.set()
        self.inbox, self.inbox_changed = bytearray(), threading.Condition()

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            self.run()
        except EOFError:  # the client closed the stream or went away
            pass
        except OSError as e:
            print(f"adbd: {type(self).__name__} stream ended: {e}", file=sys.stderr, flush=True)
        finally:
            self.close()

    def write(self, data: bytes) -> None:
        for start in range(0, len(data), MAX_PAYLOAD):
            while not self.ready.wait(0.5):
                if self.finished.is_set():
                    raise EOFError
            self.ready.clear()
            self.connection.send("WRTE", self.local, self.remote, data[start : start + MAX_PAYLOAD])

    def acknowledged(self) -> None:
        self.ready.set()

    def received(self, data: bytes) -> None:
        with self.inbox_changed:
            self.inbox += data
            self.inbox_changed.notify_all()

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes the client wrote; EOFError once it closed the stream first."""
        with self.inbox_changed:
            self.inbox_changed.wait_for(lambda: len(self.inbox) >= n or self.finished.is_set())
            if len(self.inbox) < n:
                raise EOFError
            data = bytes(self.inbox[:n])
            del self.inbox[:n]
            return data

    def closed(self) -> None:
        self.finished.set()
        with self.inbox_changed:
            self.inbox_changed.notify_all()

    def close(self) -> None:
        if not self.finished.is_set():
            self.finished.set()
            self.connection.streams.pop(self.local, None)
            try:
                self.connection.send("CLSE", self.local, self.remote)
            except OSError:
                pass

    def run(self) -> None:
        raise NotImplementedError


class Shell(Stream):
    """``shell,v2,...:COMMAND`` (packets with the exit code) or ``shell:COMMAND`` (raw output)."""

    def __init__(self, connection: Connection, local: int, remote: int, command: str, v2: bool) -> None:
        super().__init__(connection, local, remote)
        self.command, self.v2 = command, v2

    def run(self) -> None:
        argv = [CHROOT, str(self.connection.root), "/system/bin/sh", *(["-c", self.command] if self.command else [])]
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=SHELL_ENV,
            start_new_session=True,
        )
        if self.v2:
            threading.Thread(target=self._stdin, args=(process,), daemon=True).start()
        else:
            process.stdin.close()
        pumps = [
            threading.Thread(target=self._pump, args=(pipe, packet), daemon=True)
            for pipe, packet in ((process.stdout, SHELL_STDOUT), (process.stderr, SHELL_STDERR))
        ]
        for pump in pumps:
            pump.start()
        while process.poll() is None:
            if self.finished.wait(0.2):  # the client went away: so does the command, as with adbd
                os.killpg(process.pid, signal.SIGKILL)
        for pump in pumps:
            pump.join()
        if self.v2:
            self.write(self.packet(SHELL_EXIT, bytes([process.returncode & 0xFF])))

    @staticmethod
    def packet(kind: int, data: bytes) -> bytes:
        return struct.pack("<BI", kind, len(data)) + data

    def _pump(self, pipe, kind: int) -> None:
        try:
            while chunk := pipe.read1(SYNC_DATA_MAX):
                self.write(self.packet(kind, chunk) if self.v2 else chunk)
        except (OSError, EOFError):
            pass

    def _stdin(self, process: subprocess.Popen) -> None:
        try:
            while True:
                kind, length = struct.unpack("<BI", self.read(5))
                data = self.read(length)
                if kind == SHELL_STDIN:
                    process.stdin.write(data)
                    process.stdin.flush()
                elif kind == SHELL_CLOSE_STDIN:
                    break
        except (OSError, EOFError, ValueError):
            pass
        finally:
            try:
                process.stdin.close()
            except OSError:
                pass


class Sync(Stream):
    """``sync:``: STAT, LIST, SEND, RECV and QUIT on paths under the root (SYNC.TXT, version 1)."""

    def run(self) -> None:
        while True:
            request, length = struct.unpack("<4sI", self.read(8))
            if request == b"QUIT":
                return
            if length > 4096:
                return
            path = self.read(length).decode(errors="surrogateescape")
            handler = {b"STAT": self.stat, b"LIST": self.list, b"SEND": self.send, b"RECV": self.recv}.get(request)
            if handler is None:
                return
            handler(path)

    def under_root(self, path: str) -> Path:
        """``path`` on the device, as a path under the root that does not climb out of it."""
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise PermissionError(f"{path}: paths with .. are refused")
        return self.connection.root.joinpath(*parts)

    def fail(self, message: str) -> None:
        data = message.encode()
        self.write(struct.pack("<4sI", b"FAIL", len(data)) + data)

    def stat(self, path: str) -> None:
        try:
            st = os.lstat(self.under_root(path))
            self.write(struct.pack("<4s3I", b"STAT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime)))
        except OSError:
            self.write(struct.pack("<4s3I", b"STAT", 0, 0, 0))

    def list(self, path: str) -> None:
        try:
            entries = sorted(os.scandir(self.under_root(path)), key=lambda e: e.name)
        except OSError:
            entries = []
        for entry in entries:
            st, name = entry.stat(follow_symlinks=False), entry.name.encode(errors="surrogateescape")
            self.write(
                struct.pack("<4s4I", b"DENT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(name)) + name
            )
        self.write(struct.pack("<4s4I", b"DONE", 0, 0, 0, 0))

    def send(self, spec: str) -> None:
        """SEND "path,mode", then DATA chunks and DONE: written to a temporary name, renamed when complete,
        so an interrupted push never leaves a short file under the real name."""
        path, _, mode = spec.rpartition(",")
        tmp = out = error = None
        try:
            target = self.under_root(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.adbd-{secrets.token_hex(3)}")
            out = open(tmp, "wb")
        except OSError as e:
            error = f"{path}: {e.strerror or e}"
        try:
            mtime, write_error = self.receive_data(out)
            error = error or (write_error and f"{path}: {write_error}")
            if error is None:
                out.close()
                os.chmod(tmp, (int(mode) if mode.isdigit() else 0o644) & 0o7777)
                os.utime(tmp, (mtime, mtime))
                tmp.replace(target)
        except OSError as e:
            error = f"{path}: {e.strerror or e}"
        finally:
            if out is not None:
                with contextlib.suppress(OSError):  # already closed, or failing to flush onto a full disk
                    out.close()
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        if error:
            self.fail(error)
        else:
            self.write(struct.pack("<4sI", b"OKAY", 0))

    def receive_data(self, out) -> tuple[int, str | None]:
        """DATA chunks up to DONE, written to ``out`` (None: read and dropped); DONE's mtime and the first
        write error, whose chunks are still read so the stream stays in step."""
        error = None
        while True:
            kind, length = struct.unpack("<4sI", self.read(8))
            if kind == b"DONE":
                return length, error
            if kind != b"DATA" or length > MAX_PAYLOAD:
                raise EOFError
            data = self.read(length)
            if self.connection.kbps:
                time.sleep(length / (1024 * self.connection.kbps))
            if out is not None and error is None:
                try:
                    out.write(data)
                except OSError as e:
                    error = e.strerror or str(e)

    def recv(self, path: str) -> None:
        try:
            with open(self.under_root(path), "rb") as f:
                while chunk := f.read(SYNC_DATA_MAX):
                    self.write(struct.pack("<4sI", b"DATA", len(chunk)) + chunk)
        except OSError as e:
            self.fail(f"{path}: {e.strerror or e}")
            return
        self.write(struct.pack("<4sI", b"DONE", 0))


def open_stream(connection: Connection, local: int, remote: int, service: str) -> Stream | None:
    if service.startswith("shell"):
        options, _, command = service.partition(":")
        return Shell(connection, local, remote, command, v2=",v2" in options)
    if service == "sync:":
        return Sync(connection, local, remote)
    return None


def banner(root: Path) -> str:
    """CNXN's device banner: the product properties from the root's build.prop, and our features."""
    props = {}
    prop_file = root / "system" / "build.prop"
    if prop_file.is_file():
        for line in prop_file.read_text().splitlines():
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    named = ";".join(
        f"{k}={props[k]}" for k in ("ro.product.name", "ro.product.model", "ro.product.device") if k in props
    )
    return f"device::{named};features={FEATURES}"


def serve(root: Path, port: int, port_file: Path | None, mode: str | None, kbps: float | None) -> None:
    listener = socket.create_server(("127.0.0.1", port))
    if port_file:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(f"{listener.getsockname()[1]}\n")
        tmp.replace(port_file)
    while True:
        sock, _ = listener.accept()
        connection = Connection(sock, root, banner(root), mode, kbps)
        threading.Thread(target=connection.serve, daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.adbd", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("root", type=Path, help="the emulated phone's root directory")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--port-file", type=Path, help="write the port here once listening")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--refuse-auth",
        dest="mode",
        action="store_const",
        const="refuse-auth",
        help="ask for AUTH and never accept: an unauthorized device",
    )
    modes.add_argument(
        "--mute",
        dest="mode",
        action="store_const",
        const="mute",
        help="accept connections and never answer: an offline device",
    )
    parser.add_argument("--kbps", type=float, help="receive pushed files at most this fast (KB/s)")
    args = parser.parse_args(argv)
    if not (args.root / "system" / "bin" / "sh").exists():
        sys.exit(f"error: {args.root} has no system/bin/sh: build the phone's root first (make android-emu)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve(args.root.resolve(), args.port, args.port_file, args.mode, args.kbps)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
