"""``make deploy DEVICE=android``: the bundle's program measured on an Android phone over adb.

No APK and no NDK: the app's native runner, cross-compiled on this machine as ``edge-bench`` with its own C
library (deploy/runner_package.py), is pushed to ``/data/local/tmp`` and started from ``adb shell``, as
ExecuTorch's own Android benchmarks are. On the phone, under the profile's ``remote_dir``::

    runners/<package>/     edge-bench and lib/ (pushed once per runner build, checked against its hashes)
    releases/<version>/    model.pte, golden.f32, MANIFEST.sha256, release.json, bench.json, outputs.f32
    current                the name of the current release

A release is pushed to ``<version>.partial``, checked against its manifest and run: the golden inputs'
outputs, then latency at every thread count from 1 to the phone's cores. Only when the outputs agree with
the host's logits by the bundle's parity rule is it renamed to ``<version>`` and written into ``current``;
one that fails is kept aside as ``<version>.failed`` until the next deploy. The report comes home as
``device_report.{json,md,png}``, in the format of the Pi's device tests.
"""

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge import device_report as report_file
from edge import parity
from edge.bundle import BundleMeta, read_golden
from edge.native import Runner

from . import pictures
from .profile import Device
from .runner_package import COMMAND, LOADER, PackageError
from .runner_package import build as build_package
from .target import KEEP_RELEASES, DeployError, device_lock, explain

ABI = "arm64-v8a"
WARMUP = 10
TIMEOUT_S = 120  # one adb command; the benchmark gets its own
INSTALL_ADB = "sudo apt install adb (Debian/Ubuntu), or put Android's platform-tools on PATH"


class Adb:
    """One device through the real adb client. Commands are argv lists, quoted into the one command line
    ``adb shell`` runs, so a hostile file name stays one argument."""

    def __init__(self, serial: str) -> None:
        self.binary = shutil.which("adb")
        if self.binary is None:
            raise DeployError(f"adb is not installed: {INSTALL_ADB}")
        self.serial, self.where = serial, f"the Android device {serial}"

    def adb(
        self, args: list[str], what: str, timeout: float = TIMEOUT_S, check: bool = True
    ) -> subprocess.CompletedProcess:
        try:
            result = run_bounded([self.binary, "-s", self.serial, *args], timeout)
        except subprocess.TimeoutExpired:
            raise DeployError(f"{what}: {self.where} did not answer within {timeout:.0f} s") from None
        if check and result.returncode != 0:  # adb push and pull print their errors among the progress
            raise DeployError(f"{what} failed: {explain_adb(result.stderr + chr(10) + result.stdout, self.where)}")
        return result

    def run(self, argv: list[str], what: str, timeout: float = TIMEOUT_S, check: bool = True):
        return self.adb(["shell", shlex.join(argv)], what, timeout, check)

    def push(self, local: Path, remote: str, what: str) -> None:
        self.adb(["push", str(local), remote], what, timeout=1800)

    def pull(self, remote: str, local: Path, what: str) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        self.adb(["pull", remote, str(local)], what)


def explain_adb(text: str, where: str) -> str:
    """One line for adb's usual failures, else the deploy's own explanations of adb's error line."""
    errors = [line.strip() for line in text.replace("\r", "\n").splitlines() if "error:" in line]
    text = errors[-1] if errors else text
    if "No space left" in text:
        return explain(text, where)
    known = [
        ("not found", f"{where} is gone: is it still connected (adb devices)?"),
        ("device offline", f"{where} went offline: reconnect it (adb reconnect) and deploy again"),
        ("unauthorized", f"{where} is unauthorized: accept the USB debugging prompt on the phone"),
        ("couldn't read from device", f"{where} stopped answering: is it still connected (adb devices)?"),
        ("closed", f"{where} closed the connection: is it still connected (adb devices)?"),
    ]
    return next((message for needle, message in known if needle in text), None) or explain(text, where)


MAX_OUTPUT = 1 << 20  # bytes kept of each stream of one adb command; the rest is read and dropped


