"""Data: procedural shapes, ImageFolder (splits, corrupt files, bad paths), CIFAR-10 archive, transforms."""

import hashlib
import io
import logging
import pickle
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

from edge.preprocess import InputSpec
from training.data import DataError, FileImages, ImageDataModule, load_cifar10
from training.procedural import CLASSES, ProceduralShapes
from training.transforms import EvalTransform, TrainTransform


def test_procedural_is_deterministic_varied_and_has_enough_classes():
    a, b = ProceduralShapes(50, seed=3), ProceduralShapes(50, seed=3)
    assert len(CLASSES) >= 6
    assert all(np.array_equal(a.image(i)[0], b.image(i)[0]) for i in range(5))
    assert not np.array_equal(a.image(0)[0], ProceduralShapes(50, seed=4).image(0)[0])
    assert not np.array_equal(a.image(0)[0], ProceduralShapes(50, seed=3, split="val").image(0)[0])
    labels = {a.image(i)[1] for i in range(50)}
    assert len(labels) == len(CLASSES)
    image = a.image(0)[0]
    assert image.dtype == np.uint8 and image.shape == (96, 96, 3)


def test_folder_split_is_deterministic_and_corrupt_files_are_skipped(image_folder, caplog):
    dm = ImageDataModule(source=str(image_folder), resolution=32, batch_size=4, num_workers=0, val_fraction=0.25)
    dm.setup("fit")
    assert dm.labels == ["blue", "green", "red"] and dm.num_classes == 3
    assert len(dm.train_set) + len(dm.val_set) == 24, "the corrupt JPEG's header is checked: left out up front"
    again = ImageDataModule(source=str(image_folder), resolution=32, val_fraction=0.25)
    again.setup("fit")
    assert again.val_set.samples == dm.val_set.samples
    assert not {p for p, _ in dm.train_set.samples} & {p for p, _ in dm.val_set.samples}

    # A file whose header reads but whose pixels do not is skipped when it is loaded.
    (image_folder / "red" / "cut.png").write_bytes((image_folder / "red" / "0.png").read_bytes()[:60])
    cut = (str(image_folder / "red" / "cut.png"), 2)
    everything = FileImages(dm.train_set.samples + dm.val_set.samples + [cut], EvalTransform(dm.input_spec))
    before = FileImages.skipped
    with caplog.at_level(logging.WARNING):
        items = [everything[i] for i in range(len(everything))]
    assert FileImages.skipped == before + 1
    assert "skipped unreadable image" in caplog.text and "cut.png" in caplog.text
    assert all(x.shape == (3, 32, 32) for x, _ in items)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and labels.dtype == torch.int64


def test_val_size_holds_out_that_many_images_and_the_fraction_split_agrees(image_folder):
    by_size = ImageDataModule(source=str(image_folder), resolution=32, val_size=5)
    by_size.setup("fit")
    assert len(by_size.val_set) == 5 and len(by_size.train_set) == 19
    by_fraction = ImageDataModule(source=str(image_folder), resolution=32, val_fraction=5 / 24 + 1e-9)
    by_fraction.setup("fit")
    assert by_size.val_set.samples == by_fraction.val_set.samples
    with pytest.raises(DataError, match="val_size=24 leaves no training images"):
        ImageDataModule(source=str(image_folder), resolution=32, val_size=24).setup("fit")


def test_folder_with_train_and_val_subdirs_uses_them(image_folder, tmp_path):
    root = tmp_path / "split"
    shutil.copytree(image_folder, root / "train")
    shutil.copytree(image_folder, root / "val")
    dm = ImageDataModule(source=str(root), resolution=32)
    dm.setup("fit")
    assert len(dm.train_set) == len(dm.val_set) == 24
    assert all("/val/" in p for p, _ in dm.val_set.samples)


def test_missing_or_empty_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        _ = ImageDataModule(source=str(tmp_path / "nope")).labels
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        _ = ImageDataModule(source=str(tmp_path / "empty")).labels
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(DataError, match="no readable images"):
        ImageDataModule(source=str(tmp_path / "empty")).setup("fit")


