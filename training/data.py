"""Image classification data for Lightning: procedural shapes, any ImageFolder, or CIFAR-10.

``source`` picks the dataset: ``"procedural"`` (default, offline), ``"cifar10"``
(downloaded once from its official address, checked by MD5), or a directory laid
out as ``root/<class>/*.jpg`` (with ``train/`` and ``val/``/``test/`` under it, or
split here deterministically by ``seed``).
"""

import copy
import hashlib
import logging
import pickle
import sys
import tarfile
import urllib.error
import urllib.request
from functools import cached_property
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch
from jsonargparse.typing import NonNegativeInt, NotEmptyStr, OpenUnitInterval, PositiveInt, restricted_number_type
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from edge.command import UserError
from edge.files import atomic_path, cache_root, class_folders, folder_images
from edge.images import MAX_PIXELS, file_problem, read_bgr
from edge.preprocess import InputSpec

from .procedural import ProceduralShapes
from .transforms import EvalTransform, TrainTransform

log = logging.getLogger(__name__)
Fraction = restricted_number_type("Fraction", float, [(">", 0), ("<=", 1)])  # (0, 1]
UnitFraction = restricted_number_type("UnitFraction", float, [(">=", 0), ("<", 1)])  # [0, 1)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class DataError(UserError):
    """A dataset that cannot be used as given; the message says what to do."""


def read_image(path: str | Path) -> np.ndarray | None:
    """Decode to uint8 RGB HWC, or ``None`` when the file is unreadable or corrupt."""
    try:
        return cv2.cvtColor(read_bgr(path), cv2.COLOR_BGR2RGB)
    except (OSError, ValueError):
        return None


class FileImages(Dataset):
    """Labelled image files; a corrupt file is skipped (the next one is used) and counted in the log."""

    skipped = 0  # per process: each DataLoader worker counts its own

    def __init__(self, samples: list[tuple[str, int]], transform=None) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            image = read_image(path)
            if image is not None:
                return (self.transform(image) if self.transform else image), label
            FileImages.skipped += 1
            log.warning("skipped unreadable image %s (%d skipped so far in this process)", path, FileImages.skipped)
        raise DataError("no readable image in the dataset")


