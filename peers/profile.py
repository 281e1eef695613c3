"""Where the time goes: our programs per operator (ETDump), LiteRT's per microkernel (perf), side by side.

    python -m peers.profile FOLDER [--threads 1] [--runs 300]

- Ours: ``peers/etdump_main.cpp`` (built here against the executorch wheel, as the native runner is)
  runs each ExecuTorch program with ETDump; the wheel's XNNPACK delegate reports every one of its
  operators, which ``executorch.devtools.Inspector`` reads: the median time per operator, summed by kind.
- LiteRT: its Python wheel has no profiler, so ``perf record`` samples a process running the program
  and ``perf report`` names the microkernels (its library keeps their symbols). The wheel's XNNPACK
  library does not, so for ours perf gives addresses; ``kernels`` names them by what their code does
  (``vpdpbusd``: VNNI int8 dot products; ``vpmulld``: the int8 depthwise kernels' 32-bit multiplies) and
  counts the vector registers spilled to the stack, which is how the two builds of one kernel differ.

Writes ``profile.md`` into FOLDER and prints it. Needs ``perf`` (Debian: linux-perf) for the LiteRT half.
"""

import argparse
import bisect
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge.bundle import APP_METHOD
from edge.command import HelpFormatter, positive_int
from edge.files import atomic_path
from edge.native.build import compile_flags, executorch_dir, link_flags, runtime_lib_dir

from .runtimes import PeerError, load

SOURCE = Path(__file__).resolve().with_name("etdump_main.cpp")


def etdump_tool() -> Path:
    """The ETDump runner, built once per source into this environment (as the native runner is)."""
    import hashlib

    out = (
        Path(sys.prefix)
        / "lib"
        / "edge-runner"
        / f"peers-etdump-{hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]}"
    )
    if out.is_file():
        return out
    lib = runtime_lib_dir()
    compiler = shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise PeerError("no C++ compiler to build the ETDump runner: apt install g++")
    with atomic_path(out) as tmp:
        argv = [
            compiler,
            *compile_flags(executorch_dir() / "include"),
            str(SOURCE),
            "-o",
            str(tmp),
            *link_flags(lib),
            "-Wl,--no-as-needed",
            "-lexecutorch_etdump",
            "-Wl,--as-needed",
            f"-Wl,-rpath,{lib}",
        ]
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise PeerError(f"building the ETDump runner failed: {result.stderr.strip().splitlines()[-1][:300]}")
    return out


