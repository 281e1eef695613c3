"""`python -m edge run`: JSON lines, the summary, errors, smoothing, and the served page in Chromium."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import FakeClock, fake_meta, headless_chromium, one_error_line, run_module, write_video

import edge as edge_api
from edge.bundle import Bundle
from edge.classify import Classifier
from edge.native.build import library_path
from edge.overlay import CROP_COLOUR, annotate
from edge.preprocess import InputSpec, Preprocessor
from edge.run import RunConfig, default_camera_size, run
from edge.serve import parse_address

RECORD_KEYS = {"frame", "source_frame", "t_capture", "t_result", "latency_ms", "capture_to_result_ms", "top", "dropped"}


def edge(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def red_video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "red.mp4", frames=60, bgr=(30, 30, 230), size=(320, 240))


def test_headless_jsonl_to_stdout_with_max_frames_summary(tiny_bundle, red_video):
    # --threads 1 differs from the default pool size: resizing it after loading the program used to crash.
    result = edge(
        "run",
        str(tiny_bundle),
        "--source",
        str(red_video),
        "--headless",
        "--jsonl",
        "-",
        "--max-frames",
        "20",
        "--threads",
        "1",
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 20, "stdout holds only the JSON lines"
    for i, record in enumerate(records):
        assert RECORD_KEYS <= record.keys()
        assert record["frame"] == i and record["t_capture"] <= record["t_result"] and record["latency_ms"] > 0
        assert [set(t) for t in record["top"]] == [{"label", "score"}] * 3
        assert record["top"][0]["score"] >= record["top"][1]["score"]
    pairs = zip(records, records[1:], strict=False)
    assert all(a["t_result"] < b["t_result"] and a["dropped"] <= b["dropped"] for a, b in pairs)
    summary = result.stderr.strip().splitlines()[-1]
    assert re.match(
        r"20 frames at [\d.]+ FPS \| inference p50 [\d.]+ / p90 [\d.]+ ms \| capture-to-result p50 "
        r"[\d.]+ / p90 [\d.]+ ms \| dropped \d+ \| reconnects 0",
        summary,
    ), summary


@pytest.mark.repeat
def test_video_paced_at_its_own_rate_and_ends_with_the_file(tiny_bundle, red_video, tmp_path):
    out = tmp_path / "run.jsonl"
    summary = run(RunConfig(tiny_bundle, str(red_video), headless=True, jsonl=str(out)))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["frames"] == len(records) == 60 - summary["dropped"]
    # The one real-time test of pacing (test_edge_sources.py tests it exactly on a fake clock): a 30 FPS file
    # plays at 30 FPS, not as fast as it decodes. The lower bound is loose: a loaded machine may drop frames.
    assert 5 < summary["fps"] < 33, summary
    assert records[-1]["source_frame"] == 59


def test_picamera_run_through_the_stand_in(tiny_bundle, fake_picamera2, tmp_path):
    summary = run(RunConfig(tiny_bundle, "picamera", headless=True, max_frames=5, jsonl=str(tmp_path / "cam.jsonl")))
    assert summary["frames"] == 5 and summary["source"] == "picamera 640x480"
    assert fake_picamera2.instances[0].closed


@pytest.mark.parametrize(
    "args,message",
    [
        (["--source", "nowhere.mp4", "--headless"], "error: source 'nowhere.mp4' does not exist"),
        (["--source", "procedural", "--rotate", "45"], "usage:"),
        (["--source", "procedural", "--headless", "--smooth", "1.5"], "error: --smooth must be in [0, 1)"),
        (["--source", "procedural", "--headless", "--serve", "localhost:http"], "error: --serve wants HOST:PORT"),
    ],
)
def test_run_errors_are_one_line(tiny_bundle, args, message, tmp_path):
    result = edge("run", str(tiny_bundle), *args, cwd=tmp_path, env=os.environ | {"PYTHONPATH": os.getcwd()})
    assert "Traceback" not in result.stderr and result.stderr.startswith(message), result.stderr
    if message != "usage:":
        assert result.returncode == 1 and result.stderr.strip() == result.stderr.strip().splitlines()[0]
    else:
        assert result.returncode == 2 and "argument --rotate: invalid choice: 45" in result.stderr


@pytest.mark.parametrize(
    "display,reason",
    [(None, "no display (DISPLAY and WAYLAND_DISPLAY are unset)"), (":99", "this OpenCV build has no GUI support")],
)
def test_without_a_window_the_run_goes_headless_and_says_so_once(tiny_bundle, tmp_path, display, reason):
    """A Pi with no screen, or the venv's headless OpenCV: the run still runs instead of failing."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = edge(
        "run",
        str(tiny_bundle),
        "--source",
        "procedural",
        "--max-frames",
        "3",
        "--serve",
        "0",
        cwd=tmp_path,
        env=env | ({"DISPLAY": display} if display else {}) | {"PYTHONPATH": os.getcwd()},
    )
    assert result.returncode == 0, result.stderr
    notices = [line for line in result.stderr.splitlines() if "running headless" in line]
    assert notices == [f"{reason}: running headless (--headless skips this check)"], result.stderr
    assert result.stdout.startswith("3 frames at ")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--duration", "0"], "argument --duration: want a number > 0, got '0'"),
        (["--duration", "nan"], "argument --duration: want a number > 0, got 'nan'"),
        (["--fps", "-1"], "argument --fps: want a number >= 0"),
        (["--threads", "0"], "argument --threads: want a whole number >= 1"),
        (["--top-k", "three"], "argument --top-k: want a whole number >= 1, got 'three'"),
        (["--max-frames", "-5"], "argument --max-frames: want a whole number >= 1"),
        (["--camera-size", "0x480"], "argument --camera-size: want WIDTHxHEIGHT"),
        (["--jsonl", ""], "error: --jsonl is empty"),
        (["--serve", ""], "error: --serve is empty"),
    ],
)
def test_bad_numbers_and_empty_strings_name_the_flag(tiny_bundle, args, message, tmp_path):
    result = edge(
        "run",
        str(tiny_bundle),
        "--source",
        "procedural",
        "--headless",
        *args,
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": os.getcwd()},
    )
    assert result.returncode in (1, 2) and message in result.stderr.strip().splitlines()[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_empty_source_and_eval_limit_are_checked(tiny_bundle, tmp_path):
    result = edge("run", str(tiny_bundle), "--source", "", "--headless", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("error: the source is empty"), result.stderr
    result = edge("eval", str(tiny_bundle), str(tmp_path), "--limit", "0", cwd=tmp_path)
    assert result.returncode == 2 and "argument --limit: want a whole number >= 1" in result.stderr


def test_jsonl_of_the_last_run_is_kept_when_a_run_cannot_start(tiny_bundle, tmp_path):
    results, broken = tmp_path / "results.jsonl", tmp_path / "broken.mp4"
    results.write_text('{"frame": 0}\n')
    broken.write_bytes(b"not a video")
    result = edge("run", str(tiny_bundle), "--source", str(broken), "--headless", "--jsonl", str(results))
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("error: cannot open")
    assert results.read_text() == '{"frame": 0}\n'
    assert (
        edge(
            "run",
            str(tiny_bundle),
            "--source",
            "procedural",
            "--fps",
            "0",
            "--headless",
            "--max-frames",
            "4",
            "--jsonl",
            str(results),
        ).returncode
        == 0
    )
    assert len(results.read_text().splitlines()) == 4, "a run that starts replaces it"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_during_start_up_is_one_line(tiny_bundle, signum):
    """Sent the moment the runtime is being loaded, whatever the machine's load: one line, no traceback."""
    library = library_path().name
    process = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", str(tiny_bundle), "--source", "procedural", "--headless"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while library not in Path(f"/proc/{process.pid}/maps").read_text():
        assert process.poll() is None and time.monotonic() < deadline, f"{library} never loaded"
        time.sleep(0.002)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode in (0, 130), (signum, process.returncode, err)
    assert "Traceback" not in err and (process.returncode == 0 or err.strip() == "interrupted"), err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupt_during_imports_is_not_swallowed(tmp_path, signum):
    """OpenCV's loader runs a bare ``except:``; an interrupt that lands there used to be lost, and the app
    ran on as if nothing had been asked (seen once under load). Here a module swallows it on purpose."""
    (tmp_path / "swallowing.py").write_text(
        "import os, signal\n"
        f"try:\n    os.kill(os.getpid(), {int(signum)})\n    sum(range(100000))\nexcept:\n    pass\n"
        "def main():\n    print('main ran')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", "from edge.command import run_main; run_main('swallowing')"],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.getcwd()}"},
    )
    assert (result.returncode, result.stdout, result.stderr.strip()) == (130, "", "interrupted")