def run_bounded(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``argv`` with at most MAX_OUTPUT bytes of each stream kept, decoded with errors replaced: adb's output
    is a device's, and a device can print anything, of any size."""
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        kept: dict[str, list[bytes]] = {"out": [], "err": []}

        def drain(stream, into: list[bytes]) -> None:
            size = 0
            while chunk := stream.read(1 << 16):
                if size < MAX_OUTPUT:
                    into.append(chunk[: MAX_OUTPUT - size])
                size += len(chunk)

        readers = [
            threading.Thread(target=drain, args=(child.stdout, kept["out"]), daemon=True),
            threading.Thread(target=drain, args=(child.stderr, kept["err"]), daemon=True),
        ]
        for reader in readers:
            reader.start()
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            raise
        for reader in readers:
            reader.join()
    text = {k: b"".join(v).decode(errors="replace") for k, v in kept.items()}
    return subprocess.CompletedProcess(argv, child.returncode, text["out"], text["err"])


STATES = (
    "device",
    "unauthorized",
    "offline",
    "bootloader",
    "recovery",
    "sideload",
    "host",
    "authorizing",
    "connecting",
    "rescue",
    "no permissions",
    "unknown",
)


def parse_devices(text: str) -> dict[str, str]:
    """``adb devices`` (with or without ``-l``): serial -> state. Each row is a serial, white space, a known
    state and perhaps more fields (``product:... model:...``); a row that is not is refused, not guessed at."""
    devices = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("List of devices") or line.startswith("* "):
            continue
        serial, _, rest = line.partition("\t") if "\t" in line else line.partition(" ")
        state = next((s for s in STATES if rest.strip() == s or rest.strip().startswith(s + " ")), None)
        if not serial.isprintable() or not serial.isascii() or " " in serial or state is None:
            raise DeployError(
                f"adb devices printed a row this deploy does not understand: {line[:80].encode('unicode_escape')!r}"
            )
        devices[serial] = state
    return devices


def attached(binary: str) -> dict[str, str]:
    """``adb devices``: serial -> state (device, unauthorized, offline, ...)."""
    try:
        result = run_bounded([binary, "devices"], TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DeployError("adb devices did not answer: restart the adb server (adb kill-server)") from None
    if result.returncode != 0:
        raise DeployError(f"adb devices failed: {explain(result.stderr, 'adb')}")
    return parse_devices(result.stdout)


def pick(serial: str | None) -> Adb:
    """The device to deploy to: ``serial``, or the only one attached; ready, authorized and arm64-v8a."""
    binary = shutil.which("adb")
    if binary is None:
        raise DeployError(f"adb is not installed: {INSTALL_ADB}")
    devices = attached(binary)
    if serial and serial not in devices and re.fullmatch(r"[\w.-]+:\d+", serial):
        run_bounded([binary, "connect", serial], TIMEOUT_S)
        devices = attached(binary)
    if serial is None:
        if not devices:
            raise DeployError(
                "no Android device attached: connect one with USB debugging on (adb devices lists "
                "none), or start the emulated one (make android-emu)"
            )
        if len(devices) > 1:
            raise DeployError(
                f"{len(devices)} Android devices attached ({', '.join(sorted(devices))}): pick one with SERIAL="
            )
        serial = next(iter(devices))
    state = devices.get(serial)
    if state is None:
        raise DeployError(
            f"no Android device {serial} attached (adb devices lists "
            f"{', '.join(sorted(devices)) or 'none'}): check SERIAL="
        )
    if state != "device":
        raise DeployError(
            f"the Android device {serial} is {state}: "
            + {
                "unauthorized": "accept the USB debugging prompt on the phone, then deploy again",
                "authorizing": "accept the USB debugging prompt on the phone, then deploy again",
                "offline": "reconnect it (adb reconnect) and deploy again",
            }.get(state, "wait until adb devices says device")
        )
    adb = Adb(serial)
    abi = adb.run(["getprop", "ro.product.cpu.abi"], "reading the device's ABI").stdout.strip()
    if abi != ABI:
        raise DeployError(
            f"the Android device {serial} is {abi or 'of an unknown ABI'}: the runner is built for "
            f"{ABI} (64-bit ARM) only"
        )
    return adb


def manifest(root: Path) -> str:
    return "".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}\n"
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "MANIFEST.sha256"
    )