def operators(pte: Path, threads: int, runs: int) -> list[tuple[str, int, float]]:
    """(operator kind, count, summed median ms) of one run, slowest first, from ETDump."""
    from executorch.devtools import Inspector

    with tempfile.TemporaryDirectory() as scratch:
        trace = Path(scratch) / "trace.etdp"
        result = subprocess.run(
            [str(etdump_tool()), str(pte), str(trace), str(runs), str(threads), APP_METHOD],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise PeerError(f"profiling {pte.name} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
        inspector = Inspector(etdump_path=str(trace))
    kinds: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if event.perf_data is None or not (event.is_delegated_op or event.name.startswith("native_call")):
                continue
            kind = re.sub(r" #\d+$", "", event.name)
            kinds[kind][0] += 1
            kinds[kind][1] += event.perf_data.p50
    return sorted(((k, n, ms) for k, (n, ms) in kinds.items()), key=lambda row: -row[2])


def perf_samples(program: Path, threads: int, seconds: float) -> tuple[str, float]:
    """``perf report`` text for a process that runs ``program`` for about ``seconds``, and the process's
    wall time per run: at one thread a function's share of the samples times this is its time per run
    (loading the program is in the samples too, a few percent of them)."""
    if shutil.which("perf") is None:
        raise PeerError("perf is not installed: apt install linux-perf (make bench-peers-profile does, as root)")
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "perf.data"
        child = [
            sys.executable,
            "-m",
            "peers.profile",
            "--child",
            str(program),
            "--threads",
            str(threads),
            "--seconds",
            str(seconds),
        ]
        started = time.monotonic()
        record = subprocess.run(
            ["perf", "record", "-q", "-F", "2000", "-o", str(data), "--", *child], capture_output=True, text=True
        )
        wall = time.monotonic() - started
        if record.returncode != 0:
            raise PeerError(f"perf record failed: {(record.stderr.strip().splitlines() or ['?'])[-1]}")
        report = subprocess.run(
            ["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "-q"],
            capture_output=True,
            text=True,
        )
    return report.stdout, 1000 * wall / int(record.stdout.strip().splitlines()[-1])


def named_kernels(report: str, top: int = 12) -> list[tuple[str, float]]:
    """(symbol, % of samples) of the hottest named functions."""
    rows = []
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[\.\]\s+(\S.*)$", line)
        if m and not m.group(3).startswith("0x"):
            rows.append((m.group(3).strip(), float(m.group(1))))
    return rows[:top]


def kernels(report: str, library: Path, top: int = 10) -> list[tuple[str, float, int]]:
    """The hottest functions of a stripped library, found by its unwind table's ranges and named by the
    instructions their code uses: (description, % of samples, vector registers spilled to the stack)."""
    frames = subprocess.run(["readelf", "-wf", str(library)], capture_output=True, text=True).stdout
    ranges = sorted(
        tuple(int(x, 16) for x in line.split("pc=")[1].split("..")) for line in frames.splitlines() if " FDE " in line
    )
    starts = [a for a, _ in ranges]
    share: dict[tuple[int, int], float] = collections.Counter()
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[\.\]\s+0x([0-9a-f]+)", line)
        if not m or Path(m.group(2)).name != library.name:
            continue
        address, i = int(m.group(3), 16), bisect.bisect_right(starts, int(m.group(3), 16)) - 1
        if i >= 0 and ranges[i][0] <= address < ranges[i][1]:
            share[ranges[i]] += float(m.group(1))
    rows = []
    for (lo, hi), pct in sorted(share.items(), key=lambda kv: -kv[1])[:top]:
        code = subprocess.run(
            ["objdump", "-d", "--no-show-raw-insn", f"--start-address={lo}", f"--stop-address={hi}", str(library)],
            capture_output=True,
            text=True,
        ).stdout
        rows.append((describe(code), pct, sum(1 for line in code.splitlines() if "zmm" in line and "(%rsp)" in line)))
    return rows


SIGNATURES = (  # the first of these instructions a function uses -> what XNNPACK x86 microkernel it is
    ("vpdpbusd", "int8 GEMM (AVX-512 VNNI)"),
    ("vpmulld", "int8 depthwise conv (AVX-512, mul32)"),
    ("vpmullw", "int8 multiply (mul16)"),
    ("vpshufb", "int8 lookup table (hard-swish)"),
    ("vpunpck", "transpose"),
    ("vfmadd", "fp32 GEMM or depthwise conv (FMA)"),
)


def describe(code: str) -> str:
    width = "zmm" if "zmm" in code else ("ymm" if "ymm" in code else "xmm")
    found = next((what for insn, what in SIGNATURES if re.search(rf"\s{insn}", code)), "other")
    return f"{found} [{width}]"


def child(program: Path, threads: int, seconds: float) -> None:
    """The profiled process: one program, its input prepared once, run for ``seconds``."""
    import numpy as np

    session = load(program, threads)
    images = np.load(program.parent / "images.npy")
    x = session.prepare(images[:1])
    end, runs = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        session.run(x)
        runs += 1
    print(runs)


def markdown(folder: Path, threads: int, runs: int, seconds: float) -> str:
    programs = {p["file"]: p for p in json.loads((folder / "programs.json").read_text())}
    lines = [f"Per-operator profile, {threads} thread(s), on `{folder}`.", ""]
    for file in ("ours-int8.pte", "ours-fp32.pte"):
        if file in programs:
            lines += [
                f"**{programs[file]['name']}** (ETDump, median of {runs} runs, ms per run):",
                "",
                "| operator | count | ms |",
                "|---|---:|---:|",
            ]
            lines += [f"| {kind} | {n} | {ms:.3f} |" for kind, n, ms in operators(folder / file, threads, runs)]
            lines.append("")
    library = executorch_dir() / "lib" / "libexecutorch_backend_xnnpack.so"
    for file in ("ours-int8.pte", "litert-int8.tflite", "ours-fp32.pte", "litert-fp32.tflite"):
        if file not in programs:
            continue
        report, per_run = perf_samples(folder / file, threads, seconds)
        name = programs[file]["name"]
        lines += [
            f"**{name}** (perf: % of the process's samples; ms = % x its wall time per run, {per_run:.3f} ms, which "
            "includes loading and perf's own cost: compare the rows of two runtimes, not with the ETDump figures):",
            "",
        ]
        if file.endswith(".pte"):
            lines += [
                "| microkernel (by its instructions) | % | ms | vector registers spilled to the stack |",
                "|---|---:|---:|---:|",
            ]
            rows = kernels(report, library)
            lines += [f"| {what} | {pct:.1f} | {pct * per_run / 100:.3f} | {spills} |" for what, pct, spills in rows]
        else:
            lines += ["| microkernel | % | ms |", "|---|---:|---:|"]
            rows = named_kernels(report)
            lines += [f"| `{kernel}` | {pct:.1f} | {pct * per_run / 100:.3f} |" for kernel, pct in rows]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m peers.profile", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("folder", type=Path, help="a folder python -m peers converted")
    parser.add_argument(
        "--threads", type=positive_int, default=1, help="threads (one: the kernels, not the scheduling)"
    )
    parser.add_argument("--runs", type=positive_int, default=300, help="ETDump runs per program")
    parser.add_argument("--seconds", type=float, default=5.0, help="perf sampling per program")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.child:
            return child(args.folder, args.threads, args.seconds)
        if not (args.folder / "programs.json").is_file():
            raise PeerError(f"{args.folder} has no programs.json: convert first (python -m peers)")
        text = markdown(args.folder, args.threads, args.runs, args.seconds)
    except KeyboardInterrupt:
        sys.exit("interrupted")
    (args.folder / "profile.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    from edge.command import run_main

    run_main("peers.profile")