def test_smoothing_is_an_exponential_moving_average():
    logits = iter([np.array([[4.0, 0.0]]), np.array([[0.0, 4.0]])])
    bundle = Bundle(None, fake_meta(mean=(0, 0, 0), std=(1, 1, 1)), None)
    bundle.logits = lambda x: next(logits)
    classifier = Classifier(bundle, top_k=5, smooth=0.75)
    first, _ = classifier.classify(None)
    second, _ = classifier.classify(None)
    assert second == pytest.approx(0.75 * first + 0.25 * first[::-1])
    assert [t["label"] for t in classifier.top(second)] == ["a", "b"]


def test_bgr_frames_are_swapped_after_the_crop():
    from edge.preprocess import InputSpec, Preprocessor

    spec = InputSpec(size=32, resize=36, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    rgb = np.random.default_rng(0).integers(0, 256, (120, 160, 3), np.uint8)
    preprocess = Preprocessor(spec)
    np.testing.assert_array_equal(preprocess(np.ascontiguousarray(rgb[..., ::-1]), order="BGR"), preprocess(rgb))


def test_camera_size_covers_the_model_input():
    assert default_camera_size(73) == (640, 480)
    w, h = default_camera_size(600)
    assert h == 600 and w >= 800


@pytest.mark.parametrize(
    "text,address",
    [
        ("8080", ("127.0.0.1", 8080)),
        (":0", ("127.0.0.1", 0)),
        ("0.0.0.0:9000", ("0.0.0.0", 9000)),
        ("[::1]:80", ("::1", 80)),
    ],
)
def test_serve_address_defaults_to_loopback(text, address):
    assert parse_address(text) == address


@pytest.fixture(scope="module")
def bright_red_video(tmp_path_factory, colour_bundle):
    """Bright red frames, each of which the colour model calls red by a margin: the page's top label is then
    red whichever frame it shows. Dark red ones it may call blue. The margin (red's probability over the next
    label's) was 0.25 or more on the fixture trained with seeds 0 to 4 at 1 and 2 threads; the setup asks for
    0.1, so a fixture that drifts fails here and says so, not in the browser."""
    video = write_video(
        tmp_path_factory.mktemp("video") / "bright-red.mp4", frames=60, bgr=(0, 0, 230), size=(320, 240), level=1.0
    )
    capture, probabilities = cv2.VideoCapture(str(video)), []
    with edge_api.load(colour_bundle) as model:
        while (frame := capture.read())[0]:
            probabilities.append(model.probabilities(frame[1]))
    capture.release()
    red = model.labels.index("red")
    margins = [p[red] - np.delete(p, red).max() for p in probabilities]
    assert len(margins) == 60 and min(margins) >= 0.1, f"the fixture is not sure these frames are red: {margins}"
    return video


@pytest.fixture
def served(colour_bundle, bright_red_video):
    """The app as a user starts it, serving on a port the OS picks; yields the page's URL."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge",
            "run",
            str(colour_bundle),
            "--source",
            str(bright_red_video),
            "--loop",
            "--headless",
            "--serve",
            "127.0.0.1:0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = iter(process.stderr.readline, "")
        line = next((line for line in lines if line.startswith("serving ")), "")  # after the runtime's own logs
        assert line.startswith("serving http://127.0.0.1:"), line
        yield line.split()[-1]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_stats_json_while_serving(served):
    deadline = time.monotonic() + 30
    while not (stats := json.loads(urllib.request.urlopen(served + "stats.json", timeout=5).read())).get("fps"):
        assert time.monotonic() < deadline, f"no figures after 30 s: {stats}"
        time.sleep(0.1)
    assert stats["frames"] > 0 and stats["fps"] > 0 and stats["top"][0]["label"] == "red"
    assert {"latency_ms", "capture_to_result_ms", "dropped", "reconnects"} <= stats.keys()


def test_served_page_renders_stream_and_stats_in_chromium(served, tmp_path):
    with headless_chromium() as browser:
        from selenium.webdriver.support.ui import WebDriverWait

        browser.get(served)
        wait = WebDriverWait(browser, 20)
        wait.until(lambda b: b.execute_script("return document.getElementById('stream').naturalWidth") == 320)
        wait.until(lambda b: re.fullmatch(r"[\d.]+", b.find_element("id", "fps").text))
        assert re.fullmatch(r"[\d.]+ / [\d.]+", browser.find_element("id", "latency").text)
        # Read in one script: the lists are rebuilt with every frame, so elements found earlier go stale.
        top, history = browser.execute_script(
            "return ['#top li', '#history li'].map(q => [...document.querySelectorAll(q)].map(e => e.textContent))"
        )
        assert len(top) == 3 and top[0].startswith("red ")
        assert history and history[-1].endswith("  red")
        assert re.fullmatch(r"\d+", browser.find_element("id", "threads").text)
        assert re.fullmatch(r"[\d.]+ °C|unknown", browser.find_element("id", "temperature").text)
        viewport = browser.find_element("css selector", "meta[name=viewport]").get_attribute("content")
        assert "width=device-width" in viewport
        shot = cv2.imdecode(
            np.frombuffer(browser.find_element("id", "stream").screenshot_as_png, np.uint8), cv2.IMREAD_COLOR
        )
        browser.save_screenshot(str(tmp_path / "page.png"))
    shot = cv2.resize(shot, (320, 240), interpolation=cv2.INTER_AREA)  # device pixels -> the frame's
    lower, banner = shot[shot.shape[0] // 2 :].reshape(-1, 3).mean(0), shot[:10].reshape(-1, 3).mean(0)
    assert lower[2] > lower[0] + 50, f"the red video shows (mean BGR {lower})"
    assert banner[2] < lower[2] - 30, f"under a dark overlay banner (mean BGR {banner})"
    left, top_, right, bottom = crop_box_of(served)
    row = shot[(top_ + bottom) // 2, :, 1].astype(int)  # green: the amber box has much, the red video little
    assert row[left - 2 : left + 4].max() > row[left + 20] + 80, f"the crop box's left side at x={left}: {row}"
    assert row[right - 4 : right + 2].max() > row[right - 20] + 80, f"and its right side at x={right}"


def crop_box_of(url: str) -> list[int]:
    """The crop the page's frame says the model saw: in the figures served with the frame."""
    with urllib.request.urlopen(url + "frame.jpg?after=0", timeout=10) as response:
        stats = json.loads(response.headers["X-Stats"])
        assert int(response.headers["X-Frame"]) > 0 and response.read(2) == b"\xff\xd8", "a JPEG"
    return stats["crop"]


def test_the_crop_box_is_the_region_the_model_sees():
    """On a 320x240 frame a 32 px model at resize 36 keeps the centre 213x213 square (240 * 32 / 36)."""
    preprocess = Preprocessor(InputSpec(size=32, resize=36))
    assert preprocess.crop_box(240, 320) == (53, 13, 267, 227)
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[13:227, 53:267] = 255  # only the box is white: the crop must be all white
    assert preprocess.crop(frame).min() == 255
    frame[13:227, 53:267] = 0
    frame[:, :52], frame[:, 268:] = 255, 255  # only the sides outside it are white: the crop is black
    assert preprocess.crop(frame).max() == 0
    drawn = annotate(np.zeros((240, 320, 3), np.uint8), [{"label": "a", "score": 1.0}], 1.0, 30.0, (53, 13, 267, 227))
    assert tuple(drawn[120, 53]) == CROP_COLOUR and tuple(drawn[120, 60]) == (0, 0, 0)


def test_bench_compares_pipeline_with_inference_alone(tiny_bundle, red_video, tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge.bench",
            str(tiny_bundle),
            "--source",
            str(red_video),
            "--seconds",
            "3",
            "--warmup",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert figures["inference_only"]["fps"] > 0 and figures["pipeline"]["frames"] > 30
    assert figures["pipeline_share"] == pytest.approx(
        figures["pipeline"]["fps"] / figures["inference_only"]["fps"], rel=1e-3
    )
    assert figures["rss"]["peak_mb"] >= figures["rss"]["after_warmup_mb"] > 0
    assert "| whole pipeline |" in result.stdout and figures["capture_only"]["fps"] > 0


def test_run_stats_keep_fixed_memory_and_exact_short_run_figures():
    from edge.stats import RunStats

    clock = FakeClock(0.0)
    stats = RunStats(window=4, history=100, clock=clock)
    for i in range(10):
        clock.now = i * 0.1 + 0.005
        assert stats.add(latency_ms=float(i), t_capture=i * 0.1) == clock.now, "result time: now on the clock"
    assert stats.summary()["latency_ms"] == {"p50": 4.5, "p90": 8.1} and stats.summary()["fps"] == pytest.approx(10)
    assert stats.live()["latency_ms"]["p50"] == 7.5 and stats.live()["capture_to_result_ms"]["p50"] == pytest.approx(5)
    for i in range(10, 1000):
        stats.add(latency_ms=float(i), t_capture=i * 0.1, t_result=i * 0.1 + 0.005)
    assert stats.frames == 1000 and stats.latency_ms.values.size == 100
    assert stats.summary()["latency_ms"]["p50"] == pytest.approx(949.5), "the last 100 frames"
    assert stats.summary()["fps"] == pytest.approx(10), "over the whole run"


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
