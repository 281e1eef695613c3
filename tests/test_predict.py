"""`python -m edge predict` (every file gets a line) and the Python API (`edge.load(...).predict(...)`)."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import fake_meta, one_error_line, run_module

import edge
from edge.bundle import Bundle, read_golden
from edge.classify import softmax
from edge.evaluate import every_class_in_turn
from edge.images import read_bgr
from edge.paths import expand
from edge.predict import predict


def edge_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=os.environ | {"PYTHONPATH": os.getcwd()},
    )


@pytest.fixture
def mixed(image_folder, tmp_path):
    """3 colour folders of 8 PNGs (one corrupt JPEG in red), an empty file, a text file, a nested folder."""
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    nested = image_folder / "green" / "more"
    nested.mkdir()
    cv2.imwrite(str(nested / "deep.png"), np.zeros((20, 30, 3), np.uint8))
    return tmp_path


@pytest.fixture(scope="module")
def model(tiny_bundle):
    with edge.load(tiny_bundle, threads=1) as loaded:
        yield loaded


def test_folders_globs_and_files_expand_in_order_with_none_dropped(mixed):
    folder = mixed / "folder"
    paths = expand(
        [
            str(folder / "red"),
            str(mixed / "empty.png"),
            str(folder / "blue" / "[01].png"),
            str(folder / "**" / "deep.png"),
            str(mixed / "missing.png"),
            str(folder / "nothing*.png"),
        ]
    ).paths
    red = sorted((folder / "red").iterdir())
    assert paths == [
        *red,
        mixed / "empty.png",
        folder / "blue" / "0.png",
        folder / "blue" / "1.png",
        folder / "green" / "more" / "deep.png",
        mixed / "missing.png",
        folder / "nothing*.png",
    ]
    assert len(expand([str(folder)]).paths) == 3 * 8 + 1 + 1, "a folder gives its images, recursively"


def test_every_file_gets_one_line_and_unreadable_ones_say_why(model, mixed):
    out = io.StringIO()
    args = [str(mixed / "folder"), str(mixed / "empty.png"), str(mixed / "notes.txt"), str(mixed / "missing.png")]
    counts = predict(model, args, top_k=2, fmt="jsonl", out=out)
    results = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["path"] for r in results] == [str(p) for p in expand(args).paths]
    errors = {r["path"]: r["error"] for r in results if "error" in r}
    assert sorted(errors) == sorted(
        [
            str(mixed / "folder" / "red" / "corrupt.jpg"),
            str(mixed / "empty.png"),
            str(mixed / "notes.txt"),
            str(mixed / "missing.png"),
        ]
    )
    assert errors[str(mixed / "missing.png")] == "No such file or directory"
    assert "not an image in a format this app reads" in errors[str(mixed / "notes.txt")]
    for r in results:
        if "top" in r:
            assert [t["label"] for t in r["top"]] != [] and len(r["top"]) == 2
            assert set(t["label"] for t in r["top"]) <= set(model.labels)
    assert counts["labelled"] == 25 and counts["unreadable"] == 4 and counts["files"] == 29


def test_csv_and_table_rows_match_the_api(model, image_folder):
    files = sorted((image_folder / "blue").glob("*.png"))
    out = io.StringIO()
    predict(model, [str(f) for f in files], top_k=3, fmt="csv", out=out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(rows) == len(files)
    for row, path in zip(rows, files, strict=True):
        expected = model.predict(path, top_k=3)
        assert [(row[f"label_{i}"], float(row[f"score_{i}"])) for i in (1, 2, 3)] == expected
        assert row["path"] == str(path) and row["error"] == ""
    out = io.StringIO()
    predict(model, [str(files[0])], top_k=1, fmt="table", out=out)
    header, line = out.getvalue().splitlines()
    label, score = model.predict(files[0], top_k=1)[0]
    assert header.startswith("file") and line == f"{files[0]}  {label} ({score:.2f})"


def test_hostile_file_names_and_labels_stay_one_inert_record(image_folder, tmp_path):
    """A newline in a name must not forge a CSV record, and escape sequences in names or labels (a label from
    a bundle's model.json) must not reach the terminal."""
    source = next((image_folder / "blue").glob("*.png"))
    names = ["two\nlines.png", "clear\x1b[2J.png", "over\u202eride.png"]
    for name in names:
        shutil.copy(source, tmp_path / name)
    bundle = Bundle(None, fake_meta(labels=("=cmd\x1b[31m", "b\nc")), None)
    bundle.logits = lambda x: np.log(np.array([[0.7, 0.3]]))
    model = edge.Model(bundle)
    files = [str(tmp_path / n) for n in names]
    out = io.StringIO()
    predict(model, files, top_k=2, fmt="csv", out=out)
    text = out.getvalue()
    assert len(text.splitlines()) == 1 + len(names), "one line per file, header first"
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["path"] for r in rows] == [
        str(tmp_path / "two\\x0alines.png"),
        str(tmp_path / "clear\\x1b[2J.png"),
        str(tmp_path / "over\\u202eride.png"),
    ]
    assert rows[0]["label_1"] == "'=cmd\\x1b[31m" and rows[0]["label_2"] == "b\\x0ac"
    out = io.StringIO()
    predict(model, files, top_k=2, fmt="table", out=out)
    assert len(out.getvalue().splitlines()) == 1 + len(names)
    assert not any(c in out.getvalue() for c in "\x1b\u202e"), "nothing that drives a terminal"


