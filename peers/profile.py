"""Where the time goes: our programs per operator (ETDump), ours and LiteRT's per thread and microkernel (perf).

    python -m peers.profile FOLDER [--threads 1] [--runs 300]

- Ours: ``peers/etdump_main.cpp`` (built here against the executorch wheel, as the native runner is)
  runs each ExecuTorch program with ETDump; the wheel's XNNPACK delegate reports every one of its
  operators, which ``executorch.devtools.Inspector`` reads: the median time per operator, summed by kind.
- Both runtimes: ``perf record`` samples a process running the program, and each function's samples,
  on the thread that calls the runtime and on its pool's workers, become CPU microseconds per run: the
  microkernels, the thread pool (handing out work and waiting for it), Python and the binding, the OS.
  LiteRT's library keeps its kernels' names. The wheel's XNNPACK library does not, so ours are found by
  their unwind-table ranges and named by what their code does (``vpdpbusd``: VNNI int8 dot products;
  ``vpmulld``: the int8 depthwise kernels' 32-bit multiplies; a float kernel's count of FMAs gives its
  tile), with the vector registers spilled to the stack, which is how two builds of one kernel differ.

Writes ``profile.md`` into FOLDER and prints it. Needs ``perf`` (Debian: linux-perf) for the perf half.
"""

import argparse
import bisect
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edge.bundle import APP_METHOD
from edge.command import HelpFormatter, positive_float, positive_int
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


PERF_HZ = 2000  # samples per second per thread


@dataclass
class Samples:
    """What ``perf`` saw of one process running a program: (on the calling thread, library, function,
    samples) rows, and how many runs the process made. A row's samples / PERF_HZ / runs is the CPU time
    that function took per run on that thread, at any thread count."""

    rows: list[tuple[bool, str, str, int]]
    runs: int
    wall_ms: float  # per run, loading and perf's own cost included

    def us(self, samples: int) -> float:
        return 1e6 * samples / PERF_HZ / self.runs


def perf_samples(program: Path, threads: int, seconds: float) -> Samples:
    """``perf record`` of a process that runs ``program`` for about ``seconds``, per thread and function."""
    if shutil.which("perf") is None:
        raise PeerError("perf is not installed: apt install linux-perf (make bench-peers-profile does, as root)")
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "perf.data"
        child = [sys.executable, "-m", "peers.profile", "--child", str(program), "--threads", str(threads)]
        started = time.monotonic()
        record = subprocess.run(
            ["perf", "record", "-q", "-F", str(PERF_HZ), "-o", str(data), "--", *child, "--seconds", str(seconds)],
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - started
        if record.returncode != 0:
            raise PeerError(f"perf record failed: {(record.stderr.strip().splitlines() or ['?'])[-1]}")
        report = subprocess.run(
            ["perf", "report", "-i", str(data), "--no-children", "-n", "--sort", "pid,dso,sym", "-q"],
            capture_output=True,
            text=True,
        ).stdout
    runs, caller = map(int, record.stdout.split()[-2:])
    if runs == 0:
        raise PeerError(f"{program.name} made no run in {seconds} s under perf: give it more --seconds")
    return Samples(parse_report(report, caller), runs, 1000 * wall / runs)


def parse_report(report: str, caller: int) -> list[tuple[bool, str, str, int]]:
    """``perf report -n --sort pid,dso,sym`` lines -> (on thread ``caller``, library, function, samples)."""
    rows = []
    for line in report.splitlines():
        m = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\d+):\S*\s+(\S+)\s+\[.\]\s+(\S.*?)\s*$", line)
        if m:
            rows.append((int(m.group(2)) == caller, Path(m.group(3)).name, m.group(4), int(m.group(1))))
    return rows


# Where a function's time counts, by library (ours) or by name (LiteRT's library holds everything).
POOL = re.compile(r"libexecutorch_threadpool|^pthreadpool_|^thread_main$|^thread_parallelize")
BINDING = re.compile(r"^libpython|^_ctypes|^libffi|^_multiarray_umath|^_pywrap|^ld-linux")
OS = re.compile(r"^\[kernel|^\[vdso\]$|^libc\.so")


def category(library: str, function: str, kernel: bool) -> str:
    """What a sampled function is part of: a microkernel, the thread pool (handing out work, waiting for
    it), Python and the runtime's binding, the OS, or the runtime itself around the kernels."""
    if kernel:
        return "microkernels"
    if POOL.search(library) or POOL.search(function):
        return "thread pool: handing out work and waiting"
    if BINDING.search(library):
        return "Python and the binding"
    if OS.search(library):
        return "the OS and libc"
    return "the runtime around the kernels"


def function_ranges(library: Path) -> list[tuple[int, int]]:
    """The address ranges of a stripped library's functions, from its unwind table."""
    frames = subprocess.run(["readelf", "-wf", str(library)], capture_output=True, text=True).stdout
    ranges = []
    for line in frames.splitlines():
        if " FDE " in line:
            lo, hi = line.split("pc=")[1].split("..")
            ranges.append((int(lo, 16), int(hi, 16)))
    return sorted(ranges)


@dataclass
class Function:
    """One sampled function: samples on the calling thread and on the others, its library, and, for a
    microkernel, what it is and how many vector registers it spills to the stack (ours: read off its code)."""

    library: str
    calling: int = 0
    others: int = 0
    kernel: str = ""
    spills: int | None = None


