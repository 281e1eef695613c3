"""``make deploy DEVICE=android``: the bundle's program measured on an Android phone over adb.

No APK and no NDK: the app's native runner, cross-compiled on this machine as ``edge-bench`` with its own C
library (deploy/environment/runner_package.py), is pushed to ``/data/local/tmp`` and started from ``adb shell``, as
ExecuTorch's own Android benchmarks are. On the phone, under the profile's ``remote_dir``::

    runners/<package>/     edge-bench and lib/ (pushed once per runner build, checked against its hashes)
    releases/<version>/    model.pte, golden.f32, MANIFEST.sha256, release.json, bench.json, outputs.f32
    current -> releases/<version>

The release lifecycle is the Pi's (deploy/release.py). As ``<version>.partial`` the release is run: the golden
inputs' outputs, then latency at every thread count from 1 to the phone's cores. Only when the outputs agree
with the host's logits by the bundle's parity rule does it become ``current``; one that fails is kept aside
as ``<version>.failed`` until the next deploy. The report comes home as
``device_report.{json,md,png}``, in the format of the Pi's device tests.
"""

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge import device_report as report_file
from edge import parity
from edge.bundle import BundleMeta, read_golden
from edge.native import Runner
from edge.threads import choose as choose_threads

from . import pictures
from .environment.runner_package import COMMAND, LOADER
from .environment.runner_package import build as build_package
from .profile import Device
from .release import check_copy, releases, write_manifest
from .transport import DeployError, explain
from .transport.adb import ABI, Adb, pick

WARMUP = 10  # untimed calls before edge-bench times a thread count


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
    write_manifest(into)


def push_runner(adb: Adb, package: Path, runners: str) -> str:
    """The runner package in ``runners/<key>``, pushed and checked once; later deploys reuse it."""
    remote = f"{runners}/{package.name}"
    if adb.run(["test", "-f", f"{remote}/package.json"], "looking for the runner", check=False).returncode == 0:
        return remote
    with tempfile.TemporaryDirectory(prefix="runner-") as tmp:
        copy = Path(tmp) / package.name
        shutil.copytree(package, copy)
        write_manifest(copy)
        adb.run(["rm", "-rf", f"{remote}.partial"], "removing an unfinished runner copy")
        adb.push(copy, f"{remote}.partial", "pushing the runner (once per runner build)")
    check_copy(adb, f"{remote}.partial", "checking the runner's copy against its hashes")
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
        # Plans made once per thread count, setups also when the input moves; the other runs reuse them.
        "xnnpack_plans": bench["xnnpack_plans"],
        "xnnpack_setups": bench["xnnpack_setups"],
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
    adb = pick(device.serial)
    package = build_package()
    root = device.remote_dir.rstrip("/")
    with tqdm(total=6, desc=f"deploy to {device.name}", unit="step", file=sys.stderr) as steps:

        def step(text: str) -> None:
            steps.set_postfix_str(text)
            steps.update(1)

        with releases(adb, root) as kept:  # one deploy at a time per phone
            adb.run(["mkdir", "-p", f"{root}/runners"], "creating the runners' directory")
            step("runner")
            runner = push_runner(adb, package, f"{root}/runners")
            step("copying")
            with tempfile.TemporaryDirectory(prefix="release-") as tmp:
                stage(bundle, meta, version, device, package.name, Path(tmp))
                partial = kept.push(Path(tmp), version)
            step("measuring")
            command = bench_command(runner, partial, meta.method, device.runs)
            result = adb.run(command, "running the program", timeout=3600, check=False)
            if result.returncode != 0:
                failed = kept.set_aside(version)
                raise DeployError(
                    f"the program failed on {adb.where} ({explain(result.stderr, adb.where)}); current is "
                    f"unchanged, the failed copy is {failed}"
                )
            step("parity")
            bench, outputs = fetch_results(adb, partial)
            golden = read_golden(bundle)
            figures = figures_of(bench, outputs.reshape(len(golden["logits"]), -1), golden, meta)
            tests = outcomes(figures, device, meta)
            local = write_report(adb, device, meta, version, package, bench, figures, tests, reports)
            failed = {name: t["reason"] for name, t in tests.items() if t["outcome"] == "failed"}
            if "android::golden_parity" in failed:
                kept.set_aside(version)
                raise DeployError(
                    f"the phone's outputs differ from the host's ({failed['android::golden_parity']}); current "
                    f"is unchanged: see {local}/device_report.md"
                )
            step("switching")
            if choice := json.loads((local / "device_report.json").read_text()).get("threads"):
                record = ["sh", "-c", 'printf "%s\\n" "$2" > "$1/threads.json"', "sh", partial, json.dumps(choice)]
                adb.run(record, "recording the chosen thread count")
            prune_runners(adb, kept.dir, kept.finish(version), f"{root}/runners")
            step("done")
    print((local / "device_report.md").read_text())
    print(
        f"deployed {meta.name} to {adb.where} as {kept.dir}/{version}; report: {local}/device_report.json",
        file=sys.stderr,
    )
    if failed:
        raise DeployError(f"{', '.join(failed)} failed on {adb.where}: see {local}/device_report.md")
    return local


def fetch_results(adb: Adb, partial: str) -> tuple[dict, np.ndarray]:
    """edge-bench's JSON and the golden inputs' outputs, from the release it ran in."""
    with tempfile.TemporaryDirectory(prefix="results-") as tmp:
        adb.pull(f"{partial}/bench.json", Path(tmp) / "bench.json", "fetching the measurements")
        adb.pull(f"{partial}/outputs.f32", Path(tmp) / "outputs.f32", "fetching the outputs")
        return json.loads((Path(tmp) / "bench.json").read_text()), np.fromfile(Path(tmp) / "outputs.f32", np.float32)


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
            "package_mb": round(info["bytes"] / 1e6, 1),
            "glibc": info["glibc_shipped"],
            "how": "cross-compiled on the host, pushed with adb",
        },
    }
    if choice := choose_threads(figures["latency"]):
        report["threads"] = choice | {"cluster": cluster_of(choice["threads"], figures["cores"])}
    report_file.write(local / "device_report.json", report)
    pictures.render(local / "device_report.json")
    return local


def cluster_of(count: int, cores: dict) -> str:
    """Which cores ``count`` threads fill when the faster clusters are filled first, as the phone's scheduler
    tends to for a busy process (edge-bench does not pin them): "on the big cores (0-3, 2400 MHz)"."""
    left, used = count, []
    for name, cluster in cores.items():
        if left <= 0:
            break
        size = pictures.cpu_count(cluster.get("cpus", ""))
        used.append(
            f"{name} ({cluster.get('cpus')}{', ' + str(cluster['max_mhz']) + ' MHz' if cluster.get('max_mhz') else ''})"
        )
        left -= size
    return "on the " + " and ".join(used) + " cores" if used else ""


def prune_runners(adb: Adb, releases: str, kept: list[str], runners: str) -> None:
    """Remove the runners no kept release uses (each names its own in release.json)."""
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