def test_cli_exits_non_zero_with_one_line_for_a_missing_dataset(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "fit",
            "--config",
            "configs/train.yaml",
            "--config",
            "configs/model/v3_small.yaml",
            f"--data.source={tmp_path / 'nope'}",
            "--trainer.max_epochs=1",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: dataset directory")


def _fake_cifar_archive(path):
    """A CIFAR-10-format archive with 20 train and 10 test images."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for name, n in [("data_batch_1", 20), ("test_batch", 10)]:
            batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
            payload = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_cifar10_download_checks_md5_and_loads(tmp_path):
    source = tmp_path / "served.tar.gz"
    md5 = _fake_cifar_archive(source)
    with pytest.raises(DataError, match="MD5"):
        load_cifar10(tmp_path / "cache-bad", url=source.as_uri(), md5="0" * 32)
    assert not (tmp_path / "cache-bad" / "cifar-10-python.tar.gz").exists()
    arrays = load_cifar10(tmp_path / "cache", url=source.as_uri(), md5=md5)
    images, labels = arrays["train"]
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8 and list(labels) == list(range(20))
    assert arrays["test"][0].shape == (10, 32, 32, 3)


def test_cifar10_offline_names_the_alternatives(tmp_path):
    with pytest.raises(DataError, match="DATA=") as error:
        load_cifar10(tmp_path, url=(tmp_path / "unreachable.tar.gz").as_uri())
    assert "procedural" in str(error.value)


def test_cifar10_refuses_pickles_that_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        payload = pickle.dumps({b"data": Evil()})
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    (tmp_path / "cache").mkdir()
    path.rename(tmp_path / "cache" / "cifar-10-python.tar.gz")
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_cifar10(tmp_path / "cache")


def test_input_spec_is_plain_numbers():
    spec = InputSpec.for_resolution(224)
    assert spec.resize == 256
    json = spec.to_json()
    assert json["size"] == 224 and json["mean"] == [0.485, 0.456, 0.406] and json["channel_order"] == "RGB"


def test_eval_transform_resizes_shorter_side_and_center_crops():
    spec = InputSpec(size=4, resize=4, mean=(0, 0, 0), std=(1, 1, 1))
    image = np.zeros((4, 8, 3), np.uint8)
    image[:, 2:6] = 255  # the central 4 columns
    x = EvalTransform(spec)(image)
    assert x.shape == (3, 4, 4) and torch.all(x == 1.0)


def test_train_transform_follows_torch_seed():
    image = ProceduralShapes(1).image(0)[0]
    transform = TrainTransform(InputSpec.for_resolution(64))
    torch.manual_seed(0)
    a = transform(image)
    torch.manual_seed(0)
    assert torch.equal(a, transform(image))
    assert a.shape == (3, 64, 64)
    assert not torch.equal(a, transform(image))


def test_a_run_starts_with_a_summary_of_its_data(image_folder):
    """Classes, images per class in each split, the unreadable file left out, and a warning per thin class."""
    from training.data import folder_images, readable, summary

    labels = ["blue", "green", "red"]
    good, bad = readable(folder_images(image_folder, labels))
    assert len(good) == 24 and bad == [str(image_folder / "red" / "corrupt.jpg")]
    text = summary(image_folder, labels, good[:18], good[18:], bad, split_here=True)
    lines = text.splitlines()
    assert lines[0] == f"data: {image_folder}: 3 classes, 18 training and 6 validation images (held out here, seeded)"
    assert lines[1].split() == ["blue", "8", "train", "0", "val"]
    assert lines[3].split() == ["red", "2", "train", "6", "val"]
    assert f"skipped 1 unreadable or oversized files, e.g. {bad[0]}" in text
    assert sum(line.startswith("warning: class") for line in lines) == 3, "8 images each, under 20"