def stage(bundle: Path, meta: BundleMeta, version: str, device: Device, package: str, into: Path) -> None:
    """The release as pushed: the program, the golden inputs as raw float32 in the program's memory order
    (edge-bench hands the bytes over as they are), and its manifest."""
    shutil.copy2(bundle / meta.pte, into / "model.pte")
    runner = Runner((bundle / meta.pte).read_bytes(), 1, meta.method)
    runner.in_memory_order(read_golden(bundle)["inputs"]).tofile(into / "golden.f32")
    runner.close()
    (into / "release.json").write_text(
        json.dumps(
            {
                "version": version,
                "model": meta.name,
                "device": device.name,
                "pte_sha256": meta.pte_sha256,
                "method": meta.method,
                "runner": package,
            }
        )
        + "\n"
    )
    (into / "MANIFEST.sha256").write_text(manifest(into))


def push_runner(adb: Adb, package: Path, runners: str) -> str:
    """The runner package in ``runners/<key>``, pushed and checked once; later deploys reuse it."""
    remote = f"{runners}/{package.name}"
    if adb.run(["test", "-f", f"{remote}/package.json"], "looking for the runner", check=False).returncode == 0:
        return remote
    with tempfile.TemporaryDirectory(prefix="runner-") as tmp:
        copy = Path(tmp) / package.name
        shutil.copytree(package, copy)
        (copy / "MANIFEST.sha256").write_text(manifest(copy))
        adb.run(["rm", "-rf", f"{remote}.partial"], "removing an unfinished runner copy")
        adb.push(copy, f"{remote}.partial", "pushing the runner (once per runner build)")
    adb.run(
        ["sh", "-c", 'cd "$1" && sha256sum -c MANIFEST.sha256 >/dev/null', "sh", f"{remote}.partial"],
        "checking the runner's copy against its hashes",
    )
    adb.run(["mv", f"{remote}.partial", remote], "finishing the runner's copy")
    return remote


def bench_command(runner: str, release: str, method: str, runs: int) -> list[str]:
    """edge-bench in ``release``, through the package's own loader: the phone's C library (bionic) is never used.
    It runs the app's ``method``, writes the golden inputs' outputs, then times every thread count from 1 to the
    phone's cores."""
    return [
        "sh",
        "-c",
        'cd "$1" && shift && "$@" > bench.json',
        "sh",
        release,
        f"{runner}/lib/{LOADER}",
        "--library-path",
        f"{runner}/lib",
        f"{runner}/{COMMAND}",
        "model.pte",
        "--method",
        method,
        "--inputs",
        "golden.f32",
        "--outputs",
        "outputs.f32",
        "--warmup",
        str(WARMUP),
        "--runs",
        str(runs),
    ]


def cores(cpus: dict) -> dict:
    """Big and little cores, told apart by their max frequency (by CPU part where none is given)."""
    groups: dict[tuple, list[int]] = {}
    for core in cpus.get("cores", []):
        groups.setdefault((core.get("max_freq_khz") or 0, core.get("cpu_part", "?")), []).append(int(core["cpu"]))
    names = ["big", "little"] if len(groups) == 2 else ["big", "middle", "little"] if len(groups) == 3 else None
    ordered = sorted(groups.items(), key=lambda item: -item[0][0])
    return {
        (names[i] if names else f"group{i}" if len(groups) > 1 else "all"): {
            "cpus": _span(cpus_of),
            "part": part,
            "max_mhz": round(khz / 1000) if khz else None,
        }
        for i, ((khz, part), cpus_of) in enumerate(ordered)
    }


def _span(cpus: list[int]) -> str:
    cpus = sorted(cpus)
    return (
        f"{cpus[0]}-{cpus[-1]}"
        if cpus == list(range(cpus[0], cpus[-1] + 1)) and len(cpus) > 1
        else ",".join(map(str, cpus))
    )


