"""The bundle format: versioned, typed, checked at load; a broken bundle is one error line everywhere."""

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import crashing_program, fake_meta, one_error_line

from deploy.release import check_bundle
from edge.bundle import (
    CONFUSION_PICTURE,
    FORMAT,
    BundleError,
    BundleMeta,
    check_replaceable,
    load_bundle,
    read_golden,
    read_meta,
    sole_writer,
    write_bundle,
)
from edge.command import run_main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    """Here a real program is enough, not a trained one: the untrained tiny bundle (seconds, not minutes)."""
    return tiny_bundle


def broken_copy(bundle: Path, into: Path, pte: bytes | None = None, edit=None) -> Path:
    """A copy of the bundle with another program (its sha256 fixed up, so only the content is wrong)
    and/or model.json edited by ``edit(meta)``."""
    shutil.copytree(bundle, into)
    meta = json.loads((into / "model.json").read_text())
    if pte is not None:
        (into / "model.pte").write_bytes(pte)
        meta["pte_sha256"] = hashlib.sha256(pte).hexdigest()
    if edit is not None:
        edit(meta)
    (into / "model.json").write_text(json.dumps(meta))
    return into


def programs(bundle: Path) -> dict[str, tuple[bytes, str]]:
    """Broken programs whose hash matches model.json, and the error each gives."""
    pte = (bundle / "model.pte").read_bytes()
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, len(pte), dtype=np.uint8).tobytes()
    cases = {f"truncated_{n}": (pte[:n], "not an ExecuTorch program") for n in (0, 8, 40)}
    cases |= {
        f"truncated_{name}": (pte[:n], "not a valid")
        for name, n in (("half", len(pte) // 2), ("last_byte", len(pte) - 1))
    }
    cases |= {
        f"random_{seed}": (
            np.random.default_rng(seed).integers(0, 256, len(pte), dtype=np.uint8).tobytes(),
            "not an ExecuTorch program",
        )
        for seed in (1, 2, 3)
    }
    cases["random_with_magic"] = (noise[:4] + pte[4:8] + noise[8:], "ExecuTorch program")
    cases["flipped_middle"] = (pte[: len(pte) // 2] + bytes([pte[len(pte) // 2] ^ 0xFF]) + pte[len(pte) // 2 + 1 :], "")
    return cases


def drop(key):
    return lambda meta: meta.pop(key)


def put(key, value):
    return lambda meta: meta.__setitem__(key, value)


def put_input(key, value):
    return lambda meta: meta["input"].__setitem__(key, value)


META_EDITS = {
    "no_format": (drop("format"), "predates format 1; re-export it"),
    "newer_format": (put("format", FORMAT + 1), "newer than this app reads"),
    "format_text": (put("format", "1"), "is not a version number"),
    "no_labels": (drop("labels"), "labels is missing"),
    "labels_text": (put("labels", "abc"), 'labels is "abc", want tuple'),
    "labels_empty": (put("labels", []), "0 labels for num_classes"),
    "labels_fewer": (lambda m: m.__setitem__("labels", m["labels"][:-1]), "labels for num_classes"),
    "labels_more": (
        lambda m: m.update(labels=[*m["labels"], "x"], num_classes=len(m["labels"]) + 1),
        "returns [1, 3]; input.size and num_classes say [1, 3, 32, 32] and [1, 4]",
    ),
    "num_classes_float": (put("num_classes", 3.5), "num_classes is 3.5, want int"),
    "num_classes_bool": (put("num_classes", True), "num_classes is true, want int"),
    "no_input": (drop("input"), "input is missing"),
    "input_list": (put("input", [64]), "input is not an object"),
    "size_text": (put_input("size", "64"), 'input.size is "64", want int'),
    "size_zero": (put_input("size", 0), "need 1 <= size <= resize"),
    "other_size": (lambda m: m["input"].update(size=64, resize=73), "input.size and num_classes say [1, 3, 64, 64]"),
    "mean_short": (put_input("mean", [0.5, 0.5]), "input.mean is [0.5, 0.5]"),
    "std_nan": (put_input("std", [float("nan")] * 3), "input.std is [NaN, NaN, NaN]"),
    "bgr": (put_input("channel_order", "BGR"), "unsupported input channel_order"),
    "pte_outside": (put("pte", "../model.pte"), "must name a file inside the bundle"),
    "pte_absolute": (put("pte", "/etc/passwd"), "must name a file inside the bundle"),
    "pte_missing": (put("pte", "other.pte"), "lacks other.pte"),
    "sha_short": (put("pte_sha256", "abc"), "not a sha256 hex digest"),
    "tolerance_negative": (put("golden_logit_tolerance", -1), "golden_logit_tolerance must be >= 0"),
    "quantization_empty": (put("quantization", {}), "quantization has no scheme"),
    # The program's methods as declared: what a caller must pass, checked against the program itself.
    "layout_lies": (
        lambda m: m["methods"]["forward_channels_last"]["input"].update(dim_order=[0, 1, 2, 3]),
        "forward_channels_last takes shape [1, 3, 32, 32] in dim order [0, 2, 3, 1], model.json says "
        "[1, 3, 32, 32] in [0, 1, 2, 3]",
    ),
    "method_unknown": (put("method", "nope"), "method 'nope' is not one of methods (forward, forward_channels_last)"),
    "method_not_in_program": (
        lambda m: m.update(method="other", methods={**m["methods"], "other": m["methods"]["forward"]}),
        "no method other (it has: forward, forward_channels_last)",
    ),
    "dtype_int8": (
        lambda m: m["methods"]["forward"]["input"].update(dtype="int8"),
        "this app feeds and reads float32 only",
    ),
    "dim_order_repeats": (
        lambda m: m["methods"]["forward"]["input"].update(dim_order=[0, 0, 1, 2]),
        "is not an order of the 4",
    ),
    "methods_list": (put("methods", []), "methods is not an object of at most 16 entries"),
    "methods_many": (
        lambda m: m["methods"].update({f"m{i}": m["methods"]["forward"] for i in range(200)}),
        "at most 16 entries",
    ),
    "method_input_text": (
        lambda m: m["methods"]["forward"].update(input="NCHW"),
        "methods.forward.input is not an object",
    ),
}


def test_meta_round_trips_through_json(tmp_path):
    meta = fake_meta(labels=("cat", "dog", "bird"), size=32)
    raw = json.loads(meta.to_json())
    assert raw["format"] == FORMAT and list(raw)[0] == "format" and raw["labels"] == ["cat", "dog", "bird"]
    assert BundleMeta.from_json(raw, tmp_path) == meta
    assert meta.files == ("model.json", "model.pte", "golden.npz", "report.json", "report.md")


@pytest.mark.parametrize("case", sorted(META_EDITS))
def test_edited_model_json_is_one_error_line_in_load_run_eval_and_deploy(bundle, tmp_path, case, capsys):
    edit, message = META_EDITS[case]
    broken = broken_copy(bundle, tmp_path / case, edit=edit)
    with pytest.raises(BundleError) as error:
        load_bundle(broken)
    assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(BundleError) as deploy_error:
        check_bundle(broken)
    assert str(deploy_error.value) == str(error.value)
    for args in (
        ["run", str(broken), "--source", "procedural", "--headless", "--max-frames", "3"],
        ["eval", str(broken), str(tmp_path)],
    ):
        with pytest.raises(SystemExit) as exit:
            run_main("edge.cli", argv=args)
        assert exit.value.code == f"error: {error.value}"


@pytest.mark.parametrize(
    "case",
    [
        "truncated_0",
        "truncated_8",
        "truncated_40",
        "truncated_half",
        "truncated_last_byte",
        "random_1",
        "random_2",
        "random_3",
        "random_with_magic",
        "flipped_middle",
    ],
)
def test_broken_programs_with_a_matching_hash_never_take_the_process_down(bundle, tmp_path, case):
    """In subprocesses: a crash in the runtime would be a signal, not a failed assertion in pytest."""
    pte, message = programs(bundle)[case]
    broken = broken_copy(bundle, tmp_path / case, pte=pte)
    if case != "flipped_middle":  # a flipped byte may land in a constant: it may even load
        with pytest.raises(BundleError, match=message):
            load_bundle(broken)
    results = [
        subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=120)
        for args in (
            ["run", broken, "--source", "procedural", "--headless", "--max-frames", "3"],
            ["eval", broken, tmp_path],
        )
    ]
    for result in results:
        if case == "flipped_middle" and result.returncode == 0:
            continue
        assert message in one_error_line(result)


@pytest.mark.parametrize("junk", [b"", b"\xff\xfe not json", b"[1, 2]", b"[" * 100_000, b'{"format": 1}'])
def test_model_json_that_is_not_a_bundle_description(bundle, tmp_path, junk):
    broken = broken_copy(bundle, tmp_path / "junk")
    (broken / "model.json").write_bytes(junk)
    with pytest.raises(BundleError, match="re-export"):
        read_meta(broken)


def test_an_output_path_is_replaced_only_when_it_is_a_bundle(bundle, tmp_path):
    meta = read_meta(bundle)
    contents = {name: (bundle / name).read_bytes() for name in meta.files[1:]}
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me too")
    shutil.copytree(bundle, tmp_path / "plus")
    (tmp_path / "plus" / "plot.png").write_bytes(b"mine")
    for out, message in (
        (tmp_path / "notes", "is not a bundle"),
        (tmp_path / "file", "is not a bundle directory"),
        (tmp_path / "plus", "also holds plot.png"),
    ):
        before = sorted(p.name for p in tmp_path.rglob("*"))
        with pytest.raises(BundleError, match=message):
            write_bundle(out, meta, contents)
        assert sorted(p.name for p in tmp_path.rglob("*")) == before, "nothing touched"
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"
    shutil.copytree(bundle, tmp_path / "old")
    check_replaceable(tmp_path / "old")
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "old", tmp_path / "empty", tmp_path / "new" / "deeper"):
        write_bundle(out, meta, contents)
        assert read_meta(out) == meta and sorted(p.name for p in out.iterdir()) == sorted(meta.files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "new", "notes", "old", "plus"], (
        "no staging or previous copies left behind"
    )
    write_bundle(tmp_path / "old", meta, contents | {CONFUSION_PICTURE: b"png"})  # optional: with it, then without
    write_bundle(tmp_path / "old", meta, contents)
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == sorted(meta.files)
    with pytest.raises(ValueError, match="are not the files"):
        write_bundle(tmp_path / "old", meta, contents | {"plot.png": b"png"})


def test_a_format_1_bundle_still_loads_and_an_older_one_is_refused(tiny_bundle, tmp_path):
    """Format 2 changed only the program's input memory order, which the runner reads from the program."""
    assert load_bundle(broken_copy(tiny_bundle, tmp_path / "one", edit=put("format", 1))).meta.format == 1
    with pytest.raises(BundleError, match="format 0 is not a version number"):
        load_bundle(broken_copy(tiny_bundle, tmp_path / "zero", edit=put("format", 0)))


def test_a_bundle_that_declares_no_methods_runs_forward_in_the_order_the_program_says(tiny_bundle, tmp_path):
    """model.json before ``method``/``methods``: the app runs ``forward`` and reads its memory order from the
    program, so older bundles (forward over NHWC memory) and this one (forward over NCHW) both read right."""
    plain = broken_copy(tiny_bundle, tmp_path / "plain", edit=lambda m: [m.pop("method"), m.pop("methods")])
    loaded, golden = load_bundle(plain), read_golden(tiny_bundle)
    assert (loaded.meta.method, loaded.meta.methods, loaded.runner.input_order) == ("forward", {}, (0, 1, 2, 3))
    logits = np.concatenate([loaded.logits(x[None]) for x in golden["inputs"]])
    np.testing.assert_allclose(logits, golden["logits"], atol=1e-4)
    loaded.runner.close()


def npz_with(golden: dict, **changes) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v for k, v in (golden | changes).items() if v is not None})
    return buffer.getvalue()


