"""make bench-peers' own logic, in the project's environment: the peer runtimes live in .venv-peers only,
so what needs them (the conversions, the timings) runs in make bench-peers, not here."""

import io
import itertools
import json
import platform
import shutil

import cv2
import numpy as np
import pytest
import torch

from peers import cli, profile, remote
from peers import pictures as peers_pictures
from peers.convert import decompose_hard_activations
from peers.measure import measure, measure_on_request
from peers.runtimes import PeerError, load, quantize
from peers.timing import Plan, alternate, summary, turns
from training.models import create_model


def test_every_runtime_gets_one_turn_per_round_and_no_runtime_always_follows_the_same_one():
    names = ["a", "b", "c", "d"]
    order = list(turns(names, 40))
    assert all(sorted(order[r * 4 : r * 4 + 4]) == names for r in range(40)), "one turn each per round"
    follows = {(before, after) for before, after in itertools.pairwise(order) if before != after}
    assert follows == {(x, y) for x in names for y in names if x != y}, "each follows every other"
    assert list(turns(names, 40)) == order and list(turns(names, 40, seed=1)) != order, "seeded"


class FakeClock:
    """Each call of runtime ``name`` takes ``cost[name]`` seconds of this clock."""

    def __init__(self, cost: dict[str, float]) -> None:
        self.now, self.cost, self.calls = 0.0, cost, {name: 0 for name in cost}

    def __call__(self) -> float:
        return self.now

    def runtime(self, name: str):
        def call() -> None:
            self.calls[name] += 1
            self.now += self.cost[name]

        return call


def test_timed_calls_measure_only_themselves_after_the_untimed_settling_calls():
    clock = FakeClock({"fast": 0.001, "slow": 0.004})
    plan = Plan(rounds=5, calls=4, settle_s=0.01)
    samples = alternate({name: clock.runtime(name) for name in clock.cost}, plan, clock=clock)
    assert samples["fast"] == pytest.approx([1.0] * 20) and samples["slow"] == pytest.approx([4.0] * 20)
    # Settling: calls until 10 ms of this clock passed, at least one: 10 for fast, 3 for slow, per turn.
    assert clock.calls == {"fast": 5 * (10 + 4), "slow": 5 * (3 + 4)}
    slow = summary(samples["slow"])
    assert (slow["p50_ms"], slow["p90_ms"], slow["p99_ms"], slow["runs"]) == pytest.approx((4.0, 4.0, 4.0, 20))
    assert slow["samples_ms"] == pytest.approx([4.0] * 20), "every sample kept"


@pytest.mark.parametrize("bad", [{"rounds": 0}, {"calls": 0}, {"settle_s": -1.0}, {"settle_s": float("nan")}])
def test_a_plan_that_cannot_time_anything_is_refused(bad):
    with pytest.raises(ValueError):
        Plan(**bad)


def test_int8_inputs_round_to_the_nearest_level_and_saturate():
    x = np.array([-10.0, -0.26, -0.24, 0.0, 0.26, 10.0], np.float32)
    assert quantize(x, 0.5, 0, np.int8).tolist() == [-20, -1, 0, 0, 1, 20]
    assert quantize(x, 0.01, 0, np.int8).tolist() == [-128, -26, -24, 0, 26, 127]


def test_a_file_of_no_known_runtime_or_of_a_runtime_not_installed_is_one_line(tmp_path):
    with pytest.raises(PeerError, match="not a program of a known runtime"):
        load(tmp_path / "model.bin", 1)
    (tmp_path / "model.tflite").write_bytes(b"\0" * 16)
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        with pytest.raises(PeerError, match="LiteRT is not installed here"):
            load(tmp_path / "model.tflite", 1)
    else:
        with pytest.raises(PeerError, match="LiteRT cannot load model.tflite"):
            load(tmp_path / "model.tflite", 1)