def device_facts(adb: Adb, bench: dict) -> dict:
    props = {
        key: adb.run(["getprop", key], f"reading {key}").stdout.strip()
        for key in ("ro.product.manufacturer", "ro.product.model", "ro.build.version.release", "ro.build.version.sdk")
    }
    uname = adb.run(["uname", "-m", "-r"], "reading the kernel").stdout.split()
    return {
        "hostname": adb.serial,
        "machine": uname[-1] if uname else None,
        "cpus": len(bench["cpus"]["cores"]),
        "model": f"{props['ro.product.manufacturer']} {props['ro.product.model']}".strip(),
        "kernel": uname[0] if uname else None,
        "python": None,
        "abi": ABI,
        "android": props["ro.build.version.release"],
        "sdk": props["ro.build.version.sdk"],
        "hardware": bench["cpus"].get("hardware"),
    }


def figures_of(bench: dict, outputs: np.ndarray, golden: dict, meta: BundleMeta) -> dict:
    latency = {
        str(row["threads"]): {k: row[k] for k in ("p50", "p90", "p99", "mean", "runs", "samples_ms")}
        for row in bench["latency_ms"]
    }
    return {
        "latency": latency,
        "load_ms": bench["load_ms"],
        "cores": cores(bench["cpus"]),
        "parity": parity.compare(outputs, golden["logits"], meta.golden_logit_tolerance),
        "memory": {"peak_rss_mb": round(bench["peak_rss_kb"] / 1024, 1)},
        "thermal": {"before": bench["thermal_before"], "after": bench["thermal_after"]},
    }


def outcomes(figures: dict, device: Device, meta: BundleMeta) -> dict:
    """The checks a Pi's device tests make, as their report records them: parity, and the budget at the
    profile's threads (never on an emulated device)."""
    p = figures["parity"]
    tests = {
        "android::golden_parity": {"outcome": "passed"}
        if p["agreement"] == 1.0
        else {
            "outcome": "failed",
            "reason": f"{p['agreement']:.3f} of the golden inputs agree, max logit "
            f"difference {p['max_abs_logit_diff']:.4f} > {p['logit_tolerance']:.4f}",
        }
    }
    budget = None if device.emulated else report_file.budget_for(device.facts(), meta.name)
    for threads, row in figures["latency"].items():
        entry = {"outcome": "passed"}
        if int(threads) == device.threads and budget:
            row["budget"] = budget
            over = {q: row[q] for q, limit in budget.items() if row[q] > limit}
            entry = {"outcome": "failed", "reason": f"over budget: {over}"} if over else entry
        tests[f"android::latency[{threads}]"] = entry
    return tests


def deploy(device: Device, bundle: Path, meta: BundleMeta, version: str, reports: Path) -> Path:
    steps = tqdm(total=6, desc=f"deploy to {device.name}", unit="step", file=sys.stderr)

    def step(text: str) -> None:
        steps.set_postfix_str(text)
        steps.update(1)

    adb = pick(device.serial)
    try:
        package = build_package()
    except PackageError as e:
        raise DeployError(str(e)) from None
    root = device.remote_dir.rstrip("/")
    releases, partial = f"{root}/releases", f"{root}/releases/{version}.partial"
    with device_lock(adb, root):  # one deploy at a time per phone
        adb.run(["mkdir", "-p", releases, f"{root}/runners"], f"creating {releases}")
        adb.run(
            ["sh", "-c", 'rm -rf "$1"/*.partial "$1"/*.failed', "sh", releases],
            "removing unfinished and failed releases",
        )
        step("runner")
        runner = push_runner(adb, package, f"{root}/runners")
        step("copying")
        with tempfile.TemporaryDirectory(prefix="release-") as tmp:
            stage(bundle, meta, version, device, package.name, Path(tmp))
            adb.push(Path(tmp), partial, "pushing the release")
        adb.run(
            ["sh", "-c", 'cd "$1" && sha256sum -c MANIFEST.sha256 >/dev/null', "sh", partial],
            "checking the copy against its manifest",
        )
        step("measuring")
        result = adb.run(
            bench_command(runner, partial, meta.method, device.runs), "running the program", timeout=3600, check=False
        )
        if result.returncode != 0:
            adb.run(["mv", partial, f"{releases}/{version}.failed"], "keeping the failed release aside", check=False)
            raise DeployError(
                f"the program failed on {adb.where} ({explain(result.stderr, adb.where)}); current is "
                f"unchanged, the failed copy is {releases}/{version}.failed"
            )
        step("parity")
        with tempfile.TemporaryDirectory(prefix="results-") as tmp:
            adb.pull(f"{partial}/bench.json", Path(tmp) / "bench.json", "fetching the measurements")
            adb.pull(f"{partial}/outputs.f32", Path(tmp) / "outputs.f32", "fetching the outputs")
            bench = json.loads((Path(tmp) / "bench.json").read_text())
            outputs = np.fromfile(Path(tmp) / "outputs.f32", np.float32)
        golden = read_golden(bundle)
        outputs = outputs.reshape(len(golden["logits"]), -1)
        figures = figures_of(bench, outputs, golden, meta)
        tests = outcomes(figures, device, meta)
        local = write_report(adb, device, meta, version, package, bench, figures, tests, reports)
        failed = {name: t["reason"] for name, t in tests.items() if t["outcome"] == "failed"}
        if "android::golden_parity" in failed:
            adb.run(["mv", partial, f"{releases}/{version}.failed"], "keeping the failed release aside", check=False)
            raise DeployError(
                f"the phone's outputs differ from the host's ({failed['android::golden_parity']}); current "
                f"is unchanged: see {local}/device_report.md"
            )
        step("switching")
        adb.run(["mv", partial, f"{releases}/{version}"], "finishing the release")
        adb.run(
            ["sh", "-c", 'echo "$2" > "$1/current.new" && mv -f "$1/current.new" "$1/current"', "sh", root, version],
            "switching current",
        )
        prune(adb, releases, f"{root}/runners", version)
        step("done")
        steps.close()
        print((local / "device_report.md").read_text())
        print(
            f"deployed {meta.name} to {adb.where} as {releases}/{version}; report: {local}/device_report.json",
            file=sys.stderr,
        )
        if failed:
            raise DeployError(f"{', '.join(failed)} failed on {adb.where}: see {local}/device_report.md")
        return local


