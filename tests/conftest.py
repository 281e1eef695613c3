import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge.bundle import APP_METHOD, BundleMeta, declare_methods, write_bundle
from edge.native import Runner
from edge.preprocess import InputSpec
from training.quiet import silence_known_noise

COLOURS = {"blue": (255, 0, 0), "green": (0, 255, 0), "red": (0, 0, 255)}  # BGR on disk


TRAINED = {"runs", "bundle", "tiny_float_run", "colour_bundle"}


def pytest_configure(config):
    """The tests are an entry point, like ``python -m training``: they install its log and warning filters,
    before anything imports the libraries they filter (hence the imports inside the two functions below)."""
    silence_known_noise()


def train_main(argv: list[str]) -> None:
    from training.cli import main

    main(argv)


def export_main(argv: list[str]) -> None:
    from export.cli import main

    main(argv)


def pytest_collection_modifyitems(items):
    """Tests that need a trained model (the ``runs`` fixture and the ``bundle`` exported from it: minutes)
    are ``slow``: ``make test-fast`` runs the rest; ``make test`` runs all. Under
    pytest-xdist ``make test`` hands out whole files (``--dist loadfile``): the runs are made once, by the
    worker that runs test_qat_export.py, the only file that needs them (make test starts it first).
    Every test on a trained fixture is also ``repeat``: ``make test-repeat`` runs those N times."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "runs" in fixtures:
            item.add_marker(pytest.mark.slow)
        if fixtures & TRAINED:
            item.add_marker(pytest.mark.repeat)


def write_colour_images(root, per_class: int, seed: int = 0, lighting: bool = False):
    """Noisy flat-colour PNGs, one folder per colour: a task a tiny model learns in seconds. With ``lighting``
    each image also gets a grey level (0 to 80) and its own noise (none to the usual), so flat, greyish
    frames like a video's are in the training distribution too."""
    rng = np.random.default_rng(seed)
    for name, bgr in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            grey, noise = (rng.uniform(0, 80), rng.uniform(0, 40)) if lighting else (0.0, 40)
            image = np.array(bgr) * rng.uniform(0.4, 1.0) + grey + rng.normal(0, noise, (40, 48, 3))
            cv2.imwrite(str(root / name / f"{i}.png"), np.clip(image, 0, 255).astype(np.uint8))
    return root


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory):
    return write_colour_images(tmp_path_factory.mktemp("colours"), per_class=40)