def test_decomposed_hard_activations_compute_the_same_function():
    torch.manual_seed(0)
    model = create_model("v3_small", 10, 0.5).eval()
    decomposed = decompose_hard_activations(model)
    assert not any(isinstance(m, torch.nn.Hardswish | torch.nn.Hardsigmoid) for m in decomposed.modules())
    assert any(isinstance(m, torch.nn.Hardswish) for m in model.modules()), "the original is left as it was"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(decomposed(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.fixture
def ours_only(tiny_bundle, tmp_path):
    """A converted folder with only our program: the eager logits are the runner's own answers, except
    image 0's, where another class leads by far."""
    from edge.bundle import APP_METHOD
    from edge.native import Runner

    folder = tmp_path / "peers"
    folder.mkdir()
    shutil.copy(tiny_bundle / "model.pte", folder / "ours-fp32.pte")
    images = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    runner = Runner((tiny_bundle / "model.pte").read_bytes(), 1, APP_METHOD)
    eager = np.concatenate([runner(x[None]) for x in images])
    runner.close()
    wrong = eager.argmin(1)[0]
    eager[0, wrong] = eager[0].max() + 10 * (eager.max() - eager.min() + 1)
    np.save(folder / "images.npy", images)
    np.save(folder / "eager.npy", eager)
    programs = [
        {"name": "ours fp32", "file": "ours-fp32.pte", "runtime": "ExecuTorch", "precision": "fp32", "ours": True}
    ]
    (folder / "programs.json").write_text(json.dumps(programs))
    return folder


def test_measuring_checks_each_program_against_eager_and_times_it(ours_only):
    result = measure(ours_only, 1, Plan(rounds=2, calls=3, settle_s=0.0))
    (row,) = result["programs"]
    assert row["runs"] == 6 and 0 < row["p50_ms"] <= row["p90_ms"]
    assert row["vs_eager"]["images"] == 6 and row["vs_eager"]["top1_agreement"] == pytest.approx(5 / 6)
    assert row["top1_vs_ours_int8"] is None, "no int8 program of ours to compare with"
    assert row["bytes"] == (ours_only / "ours-fp32.pte").stat().st_size
    assert cli.check_fp32(result) == [
        f"ours fp32: its top-1 is eager's on 83.3% of the images (largest logit difference "
        f"{row['vs_eager']['max_abs_logit_diff']:.2g})"
    ]


def test_a_program_on_request_takes_one_turn_per_line_and_answers_each(ours_only):
    requests, replies = io.StringIO("turn\nturn\n"), io.StringIO()
    result = measure_on_request(ours_only, 1, Plan(rounds=1, calls=3, settle_s=0.0), "ours fp32", requests, replies)
    assert replies.getvalue() == "ready\ndone\ndone\n"
    (row,) = result["programs"]
    assert row["runs"] == 6 and row["vs_eager"]["images"] == 6


def with_ours_int8(folder):
    programs = json.loads((folder / "programs.json").read_text())
    shutil.copy(folder / "ours-fp32.pte", folder / "ours-int8.pte")
    programs.append(programs[0] | {"name": "ours int8", "file": "ours-int8.pte", "precision": "int8"})
    (folder / "programs.json").write_text(json.dumps(programs))


def recording_turn_takers(monkeypatch) -> list:
    """cli's TurnTaker, each one kept, with (name, pid) of every turn it was given."""
    takers, turns_given = [], []

    class Recording(cli.TurnTaker):
        def __init__(self, *args) -> None:
            super().__init__(*args)
            takers.append(self)

        def turn(self) -> None:
            turns_given.append((self.name, self.process.pid))
            super().turn()

    monkeypatch.setattr(cli, "TurnTaker", Recording)
    return takers, turns_given


def test_alone_each_program_is_timed_in_processes_of_its_own_that_take_turns(ours_only, tmp_path, monkeypatch):
    """--alone: three processes per program, one generation at a time, whose turns interleave as in one
    process; their rows joined (the agreement with ours int8 computed across processes from each row's
    top-1), and the distributions drawn."""
    with_ours_int8(ours_only)
    takers, turns_given = recording_turn_takers(monkeypatch)
    result = cli.measure_alone(ours_only, 1, Plan(rounds=4, calls=3, settle_s=0.0))
    assert sorted(t.name for t in takers) == ["ours fp32"] * 3 + ["ours int8"] * 3
    assert len({t.process.pid for t in takers}) == 6 and all(t.process.returncode == 0 for t in takers)
    assert len(turns_given) == 3 * 2 * 2, "the 4 rounds split into 2 per process, each a turn per program"
    for i in range(0, len(turns_given), 4):
        generation = turns_given[i : i + 4]
        assert sorted(name for name, _ in generation[:2]) == ["ours fp32", "ours int8"], "taking turns"
        assert len({pid for _, pid in generation}) == 2, "both processes of a generation alive at once"
    assert [r["name"] for r in result["programs"]] == ["ours fp32", "ours int8"]
    assert all(r["top1_vs_ours_int8"] == 1.0 and len(r["samples_ms"]) == 18 for r in result["programs"])
    assert all(len(r["process_p50_ms"]) == 3 for r in result["programs"]) and cli.process_lines(result)
    assert result["plan"]["rounds"] == 4
    picture = peers_pictures.draw(result, "test", tmp_path / "latency.png")
    assert picture is not None and cv2.imread(str(picture)).std() > 10
    with pytest.raises(PeerError, match="no program named 'nope'"):
        measure(ours_only, 1, Plan(rounds=1, calls=1, settle_s=0.0), only="nope")


def test_a_program_that_fails_in_its_own_process_is_one_error_and_no_process_is_left(ours_only, monkeypatch):
    with_ours_int8(ours_only)
    (ours_only / "ours-int8.pte").write_bytes(np.random.default_rng(0).bytes(4096))
    takers, _ = recording_turn_takers(monkeypatch)
    with pytest.raises(PeerError, match="timing ours int8 in its own process failed"):
        cli.measure_alone(ours_only, 1, Plan(rounds=3, calls=1, settle_s=0.0))
    assert [t.name for t in takers] == ["ours fp32"], "the program that loaded"
    assert takers[0].process.poll() is not None, "and its process is gone"


def test_the_tables_compare_every_program_with_our_int8_one():
    def row(name, ms, ours=False, precision="int8"):
        vs = {"top1_agreement": 1.0, "agreement": 1.0}
        return {
            "name": name,
            "ours": ours,
            "precision": precision,
            "runtime_label": "X",
            "p50_ms": ms,
            "p90_ms": ms,
            "p99_ms": ms,
            "bytes": 2e6,
            "vs_eager": vs,
            "top1_vs_ours_int8": 0.5,
        }

    host = {"programs": [row("ours int8", 2.0, True), row("LiteRT int8", 1.0)]}
    device = {"programs": [row("ours int8", 50.0, True), row("LiteRT int8", 75.0)]}
    assert "| LiteRT int8 | X | 1.000 | 1.000 | 1.000 | 0.50x | 2.00 | 100.0% | 100.0% | 50.0% |" in cli.table(host)
    assert "| LiteRT int8 | 0.50x | 1.50x | 75.00 | 100.0% |" in cli.ratios(host, device)


def test_the_report_names_the_cpu_generation_that_a_vague_virtual_machine_name_hides():
    zen5 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
    assert cli.cpu_model(zen5 + zen5.replace("0\n", "1\n", 1)).startswith("AMD EPYC (family 26, model 2), ")
    arm = "processor\t: 0\nBogoMIPS\t: 108.00\nCPU part\t: 0xd0b\n"
    assert cli.cpu_model(arm).split(",")[0] == platform.machine(), "no name or family on ARM: the machine alone"


def test_the_profile_splits_each_threads_samples_into_microseconds_per_run_by_what_they_are():
    """``perf report -n --sort pid,dso,sym`` lines as LiteRT's process gives them: the calling thread (the
    process id) and a pool worker; samples / PERF_HZ / runs is each function's CPU time per run."""
    gemm = "xnn_f32_gemm_minmax_ukernel_7x32__avx512f_broadcast"
    report = "\n".join(
        [
            f"    40.00%   800   4242:python   libpywrap_litert_common.so  [.] {gemm}",
            f"    30.00%   600   4250:python   libpywrap_litert_common.so  [.] {gemm}",
            "    15.00%   300   4250:python   libpywrap_litert_common.so  [.] thread_main",
            "     5.00%   100   4242:python   libpywrap_litert_common.so  [.] pthreadpool_parallelize",
            "     5.00%   100   4242:python   libpython3.11.so.1.0        [.] _PyEval_EvalFrameDefault",
            "     4.00%    80   4242:python   [kernel.kallsyms]           [k] __schedule",
            "     1.00%    20   4242:python   libpywrap_litert_common.so  [.] xnn_invoke_runtime",
            "not a sample line",
        ]
    )
    rows = profile.parse_report(report, caller=4242)
    assert len(rows) == 7 and rows[0] == (True, "libpywrap_litert_common.so", rows[0][2], 800)
    samples = profile.Samples(rows, runs=1000, wall_ms=1.0)  # one sample: 1 / PERF_HZ s over 1,000 runs
    lines = profile.time_tables(samples, library=None)
    assert "| microkernels | 400.0 | 300.0 |" in lines
    assert "| thread pool: handing out work and waiting | 50.0 | 150.0 |" in lines
    assert "| Python and the binding | 50.0 | 0.0 |" in lines
    assert "| the OS and libc | 40.0 | 0.0 |" in lines
    assert "| the runtime around the kernels | 10.0 | 0.0 |" in lines
    kernel_rows = [line for line in lines if "ukernel" in line]
    assert kernel_rows == [f"| `{gemm}` | 400.0 | 300.0 |  |"]


def test_a_stripped_kernel_is_named_by_its_instructions_and_a_float_tile_by_its_fmas():
    gemm_7x32 = "".join(f"  {i:x}:\tvfmadd231ps %zmm{i % 7},%zmm{7 + i % 2},%zmm{14 + i}\n" for i in range(14))
    assert profile.describe(gemm_7x32) == "fp32 FMA kernel, 14 FMAs [zmm]"
    assert profile.describe("  10:\tvpdpbusd %zmm1,%zmm2,%zmm3\n  14:\tvfmadd231ps %zmm1,%zmm2,%zmm3\n") == (
        "int8 GEMM (AVX-512 VNNI) [zmm]"
    )
    assert profile.describe("  10:\tmov %rax,%rbx\n") == "", "code that is no kernel is not called one"


def test_the_device_gets_the_programs_the_code_and_every_runtime_wheel_but_numpy(ours_only, tmp_path):
    from deploy.environment import Environment
    from deploy.environment.provision import RunnerPlan

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("numpy-2.4.6-cp311-cp311-manylinux_2_27_aarch64.whl", "ncnn-1-cp311-cp311-manylinux_2_28_aarch64.whl"):
        (wheels / name).write_bytes(b"")
    staged = tmp_path / "staged"
    plan = RunnerPlan(None, "already in the environment", present=True)
    remote.stage(
        ours_only, staged, wheels, Environment("/h", "/h/m", "/h/m/v-1/bin/python", "/h/m/v-1", "/h/m/v", None, plan)
    )
    assert sorted(p.name for p in (staged / "wheels").iterdir()) == ["ncnn-1-cp311-cp311-manylinux_2_28_aarch64.whl"]
    assert {"ours-fp32.pte", "images.npy", "eager.npy", "programs.json"} <= {
        p.name for p in (staged / "work").iterdir()
    }
    assert (staged / "peers" / "measure.py").is_file() and (staged / "edge" / "native" / "runner.py").is_file()
    assert (staged / "requirements.txt").read_text() and (staged / "requirements-nodeps.txt").read_text()
    assert [r.split("==")[0] for r in remote.requirements()] == ["ai-edge-litert", "onnxruntime", "ncnn"]


def test_an_output_folder_of_something_else_is_left_alone(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(PeerError, match="is not a folder of this benchmark"):
        cli.main(["--out", str(tmp_path)])
    assert (tmp_path / "mine.txt").read_text() == "keep"
    (tmp_path / cli.MARK).touch()
    assert cli.ours(tmp_path), "a conversion into it that was cut short: its next run may write over it"
    with pytest.raises(PeerError) as error:
        cli.main(["--reuse", "--out", str(tmp_path / "none")])
    assert str(error.value) == f"nothing to reuse in {tmp_path / 'none'}: run without --reuse first"
