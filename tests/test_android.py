"""End to end on the emulated Android phone, through the real adb client: `make android-emu`, `make deploy
DEVICE=android-emu`, and every way a phone can be unfit, interrupted or gone.

Run by `make test-android` (not by `make test`: it needs root for mount/chroot/binfmt_misc).
"""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from conftest import one_error_line

from edge.files import cache_root

pytestmark = pytest.mark.android

ROOT = Path(__file__).resolve().parent.parent
EMU = ROOT / "emulators" / "android.sh"
EMU_DIR = cache_root() / "android-emu"
PHONE = EMU_DIR / "root"
DEVICE_ROOT = PHONE / "data" / "local" / "tmp" / "mobilenet-edge"


def emulator(command: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(EMU), command],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | {"PYTHON": sys.executable},
    )


def adb(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["adb", *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture(scope="module")
def phone() -> str:
    """The emulated phone, up for this module and down after it (adbd, mounts and binfmt entry gone)."""
    if os.geteuid() != 0:
        reason = "the emulated phone needs root (mount, chroot, binfmt_misc): sudo make test-android"
        if os.environ.get("CI") == "true":
            pytest.fail(f"in CI the Android test must run: {reason}")
        pytest.skip(reason)
    up = emulator("up")
    assert up.returncode == 0, up.stderr[-3000:]
    serial = yaml.safe_load((EMU_DIR / "adb.yaml").read_text())["serial"]
    yield serial
    down = emulator("down", timeout=120)
    assert down.returncode == 0, down.stderr[-2000:]
    assert not (EMU_DIR / "adb.yaml").exists() and not Path("/proc/sys/fs/binfmt_misc/android-emu-aarch64").exists()
    assert str(PHONE) not in Path("/proc/mounts").read_text()


@contextmanager
def another_adbd(*flags: str):
    """A second adbd on the same root (slow, unauthorized or offline), connected with adb; yields its serial."""
    port_file = EMU_DIR / "state" / f"extra-{os.getpid()}.port"
    port_file.unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "emulators.adbd", str(PHONE), "--port-file", str(port_file), *flags],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.is_file():
            assert process.poll() is None and time.monotonic() < deadline, "the second adbd did not start"
            time.sleep(0.05)
        serial = f"127.0.0.1:{port_file.read_text().strip()}"
        adb("connect", serial)
        yield serial, process
    finally:
        adb("disconnect", serial)
        process.kill()
        process.wait()
        port_file.unlink(missing_ok=True)


def deploy(bundle: Path, *args: str, env: dict | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args, "--bundle", str(bundle)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def current() -> str | None:
    """The current release's name: ``current`` links into releases/, as on a Pi (one lifecycle)."""
    path = DEVICE_ROOT / "current"
    if not path.is_symlink():
        return None
    link = os.readlink(path)
    assert link.startswith("releases/") and (DEVICE_ROOT / link).is_dir(), link
    return link.removeprefix("releases/")


def test_the_emulated_phone_is_arm64_with_no_c_library_outside_the_package(phone):
    shell = adb("-s", phone, "shell", "getprop ro.product.cpu.abi; uname -m; grep -c 'CPU part.*0xd05' /proc/cpuinfo")
    assert shell.returncode == 0 and shell.stdout.split() == ["arm64-v8a", "aarch64", "4"], shell
    runners = DEVICE_ROOT / "runners"
    libcs = [p for p in PHONE.rglob("libc.so*") if runners not in p.parents and not p.is_relative_to(PHONE / "proc")]
    assert libcs == [], "Android has no glibc: only the runner package brings one"
    exit_code = adb("-s", phone, "shell", "echo out; echo err >&2; exit 3")
    assert (exit_code.returncode, exit_code.stdout, exit_code.stderr) == (3, "out\n", "err\n"), "shell v2: exit codes"


def test_deploy_measures_latency_per_thread_count_and_exact_parity(phone, bundle, tmp_path):
    started = time.monotonic()
    result = subprocess.run(
        ["make", "-s", "deploy", "DEVICE=android-emu", f"BUNDLE={bundle}", f"REPORTS={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    print(f"\nfirst deploy to the emulated phone in {time.monotonic() - started:.0f} s")
    version = current()
    report_dir = tmp_path / "android-emu-phone" / version
    report = json.loads((report_dir / "device_report.json").read_text())
    figures = report["figures"]
    assert report["profile"]["emulated"] and "EMULATED" in (report_dir / "device_report.md").read_text()
    assert figures["parity"]["max_abs_logit_diff"] == 0.0 and figures["parity"]["images"] == 8, figures["parity"]
    release = json.loads((DEVICE_ROOT / "releases" / version / "release.json").read_text())
    assert report["bundle"]["method"] == release["method"] == "forward_channels_last", "the phone runs the app's method"
    assert sorted(figures["latency"], key=int) == [str(t) for t in range(1, 9)], "1 to the phone's 8 cores"
    assert figures["xnnpack_plans"]["reused"] >= 8 * 20, "the phone's edge-bench reuses XNNPACK's plan"
    assert figures["xnnpack_setups"]["reused"] >= 8 * 19, "and its setup while the input stays where it is"
    assert all(len(row["samples_ms"]) == 20 and row["p50"] <= row["p90"] for row in figures["latency"].values())
    assert figures["cores"] == {
        "big": {"cpus": "0-3", "part": "0xd0b", "max_mhz": 2400},
        "little": {"cpus": "4-7", "part": "0xd05", "max_mhz": 1800},
    }
    assert (report_dir / "device_report.png").is_file() and report["device"]["abi"] == "arm64-v8a"
    choice, p90 = report["threads"], {int(t): row["p90"] for t, row in figures["latency"].items()}
    assert p90[choice["threads"]] <= 1.05 * min(p90.values()) and choice["cluster"].startswith("on the big (0-3"), (
        choice
    )
    recorded = json.loads((DEVICE_ROOT / "releases" / version / "threads.json").read_text())
    assert recorded["threads"] == choice["threads"], "the release records the count it runs best with"
    assert f"threads chosen: {choice['threads']} on the big" in (report_dir / "device_report.md").read_text()
    assert report["runtime"]["package_mb"] <= 20 and all(t["outcome"] == "passed" for t in report["tests"].values())
    compared = subprocess.run(
        [sys.executable, "-m", "device_tests.compare", str(report_dir), str(report_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert compared.returncode == 0 and "| latency.1.p50 |" in compared.stdout, compared.stderr

    started = time.monotonic()
    again = deploy(bundle, "android-emu", "--reports", str(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    print(f"re-deploy (runner already there) in {time.monotonic() - started:.0f} s")
    assert "pushing the runner" not in again.stderr and current() != version
    runners = {
        json.loads((DEVICE_ROOT / "releases" / v / "release.json").read_text())["runner"] for v in (version, current())
    }
    assert len(runners) == 1, "the re-deploy used the runner already on the phone"


def test_no_adb_no_device_or_two_devices_are_one_line(phone, tiny_bundle):
    assert "adb is not installed: sudo apt install adb" in one_error_line(
        deploy(tiny_bundle, "android", env={"PATH": "/nonexistent"})
    )
    empty_server = os.environ | {"ANDROID_ADB_SERVER_PORT": "5417"}  # a fresh adb server that knows no device
    try:
        assert "no Android device attached" in one_error_line(deploy(tiny_bundle, "android", env=empty_server))
    finally:
        adb("kill-server", env=empty_server)
    with another_adbd() as (second, _):
        line = one_error_line(deploy(tiny_bundle, "android"))
        assert "2 Android devices attached" in line and second in line and "SERIAL=" in line
    assert "no Android device 127.0.0.1:1 attached" in one_error_line(
        deploy(tiny_bundle, "android", "--serial", "127.0.0.1:1")
    )


@pytest.mark.parametrize("flag,state", [("--refuse-auth", "unauthorized"), ("--mute", "offline")])
def test_an_unauthorized_or_offline_phone_is_one_line(phone, tiny_bundle, flag, state):
    with another_adbd(flag) as (serial, _):
        deadline = time.monotonic() + 30
        while f"{serial}\t{state}" not in adb("devices").stdout:
            assert time.monotonic() < deadline, adb("devices").stdout
            time.sleep(0.2)
        before = current()
        assert f"{serial} is {state}" in one_error_line(deploy(tiny_bundle, "android", "--serial", serial))
        assert current() == before


@pytest.mark.parametrize("abi", ["armeabi-v7a", "x86_64"])
def test_a_32_bit_or_x86_phone_is_refused(phone, tiny_bundle, abi):
    props = PHONE / "system" / "build.prop"
    original = props.read_text()
    props.write_text(original.replace("ro.product.cpu.abi=arm64-v8a", f"ro.product.cpu.abi={abi}"))
    try:
        line = one_error_line(deploy(tiny_bundle, "android-emu"))
    finally:
        props.write_text(original)
    assert f"is {abi}: the runner is built for arm64-v8a" in line


def test_a_full_phone_keeps_its_release(phone, tiny_bundle, tmp_path):
    assert deploy(tiny_bundle, "android-emu", "--reports", str(tmp_path)).returncode == 0
    before = current()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(DEVICE_ROOT / "releases")], check=True)
    try:
        (DEVICE_ROOT / "releases" / before).mkdir()  # what the tmpfs hides, as a full disk would keep it
        line = one_error_line(deploy(tiny_bundle, "android-emu", "--reports", str(tmp_path)))
    finally:
        subprocess.run(["umount", str(DEVICE_ROOT / "releases")], check=True)
    assert "out of disk space" in line and current() == before


def test_an_interrupted_push_or_a_vanished_phone_keeps_the_release(phone, tiny_bundle, tmp_path):
    assert deploy(tiny_bundle, "android-emu", "--reports", str(tmp_path)).returncode == 0
    before = current()
    releases = DEVICE_ROOT / "releases"
    with another_adbd("--kbps", "100") as (slow, _):
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deploy",
                "android",
                "--serial",
                slow,
                "--bundle",
                str(tiny_bundle),
                "--reports",
                str(tmp_path),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        wait_for_partial(releases, process)
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=120)
    assert process.returncode != 0 and "interrupted: the device keeps its previous release" in err, err[-2000:]
    assert "Traceback" not in err and current() == before

    with another_adbd("--kbps", "100") as (slow, adbd):
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deploy",
                "android",
                "--serial",
                slow,
                "--bundle",
                str(tiny_bundle),
                "--reports",
                str(tmp_path),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for_partial(releases, process)
        adbd.kill()  # the phone is unplugged mid-push
        out, err = process.communicate(timeout=300)
    line = one_error_line(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    assert any(
        f"{slow} {what}" in line for what in ("is gone", "closed the connection", "went offline", "stopped answering")
    ), line
    assert current() == before

    assert deploy(tiny_bundle, "android-emu", "--reports", str(tmp_path)).returncode == 0, "the next deploy works"
    assert current() != before and not list(releases.glob("*.partial"))


def wait_for_partial(releases: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until the deploy's push has put a file under a new release's ``.partial`` directory (one an
    interrupted deploy left is removed by the next deploy first)."""
    deadline = time.monotonic() + timeout
    old = set(releases.glob("*.partial"))
    while not any(has_files(d) for d in releases.glob("*.partial") if d not in old):
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no push under way"
        time.sleep(0.02)


def has_files(folder: Path) -> bool:
    """Whether ``folder`` holds a file, False when it is gone: a deploy renames or removes its
    ``.partial`` directories while this looks."""
    try:
        return any(p.is_file() for p in folder.iterdir())
    except FileNotFoundError:
        return False
