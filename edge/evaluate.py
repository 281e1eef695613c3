"""Accuracy of a bundle on an ImageFolder, through the same preprocessing and runtime as the live app."""

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .bundle import Bundle, BundleError
from .files import class_folders, folder_images
from .images import read_bgr, unreadable
from .preprocess import Preprocessor

log = logging.getLogger(__name__)


def labelled_images(root: Path, labels: tuple[str, ...]) -> list[tuple[str, int]]:
    """(path, label index) for ``root/<class>/*``; the class folders must be the bundle's labels."""
    if root.is_file():
        raise BundleError(
            f"{root} is a file; edge eval wants a folder with a folder of images per class "
            f"(to label single images: python -m edge predict BUNDLE {root})"
        )
    if not root.is_dir():
        raise BundleError(f"data directory {root} does not exist")
    classes = class_folders(root)
    if set(classes) != set(labels):
        extra, missing = sorted(set(classes) - set(labels)), sorted(set(labels) - set(classes))
        raise BundleError(
            f"classes of {root} differ from the bundle's labels: "
            f"not in the bundle {extra or '-'}, missing here {missing or '-'}"
        )
    return folder_images(root, list(labels))


def every_class_in_turn(samples: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The classes' images taken one from each class in turn: any first N covers every class evenly."""
    by_class: dict[int, list] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    return [s for turn in itertools.zip_longest(*by_class.values()) for s in turn if s is not None]


def ranked(bundle: Bundle, samples: list[tuple[str, int]], progress: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """(label, class indices best first) per readable sample, through the app's preprocessing and runtime;
    an unreadable file is logged and left out."""
    preprocess = Preprocessor(bundle.input)
    for path, label in tqdm(samples, desc="edge eval", unit="img", disable=not progress):
        try:
            bgr = read_bgr(path)
        except (OSError, ValueError) as e:
            log.warning("skipped %s", unreadable(path, e))
            continue
        yield label, np.argsort(-bundle.logits(preprocess(bgr, order="BGR"))[0])


def evaluate_folder(bundle: Bundle, root: Path, limit: int | None = None, progress: bool = True) -> dict:
    """Top-1/top-5 over ``root/<class>/*``; ``limit`` images are spread over the classes, not the first class's."""
    samples = every_class_in_turn(labelled_images(root, bundle.labels))[:limit]
    top1 = top5 = n = 0
    for label, order in ranked(bundle, samples, progress):
        top1 += int(order[0] == label)
        top5 += int(label in order[:5])
        n += 1
    if n == 0:
        raise BundleError(f"no readable images under {root}/<class>/")
    return {"top1": top1 / n, "top5": top5 / n, "n": n, "skipped": len(samples) - n}