def write_report(
    adb: Adb,
    device: Device,
    meta: BundleMeta,
    version: str,
    package: Path,
    bench: dict,
    figures: dict,
    tests: dict,
    reports: Path,
) -> Path:
    facts = device_facts(adb, bench)
    name = "android-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", facts["model"].split(" ", 1)[-1]).strip("-") or "phone")
    local = reports / name / version
    info = json.loads((package / "package.json").read_text())
    report = {
        "device": facts,
        "versions": {"executorch": info["executorch"]},
        "figures": figures,
        "tests": tests,
        "bundle": {
            "name": meta.name,
            "arch": meta.arch,
            "pte_sha256": meta.pte_sha256,
            "method": meta.method,
            "quantization": meta.quantization,
            "input_size": meta.input.size,
        },
        "profile": device.facts(),
        "release": {"version": version, "model": meta.name, "device": device.name},
        "runtime": {
            "runner": COMMAND,
            "package": package.name,
            "package_mb": round(info["bytes"] / 2**20, 1),
            "glibc": info["glibc_shipped"],
            "how": "cross-compiled on the host, pushed with adb",
        },
    }
    report_file.write(local / "device_report.json", report)
    pictures.render(local / "device_report.json")
    return local


def prune(adb: Adb, releases: str, runners: str, keep: str) -> None:
    """Keep the newest finished releases, and the runners they use."""
    listing = adb.run(["ls", "-1", releases], "listing releases").stdout.split()
    finished = sorted(n for n in listing if not n.endswith((".partial", ".failed")))
    old = [n for n in finished if n != keep][: -(KEEP_RELEASES - 1) or None]
    if old:
        adb.run(["rm", "-rf", *(f"{releases}/{n}" for n in old)], "removing old releases")
    kept = [n for n in finished if n not in old]
    used = set(
        adb.run(
            [
                "sh",
                "-c",
                'cat "$@" 2>/dev/null | sed -n \'s/.*"runner": "\\([^"]*\\)".*/\\1/p\'',
                "sh",
                *(f"{releases}/{n}/release.json" for n in kept),
            ],
            "reading the releases' runners",
        ).stdout.split()
    )
    stale = [n for n in adb.run(["ls", "-1", runners], "listing runners").stdout.split() if n not in used]
    if stale and used:
        adb.run(["rm", "-rf", *(f"{runners}/{n}" for n in stale)], "removing unused runners")