class ArrayImages(Dataset):
    """Images held in memory as a uint8 NHWC array (CIFAR-10's pickles)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        return (self.transform(image) if self.transform else image), int(self.labels[index])


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10 ships pickles; allow only the numpy types they contain, nothing executable."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name} in a CIFAR-10 batch")
        return super().find_class(module, name)


def download(url: str, dest: Path, md5: str) -> None:
    """Fetch ``url`` to ``dest`` with a progress bar; only a file with the right MD5 lands."""
    digest = hashlib.md5()
    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
        try:
            with (
                urllib.request.urlopen(url, timeout=30) as response,
                tqdm(
                    total=int(response.headers.get("Content-Length") or 0) or None,
                    unit="B",
                    unit_scale=True,
                    desc=f"downloading {dest.name}",
                ) as bar,
            ):
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        except (urllib.error.URLError, OSError) as e:
            raise DataError(
                f"cannot download CIFAR-10 from {url} ({e}); offline? use DATA=<ImageFolder dir> "
                "(root/<class>/*.jpg) or leave DATA empty for the built-in procedural dataset"
            ) from None
        if digest.hexdigest() != md5:
            raise DataError(f"{url} downloaded with MD5 {digest.hexdigest()}, expected {md5}; try again")


def load_cifar10(cache_dir: Path, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> dict[str, tuple]:
    """Train and test arrays of CIFAR-10, downloading the archive once into ``cache_dir``."""
    archive = cache_dir / "cifar-10-python.tar.gz"
    if not archive.is_file():
        download(url, archive, md5)
    splits: dict[str, list] = {"train": [], "test": []}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if name.startswith("data_batch") or name == "test_batch":
                batch = _NumpyOnlyUnpickler(tar.extractfile(member), encoding="bytes").load()
                splits["train" if name.startswith("data") else "test"].append(batch)
    if not splits["train"] or not splits["test"]:
        raise DataError(f"{archive} is not the CIFAR-10 python archive; delete it and run again")

    def stack(batches: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(images), np.concatenate([b[b"labels"] for b in batches])

    return {split: stack(batches) for split, batches in splits.items()}


RESOLUTION = 64  # the input size when none is given: the default recipe's, for a LightningCLI run without one


def readable(samples: list[tuple[str, int]]) -> tuple[list[tuple[str, int]], list[str]]:
    """The samples whose file is an image this project decodes, by its header (nothing decoded), and the rest."""
    good, bad = [], []
    for path, label in samples:
        try:
            problem = file_problem(path)
            if problem is None:
                with Image.open(path) as image:
                    problem = None if image.size[0] * image.size[1] <= MAX_PIXELS else "too large"
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            problem = "unreadable"
        (bad.append(path) if problem else good.append((path, label)))
    return good, bad


FEW_IMAGES = 20  # per class: below it, a class's top-1 on validation means little and its features are thin


def summary(
    root: Path, labels: list[str], train: list[tuple], val: list[tuple], unreadable: list[str], split_here: bool
) -> str:
    """What a run trains on, before it does: classes, images per class in each split, and what was left out."""
    counts = [(sum(y == i for _, y in train), sum(y == i for _, y in val)) for i in range(len(labels))]
    how = "held out here, seeded" if split_here else "from its val/ or test/ folder"
    lines = [
        f"data: {root}: {len(labels)} classes, {len(train)} training and {len(val)} validation images ({how})",
        *(f"  {name[:40]:<40} {t:>6} train {v:>5} val" for name, (t, v) in zip(labels, counts, strict=True)),
    ]
    if unreadable:
        lines.append(f"  skipped {len(unreadable)} unreadable or oversized files, e.g. {unreadable[0]}")
    lines += [
        f"warning: class {name!r} has {t + v} images; about {FEW_IMAGES} or more per class make a usable model"
        for name, (t, v) in zip(labels, counts, strict=True)
        if t + v < FEW_IMAGES
    ]
    return "\n".join(lines)


class ImageDataModule(L.LightningDataModule):
    """Train/val loaders plus what the bundle needs: ``labels`` and the eval ``input_spec``.

    An ImageFolder without ``val/`` or ``test/`` is split here: ``val_size`` images (else
    ``val_fraction`` of them) are held out, the same ones for every run with the same ``seed``.
    Comparisons of models a fraction of a point apart need about 10,000.

    The argument types are jsonargparse's restricted types: LightningCLI rejects an out-of-range
    value with one line naming the flag.

    Args:
        source: procedural (generated shapes), cifar10 (downloaded once), or an ImageFolder directory.
        resolution: the model's input size in pixels (the crop's side).
        crop_fraction: eval center crop as a share of the resized shorter side (0.875: resize 256 for 224).
        min_scale: the smallest random-resized-crop area in training, as a share of the image.
        colour_jitter: brightness, contrast and saturation varied by up to this share in training (photos).
        batch_size: images per training step.
        num_workers: data-loading processes (0: load in the training process).
        val_fraction: share of an ImageFolder held out for validation when it has no val/ folder.
        val_size: images of a folder held out instead of val_fraction (10,000 tells models 0.5 pt apart);
            cifar10 always validates on its official 10,000 test images.
        seed: the held-out split's seed: the same images for every run with the same seed.
        procedural_train_size: generated training images.
        procedural_val_size: generated validation images.
        cache_dir: where cifar10 is downloaded and decoded (None: the project's cache folder).
    """

    def __init__(
        self,
        source: NotEmptyStr = "procedural",
        resolution: PositiveInt = RESOLUTION,
        crop_fraction: Fraction = 0.875,
        min_scale: Fraction = 0.25,
        colour_jitter: UnitFraction = 0.0,
        batch_size: PositiveInt = 64,
        num_workers: NonNegativeInt = 2,
        val_fraction: OpenUnitInterval = 0.1,
        val_size: PositiveInt | None = None,
        seed: int = 0,
        procedural_train_size: PositiveInt = 4000,
        procedural_val_size: PositiveInt = 800,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.input_spec = InputSpec.for_resolution(int(resolution), float(crop_fraction))  # plain, not PositiveInt
        self._generator = torch.Generator().manual_seed(seed)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @cached_property
    def root(self) -> Path | None:
        """The ImageFolder directory, or ``None`` for the built-in sources."""
        if self.hparams.source in ("procedural", "cifar10"):
            return None
        root = Path(self.hparams.source).expanduser()
        if not root.is_dir():
            raise DataError(f"dataset directory {root} does not exist; give DATA=<dir with one folder per class>")
        return root

    @cached_property
    def splits(self) -> tuple[Path, Path | None]:
        """(train dir, val dir) of an ImageFolder; val is ``None`` when it must be split off."""
        for val in ("val", "test"):
            if (self.root / "train").is_dir() and (self.root / val).is_dir():
                return self.root / "train", self.root / val
        return self.root, None

    @cached_property
    def labels(self) -> list[str]:
        if self.hparams.source == "procedural":
            return list(ProceduralShapes.classes)
        if self.hparams.source == "cifar10":
            return list(CIFAR10_CLASSES)
        classes = class_folders(self.splits[0])
        if not classes:
            raise DataError(f"{self.splits[0]} has no class folders; expected <dir>/<class>/*.jpg")
        return classes

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_tf = TrainTransform(
            self.input_spec, scale=(self.hparams.min_scale, 1.0), jitter=self.hparams.colour_jitter
        )
        eval_tf = EvalTransform(self.input_spec)
        if self.hparams.source == "procedural":
            size = max(96, self.input_spec.resize)
            self.train_set = ProceduralShapes(
                self.hparams.procedural_train_size, self.hparams.seed, "train", size, train_tf
            )
            self.val_set = ProceduralShapes(self.hparams.procedural_val_size, self.hparams.seed, "val", size, eval_tf)
        elif self.hparams.source == "cifar10":
            cache = Path(self.hparams.cache_dir).expanduser() if self.hparams.cache_dir else cache_root()
            arrays = load_cifar10(cache / "cifar10")
            self.train_set = ArrayImages(*arrays["train"], transform=train_tf)
            self.val_set = ArrayImages(*arrays["test"], transform=eval_tf)
        else:
            train_dir, val_dir = self.splits
            train, unreadable = readable(folder_images(train_dir, self.labels))
            if not train:
                raise DataError(f"no readable images (*.jpg, *.png, ...) under {train_dir}/<class>/")
            if val_dir is None:
                order = np.random.default_rng(self.hparams.seed).permutation(len(train))
                # At least two held out where there are three or more: one image makes no comparison.
                least = max(1, min(2, len(train) - 1))
                n_val = self.hparams.val_size or max(least, int(len(train) * self.hparams.val_fraction))
                if n_val >= len(train):
                    raise DataError(
                        f"--data.val_size={n_val} leaves no training images of the {len(train)} "
                        f"under {train_dir}; hold out fewer"
                    )
                val = [train[i] for i in sorted(order[:n_val])]
                train = [train[i] for i in sorted(order[n_val:])]
            else:
                val, unreadable_val = readable(folder_images(val_dir, self.labels))
                unreadable += unreadable_val
            self.train_set, self.val_set = FileImages(train, train_tf), FileImages(val, eval_tf)
            if self.trainer is not None:  # a run, not export's evaluation of a checkpoint
                print(summary(self.root, self.labels, train, val, unreadable, val_dir is None), file=sys.stderr)

    def _loader(self, dataset: Dataset, shuffle: bool, generator: torch.Generator) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            # A short last batch is dropped in training (its BN statistics are noisy), unless the whole set is one
            # short batch: a few photos of one's own must still train.
            drop_last=shuffle and len(dataset) > self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
            generator=generator,
            persistent_workers=False,  # fresh workers each epoch, seeded from the saved generator
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self._generator)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, torch.Generator().manual_seed(self.hparams.seed))

    def calibration_dataloader(self, images: int) -> DataLoader:
        """A seeded random subset of training images under the eval transform, for PTQ observers."""
        dataset = copy.copy(self.train_set)
        dataset.transform = EvalTransform(self.input_spec)
        generator = torch.Generator().manual_seed(self.hparams.seed)
        subset = Subset(dataset, torch.randperm(len(dataset), generator=generator)[:images].tolist())
        return DataLoader(subset, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers)

    def state_dict(self) -> dict:
        """The shuffling/worker-seed generator, so a resumed run draws the same batches."""
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._generator.set_state(state_dict["generator"])
