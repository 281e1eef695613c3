"""WEIGHTS=imagenet: torchvision's weights fetched, checked, cached and resumed, against a loopback server that
serves a state dict this test makes (the real addresses are not reachable from the tests)."""

import hashlib
import http.server
import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

import training.pretrained as pretrained
from training.models import WeightsError

ROOT = Path(__file__).resolve().parent.parent


def state_dict_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.randn(64, 256, generator=torch.Generator().manual_seed(seed))}, buffer)
    return buffer.getvalue()


BODY = state_dict_bytes()
NAME = f"tiny-{hashlib.sha256(BODY).hexdigest()[:8]}.pth"  # torchvision's naming: the hash prefix after '-'


class Server:
    """A loopback HTTP server for one file, in the mode a test sets: whole, truncated, slow, or another body."""

    def __init__(self) -> None:
        self.mode, self.requests, self.ranges = "whole", 0, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests += 1
                outer.ranges.append(self.headers.get("Range"))
                if self.path != f"/{NAME}" or outer.mode == "missing":
                    self.send_error(404)
                    return
                body = state_dict_bytes(1) if outer.mode == "other" else BODY
                start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if outer.mode == "truncated":
                    self.wfile.write(body[start : start + 1000])
                    return
                if outer.mode == "slow":  # a little at a time, until the client goes away
                    try:
                        for i in range(start, len(body), 200):
                            self.wfile.write(body[i : i + 200])
                            self.wfile.flush()
                            time.sleep(0.05)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                self.wfile.write(body[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(monkeypatch, tmp_path):
    served = Server()
    monkeypatch.setenv(pretrained.URL_VARIABLE, served.url)
    monkeypatch.setenv("MOBILENET_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(pretrained.FILES, "v3_small", (NAME, 0.0))
    yield served
    served.httpd.shutdown()


def cache(tmp_path) -> Path:
    return tmp_path / "cache" / "weights"


def test_a_good_download_is_cached_and_a_second_run_downloads_nothing(server, tmp_path, capsys):
    path = pretrained.imagenet_weights("v3_small", 1.0)
    assert path == cache(tmp_path) / NAME and path.read_bytes() == BODY
    assert "downloading" in capsys.readouterr().err, "a progress bar"
    assert pretrained.imagenet_weights("v3_small", 1.0) == path and server.requests == 1
    assert sorted(p.name for p in cache(tmp_path).iterdir()) == [NAME], "nothing else left in the cache"
    assert torch.load(path, weights_only=True)["w"].shape == (64, 256)


def test_a_truncated_body_is_named_and_the_next_run_resumes_where_it_stopped(server, tmp_path):
    server.mode = "truncated"
    with pytest.raises(WeightsError, match=rf"closed after 1000 of {len(BODY)} bytes; run again to resume") as e:
        pretrained.imagenet_weights("v3_small", 1.0)
    assert f"put it at {cache(tmp_path) / NAME}" in str(e.value) and "\n" not in str(e.value)
    assert not (cache(tmp_path) / NAME).exists(), "no partial file where a good one is looked for"
    server.mode = "whole"
    assert pretrained.imagenet_weights("v3_small", 1.0).read_bytes() == BODY
    assert server.ranges == [None, "bytes=1000-"], "the second request asked for the rest only"


def test_a_wrong_hash_leaves_nothing_behind(server, tmp_path):
    server.mode = "other"
    with pytest.raises(WeightsError, match="arrived with another sha256 than its name says"):
        pretrained.imagenet_weights("v3_small", 1.0)
    assert list(cache(tmp_path).iterdir()) == []


def test_a_corrupt_cached_file_is_downloaded_again(server, tmp_path, capsys):
    cache(tmp_path).mkdir(parents=True)
    (cache(tmp_path) / NAME).write_bytes(BODY[:-1] + b"x")
    assert pretrained.imagenet_weights("v3_small", 1.0).read_bytes() == BODY
    assert "does not match its hash: downloading it again" in capsys.readouterr().err


def test_http_errors_and_a_refused_connection_are_one_line_naming_the_address_and_where_to_put_it(server, tmp_path):
    server.mode = "missing"
    with pytest.raises(WeightsError, match=rf"cannot download {server.url}{NAME} \(HTTP 404") as e:
        pretrained.imagenet_weights("v3_small", 1.0)
    assert f"download {pretrained.URL}{NAME} by hand and put it at {cache(tmp_path) / NAME}" in str(e.value)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    os.environ[pretrained.URL_VARIABLE] = f"http://127.0.0.1:{port}/"
    with pytest.raises(WeightsError, match="offline or unreachable: .*Connection refused"):
        pretrained.imagenet_weights("v3_small", 1.0)
    assert list(cache(tmp_path).iterdir()) == []


def test_a_full_disk_is_one_line_and_frees_what_it_wrote(server, tmp_path):
    cache(tmp_path).mkdir(parents=True)
    (cache(tmp_path) / f"{NAME}.partial").symlink_to("/dev/full")  # every write: ENOSPC
    with pytest.raises(WeightsError, match=f"no space left for {cache(tmp_path) / NAME}: free some, or download"):
        pretrained.imagenet_weights("v3_small", 1.0)
    assert list(cache(tmp_path).iterdir()) == []


@pytest.mark.parametrize(
    "arch,width,message",
    [
        ("v1", 1.0, "torchvision publishes ImageNet weights for v2, v3_small, v3_large, not v1"),
        ("v3_small", 0.5, "ImageNet weights exist at width 1.0 only, not 0.5"),
    ],
)
def test_models_without_published_weights_are_refused_before_any_download(arch, width, message, server):
    with pytest.raises(WeightsError, match=message):
        pretrained.imagenet_weights(arch, width)
    assert server.requests == 0


def test_ctrl_c_mid_download_is_one_line_keeps_the_bytes_and_the_next_run_resumes(server, tmp_path):
    server.mode = "slow"
    script = textwrap.dedent(f"""
        import sys
        import training.pretrained as p
        from edge.command import run_main
        p.FILES["v3_small"] = ({NAME!r}, 0.0)
        sys.argv = ["python -m training.pretrained", "v3_small"]
        run_main("training.pretrained")  # as python -m training.pretrained runs it, with the test's file
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"MOBILENET_EDGE_CACHE": str(tmp_path / "cache")},
    )
    partial = cache(tmp_path) / f"{NAME}.partial"
    deadline = time.monotonic() + 120
    while not (partial.is_file() and partial.stat().st_size >= 1000) and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode != 0 and "Traceback" not in err, err
    assert "interrupted:" in err and "run again to resume" in err, err
    assert not (cache(tmp_path) / NAME).exists() and partial.stat().st_size > 0
    server.mode = "whole"
    assert pretrained.imagenet_weights("v3_small", 1.0).read_bytes() == BODY
    assert server.ranges[-1].startswith("bytes=") and server.ranges[-1] != "bytes=0-"