def test_threshold_leaves_out_low_scores():
    bundle = Bundle(None, fake_meta(labels=("a", "b", "c")), None)
    bundle.logits = lambda x: np.log(np.array([[0.1, 0.6, 0.3]]))
    model = edge.Model(bundle)
    frame = np.zeros((10, 10, 3), np.uint8)
    assert model.predict(frame, top_k=3) == [("b", 0.6), ("c", 0.3), ("a", 0.1)]
    assert model.predict(frame, top_k=3, threshold=0.3) == [("b", 0.6), ("c", 0.3)]
    assert model.predict(frame, top_k=1, threshold=0.3) == [("b", 0.6)]
    assert model.predict(frame, threshold=0.7) == []


def test_the_api_gives_what_the_host_gave_for_the_golden_frames(model, tiny_bundle):
    """golden.npz keeps raw BGR frames and the logits export's own preprocessing and runtime gave for them."""
    golden = read_golden(tiny_bundle)
    for frame, logits in zip(golden["frames"], golden["frame_logits"], strict=True):
        assert model.probabilities(frame) == pytest.approx(softmax(logits.astype(np.float64)), abs=1e-5)


def test_the_api_takes_paths_grey_and_bgra_and_rejects_other_arrays(model, image_folder):
    path = image_folder / "red" / "0.png"
    bgr = cv2.imread(str(path))
    assert model.predict(str(path)) == model.predict(path) == model.predict(bgr)
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    assert model.predict(grey) == model.predict(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    assert model.predict(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)) == model.predict(bgr)
    assert len(model.predict(bgr, top_k=10)) == len(model.labels), "top_k beyond the labels gives them all"
    for bad in (bgr.astype(np.float32), bgr[..., :2], np.zeros((0, 4, 3), np.uint8), [[1, 2, 3]]):
        with pytest.raises(ValueError, match="want "):
            model.predict(bad)
    for top_k, threshold in ((0, 0.0), (1, float("nan")), (1, -0.1)):
        with pytest.raises(ValueError, match="want top_k >= 1"):
            model.predict(bgr, top_k, threshold)
    assert "labels" in repr(model)


def test_predict_command_labels_a_folder_and_reports_unreadable_files(tiny_bundle, mixed):
    result = edge_cli("predict", str(tiny_bundle), str(mixed / "folder"), "--top-k", "1")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 26 and sum("error" in r for r in lines) == 1, "stdout is JSON lines when piped"
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("labelled 25 of 26 files (1 unreadable) in "), result.stderr
    assert "first result" in summary


@pytest.mark.parametrize(
    "args,message",
    [
        (["nothing-here.png"], "error: none of the 1 files could be read as an image"),
        (["--threshold", "1.5", "x.png"], "argument --threshold: want a number in [0, 1], got '1.5'"),
        (["--top-k", "0", "x.png"], "argument --top-k: want a whole number >= 1"),
        (["--csv", "--jsonl", "x.png"], "argument --jsonl: not allowed with argument --csv"),
    ],
)
def test_predict_errors_are_one_line(tiny_bundle, tmp_path, args, message):
    result = edge_cli("predict", str(tiny_bundle), *args, cwd=tmp_path)
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1], result.stderr


