"""End to end on ARM: `make pi-emu`, `make deploy DEVICE=rpi5-emu`, the device tests on an emulated Cortex-A76.

The emulated Pi is a Pi in the field: no compiler, and pip's index unreachable. Each run starts it without
a Python environment, so the deploy installs one from the wheels this machine downloaded and the runner
it cross-compiled, every time.

Run by `make test-arm` (not by `make test`: the first run builds the arm64 root, ~5 min, and installs the
device's environment under emulation). Needs root for mount/chroot/binfmt_misc.
"""

import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import interrupt_once_copying

from edge.files import cache_root

pytestmark = pytest.mark.arm

ROOT = Path(__file__).resolve().parent.parent
EMU = ROOT / "emulators" / "pi.sh"
EMU_DIR = cache_root() / "pi-emu"
REPORTS = ROOT / "artifacts" / "devices"


def emulator(command: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([str(EMU), command], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pi():
    """The emulated Pi, up for this module and down after it (mounts and binfmt entry gone)."""
    if os.geteuid() != 0:
        reason = "the emulated Pi needs root (mount, chroot, binfmt_misc): sudo make test-arm"
        if os.environ.get("CI") == "true":
            pytest.fail(f"in CI the ARM test must run: {reason}")
        pytest.skip(reason)
    started = time.monotonic()
    up = emulator("up")
    assert up.returncode == 0, up.stderr[-3000:]
    print(f"\npi-emu up in {time.monotonic() - started:.0f} s")
    settings = yaml.safe_load((EMU_DIR / "ssh.yaml").read_text())
    yield settings
    down = emulator("down", timeout=120)
    assert down.returncode == 0, down.stderr[-2000:]
    assert not (EMU_DIR / "ssh.yaml").exists() and not Path("/proc/sys/fs/binfmt_misc/pi-emu-aarch64").exists()
    assert str(EMU_DIR / "root") not in Path("/proc/mounts").read_text()


def ssh(pi: dict, command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    argv = [
        "ssh",
        "-p",
        str(pi["port"]),
        "-i",
        pi["key"],
        "-o",
        f"UserKnownHostsFile={pi['known_hosts']}",
        "-o",
        "BatchMode=yes",
        f"{pi['user']}@{pi['host']}",
        "--",
        shlex.join(command),
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def make_deploy(bundle: Path, *extra: str) -> list[str]:
    return ["make", "-s", "deploy", "DEVICE=rpi5-emu", f"BUNDLE={bundle}", f"REPORTS={REPORTS}", *extra]


DEVICE_ROOT = EMU_DIR / "root" / "home" / "pi" / "mobilenet-edge"


def test_the_emulated_pi_is_an_arm_cortex_a76_without_compiler_or_index(pi):
    result = ssh(
        pi,
        [
            "sh",
            "-c",
            "uname -m; grep -m1 'CPU part' /proc/cpuinfo; python3 --version; "
            "command -v g++ gcc cc c++ || echo no compiler; "
            "python3 -m venv /tmp/probe && /tmp/probe/bin/pip download -q --no-deps -d /tmp "
            "tqdm >/dev/null 2>&1 || echo no index; rm -rf /tmp/probe",
        ],
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    machine, part, python, compiler, index = result.stdout.splitlines()
    assert machine == "aarch64" and part.endswith("0xd0b") and python.startswith("Python 3.11")
    assert compiler == "no compiler" and index == "no index"


def test_a_full_disk_while_the_wheelhouse_is_copied_is_one_line_and_nothing_switches(pi, bundle):
    """A 16 MB file system where the wheelhouse (about 80 MB) goes: rsync runs out of space mid-copy."""
    assert ssh(pi, ["sh", "-c", "rm -rf mobilenet-edge/venv-*"]).returncode == 0  # a device without its environment
    current = (DEVICE_ROOT / "current").resolve() if (DEVICE_ROOT / "current").exists() else None
    wheels = DEVICE_ROOT / "wheelhouse"
    wheels.mkdir(parents=True, exist_ok=True)
    home = DEVICE_ROOT.parent.stat()
    os.chown(DEVICE_ROOT, home.st_uid, home.st_gid)  # the release root stays the pi user's; only the mount is root's
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0777", "tmpfs", str(wheels)], check=True)
    try:
        full = subprocess.run(make_deploy(bundle, "NO_TESTS=1"), capture_output=True, text=True, timeout=1800)
    finally:
        subprocess.run(["umount", str(wheels)], check=True)
        wheels.rmdir()  # made here, by root: the pi user could not write into it
    assert full.returncode != 0 and "out of disk space" in full.stderr and "Traceback" not in full.stderr, full.stderr[
        -3000:
    ]
    assert [line for line in full.stderr.splitlines() if line.startswith("error:")], full.stderr[-2000:]
    assert ((DEVICE_ROOT / "current").resolve() if (DEVICE_ROOT / "current").exists() else None) == current


def test_deploy_runs_the_device_tests_on_arm_then_an_interrupted_deploy_keeps_the_release(pi, bundle, tiny_bundle):
    started = time.monotonic()
    first = subprocess.run(make_deploy(bundle), capture_output=True, text=True, timeout=3600)
    assert first.returncode == 0, first.stderr[-4000:]
    print(
        f"\nfirst deploy (environment from the host's wheels, runner from the host, device tests) in "
        f"{time.monotonic() - started:.0f} s"
    )
    assert "setting up the Python environment" in first.stderr and "compile its native runner" not in first.stderr
    device_root = DEVICE_ROOT
    current = (device_root / "current").resolve()
    release = device_root / "releases" / current.name
    report = json.loads((REPORTS / "rpi5-emu" / current.name / "device_report.json").read_text())
    assert report["device"]["machine"] == "aarch64" and report["profile"]["emulated"] is True
    assert report["figures"]["parity"]["max_abs_logit_diff"] == 0.0, report["figures"]["parity"]
    assert report["bundle"]["method"] == "forward_channels_last", "the Pi runs the app's method"
    assert report["figures"]["parity"]["top1_agreement"] == 1.0 and report["figures"]["parity"]["images"] == 8
    assert report["figures"]["preprocessing_parity"]["top1_agreement"] == 1.0
    assert "torch" not in report["versions"] and report["versions"]["executorch"] == "1.5.1"
    runtime = report["figures"]["runtime"]
    assert runtime["packages"].startswith("wheels downloaded on the deploying host"), runtime
    assert runtime["runner"].startswith("cross-compiled on the deploying host with aarch64-linux-gnu-g++"), runtime
    assert report["figures"]["latency"] and report["figures"]["pipeline"]["procedural"]["frames"] > 0
    assert report["tests"] and all(t["outcome"] in ("passed", "skipped") for t in report["tests"].values())
    assert "EMULATED" in (REPORTS / "rpi5-emu" / current.name / "device_report.md").read_text()
    assert (REPORTS / "rpi5-emu" / current.name / "device_report.png").is_file()
    requirements = (release / "requirements.txt").read_text() + (release / "requirements-nodeps.txt").read_text()
    assert "torch" not in requirements.replace("executorch", "")
    # The release runs with the thread count its own device tests measured best, and says why.
    choice = report["threads"]
    p90 = {int(t): row["p90"] for t, row in report["figures"]["latency"].items()}
    assert choice["threads"] in p90 and p90[choice["threads"]] <= 1.05 * min(p90.values()), (choice, p90)
    assert json.loads((release / "threads.json").read_text())["threads"] == choice["threads"]
    print_threads = "cd mobilenet-edge/current && make -s --eval 'threads: ; @echo $(THREADS)' threads"
    assert ssh(pi, ["sh", "-c", print_threads]).stdout.strip() == str(choice["threads"]), "make demo's count"
    assert (
        f"threads chosen: {choice['threads']}" in (REPORTS / "rpi5-emu" / current.name / "device_report.md").read_text()
    )
    assert f"threads: {choice['threads']} chosen" in first.stderr

    # A slow second copy, interrupted like Ctrl-C once it is under way: the first release stays current.
    second = interrupt_once_copying(make_deploy(bundle, "BWLIMIT=20", "NO_TESTS=1"), device_root / "releases")
    assert second.returncode != 0 and "interrupted" in second.stderr, second.stderr[-2000:]
    assert (device_root / "current").resolve() == current
    python = (release / "python").read_text().strip()
    smoke = ssh(
        pi,
        [
            "sh",
            "-c",
            f"cd mobilenet-edge/current && {python} -m edge run bundle --source procedural "
            "--fps 0 --headless --max-frames 5",
        ],
    )
    assert smoke.returncode == 0 and "5 frames" in smoke.stdout, smoke.stderr[-2000:]

    # The next deploy, of another bundle, clears the unfinished copy and switches; the environment and the
    # runner are reused, and nothing is downloaded or compiled here or there.
    started = time.monotonic()
    third = subprocess.run(make_deploy(tiny_bundle, "NO_TESTS=1"), capture_output=True, text=True, timeout=1800)
    assert third.returncode == 0, third.stderr[-3000:]
    print(f"re-deploy of another bundle (environment reused) in {time.monotonic() - started:.0f} s")
    assert (device_root / "current").resolve() != current
    assert not list((device_root / "releases").glob("*.partial"))
    for work in ("setting up the Python environment", "downloading", "cross-compiling", "compile its native runner"):
        assert work not in third.stderr, third.stderr[-2000:]


def test_collecting_on_the_pi_brings_the_images_home_headless_and_from_the_forwarded_page(pi, tiny_bundle, tmp_path):
    """make collect on the emulated Pi with the procedural source: headless captures of one class, then the page
    (served on the Pi's loopback, forwarded over SSH) pressed twice and stopped like Ctrl-C; both land in DATA."""
    if not (DEVICE_ROOT / "current" / "python").is_file():
        deployed = subprocess.run(make_deploy(tiny_bundle, "NO_TESTS=1"), capture_output=True, text=True, timeout=1800)
        assert deployed.returncode == 0, deployed.stderr[-3000:]
    shutil.rmtree(DEVICE_ROOT / "collected", ignore_errors=True)  # what earlier runs collected there comes home too
    data = tmp_path / "data"
    common = ["make", "-s", "collect", "DEVICE=rpi5-emu", "CLASSES=a,b", "SOURCE=procedural", f"DATA={data}"]
    headless = subprocess.run([*common, "LABEL=a", "COUNT=3", "EVERY=0"], capture_output=True, text=True, timeout=600)
    assert headless.returncode == 0, headless.stderr[-3000:]
    assert len(list((data / "a").glob("*.jpg"))) == 3
    ports = []
    for _ in range(2):  # the emulated Pi shares this machine's ports: its page and the forward here need two
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            ports.append(free.getsockname()[1])
    remote, port = ports
    page = subprocess.Popen(
        [*common, f"SERVE=127.0.0.1:{remote}", f"LOCAL_PORT={port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    statuses: list[object] = []
    try:
        deadline = time.monotonic() + 300
        while statuses.count(200) < 2 and time.monotonic() < deadline:
            assert page.poll() is None, page.communicate()[1][-3000:]
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                connection.request("POST", "/capture?label=b")
                statuses.append(connection.getresponse().status)
            except OSError as e:  # the forward or the page is not up yet
                statuses.append(type(e).__name__)
            finally:
                connection.close()  # each open connection holds one of the SSH session's channels
            time.sleep(0.5)
        assert statuses.count(200) == 2, statuses[-20:]
    finally:
        if page.poll() is None:
            os.killpg(page.pid, signal.SIGINT)
        _, err = page.communicate(timeout=300)
    assert f"copied into {data}" in err, err[-3000:]
    assert len(list((data / "b").glob("*.jpg"))) == 2 and len(list((data / "a").glob("*.jpg"))) == 3
