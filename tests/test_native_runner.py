"""The torch-free native runner: exact golden parity, the app without torch, bad files as one error line."""

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import crashing_program, write_colour_images

import edge.native.build as native_build
import edge.native.runner as native_runner
from edge.bundle import APP_METHOD, FORWARD, load_bundle
from edge.native import NativeError, Runner

ROOT = Path(__file__).resolve().parent.parent
# Imported by every Python started with it on PYTHONPATH: torch, torchao, the executorch Python package,
# Lightning and our training/export code then fail to import, as on a device that never had them.
NO_TORCH = """
import importlib.abc, sys
BLOCKED = ("torch", "torchao", "executorch", "lightning", "pytorch_lightning", "torchmetrics", "training", "export")
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the device has no torch")
sys.meta_path.insert(0, Blocker())
"""


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory):
    site = tmp_path_factory.mktemp("no_torch")
    (site / "sitecustomize.py").write_text(NO_TORCH)
    return os.environ | {"PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    """Here a real program is enough, not a trained one: the untrained tiny bundle (seconds, not minutes)."""
    return tiny_bundle


def run(args, env=None, cwd=None, timeout=300):
    return subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )


def test_golden_logits_are_reproduced_exactly(bundle):
    loaded = load_bundle(bundle, threads=1)
    golden = np.load(bundle / "golden.npz")
    got = np.concatenate([loaded.logits(x[None]) for x in golden["inputs"]])
    assert got.dtype == np.float32 and np.array_equal(got, golden["logits"])


def test_the_blocker_really_blocks_torch(no_torch_env):
    result = run(["-c", "import torch"], env=no_torch_env)
    assert result.returncode != 0 and "blocked" in result.stderr


def test_edge_run_eval_and_device_tests_without_torch(bundle, no_torch_env, tmp_path):
    live = run(
        [
            "-m",
            "edge",
            "run",
            bundle,
            "--source",
            "procedural",
            "--fps",
            "0",
            "--headless",
            "--max-frames",
            "20",
            "--jsonl",
            "-",
        ],
        env=no_torch_env,
    )
    assert live.returncode == 0, live.stderr[-2000:]
    assert len(live.stdout.splitlines()) == 20 and "20 frames" in live.stderr

    folder = write_colour_images(tmp_path / "unseen", per_class=4, seed=3)
    evaluated = run(["-m", "edge", "eval", bundle, folder, "--json"], env=no_torch_env)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads(evaluated.stdout)["n"] == 12

    report = tmp_path / "device_report.json"
    device = run(
        [
            "-m",
            "pytest",
            "-c",
            ROOT / "device_tests" / "pytest.ini",
            ROOT / "device_tests",
            "-q",
            "--bundle",
            bundle,
            "--report",
            report,
            "--device-facts",
            tmp_path / "none.json",
        ],
        env=no_torch_env,
        cwd=tmp_path,
    )
    assert device.returncode == 0, device.stdout[-3000:]
    figures = json.loads(report.read_text())["figures"]
    assert figures["parity"]["max_abs_logit_diff"] == 0.0 and figures["latency"] and figures["pipeline"]
    assert figures["preprocessing_parity"]["max_abs_logit_diff"] == 0.0, "same OpenCV here: the same pixels"


def test_runners_with_different_thread_counts_take_turns(bundle):
    """Resizing XNNPACK's pool frees the one loaded methods point to: each runner must reload, not crash.
    In a subprocess, so a regression is a failed test rather than a dead pytest."""
    script = textwrap.dedent(f"""
        import gc, numpy as np
        from edge.bundle import load_bundle
        golden = np.load({str(bundle / "golden.npz")!r})
        one, two = load_bundle({str(bundle)!r}, 1), load_bundle({str(bundle)!r}, 2)
        gc.collect()
        clutter = [np.full(1 << 16, i, np.uint8) for i in range(64)]
        for i in range(6):
            runner = (one, two)[i % 2]
            assert np.array_equal(runner.logits(golden["inputs"][:1]), golden["logits"][:1]), i
        print("ok", one.runner.pool_threads())
    """)
    result = run(["-c", script], cwd=ROOT)
    assert result.returncode == 0 and result.stdout.split() == ["ok", "2"], result.stderr[-2000:]


def test_the_graph_is_planned_once_and_its_plan_reused_with_the_same_answers(bundle):
    """XNNPACK plans a graph for its shapes; the runner has it do so only when they change (runner.cpp). A
    second runner of the same program is a new graph, planned again. In a subprocess: counts are per process."""
    script = textwrap.dedent(f"""
        import numpy as np
        from edge.bundle import APP_METHOD
        from edge.native import Runner
        golden = np.load({str(bundle / "golden.npz")!r})
        pte = open({str(bundle / "model.pte")!r}, "rb").read()
        first = Runner(pte, 1, APP_METHOD)
        x = golden["inputs"][:1]
        answers = [first(x) for _ in range(20)]
        made, reused, _, _ = Runner.plan_counts()
        second = Runner(pte, 1, APP_METHOD)
        again = second(x)
        made2, reused2, _, _ = Runner.plan_counts()
        assert all(np.array_equal(a, golden["logits"][:1]) for a in answers + [again])
        print(made, reused, made2 - made, reused2 - reused)
    """)
    result = run(["-c", script], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    made, reused, made_by_second, reused_by_second = map(int, result.stdout.split())
    assert made >= 1 and reused >= 19 and made_by_second >= 1 and reused_by_second >= 0, result.stdout


def test_the_graph_is_set_up_again_when_its_input_moves_and_only_then(bundle):
    """The program reads the caller's input in place, so XNNPACK must be given its address again when it moves;
    the runner passes that setup on only then (runner.cpp). A frame buffer refilled in place keeps its setup and
    still gives each frame its own answer; two buffers taking turns are set up on every turn, and each answer is
    its own input's. In a subprocess: counts are per process."""
    script = textwrap.dedent(f"""
        import numpy as np
        from edge.bundle import APP_METHOD
        from edge.native import Runner
        golden = np.load({str(bundle / "golden.npz")!r})
        pte = open({str(bundle / "model.pte")!r}, "rb").read()
        runner = Runner(pte, 1, APP_METHOD)
        inputs, logits = golden["inputs"][:2], golden["logits"][:2]
        assert not np.array_equal(logits[0], logits[1])
        buffers = [runner.laid_out(inputs[i : i + 1]) for i in (0, 1)]
        frame = inputs[0].transpose(1, 2, 0).copy().transpose(2, 0, 1)[None]  # as the preprocessor makes it
        runner(frame)
        start = Runner.plan_counts()
        for i in range(6):
            frame[...] = inputs[i % 2]
            assert np.array_equal(runner(frame), logits[i % 2 : i % 2 + 1]), ("refilled", i)
        refilled = Runner.plan_counts()
        for i in range(6):
            assert np.array_equal(runner(buffers[i % 2]), logits[i % 2 : i % 2 + 1]), ("turns", i)
        turns = Runner.plan_counts()
        print(refilled.setups_made - start.setups_made, refilled.setups_reused - start.setups_reused,
              turns.setups_made - refilled.setups_made, turns.setups_reused - refilled.setups_reused)
    """)
    result = run(["-c", script], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    made_refilled, reused_refilled, made_turns, reused_turns = map(int, result.stdout.split())
    assert (made_refilled, reused_refilled) == (0, 6), result.stdout
    assert made_turns == 6 and reused_turns == 0, result.stdout


def test_an_array_refilled_between_calls_is_read_afresh_whatever_its_layout(bundle):
    """The runner remembers the address of the array a thread last passed in place; one it had to copy is
    copied again on every call, and one whose dtype was reassigned is converted again, so no call reads a
    stale copy or reinterprets the old bytes."""
    golden = np.load(bundle / "golden.npz")
    (x0, x1), (l0, l1) = golden["inputs"][:2, None], golden["logits"][:2]
    runner = load_bundle(bundle, threads=1).runner
    layouts = {
        "NCHW, copied into the program's order": np.copy,
        "laid out, read in place": runner.laid_out,
        "the preprocessor's HWC memory, read in place": lambda x: (
            x[0].transpose(1, 2, 0).copy().transpose(2, 0, 1)[None]
        ),
    }
    for name, make in layouts.items():
        frame = make(x0)
        assert np.array_equal(runner(frame), l0[None]), name
        frame[...] = x1
        assert np.array_equal(runner(frame), l1[None]), name
    frame = runner.laid_out(x0)
    runner(frame)
    frame.dtype = np.int32
    assert not np.allclose(runner(frame), l0[None]), "the old float32 bytes were read as before"
    assert np.array_equal(runner(frame), runner(frame.astype(np.float32)))


def test_each_call_returns_logits_of_its_own_that_later_calls_and_other_threads_leave_alone(bundle):
    """The runner writes into one buffer per calling thread and hands back a copy: a frame's logits stay as
    they were after the next call, and a thread whose call returns while another thread's call runs to its
    end (the native call releases the GIL) still gets its own input's answer. The second case is forced:
    thread a's native call returns only after thread b's has written its logits."""
    golden = np.load(bundle / "golden.npz")
    (xa, xb), (la, lb) = golden["inputs"][:2, None], golden["logits"][:2]
    assert not np.array_equal(la, lb), "the check needs two inputs with different answers"
    runner = load_bundle(bundle, threads=1).runner
    first = runner(xa)
    runner(xb)
    assert np.array_equal(first[0], la), "the first answer was overwritten by the second call"

    native, a_ran, b_done, got = runner._run, threading.Event(), threading.Event(), {}

    def a_waits_for_b(*args):
        code = native(*args)
        if threading.current_thread().name == "a":
            a_ran.set()
            b_done.wait(60)
        return code

    def call(name, x):
        if name == "b":
            a_ran.wait(60)
        got[name] = runner(x)[0]
        if name == "b":
            b_done.set()

    runner._run = a_waits_for_b
    threads = [threading.Thread(target=call, args=(name, x), name=name) for name, x in (("a", xa), ("b", xb))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert np.array_equal(got["b"], lb) and np.array_equal(got["a"], la), "a thread got another thread's logits"


CLOCK_COUNTER = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <time.h>
static atomic_long reads;
long clock_reads(void) { return atomic_load(&reads); }
int clock_gettime(clockid_t id, struct timespec* ts) {
  static int (*real)(clockid_t, struct timespec*);
  if (!real) real = (int (*)(clockid_t, struct timespec*))dlsym(RTLD_NEXT, "clock_gettime");
  atomic_fetch_add(&reads, 1);
  return real(id, ts);
}
"""


def test_xnnpack_does_not_time_each_operator_and_the_delegate_logs_no_error(bundle, tmp_path):
    """The wheel's delegate has XNNPACK read the clock after every operator of every call; the runner creates
    its runtimes without that (runner.cpp). Counted with a clock_gettime that counts its callers (preloaded),
    a call of this program reads the clock 3 times untimed and 35 times timed. The delegate's questions about
    the profile get answers it accepts: the runtime logs no error."""
    counter = tmp_path / "libclockcount.so"
    subprocess.run(
        [os.environ.get("CC") or "gcc", "-O2", "-shared", "-fPIC", "-x", "c", "-", "-o", str(counter), "-ldl"],
        input=CLOCK_COUNTER,
        text=True,
        check=True,
    )
    script = textwrap.dedent(f"""
        import ctypes, numpy as np
        from edge.bundle import APP_METHOD
        from edge.native import Runner
        reads = ctypes.CDLL(None).clock_reads
        runner = Runner(open({str(bundle / "model.pte")!r}, "rb").read(), 1, APP_METHOD)
        x = np.load({str(bundle / "golden.npz")!r})["inputs"][:1]
        runner(x)
        before = reads()
        for _ in range(50):
            runner(x)
        print((reads() - before) / 50)
    """)
    env = os.environ | {"LD_PRELOAD": str(counter), "EDGE_RUNTIME_LOG": "1"}
    result = run(["-c", script], env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout) < 8, f"{result.stdout.strip()} clock reads per call: XNNPACK times each operator"
    errors = [line for line in result.stderr.splitlines() if line.startswith("executorch E")]
    assert not errors, errors


def test_wrong_input_shape_is_an_error_not_a_crash(bundle):
    loaded = load_bundle(bundle)
    size = loaded.input.size
    with pytest.raises(NativeError, match="differs from the program's"):
        loaded.logits(np.zeros((1, 3, size + 1, size), np.float32))
    loaded.runner.close()
    with pytest.raises(NativeError, match="closed"):
        loaded.logits(np.zeros((1, 3, size, size), np.float32))


def test_missing_runtime_libraries_and_foreign_builds_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(native_build, "executorch_dir", lambda: tmp_path)
    with pytest.raises(NativeError, match="runtime libraries are missing"):
        native_build.runtime_lib_dir()
    monkeypatch.undo()

    built = native_build.library_path()
    foreign = tmp_path / built.name
    data = bytearray(built.read_bytes())
    data[18:20] = (183 if os.uname().machine != "aarch64" else 62).to_bytes(2, "little")
    foreign.write_bytes(bytes(data))
    with pytest.raises(NativeError, match=r"is built for (aarch64|x86_64), not .*rebuild it here"):
        native_runner.check_elf(foreign)
    (tmp_path / "junk.so").write_bytes(os.urandom(64))
    with pytest.raises(NativeError, match="not a shared library"):
        native_runner.check_elf(tmp_path / "junk.so")


def test_an_unbuilt_runner_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setattr(native_runner, "library_path", lambda: tmp_path / "libedge_runner-none.so")
    native_runner.library.cache_clear()
    try:
        with pytest.raises(NativeError, match="make setup"):
            Runner(b"")
    finally:
        native_runner.library.cache_clear()


def test_build_is_keyed_by_source_and_machine():
    path = native_build.library_path()
    assert path.is_file() and path.parent.parent == Path(sys.prefix) / "lib"
    assert native_build.source_key() in path.name and os.uname().machine in path.name


@pytest.fixture(scope="module")
def edge_bench(tmp_path_factory):
    """edge-bench built for this machine, as deploy/environment/runner_package.py builds it for a phone."""
    from deploy.environment.runner_package import compile_command

    out = tmp_path_factory.mktemp("edge_bench") / "edge-bench"
    compile_command(
        os.environ.get("CXX") or "g++", native_build.executorch_dir() / "include", native_build.runtime_lib_dir(), out
    )
    return out


def bench(edge_bench, *args) -> subprocess.CompletedProcess:
    env = os.environ | {"LD_LIBRARY_PATH": str(native_build.runtime_lib_dir())}
    return subprocess.run([str(edge_bench), *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


def test_the_runner_as_a_command_gives_the_librarys_outputs_and_times_each_thread_count(
    edge_bench, tiny_bundle, tmp_path
):
    golden = np.load(tiny_bundle / "golden.npz")
    runner = Runner((tiny_bundle / "model.pte").read_bytes(), threads=1, method=APP_METHOD)
    assert runner.input_order == (0, 2, 3, 1), "the app's method reads NHWC memory"
    runner.in_memory_order(golden["inputs"]).tofile(tmp_path / "in.f32")  # raw bytes: edge-bench takes them as they are
    result = bench(
        edge_bench,
        tiny_bundle / "model.pte",
        "--method",
        APP_METHOD,
        "--inputs",
        tmp_path / "in.f32",
        "--outputs",
        tmp_path / "out.f32",
        "--threads",
        "1,2",
        "--runs",
        "7",
        "--warmup",
        "1",
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    outputs = np.fromfile(tmp_path / "out.f32", np.float32).reshape(len(golden["inputs"]), -1)
    library = np.concatenate([runner(x[None]) for x in golden["inputs"]])
    runner.close()
    np.testing.assert_array_equal(outputs, library)
    assert figures["input_shape"] == [1, 3, 32, 32] and figures["output_shape"] == [1, 3] and figures["images"] == 8
    assert figures["method"] == APP_METHOD
    assert [row["threads"] for row in figures["latency_ms"]] == [1, 2]
    assert all(len(row["samples_ms"]) == 7 and row["p50"] <= row["p90"] <= row["p99"] for row in figures["latency_ms"])
    assert figures["peak_rss_kb"] > 0 and figures["load_ms"] > 0 and figures["cpus"]["cores"]
    # Each thread count loads the method again (a new XNNPACK graph, planned once); every other run reuses it.
    runs = len(golden["inputs"]) + 2 * (1 + 7)
    assert figures["xnnpack_plans"]["reused"] >= runs - 2 * 2, figures["xnnpack_plans"]
    # Warm-up and timed runs read one input in place: set up on the first of them, reused by the rest.
    assert figures["xnnpack_setups"]["reused"] >= 2 * (7 - 1), figures["xnnpack_setups"]
    assert not (tmp_path / "out.f32.partial").exists()

    golden["inputs"].tofile(tmp_path / "nchw.f32")  # forward, edge-bench's default, reads plain NCHW bytes
    result = bench(
        edge_bench, tiny_bundle / "model.pte", "--inputs", tmp_path / "nchw.f32", "--outputs", tmp_path / "o"
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.fromfile(tmp_path / "o", np.float32).reshape(library.shape), library, atol=1e-4)


@pytest.mark.parametrize(
    "args,code,message",
    [
        ([], 2, "give the program"),
        (["{pte}", "--runs", "-1"], 2, "--runs: want a whole number from 1"),
        (["{pte}", "--threads", "0"], 2, "--threads: want a whole number from 1"),
        (["{pte}", "--threads", ""], 2, "--threads wants a list"),
        (["{pte}", "--bogus", "1"], 2, "unknown option --bogus"),
        (["{missing}"], 1, "cannot read program"),
        (["{junk}"], 1, "cannot load the program: not an ExecuTorch program"),
        (["{pte}", "--inputs", "{junk}"], 1, "not a whole number of float32 inputs of [1, 3, 32, 32]"),
        (["{pte}", "--inputs", "/dev/zero"], 1, "the inputs /dev/zero is not a regular file"),
        (["{pte}", "--inputs", "{inputs}", "--outputs", "{folder}"], 1, "cannot write {folder}: Is a directory"),
        (["{pte}", "--outputs", "{out}"], 2, "--outputs needs --inputs"),
        (["{pte}", "--method", "nope"], 1, "no method nope (it has: forward, forward_channels_last)"),
        (["{pte}", "--method", ""], 2, "--method wants a method name"),
    ],
)
def test_the_command_says_what_is_wrong_in_one_line(edge_bench, tiny_bundle, tmp_path, args, code, message):
    (tmp_path / "junk").write_bytes(os.urandom(1000))
    (tmp_path / "folder").mkdir()
    np.zeros((2, 3, 32, 32), np.float32).tofile(tmp_path / "inputs.f32")
    files = {
        "pte": tiny_bundle / "model.pte",
        "missing": tmp_path / "missing.pte",
        "junk": tmp_path / "junk",
        "out": tmp_path / "out.f32",
        "inputs": tmp_path / "inputs.f32",
        "folder": tmp_path / "folder",
    }
    result = bench(edge_bench, *(a.format(**files) for a in args))
    assert result.returncode == code and result.stdout == "", result
    assert result.stderr.startswith("error: ") and message.format(**files) in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and not list(tmp_path.glob("*.partial")), "one line, nothing half-written"


def test_closing_while_other_threads_run_is_a_clean_error_not_a_crash(tiny_bundle):
    """Four threads calling the model while it is closed, 30 times over, in a subprocess so that a crash shows as
    a signal: the old runner freed its handle under them (a segfault or an abort within a few rounds)."""
    script = textwrap.dedent(f"""
        import threading, numpy as np
        from edge.bundle import load_bundle
        from edge.native import NativeError
        x = np.zeros((1, 3, 32, 32), np.float32)
        closed = 0
        for _ in range(30):
            runner = load_bundle({str(tiny_bundle)!r}).runner
            started, outcomes = threading.Barrier(5), []
            def work():
                started.wait()
                try:
                    while True:
                        runner(x)
                except NativeError as e:
                    outcomes.append(str(e))
            threads = [threading.Thread(target=work) for _ in range(4)]
            for t in threads:
                t.start()
            started.wait()
            runner(x)
            runner.close()
            for t in threads:
                t.join(60)
            closed += outcomes == ["the runner is closed"] * 4
        print(closed)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, f"exit {result.returncode} (negative: a signal): {result.stderr[-2000:]}"
    assert result.stdout.strip() == "30", "every thread ended with the one clean error, every round"


def test_programs_of_either_memory_order_give_the_same_answers_for_any_nchw_array():
    """A format-1 program reads NCHW memory, export's programs NHWC: the runner takes the order from the
    program and lays out whatever array it is given, contiguous or a strided view, writable or not."""
    import torch

    from export.lower import to_pte
    from training.models import create_model

    torch.manual_seed(0)
    model = create_model("v1", num_classes=5, width_mult=0.25).eval()
    with torch.no_grad():
        model.classifier[-1].bias.copy_(torch.arange(5.0))  # an untrained head answers ~0: give it a spread
    pte = to_pte(model, 32)[0]
    nhwc, nchw = Runner(pte, threads=1, method=APP_METHOD), Runner(pte, threads=1, method=FORWARD)
    assert (nhwc.input_order, nchw.input_order) == ((0, 2, 3, 1), (0, 1, 2, 3))
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32) * 3
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    strided = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # the preprocessor's layout
    read_only = nhwc.laid_out(x)
    read_only.flags.writeable = False  # memory the runner cannot take a writable view of (np.frombuffer's)
    for runner in (nhwc, nchw):
        for given in (x, strided, nhwc.laid_out(x), read_only):
            np.testing.assert_allclose(runner(given), expected, rtol=1e-4, atol=1e-4)
    assert np.shares_memory(nhwc.in_memory_order(strided), strided), "NHWC memory goes to the program uncopied"
    nhwc.close()
    nchw.close()


def test_edge_bench_refuses_a_program_that_crashes_the_runtime_in_one_line(edge_bench, tiny_bundle, tmp_path):
    """edge-bench runs where there is no Python (a phone): it loads the program in a forked child first."""
    (tmp_path / "crash.pte").write_bytes(crashing_program(tiny_bundle))
    result = bench(edge_bench, tmp_path / "crash.pte", "--method", APP_METHOD, "--runs", "1", "--threads", "1")
    assert result.returncode == 1 and result.stdout == "" and result.stderr.count("\n") == 1, result
    assert result.stderr.startswith(
        (f"error: the program crashes the ExecuTorch runtime when its {APP_METHOD}", "error: execute failed")
    ), "a signal in the forked child is one line; where the garbage lands as an error, that is one line too"
