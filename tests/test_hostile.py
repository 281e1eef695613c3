"""Inputs a hostile or unlucky user gives, one test per class of them, with the inputs made here:
images small on disk and huge decoded, paths that are not what they seem, names no encoding takes,
slow and malformed HTTP clients, bad files for every tool, model.json ranges, an interrupted bundle write."""

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import fake_meta, one_error_line

from edge.bundle import BundleError, load_bundle, read_meta, write_bundle
from edge.images import MAX_PIXELS, read_bgr
from edge.paths import expand
from edge.preprocess import InputSpec, Preprocessor


def run_module(*args, env=None, timeout=180, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        timeout=timeout,
        env=os.environ | {"PYTHONPATH": os.getcwd()} | (env or {}),
        **kwargs,
    )


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with a few rows of data: a few hundred bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * (1 + 3 * min(width, 4096)) * 2)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )
    return path


# Images that are small on disk and huge in memory


def test_a_decompression_bomb_header_is_refused_before_decoding_and_the_next_file_is_labelled(tiny_bundle, tmp_path):
    bomb = png_claiming(tmp_path / "a-bomb.png", 60000, 60000)
    png_claiming(tmp_path / "b-over.png", 8001, 8000)
    assert bomb.stat().st_size < 2000 and 8001 * 8000 > MAX_PIXELS
    cv2.imwrite(str(tmp_path / "c-fine.png"), np.full((40, 50, 3), 200, np.uint8))
    result = run_module(
        "-m", "edge", "predict", str(tiny_bundle), str(tmp_path), "--jsonl", "--threads", "1", text=True
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["path"]).name for r in lines] == ["a-bomb.png", "b-over.png", "c-fine.png"]
    assert "megapixels" in lines[0]["error"] and "8001x8000" in lines[1]["error"] and "top" in lines[2]


