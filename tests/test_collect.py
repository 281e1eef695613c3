"""edge collect: training images taken through the app's own sources, from a page or headless, each frame written
once and atomically; bad inputs are one line; a collected folder trains into a bundle."""

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import headless_chromium, one_error_line

from edge.collect import CollectError, Collector, Frames, check_out, parse_classes

ROOT = Path(__file__).resolve().parent.parent


def edge_collect(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge", "collect", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def fed(frames: Frames, stop: threading.Event, shape=(48, 64, 3)) -> threading.Thread:
    """A stand-in capture thread: a new frame every 5 ms, each filled with its own number."""

    def feed() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            frames.put(np.full(shape, n % 256, np.uint8))
            time.sleep(0.005)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


def test_headless_captures_write_whole_full_size_jpegs_in_the_class_folder(tmp_path):
    result = edge_collect(
        "--source",
        "procedural",
        "--classes",
        "a,b",
        "--out",
        str(tmp_path),
        "--label",
        "b",
        "--count",
        "4",
        "--every",
        "0",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    files = sorted((tmp_path / "b").iterdir())
    assert len(files) == 4 and not (tmp_path / "a").exists() and "saved 4 images" in result.stderr
    images = [cv2.imread(str(f)) for f in files]
    assert all(i is not None and i.shape == images[0].shape for i in images), "each decodes, at the source's size"
    assert not list(tmp_path.rglob(".*")), "no temporary file left"


def test_two_pages_capturing_at_once_neither_lose_nor_duplicate_a_frame(tmp_path):
    frames, stop = Frames(), threading.Event()
    feeder = fed(frames, stop)
    collector = Collector(tmp_path, ["a", "b"], frames)
    saved: list[Path] = []

    def press(label: str) -> None:
        for _ in range(15):
            saved.append(collector.capture(label))

    tabs = [threading.Thread(target=press, args=(label,)) for label in ("a", "b")]
    for tab in tabs:
        tab.start()
    for tab in tabs:
        tab.join()
    stop.set()
    feeder.join()
    assert len(saved) == len(set(saved)) == 30 and collector.counts == {"a": 15, "b": 15}
    numbers = [int(cv2.imread(str(p))[0, 0, 0]) for p in saved]
    assert len(set(numbers)) == 30, "each capture its own frame"
    assert sum(len(list((tmp_path / c).iterdir())) for c in "ab") == 30, "every file whole, no temporary left"


def test_undo_takes_back_the_newest_capture_and_counts_start_from_the_folder(tmp_path):
    (tmp_path / "a").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "old.jpg"), np.zeros((8, 8, 3), np.uint8))
    frames, stop = Frames(), threading.Event()
    feeder = fed(frames, stop)
    collector = Collector(tmp_path, ["a", "b"], frames)
    assert collector.counts == {"a": 1, "b": 0}
    first, second = collector.capture("a"), collector.capture("b")
    state = collector.state()
    assert state["counts"] == {"a": 2, "b": 1} and [r["label"] for r in state["recent"]] == ["b", "a"]
    assert state["recent"][0]["thumb"].startswith("data:image/jpeg;base64,")
    assert collector.undo() == second and not second.exists() and collector.counts["b"] == 0
    assert collector.undo() == first and collector.undo() is None, "only this session's captures are taken back"
    assert (tmp_path / "a" / "old.jpg").exists()
    stop.set()
    feeder.join()


@pytest.mark.parametrize("text", ["", "../x", "a/b", ".hidden", "co\nn", "a,a", "x" * 65, "a,A", "trailing."])
def test_class_names_that_are_not_safe_folder_names_are_one_line(text):
    with pytest.raises(CollectError) as error:
        parse_classes(text)
    assert "\n" not in str(error.value)


def test_an_out_that_is_a_file_or_read_only_is_refused_before_capturing(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CollectError, match="is a file"):
        check_out(tmp_path / "file")
    line = one_error_line(
        edge_collect(
            "--source", "procedural", "--classes", "a", "--out", str(tmp_path / "file"), "--label", "a", "--count", "1"
        )
    )
    assert "is a file: give a folder" in line
    readonly = tmp_path / "ro"
    readonly.mkdir()
    if os.geteuid() == 0:  # root writes anywhere a mode allows nothing: a read-only mount is read-only for it too
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)]).returncode != 0:
            pytest.skip("cannot mount a read-only tmpfs here")
    else:
        readonly.chmod(0o500)
    try:
        with pytest.raises(CollectError, match="cannot be written .*Read-only file system|Permission denied"):
            check_out(readonly)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(readonly)])