def functions(samples: Samples, library: Path | None) -> dict[str, Function]:
    """The sampled functions by name. LiteRT's have names (its kernels ``xnn_*ukernel*``); in our stripped
    XNNPACK ``library`` a function is its address range, named by the instructions its code uses."""
    ranges = function_ranges(library) if library else []
    starts = [lo for lo, _ in ranges]
    out: dict[str, Function] = {}
    for on_caller, lib, name, n in samples.rows:
        if library is not None and lib == library.name and name.startswith("0x"):
            i = bisect.bisect_right(starts, int(name, 16)) - 1
            inside = i >= 0 and ranges[i][0] <= int(name, 16) < ranges[i][1]
            name = f"{ranges[i][0]:#x}" if inside else lib
        elif name.startswith("0x"):
            name = lib
        f = out.setdefault(name, Function(lib))
        f.calling, f.others = f.calling + n * on_caller, f.others + n * (not on_caller)
    for name, f in out.items():
        if name.startswith("xnn_") and "ukernel" in name:
            f.kernel = f"`{name}`"
        elif library is not None and f.library == library.name and name.startswith("0x"):
            code = disassemble(library, int(name, 16), dict(ranges)[int(name, 16)])
            f.spills = sum(1 for line in code.splitlines() if "zmm" in line and "(%rsp)" in line)
            f.kernel = describe(code) and f"{describe(code)} at {name}"
    return out


def disassemble(library: Path, lo: int, hi: int) -> str:
    return subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", f"--start-address={lo}", f"--stop-address={hi}", str(library)],
        capture_output=True,
        text=True,
    ).stdout


SIGNATURES = (  # the first of these instructions a function uses -> what XNNPACK x86 microkernel it is
    ("vpdpbusd", "int8 GEMM (AVX-512 VNNI)"),
    ("vpmulld", "int8 depthwise conv (AVX-512, mul32)"),
    ("vpmullw", "int8 multiply (mul16)"),
    ("vpshufb", "int8 lookup table (hard-swish)"),
    ("vpunpck", "transpose"),
    ("vfmadd", "fp32 GEMM or depthwise conv (FMA)"),
    ("vmulps", "fp32 multiply"),
    ("vaddps", "fp32 add or sum"),
)


def describe(code: str) -> str:
    """A microkernel by its instructions. A float GEMM's count of FMAs tells its tile: a 7x32 one has 14
    (7 rows, 2 registers of 16 floats); a 25-tap depthwise kernel has 25 per register of channels."""
    width = "zmm" if "zmm" in code else ("ymm" if "ymm" in code else "xmm")
    found = next(((insn, what) for insn, what in SIGNATURES if re.search(rf"\s{insn}", code)), None)
    if found is None:
        return ""
    insn, what = found
    if insn == "vfmadd":
        fmas = len(re.findall(rf"\svfmadd\S*\s[^\n]*{width}", code))
        what = f"fp32 FMA kernel, {fmas} FMA{'s' * (fmas != 1)}"
    return f"{what} [{width}]"


def time_tables(samples: Samples, library: Path | None, top: int = 12) -> list[str]:
    """Markdown: µs per run on the calling thread and the others, by category, then the hottest microkernels."""
    sampled = functions(samples, library)
    totals: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for name, f in sampled.items():
        where = category(f.library, name, bool(f.kernel))
        totals[where][0] += f.calling
        totals[where][1] += f.others
    lines = ["| work | calling thread µs | other threads µs |", "|---|---:|---:|"]
    for where, (calling, others) in sorted(totals.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"| {where} | {samples.us(calling):.1f} | {samples.us(others):.1f} |")
    lines += ["", "| microkernel | calling thread µs | other threads µs | vector registers spilled |"]
    lines.append("|---|---:|---:|---:|")
    kernels = sorted((f for f in sampled.values() if f.kernel), key=lambda f: -(f.calling + f.others))
    for f in kernels[:top]:
        spills = "" if f.spills is None else str(f.spills)
        lines.append(f"| {f.kernel} | {samples.us(f.calling):.1f} | {samples.us(f.others):.1f} | {spills} |")
    return lines


def child(program: Path, threads: int, seconds: float) -> None:
    """The profiled process: one program, its input prepared once, run for ``seconds``; prints its count of
    runs and its calling thread's id (the process id: Python calls from the main thread)."""
    import numpy as np

    session = load(program, threads)
    images = np.load(program.parent / "images.npy")
    x = session.prepare(images[:1])
    end, runs = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        session.run(x)
        runs += 1
    print(runs, os.getpid())


def markdown(folder: Path, threads: int, runs: int, seconds: float) -> str:
    programs = {p["file"]: p for p in json.loads((folder / "programs.json").read_text())}
    lines = [f"Profile, {threads} thread(s), on `{folder}`.", ""]
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
        samples = perf_samples(folder / file, threads, seconds)
        lines += [
            f"**{programs[file]['name']}** (perf, CPU µs per run on each thread; {samples.runs} runs, "
            f"{1000 * samples.wall_ms:.1f} µs of wall time each with loading and perf's own cost):",
            "",
            *time_tables(samples, library if file.endswith(".pte") else None),
            "",
        ]
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
    parser.add_argument("--seconds", type=positive_float, default=5.0, help="perf sampling per program")
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