def huge_header_npy(shape: tuple) -> bytes:
    """A .npy whose header claims ``shape`` of float32, followed by a few bytes of data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + b"\0" * 64


@pytest.mark.parametrize(
    "case, message",
    [
        ("terabytes", "want 1 to 256 inputs, found 1099511627776"),
        ("bomb", "member 'inputs.npy' is not a bounded .npy array"),
        ("float64", "logits is float64 [8, 3], want float32 [8, 3]"),
        ("other_size", "inputs is float32 [8, 3, 16, 16], want float32 [8, 3, 32, 32]"),
        ("no_logits", "no logits array"),
        ("frame_gray", "frame_0 is uint8 [37, 53], want uint8 [height, width, 3]"),
        ("objects", "'frame_0.npy' holds objects or Fortran order"),
        ("not_zip", "File is not a zip file"),
    ],
)
def test_golden_arrays_are_checked_from_their_headers_before_any_is_read(tiny_bundle, tmp_path, case, message):
    """golden.npz is data from outside like the rest: a header claiming 4 TiB, a deflate bomb, or arrays of
    another type or shape are one error line before anything is allocated, not a MemoryError or a failure
    later on the device."""
    with np.load(tiny_bundle / "golden.npz") as data:
        golden = dict(data)
    copy = broken_copy(tiny_bundle, tmp_path / case)
    if case == "terabytes":
        with zipfile.ZipFile(copy / "golden.npz", "w") as archive:
            archive.writestr("inputs.npy", huge_header_npy((1 << 40, 3, 32, 32)))
    elif case == "bomb":
        with zipfile.ZipFile(copy / "golden.npz", "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("inputs.npy", bytes(70 * 2**20))  # 70 MB of zeros, packed into 70 KB
        assert (copy / "golden.npz").stat().st_size < 200_000
    elif case == "not_zip":
        (copy / "golden.npz").write_bytes(os.urandom(1000))
    else:
        changes = {
            "float64": {"logits": golden["logits"].astype(np.float64)},
            "other_size": {"inputs": golden["inputs"][:, :, :16, :16].copy()},
            "no_logits": {"logits": None},
            "frame_gray": {"frame_0": golden["frame_0"][..., 0].copy()},
            "objects": {"frame_0": np.array([{"a": 1}], dtype=object)},
        }[case]
        (copy / "golden.npz").write_bytes(npz_with(golden, **changes))
    with pytest.raises(BundleError, match=re.escape(message)) as error:
        read_golden(copy)
    assert "\n" not in str(error.value) and len(str(error.value)) < 500


def delegate_flatbuffers(pte: bytes) -> list[tuple[int, int]]:
    """Where each XNNPACK delegate's own flatbuffer lies in a program: its header (magic XH00 at byte 4) gives the
    flatbuffer's offset and size within the delegate's blob."""
    regions, at = [], pte.find(b"XH00")
    while at >= 0:
        start = at - 4
        offset, size = (int.from_bytes(pte[start + a : start + a + 4], "little") for a in (10, 14))
        regions.append((start + offset, start + offset + size))
        at = pte.find(b"XH00", at + 1)
    return regions


def test_no_byte_of_the_delegate_payload_kills_the_loading_process(tiny_bundle, tmp_path):
    """240 seeded single-bit flips inside the XNNPACK delegates' flatbuffers and 20 truncations, each with
    pte_sha256 rewritten so that the runtime really parses it, each loaded and run in one process as the app does:
    every one ends in a result or one error line, and the process lives (ExecuTorch 1.5 does not verify the
    payload; edge.native.vet loads each new program in a child first)."""
    pte = (tiny_bundle / "model.pte").read_bytes()
    regions = delegate_flatbuffers(pte)
    assert len(regions) == 2, "one delegate per method"
    rng = np.random.default_rng(0)
    programs = []
    for i in range(240):
        low, high = regions[i % 2]
        mutated = bytearray(pte)
        mutated[int(rng.integers(low, high))] ^= 1 << int(rng.integers(8))
        programs.append(bytes(mutated))
    programs += [pte[: int(n)] for n in rng.integers(64, len(pte), 20)]
    for i, program in enumerate(programs):
        broken_copy(tiny_bundle, tmp_path / f"m{i}", pte=program)
    script = textwrap.dedent(f"""
        import json
        import numpy as np
        from pathlib import Path
        from edge.bundle import BundleError, load_bundle
        from edge.native import NativeError
        outcomes = {{"result": 0, "error": 0}}
        for i in range({len(programs)}):
            try:
                bundle = load_bundle(Path({str(tmp_path)!r}) / f"m{{i}}", threads=1)
                bundle.runner(np.zeros(bundle.runner.input_shape, np.float32))
                outcomes["result"] += 1
            except (BundleError, NativeError) as e:
                assert "\\n" not in str(e)
                outcomes["error"] += 1
        print(json.dumps(outcomes))
    """)
    env = os.environ | {"MOBILENET_EDGE_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=1800, cwd=ROOT, env=env
    )
    assert result.returncode == 0, f"exit {result.returncode} (negative: a signal): {result.stderr[-2000:]}"
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    assert sum(outcomes.values()) == len(programs) and outcomes["error"] >= 20, outcomes


def test_a_program_that_crashes_the_runtime_is_refused_in_one_line_and_loads_are_remembered(
    tiny_bundle, tmp_path, monkeypatch
):
    """The child that vets a program dies by a signal (a stand-in child here): one line, nothing remembered.
    A program that loads is remembered: its second load starts no child."""
    import edge.native.vet as vet

    monkeypatch.setenv("MOBILENET_EDGE_CACHE", str(tmp_path / "cache"))
    pte = (tiny_bundle / "model.pte").read_bytes()
    real_run, runs = subprocess.run, []

    def crashing(argv, **kwargs):
        runs.append(argv)
        return subprocess.CompletedProcess(argv, -signal.SIGSEGV, b"", b"")

    monkeypatch.setattr(vet.subprocess, "run", crashing)
    with pytest.raises(BundleError, match="crashes the ExecuTorch runtime when its forward_channels_last is loaded"):
        load_bundle(tiny_bundle)
    assert not vet.marker(pte, "forward_channels_last").exists()
    monkeypatch.setattr(vet.subprocess, "run", lambda argv, **kw: runs.append(argv) or real_run(argv, **kw))
    load_bundle(tiny_bundle).runner.close()
    load_bundle(tiny_bundle).runner.close()
    assert len(runs) == 2 and vet.marker(pte, "forward_channels_last").is_file(), "one child for two loads"


def test_a_huge_model_json_or_a_huge_value_is_refused_in_a_short_line(tiny_bundle, tmp_path):
    big = broken_copy(tiny_bundle, tmp_path / "big", edit=put("padding", "x" * (2 << 20)))
    with pytest.raises(BundleError, match="bytes, more than a model.json's 1048576"):
        read_meta(big)
    for key in ("format", "labels", "methods", "name"):
        edited = broken_copy(tiny_bundle, tmp_path / key, edit=put(key, list(range(100_000))))
        with pytest.raises(BundleError) as error:
            read_meta(edited)
        assert len(str(error.value)) < 500 and "\n" not in str(error.value), (key, str(error.value)[:300])


def test_an_error_line_of_megabytes_is_cut_to_one_short_line(tmp_path):
    (tmp_path / "long_error.py").write_text("import sys\ndef main():\n    sys.exit('error: ' + 'x' * 10**6)\n")
    script = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r}); from edge.command import run_main; run_main('long_error')"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1 and result.stderr.startswith("error: x") and len(result.stderr) <= 1001


def test_one_writer_per_bundle_path_and_a_second_make_qat_stops_at_its_start(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILENET_EDGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bundle"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from edge.bundle import sole_writer\n"
            "with sole_writer(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BundleError, match=f"another export is writing {out} now"):
            with sole_writer(out):
                pass
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", "--out", str(out), "--epochs", "1"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        assert "another export is writing" in one_error_line(result) and "== 1/" not in result.stderr
    finally:
        holder.kill()
        holder.wait()
    with sole_writer(out), sole_writer(out):  # free once its holder is gone, however it ended; re-entrant
        pass
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cache"], "nothing beside it"


def test_a_program_that_crashes_the_runtime_is_one_line_for_the_api_the_app_and_deploy(tiny_bundle, tmp_path):
    """A real corrupt program: run without the vetting it fails, by SIGSEGV in most processes (where its garbage
    lands depends on the memory layout); through every loader it is one error line and the process lives."""
    program = crashing_program(tiny_bundle)
    unvetted = (
        "import sys, numpy as np; from edge.native import Runner\n"
        "r = Runner(sys.stdin.buffer.read(), 1, 'forward_channels_last'); r(np.zeros(r.input_shape, np.float32))"
    )
    raw = subprocess.run([sys.executable, "-c", unvetted], input=program, capture_output=True, timeout=120, cwd=ROOT)
    assert raw.returncode != 0, "the flip still breaks the program (else this test proves nothing)"
    crash = broken_copy(tiny_bundle, tmp_path / "crash", pte=program)
    either = r"crashes the ExecuTorch runtime when its forward_channels_last is loaded and run|execute failed"
    with pytest.raises(BundleError, match=either) as error:
        load_bundle(crash)
    assert "\n" not in str(error.value)
    with pytest.raises(BundleError, match=either):
        check_bundle(crash)
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((40, 40, 3), np.uint8))
    result = subprocess.run(
        [sys.executable, "-m", "edge", "predict", str(crash), str(image)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert re.search(either, one_error_line(result))


@pytest.mark.parametrize(
    "change, match",
    [({"resize": 10**6}, "resize"), ({"std": [1e-50, 0.2, 0.2]}, "float32"), ({"mean": [1e39, 0, 0]}, "float32")],
)
def test_model_json_ranges_are_checked_for_what_they_imply(tiny_bundle, tmp_path, change, match):
    copy = tmp_path / "bundle"
    copy.mkdir()
    for path in tiny_bundle.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    meta = json.loads((copy / "model.json").read_text())
    meta["input"] |= change
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=match):
        load_bundle(copy)


def bundle_files(meta) -> dict[str, bytes]:
    return {meta.pte: b"new program", meta.golden: b"g", "report.json": b"{}", "report.md": b"#"}


def test_an_interrupt_between_the_renames_keeps_the_old_bundle(tmp_path, monkeypatch):
    out, meta = tmp_path / "bundle", fake_meta()
    write_bundle(out, meta, bundle_files(meta) | {meta.pte: b"old program"})
    real_rename = Path.rename

    def interrupted(self, target):
        if ".staging-" in self.name:
            raise KeyboardInterrupt
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_bundle(out, meta, bundle_files(meta))
    monkeypatch.undo()
    assert (out / meta.pte).read_bytes() == b"old program"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"], "nothing left beside it"


def test_a_bundle_a_killed_write_left_aside_is_named_then_restored(tmp_path):
    out, meta = tmp_path / "bundle", fake_meta()
    write_bundle(out, meta, bundle_files(meta) | {meta.pte: b"old program"})
    out.rename(tmp_path / ".bundle.previous-abc123")  # as a SIGKILL between the renames leaves it
    with pytest.raises(BundleError, match="previous bundle at .*previous-abc123"):
        read_meta(out)
    write_bundle(out, meta, bundle_files(meta))
    assert (out / meta.pte).read_bytes() == b"new program"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