def test_predict_on_a_broken_bundle_is_one_line(tmp_path, image_folder):
    (tmp_path / "bundle").mkdir()
    result = edge_cli("predict", str(tmp_path / "bundle"), str(image_folder))
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_eval_limit_takes_every_class_in_turn():
    samples = [(f"{c}{i}", c) for c in range(3) for i in range(4 if c else 1)]
    assert every_class_in_turn(samples)[:4] == [("00", 0), ("10", 1), ("20", 2), ("11", 1)]
    assert sorted(every_class_in_turn(samples)) == sorted(samples), "reordered, none lost"


def test_names_that_exist_are_literal_and_loops_are_not_followed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = Path("photos")
    (root / "a").mkdir(parents=True)
    for name in ["[x].jpg", "x.jpg", "*.jpg", "a/deep.jpg"]:
        (root / name).write_bytes(b"jpg")
    (root / "a" / "loop").symlink_to("..")  # photos/a/loop -> photos: a loop
    (root / "a" / "loop2").symlink_to("../a")  # and a second one
    (root / "again.jpg").symlink_to("x.jpg")  # a second name for one file
    os.mkfifo(root / "pipe.jpg")
    assert [str(p) for p in expand(["photos/[x].jpg", "photos/*.jpg"]).paths] == ["photos/[x].jpg", "photos/*.jpg"], (
        "existing names, taken as written"
    )
    folder, globbed = expand(["photos"]), expand(["photos/**/*.jpg"])
    assert (
        folder.paths == globbed.paths == [root / n for n in ["*.jpg", "[x].jpg", "a/deep.jpg", "again.jpg", "pipe.jpg"]]
    ), "each file once (x.jpg as again.jpg)"
    assert len(folder.skipped) == 2 and all("symlink to a folder" in line for line in globbed.skipped)
    assert expand(["photos/[x]*"]).paths == [root / "x.jpg"], "a glob with a class still globs"


def test_a_fifo_and_stdin_are_refused_without_blocking(tiny_bundle, tmp_path):
    fifo = tmp_path / "frames.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="FIFO"):
        read_bgr(fifo)
    result = run_module(
        "-m",
        "edge",
        "predict",
        str(tiny_bundle),
        str(fifo),
        "/dev/stdin",
        "--jsonl",
        "--threads",
        "1",
        timeout=120,
        text=True,
        input="piped bytes",
    )
    assert "none of the 2 files" in one_error_line(result)
    assert [json.loads(line)["error"].split(" is ")[1] for line in result.stdout.splitlines()] == [
        "a FIFO, not an image file: save what it holds to a file and give that"
    ] * 2


def test_a_name_that_is_not_utf8_and_a_formula_name_under_a_strict_utf8_locale(tiny_bundle, tmp_path):
    cv2.imwrite(str(tmp_path / "=HYPERLINK(1).png"), np.full((40, 40, 3), 9, np.uint8))
    os.rename(tmp_path / "=HYPERLINK(1).png", os.fsencode(tmp_path) + b"/=HYPERLINK(\xff).png")
    env = {"LC_ALL": "C.UTF-8", "PYTHONUTF8": "0", "PYTHONIOENCODING": "utf-8:strict"}
    for form in ("--csv", "--jsonl", None):
        result = run_module(
            "-m",
            "edge",
            "predict",
            str(tiny_bundle),
            str(tmp_path),
            "--threads",
            "1",
            *([form] if form else []),
            env=env,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        out = result.stdout.decode("utf-8")  # strict: the output is valid UTF-8
        assert "\\xff" in out or "\\udcff" in out, out
    rows = (
        run_module(
            "-m",
            "edge",
            "predict",
            str(tiny_bundle),
            ".",
            "--csv",
            "--top-k",
            "1000",
            "--threads",
            "1",
            env=env,
            cwd=tmp_path,
        )
        .stdout.decode()
        .splitlines()
    )
    assert rows[1].startswith("\"'="), "a formula is made text, in a quoted cell"
    assert rows[0].count("label_") == 3, "--top-k is clamped to the model's labels"


def test_a_folder_without_images_is_a_skipped_line_not_a_file(tmp_path):
    (tmp_path / "empty").mkdir()
    found = expand([str(tmp_path / "empty"), str(tmp_path / "none*")])
    assert found.paths == [tmp_path / "none*"], "a glob that matches nothing keeps its line: it does not exist"
    assert found.skipped == [f"skipped {tmp_path / 'empty'}: no images (.bmp, .jpeg, .jpg, .png, .webp) in it"]
