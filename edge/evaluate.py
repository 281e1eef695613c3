"""Accuracy of a bundle on an ImageFolder, through the same preprocessing and runtime as the live app."""
import logging
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .bundle import Bundle, BundleError
from .files import class_folders, folder_images
from .preprocess import Preprocessor

log = logging.getLogger(__name__)


def labelled_images(root: Path, labels: tuple[str, ...]) -> list[tuple[str, int]]:
    """(path, label index) for ``root/<class>/*``; the class folders must be the bundle's labels."""
    if not root.is_dir():
        raise BundleError(f"data directory {root} does not exist")
    classes = class_folders(root)
    if set(classes) != set(labels):
        extra, missing = sorted(set(classes) - set(labels)), sorted(set(labels) - set(classes))
        raise BundleError(f"classes of {root} differ from the bundle's labels: "
                          f"not in the bundle {extra or '-'}, missing here {missing or '-'}")
    return folder_images(root, list(labels))


def evaluate_folder(bundle: Bundle, root: Path, limit: int | None = None, progress: bool = True) -> dict:
    samples = labelled_images(root, bundle.labels)[:limit]
    preprocess = Preprocessor(bundle.input)
    top1 = top5 = n = skipped = 0
    for path, label in tqdm(samples, desc="edge eval", unit="img", disable=not progress):
        bgr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            skipped += 1
            log.warning("skipped unreadable image %s", path)
            continue
        logits = bundle.logits(preprocess(bgr, order="BGR"))[0]
        ranked = np.argsort(-logits)
        top1 += int(ranked[0] == label)
        top5 += int(label in ranked[:5])
        n += 1
    if n == 0:
        raise BundleError(f"no readable images under {root}/<class>/")
    return {"top1": top1 / n, "top5": top5 / n, "n": n, "skipped": skipped}
