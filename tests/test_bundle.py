"""The bundle format: versioned, typed, checked at load; a broken bundle is one error line everywhere."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import fake_meta, one_error_line

from deploy.cli import check_bundle
from deploy.target import DeployError
from edge.bundle import (
    CONFUSION_PICTURE,
    FORMAT,
    BundleError,
    BundleMeta,
    check_replaceable,
    load_bundle,
    read_meta,
    write_bundle,
)
from edge.cli import main as edge_main


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
    "labels_more": (lambda m: m.update(labels=[*m["labels"], "x"], num_classes=len(m["labels"]) + 1), "returns (1, 3)"),
    "num_classes_float": (put("num_classes", 3.5), "num_classes is 3.5, want int"),
    "num_classes_bool": (put("num_classes", True), "num_classes is true, want int"),
    "no_input": (drop("input"), "input is missing"),
    "input_list": (put("input", [64]), "input is not an object"),
    "size_text": (put_input("size", "64"), 'input.size is "64", want int'),
    "size_zero": (put_input("size", 0), "need 1 <= size <= resize"),
    "other_size": (lambda m: m["input"].update(size=64, resize=73), "model.json says (1, 3, 64, 64)"),
    "mean_short": (put_input("mean", [0.5, 0.5]), "input.mean is [0.5, 0.5]"),
    "std_nan": (put_input("std", [float("nan")] * 3), "input.std is [NaN, NaN, NaN]"),
    "bgr": (put_input("channel_order", "BGR"), "unsupported input channel_order"),
    "pte_outside": (put("pte", "../model.pte"), "must name a file inside the bundle"),
    "pte_absolute": (put("pte", "/etc/passwd"), "must name a file inside the bundle"),
    "pte_missing": (put("pte", "other.pte"), "lacks other.pte"),
    "sha_short": (put("pte_sha256", "abc"), "not a sha256 hex digest"),
    "tolerance_negative": (put("golden_logit_tolerance", -1), "golden_logit_tolerance must be >= 0"),
    "quantization_empty": (put("quantization", {}), "quantization has no scheme"),
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
    with pytest.raises(DeployError) as deploy_error:
        check_bundle(broken)
    assert str(deploy_error.value) == str(error.value)
    for args in (
        ["run", str(broken), "--source", "procedural", "--headless", "--max-frames", "3"],
        ["eval", str(broken), str(tmp_path)],
    ):
        with pytest.raises(SystemExit) as exit:
            edge_main(args)
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