@pytest.mark.parametrize("shape", [(1, 60000), (60000, 1), (3, 20000)])
def test_a_thin_image_is_preprocessed_in_bounded_memory(tmp_path, shape):
    """Resized on its short side first, a 1x60000 image would be 256 x 15 million pixels (11 GB)."""
    path = tmp_path / "thin.png"
    assert cv2.imwrite(str(path), np.full((*shape, 3), 90, np.uint8)) and path.stat().st_size < 50_000
    probe = (
        "import resource, sys\n"
        "from edge.images import read_bgr\nfrom edge.preprocess import InputSpec, Preprocessor\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "x = Preprocessor(InputSpec.for_resolution(224))(read_bgr(sys.argv[1]), order='BGR')\n"
        "assert x.shape == (1, 3, 224, 224), x.shape\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    result = run_module("-c", probe, str(path), text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) < 100, f"{result.stdout.strip()} MB more at the peak to preprocess a {shape} image"


def test_a_frame_wider_than_four_to_one_keeps_the_square_a_camera_frame_would(tmp_path):
    """Only the part of the long side the crop never reaches is cut: the square in the middle is the same."""
    preprocess = Preprocessor(InputSpec(size=32, resize=36))
    wide = np.zeros((40, 1000, 3), np.uint8)
    wide[:, 480:520] = 255  # a white band where the crop lands
    left, top, right, bottom = preprocess.crop_box(40, 1000)
    assert (top, bottom) == (2, 38) and 480 <= left and right <= 520, (left, top, right, bottom)
    assert preprocess.crop(wide).min() == 255


# Paths that are not what they seem


def test_names_that_exist_are_literal_and_loops_are_not_followed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = Path("photos")
    (root / "a").mkdir(parents=True)
    for name in ["[x].jpg", "x.jpg", "*.jpg", "a/deep.jpg"]:
        (root / name).write_bytes(b"jpg")
    (root / "a" / "loop").symlink_to("..")  # photos/a/loop -> photos: a loop
    (root / "a" / "loop2").symlink_to("../a")  # and a second one
    (root / "again.jpg").symlink_to("x.jpg")  # a second name for one file
    os.mkfifo(root / "pipe.jpg")
    assert [str(p) for p in expand(["photos/[x].jpg", "photos/*.jpg"]).paths] == ["photos/[x].jpg", "photos/*.jpg"], (
        "existing names, taken as written"
    )
    folder, globbed = expand(["photos"]), expand(["photos/**/*.jpg"])
    assert (
        folder.paths == globbed.paths == [root / n for n in ["*.jpg", "[x].jpg", "a/deep.jpg", "again.jpg", "pipe.jpg"]]
    ), "each file once (x.jpg as again.jpg)"
    assert len(folder.skipped) == 2 and all("symlink to a folder" in line for line in globbed.skipped)
    assert expand(["photos/[x]*"]).paths == [root / "x.jpg"], "a glob with a class still globs"


def test_a_fifo_and_stdin_are_refused_without_blocking(tiny_bundle, tmp_path):
    fifo = tmp_path / "frames.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="FIFO"):
        read_bgr(fifo)
    result = run_module(
        "-m",
        "edge",
        "predict",
        str(tiny_bundle),
        str(fifo),
        "/dev/stdin",
        "--jsonl",
        "--threads",
        "1",
        timeout=120,
        text=True,
        input="piped bytes",
    )
    assert "none of the 2 files" in one_error_line(result)
    assert [json.loads(line)["error"].split(" is ")[1] for line in result.stdout.splitlines()] == [
        "a FIFO, not an image file: save what it holds to a file and give that"
    ] * 2


def test_edge_run_skips_a_fifo_in_its_folder(tiny_bundle, tmp_path):
    os.mkfifo(tmp_path / "a.jpg")
    cv2.imwrite(str(tmp_path / "b.jpg"), np.full((40, 40, 3), 99, np.uint8))
    result = run_module(
        "-m",
        "edge",
        "run",
        str(tiny_bundle),
        "--source",
        str(tmp_path),
        "--headless",
        "--jsonl",
        "-",
        "--fps",
        "0",
        "--threads",
        "1",
        timeout=120,
        text=True,
    )
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1, result.stderr
    assert "a.jpg is a FIFO" in result.stderr


# Output encodings


def test_a_name_that_is_not_utf8_and_a_formula_name_under_a_strict_utf8_locale(tiny_bundle, tmp_path):
    cv2.imwrite(str(tmp_path / "=HYPERLINK(1).png"), np.full((40, 40, 3), 9, np.uint8))
    os.rename(tmp_path / "=HYPERLINK(1).png", os.fsencode(tmp_path) + b"/=HYPERLINK(\xff).png")
    env = {"LC_ALL": "C.UTF-8", "PYTHONUTF8": "0", "PYTHONIOENCODING": "utf-8:strict"}
    for form in ("--csv", "--jsonl", None):
        result = run_module(
            "-m",
            "edge",
            "predict",
            str(tiny_bundle),
            str(tmp_path),
            "--threads",
            "1",
            *([form] if form else []),
            env=env,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        out = result.stdout.decode("utf-8")  # strict: the output is valid UTF-8
        assert "\\xff" in out or "\\udcff" in out, out
    rows = (
        run_module(
            "-m",
            "edge",
            "predict",
            str(tiny_bundle),
            ".",
            "--csv",
            "--top-k",
            "1000",
            "--threads",
            "1",
            env=env,
            cwd=tmp_path,
        )
        .stdout.decode()
        .splitlines()
    )
    assert rows[1].startswith("\"'="), "a formula is made text, in a quoted cell"
    assert rows[0].count("label_") == 3, "--top-k is clamped to the model's labels"


# Tools' top levels: one error line


@pytest.mark.parametrize(
    "content",
    [
        b"[1, 2]",
        b"\xff\xfe\x00garbage",
        b"{}",
        b'{"figures": {}}' + b"x",
        b"[" * 100000,
        b'{"figures": {"a": 1}, "device": 3, "versions": [1]}',
    ],
)
def test_device_report_compare_says_what_is_wrong_in_one_line(tmp_path, content):
    (tmp_path / "a.json").write_bytes(content)
    good = tmp_path / "b.json"
    good.write_text(json.dumps({"figures": {"latency": {"1": {"p50": 2.0}}}}))
    result = run_module("-m", "device_tests.compare", str(tmp_path / "a.json"), str(good), text=True)
    if content.endswith(b'"versions": [1]}'):
        assert result.returncode == 0 and "| latency.1.p50 | - | 2.0 | - |" in result.stdout, result.stderr
    else:
        one_error_line(result)


def test_deploy_pictures_on_deep_json_says_so(tmp_path):
    (tmp_path / "device_report.json").write_text("[" * 100000 + "]" * 100000)
    result = run_module("-m", "deploy.pictures", str(tmp_path), text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "cannot read" in result.stderr


def test_edge_bench_checks_its_output_and_source_before_the_work(tiny_bundle, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "broken.jpg").write_bytes(b"not a jpeg")
    source = ["--source", str(tmp_path / "frames"), "--threads", "1"]
    start = time.monotonic()
    assert "is a folder" in one_error_line(
        run_module("-m", "edge.bench", str(tiny_bundle), *source, "--json", str(tmp_path / "out"), text=True)
    )
    assert time.monotonic() - start < 60, "refused at once, not after a 120 s benchmark"
    assert "no frame" in one_error_line(run_module("-m", "edge.bench", str(tiny_bundle), *source, text=True))
    assert (
        "want a number of seconds >= 1"
        in run_module("-m", "edge.bench", str(tiny_bundle), *source, "--seconds", "0.001", text=True).stderr
    )
    assert "--warmup (10 s) must be shorter" in one_error_line(
        run_module("-m", "edge.bench", str(tiny_bundle), *source, "--seconds", "5", text=True)
    )


@pytest.mark.parametrize("args", [["--width", "1e300"], ["--width", "50"], ["--resolution", "99999999"]])
def test_model_counts_refuse_absurd_shapes_in_one_line(args):
    result = run_module("-m", "training.models", "v1", *args, text=True)
    assert result.returncode > 0 and "Traceback" not in result.stderr and "error:" in result.stderr


def test_edge_commands_check_outputs_and_say_which_command_fits(tiny_bundle, tmp_path):
    image = tmp_path / "one.jpg"
    cv2.imwrite(str(image), np.zeros((20, 20, 3), np.uint8))
    assert "edge predict" in one_error_line(run_module("-m", "edge", "eval", str(tiny_bundle), str(image), text=True))
    assert "edge predict" in one_error_line(
        run_module("-m", "edge", "run", str(tiny_bundle), "--source", str(image), text=True)
    )
    assert "is a folder" in one_error_line(
        run_module("-m", "edge", "run", str(tiny_bundle), "--source", "procedural", "--jsonl", str(tmp_path), text=True)
    )
    assert "between 1 and" in one_error_line(
        run_module("-m", "edge", "predict", str(tiny_bundle), str(image), "--threads", str(2**32 + 1), text=True)
    )


# model.json ranges


@pytest.mark.parametrize(
    "change, match",
    [({"resize": 10**6}, "resize"), ({"std": [1e-50, 0.2, 0.2]}, "float32"), ({"mean": [1e39, 0, 0]}, "float32")],
)
def test_model_json_ranges_are_checked_for_what_they_imply(tiny_bundle, tmp_path, change, match):
    copy = tmp_path / "bundle"
    copy.mkdir()
    for path in tiny_bundle.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    meta = json.loads((copy / "model.json").read_text())
    meta["input"] |= change
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=match):
        load_bundle(copy)


# Bundle replacement


def bundle_files(meta) -> dict[str, bytes]:
    return {meta.pte: b"new program", meta.golden: b"g", "report.json": b"{}", "report.md": b"#"}


def test_an_interrupt_between_the_renames_keeps_the_old_bundle(tmp_path, monkeypatch):
    out, meta = tmp_path / "bundle", fake_meta()
    write_bundle(out, meta, bundle_files(meta) | {meta.pte: b"old program"})
    real_rename = Path.rename

    def interrupted(self, target):
        if ".staging-" in self.name:
            raise KeyboardInterrupt
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_bundle(out, meta, bundle_files(meta))
    monkeypatch.undo()
    assert (out / meta.pte).read_bytes() == b"old program"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"], "nothing left beside it"


def test_a_bundle_a_killed_write_left_aside_is_named_then_restored(tmp_path):
    out, meta = tmp_path / "bundle", fake_meta()
    write_bundle(out, meta, bundle_files(meta) | {meta.pte: b"old program"})
    out.rename(tmp_path / ".bundle.previous-abc123")  # as a SIGKILL between the renames leaves it
    with pytest.raises(BundleError, match="previous bundle at .*previous-abc123"):
        read_meta(out)
    write_bundle(out, meta, bundle_files(meta))
    assert (out / meta.pte).read_bytes() == b"new program"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_a_folder_without_images_is_a_skipped_line_not_a_file(tmp_path):
    (tmp_path / "empty").mkdir()
    found = expand([str(tmp_path / "empty"), str(tmp_path / "none*")])
    assert found.paths == [tmp_path / "none*"], "a glob that matches nothing keeps its line: it does not exist"
    assert found.skipped == [f"skipped {tmp_path / 'empty'}: no images (.bmp, .jpeg, .jpg, .png, .webp) in it"]