def test_a_full_disk_stops_capturing_in_one_line_and_leaves_nothing_half_written(tmp_path):
    """A 1 MB filesystem fills after a few 300 kB frames: the capture that does not fit is refused, and so is
    every one after it, and no partial file stays."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    small = tmp_path / "small"
    small.mkdir()
    assert subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)]).returncode == 0
    try:
        frames, stop = Frames(), threading.Event()
        rng = np.random.default_rng(0)
        noise = [rng.integers(0, 256, (300, 400, 3), np.uint8) for _ in range(4)]  # JPEG cannot shrink noise

        def feed() -> None:
            i = 0
            while not stop.is_set():
                frames.put(noise[i % 4])
                i += 1
                time.sleep(0.005)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        collector = Collector(small, ["a"], frames)
        with pytest.raises(CollectError, match="No space left on device.*capture stopped") as error:
            for _ in range(50):
                collector.capture("a")
        with pytest.raises(CollectError, match="capture stopped"):
            collector.capture("a")
        stop.set()
        feeder.join()
        files = list((small / "a").iterdir())
        assert "\n" not in str(error.value) and all(cv2.imread(str(f)) is not None for f in files)
        assert len(files) == collector.counts["a"] and not [f for f in files if f.name.startswith(".")]
    finally:
        subprocess.run(["umount", str(small)])


@pytest.fixture
def collecting(tmp_path):
    """edge collect serving its page on a free port, from a video file on a loop."""
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 20, (160, 120))
    for i in range(40):
        writer.write(np.full((120, 160, 3), (i * 6) % 256, np.uint8))
    writer.release()
    out = tmp_path / "data"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge",
            "collect",
            "--source",
            str(video),
            "--loop",
            "--classes",
            "a,b",
            "--out",
            str(out),
            "--serve",
            "127.0.0.1:0",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = child.stderr.readline()
    assert "open http://127.0.0.1:" in line, line
    url = line.split("open ")[1].split()[0]
    yield url, out
    child.terminate()
    child.wait(timeout=30)


def post(url: str, path: str) -> tuple[int, dict]:
    host, port = url.split("//")[1].rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("POST", path)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def test_the_page_in_chromium_clicks_a_class_bursts_undoes_and_counts(collecting):
    url, out = collecting
    with headless_chromium() as browser:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        browser.get(url)
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_element(By.ID, "live").get_attribute("src"))

        def total() -> int:
            return sum(len(list((out / c).glob("*.jpg"))) for c in "ab" if (out / c).is_dir())

        for i in range(2):
            for _ in range(3):
                before = total()
                browser.find_element(By.ID, f"class-{i}").click()
                wait.until(lambda b, before=before: total() == before + 1)
        assert [len(list((out / c).glob("*.jpg"))) for c in "ab"] == [3, 3]
        wait.until(lambda b: b.find_element(By.ID, "total").text == "6 images")
        assert "(3)" in browser.find_element(By.ID, "class-0").text
        browser.find_element(By.ID, "undo").click()
        wait.until(lambda b: total() == 5)
        browser.find_element(By.ID, "burst").click()
        browser.find_element(By.ID, "n").clear()
        browser.find_element(By.ID, "n").send_keys("4")
        browser.find_element(By.ID, "class-0").click()
        wait.until(lambda b: len(list((out / "a").glob("*.jpg"))) == 7)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#recent img")) == 6)
    status, state = post(url, "/capture?label=nope")
    assert status == 400 and "is not one of the classes" in state["error"] and state["counts"] == {"a": 7, "b": 2}


@pytest.mark.slow
def test_a_collected_folder_trains_into_a_bundle_that_loads(tmp_path):
    """collect from a source per class (a video of noisy red frames, one of blue), then float training on the folder
    as it is and an fp32 export (a tiny model: QAT on 24 images leaves int8 ranges XNNPACK refuses), then load it."""
    out = tmp_path / "data"
    rng = np.random.default_rng(0)
    for label, bgr in (("a", (0, 0, 200)), ("b", (200, 0, 0))):
        video = tmp_path / f"{label}.avi"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 20, (64, 48))
        for _ in range(20):
            frame = np.clip(np.array(bgr, float) + rng.normal(0, 30, (48, 64, 3)), 0, 255).astype(np.uint8)
            writer.write(frame)
        writer.release()
        result = edge_collect(
            "--source",
            str(video),
            "--classes",
            "a,b",
            "--out",
            str(out),
            "--label",
            label,
            "--count",
            "16",
            "--every",
            "0",
        )
        assert result.returncode == 0, result.stderr[-2000:]
    args = "--data.num_workers=0 --data.val_fraction=0.25 --data.batch_size=8 --trainer.enable_progress_bar=false"
    run = tmp_path / "run"
    trained = subprocess.run(
        [sys.executable, "-m", "pipeline", "--float-only", "--model", "v1", "--width", "0.25", "--res", "32",
         "--data", str(out), "--epochs", "6", f"--args={args} --seed_everything=0", "--run", str(run)],
        capture_output=True, text=True, timeout=1200, cwd=ROOT,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "2 classes, 24 training and 8 validation images" in trained.stderr, (
        "the data summary shows what was collected"
    )
    built = subprocess.run(
        [sys.executable, "-m", "export", str(run / "checkpoints" / "best.ckpt"), "--precision", "fp32",
         "--no-baselines", "--out", str(tmp_path / "bundle")],
        capture_output=True, text=True, timeout=1200, cwd=ROOT,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    from edge.bundle import load_bundle

    loaded = load_bundle(tmp_path / "bundle")
    assert loaded.labels == ("a", "b")
    loaded.runner.close()