@pytest.fixture
def image_folder(tmp_path):
    """A tiny ImageFolder: 3 colours x 8 PNGs, plus one corrupt JPEG in 'red'."""
    root = write_colour_images(tmp_path / "folder", per_class=8)
    (root / "red" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


DATA = [
    "--config",
    "configs/data/folder.yaml",
    "--data.resolution=32",
    "--data.batch_size=8",
    "--data.val_fraction=0.25",
    "--data.num_workers=0",
]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
# The shared trained fixtures give the same model on every run of a machine: a fixed seed, deterministic
# algorithms, data loaded in the training process (DATA: no worker scheduling) and one torch thread
# (fixed_threads), since a thread count changes the order of float sums.
FIXED = ["--seed_everything=0", "--trainer.deterministic=true"]


@contextmanager
def fixed_threads(threads: int = 1):
    """torch's thread count pinned while a fixture trains: the same on every machine, whatever its cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


RUNS_ARCH = ["--model.init_args.arch=v1", "--model.init_args.width_mult=0.25"]


@pytest.fixture(scope="session")
def runs(tmp_path_factory, colour_folder):
    """A tiny float run that learns the colours, and a QAT run started from it (V1 at width 0.25, 32 px).

    V1 rather than V3: every V3 program takes about a minute to lower here, and this chain lowers
    five. V3's own int8 lowering is tested on its own (test_qat_quality.py).

    The float run trains 12 epochs: at 6, two of ten seed and thread-count pairs peaked at 22 of the 30
    held-out images. QAT keeps the calibrated ranges and the float model's BN statistics from the start
    (freeze epochs 0) at a low learning rate: on 90 training images in batches of 8, moving them made the
    QAT model fall from 30 of 30 to as few as 11 after an epoch, by seed. As it is, its last checkpoint
    held 29 or 30 of 30 on seeds 0 to 4 at 1 and 2 threads, and the tests ask for 27."""
    root = tmp_path_factory.mktemp("runs")
    data = [*DATA, f"--data.source={colour_folder}", *FIXED]
    with fixed_threads():
        train_main(
            [
                "fit",
                "--config",
                "configs/train.yaml",
                "--config",
                "configs/model/v1.yaml",
                *data,
                *QUIET,
                *RUNS_ARCH,
                "--model.init_args.lr=0.01",
                "--model.init_args.warmup_epochs=0",
                "--model.init_args.bn_momentum=0.2",
                "--trainer.max_epochs=12",
                f"--trainer.logger.init_args.save_dir={root / 'float'}",
                f"--checkpoint.dirpath={root / 'float'}",
            ]
        )
        train_main(
            [
                "fit",
                "--config",
                "configs/train.yaml",
                "--config",
                "configs/qat.yaml",
                *data,
                *QUIET,
                *RUNS_ARCH,
                "--trainer.max_epochs=2",
                "--model.init_args.lr=0.001",
                "--model.init_args.freeze_bn_epoch=0",
                "--model.init_args.freeze_observer_epoch=0",
                f"--model.init_args.float_checkpoint={root / 'float' / 'best.ckpt'}",
                f"--trainer.logger.init_args.save_dir={root / 'qat'}",
                f"--checkpoint.dirpath={root / 'qat'}",
            ]
        )
    return root


@pytest.fixture(scope="session")
def lit_colour_folder(tmp_path_factory):
    return write_colour_images(tmp_path_factory.mktemp("lit_colours"), per_class=40, lighting=True)


@pytest.fixture(scope="session")
def tiny_float_run(tmp_path_factory, lit_colour_folder):
    """A float checkpoint that knows the colours, also on flat greyish video frames (trained with varied
    lighting: on the noisy colours alone it gave a dark red frame 0.21 to 0.86 red, by seed), in seconds
    (V1 at width 0.25): for the export and app paths where the architecture does not matter and V3's lowering
    (a minute a program here) would."""
    root = tmp_path_factory.mktemp("tiny_float")
    with fixed_threads():
        train_main(
            [
                "fit",
                "--config",
                "configs/train.yaml",
                "--config",
                "configs/model/v1.yaml",
                *DATA,
                *QUIET,
                *FIXED,
                f"--data.source={lit_colour_folder}",
                "--model.init_args.width_mult=0.25",
                "--trainer.max_epochs=15",
                "--model.init_args.lr=0.01",
                "--model.init_args.warmup_epochs=0",
                f"--trainer.logger.init_args.save_dir={root}",
                f"--checkpoint.dirpath={root}",
            ]
        )
    return root / "best.ckpt"


@pytest.fixture(scope="session")
def colour_bundle(tiny_float_run):
    """The tiny float run exported to fp32, as `make export PRECISION=fp32 --no-baselines` does."""
    out = tiny_float_run.parent / "fp32"
    export_main([str(tiny_float_run), "--precision", "fp32", "--out", str(out), "--no-baselines"])
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A real program in seconds: an untrained V1 (width 0.25, 32 px, 3 labels) lowered to fp32. For tests of
    the app's loop, sources and errors, where what the model answers does not matter."""
    from export.flow import golden
    from export.lower import METHODS, to_pte
    from training.models import create_model

    with torch.random.fork_rng():  # the same program on every run: tests of its bytes rely on it (CRASHING_FLIP)
        torch.manual_seed(0)
        pte, _ = to_pte(create_model("v1", num_classes=3, width_mult=0.25).eval(), 32)
    runner = Runner(pte, threads=1, method=APP_METHOD)
    meta = dataclasses.replace(
        fake_meta(labels=tuple(COLOURS), size=32),
        name="tiny-v1-0.25-32-fp32",
        pte_sha256=hashlib.sha256(pte).hexdigest(),
        golden_logit_tolerance=1e-3,
        method=APP_METHOD,
        methods=declare_methods(pte, METHODS),
    )
    inputs = np.random.default_rng(0).standard_normal((8, 3, 32, 32), dtype=np.float32)
    out = tmp_path_factory.mktemp("tiny") / "bundle"
    logits = np.concatenate([runner(one[None]) for one in inputs])
    write_bundle(
        out,
        meta,
        {
            meta.pte: pte,
            meta.golden: golden(inputs, logits, runner, meta.input),
            "report.json": b"{}\n",
            "report.md": b"untrained\n",
        },
    )
    runner.close()
    return out


@pytest.fixture(scope="session")
def bundle(runs):
    """The QAT run exported as make qat does: QAT and PTQ candidates beside the shipped bundle."""
    out = runs / "bundle"
    export_main([str(runs / "qat" / "last.ckpt"), "--out", str(out), "--candidates"])
    return out


def one_error_line(result) -> str:
    """The process failed by exiting (no signal) and said so in one `error:` line."""
    assert result.returncode > 0, f"exit {result.returncode} (a negative code is a signal): {result.stderr[-2000:]}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return errors[0]


def fake_meta(labels=("a", "b"), size: int = 8, **spec) -> BundleMeta:
    """model.json of a bundle that exists only in a test (no program behind it)."""
    return BundleMeta(
        name="fake-1-8-fp32",
        arch="fake",
        width_mult=1.0,
        num_classes=len(labels),
        labels=tuple(labels),
        input=InputSpec(size=size, resize=size, **spec),
        quantization={"scheme": "fp32"},
        pte_sha256="0" * 64,
        golden_logit_tolerance=0.0,
        source_checkpoint="none",
        source_checkpoint_sha256="0" * 64,
        versions={},
        created="now",
    )


def interrupt_once_copying(argv: list[str], releases: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Start a deploy, send it Ctrl-C (SIGINT to its process group) once its ``.partial`` copy has files."""
    deploy = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not any(p.is_file() for p in releases.glob("*.partial/**/*")) and time.monotonic() < deadline:
        assert deploy.poll() is None, deploy.communicate()[1][-2000:]
        time.sleep(0.05)
    os.killpg(deploy.pid, signal.SIGINT)
    out, err = deploy.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, deploy.returncode, out, err)


def write_video(path, frames: int, bgr=(0, 0, 255), size=(160, 120), fps=30, level: float = 0.5):
    """An MPEG-4 file of flat frames, ``bgr`` times ``level``, whose brightness counts up from there, so frames
    can be told apart."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        writer.write(np.clip(np.full((size[1], size[0], 3), bgr, float) * level + i, 0, 255).astype(np.uint8))
    writer.release()
    return path


class FakeClock:
    """Time that passes only when told: ``sleep`` (what Capture waits with) moves it on at once and never
    blocks, so pacing, gaps and ages are exact on any machine, however loaded."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.now += seconds
        return False


class FakeRequest:
    def __init__(self, camera):
        self.camera = camera

    def make_array(self, stream):
        assert stream == "main"
        w, h = self.camera.config["main"]["size"]
        return np.full((h, w, 3), (10, 20, 30), np.uint8)  # RGB888 is B, G, R in memory

    def get_metadata(self):
        exposed = FakePicamera2.exposed_ns or time.clock_gettime_ns(time.CLOCK_BOOTTIME) - 5_000_000
        return {"SensorTimestamp": exposed}

    def release(self):
        self.camera.released += 1


class FakePicamera2:
    """Picamera2's method names and the call order a real camera needs."""

    instances = []
    exposed_ns = None  # SensorTimestamp of every frame (CLOCK_BOOTTIME ns); None: 5 ms before each capture

    def __init__(self):
        self.config, self.started, self.released, self.closed = None, False, 0, False
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, main, buffer_count=6, queue=True, controls=None, transform=None):
        config = {"main": main, "buffer_count": buffer_count, "queue": queue, "controls": controls or {}}
        return config | ({"transform": transform} if transform else {})

    def configure(self, config):
        self.config = config

    def start(self):
        assert self.config is not None, "configure before start"
        self.started = True

    def capture_request(self):
        assert self.started
        return FakeRequest(self)

    def stop(self):
        self.started = False

    def close(self):
        self.closed = True


@pytest.fixture
def fake_picamera2(monkeypatch):
    FakePicamera2.instances.clear()
    FakePicamera2.exposed_ns = None
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    monkeypatch.setitem(sys.modules, "libcamera", types.SimpleNamespace(Transform=lambda **flips: flips))
    return FakePicamera2


@contextmanager
def headless_chromium():
    """Debian's Chromium driven by Selenium, headless; skipped where it is not installed, never in CI."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        reason = "Debian's chromium and chromium-driver are not installed (make test-deps installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"in CI the browser test must run: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,700"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield browser
    finally:
        browser.quit()


# One bit of the tiny bundle's program, in its app method's XNNPACK payload, whose flip makes ExecuTorch 1.5.1
# crash the process that loads and runs it (SIGSEGV): found by a seeded search of single-bit flips.
CRASHING_FLIP = (34782, 1)


def crashing_program(bundle: Path) -> bytes:
    pte = bytearray((bundle / "model.pte").read_bytes())
    at, bit = CRASHING_FLIP
    pte[at] ^= 1 << bit
    return bytes(pte)


def run_module(*args, env=None, timeout=180, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        timeout=timeout,
        env=os.environ | {"PYTHONPATH": os.getcwd()} | (env or {}),
        **kwargs,
    )
