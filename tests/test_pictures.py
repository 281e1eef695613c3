"""The pictures people look at instead of tables: the bundle's confusion matrix, and the device report's latency
histograms and pipeline timeline (and the figures behind them)."""

import json

import cv2
import numpy as np
import pytest
from conftest import run_module

from deploy import pictures
from edge.stats import Timeline
from export.pictures import confusion_png
from export.report import PER_CLASS_SHOWN, markdown, per_class, shown_classes


def decoded(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)


def test_per_class_figures_of_a_known_matrix():
    matrix = np.array([[8, 2, 0], [1, 0, 3], [0, 0, 0]])  # rows: true class; class "c" has no images
    classes = per_class(matrix, ("a", "b", "c"))
    assert classes["images"] == [10, 4, 0]
    assert classes["top1"] == [0.8, 0.0, None]
    assert classes["taken_for"] == ["b", "c", None]
    assert classes["confusion"] == matrix.tolist()


def test_many_classes_show_the_worst_and_leave_the_matrix_out_of_the_json():
    n = 150
    matrix = np.diag(np.arange(n) + 1) + 1  # class i: i + 2 right of n + i images, so class 0 is the worst
    classes = per_class(matrix, tuple(f"class {i}" for i in range(n)))
    assert classes["confusion"] is None
    assert shown_classes(classes) == list(range(PER_CLASS_SHOWN))
    assert f"the {PER_CLASS_SHOWN} worst of {n}" in markdown(
        {"accuracy": {}, "programs": {}, "quantization": {"scheme": "fp32"}, "per_class": classes}, None
    )
    picture = decoded(confusion_png(classes, "many classes"))
    assert picture.shape == (550, 600, 3), "bars only: a 150-class matrix cannot be read"


def test_confusion_picture_draws_matrix_and_bars():
    classes = per_class(np.array([[5, 1], [2, 4]]), ("cat", "dog"))
    picture = decoded(confusion_png(classes, "two classes"))
    assert picture.shape == (550, 1200, 3) and picture.std() > 10


def test_timeline_points_are_frames_per_second_since_the_last_point():
    timeline = Timeline(interval=1.0)
    for frame, now in enumerate([10.0, 10.5, 11.0, 11.2, 12.5, 12.6], start=1):
        timeline.tick(now, frame)
    points = timeline.to_json()
    assert points["t_s"] == [1.0, 2.5] and points["fps"] == [2.0, round(2 / 1.5, 2)]
    assert len(points["rss_mb"]) == 2 and all(mb > 10 for mb in points["rss_mb"])


def device_report(tmp_path, figures: dict):
    path = tmp_path / "device_report.json"
    path.write_text(
        json.dumps(
            {"figures": figures, "device": {"model": "test"}, "bundle": {"name": "m"}, "profile": {"name": "local"}}
        )
    )
    path.with_suffix(".md").write_text("# report\n")
    return path


def test_device_report_picture_and_its_link(tmp_path):
    rng = np.random.default_rng(0)
    path = device_report(
        tmp_path,
        {
            "latency": {str(t): {"p50": 5.0 / t, "samples_ms": (5.0 / t + rng.random(200)).tolist()} for t in (1, 2)},
            "pipeline": {"procedural": {"timeline": {"t_s": [1, 2, 3], "fps": [30, 31, 29], "rss_mb": [90, 91, 91]}}},
        },
    )
    for _ in range(2):
        picture = pictures.render(path)
    assert picture == tmp_path / pictures.PICTURE
    image = cv2.imread(str(picture))
    assert image is not None and image.shape == (462, 1210, 3) and image.std() > 10
    assert path.with_suffix(".md").read_text().count(f"]({pictures.PICTURE})") == 1, "linked once, however often drawn"


def test_a_phones_report_shows_latency_by_thread_count_with_its_core_clusters(tmp_path, monkeypatch):
    """A phone runs no live pipeline: its right panel is what a phone user picks threads by, not an empty box."""
    rng = np.random.default_rng(0)
    latency = {
        str(t): {q: 5.0 / t + k for k, q in enumerate(("p50", "p90", "p99"))} | {"samples_ms": rng.random(50).tolist()}
        for t in range(1, 9)
    }
    cores = {
        "big": {"cpus": "0-3", "part": "0xd0b", "max_mhz": 2400},
        "little": {"cpus": "4,5,6,7", "part": "0xd05", "max_mhz": 1800},
    }
    drawn = {}
    real = pictures.draw_threads

    def spy(ax, rows, clusters):
        real(ax, rows, clusters)
        drawn.update(
            title=ax.get_title(), labels=ax.get_legend_handles_labels()[1], texts=[t.get_text() for t in ax.texts]
        )

    monkeypatch.setattr(pictures, "draw_threads", spy)
    assert pictures.render(device_report(tmp_path, {"latency": latency, "cores": cores})) is not None
    assert drawn["title"] == "latency by thread count" and not drawn["texts"], "no 'nothing recorded' text"
    assert {"p50", "p90", "p99", "big cores: 4, 2400 MHz", "little cores: 4, 1800 MHz"} <= set(drawn["labels"])
    assert [pictures.cpu_count(s) for s in ("0-3", "4,5,6,7", "0-1,4", "2")] == [4, 4, 3, 1]


@pytest.mark.parametrize(
    "content", [b"", b"\xff\xfe random", b"[1, 2]", b'{"figures": {"latency": [1]}}', b'{"figures": {"latency": {}}}']
)
def test_unusable_device_reports_draw_nothing_and_say_why(tmp_path, capsys, content):
    path = tmp_path / "device_report.json"
    path.write_bytes(content)
    assert pictures.render(path) is None
    assert capsys.readouterr().err.startswith("no device report picture: ")
    assert not (tmp_path / pictures.PICTURE).exists()


def test_deploy_pictures_on_deep_json_says_so(tmp_path):
    (tmp_path / "device_report.json").write_text("[" * 100000 + "]" * 100000)
    result = run_module("-m", "deploy.pictures", str(tmp_path), text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "cannot read" in result.stderr
