"""Generated FER2013-shaped data with a learnable signal, for tests and benchmarks.

Each image is a blurred noise background with horizontal stripes whose frequency
encodes the class (class k has k + 2 cycles per image height) at a random phase. Stripes
survive every augmentation the trainer applies (flip, small shift and rotation,
brightness and contrast), so a small network learns the classes in a few epochs, while
the noise keeps the task from being trivial. Nothing here resembles a face: the data
tests the code paths, not the accuracy on real expressions.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.payload import FER2013_LABELS
from trainer.data import FER2013_SIZE_PX, FERPLUS_VOTE_COLUMNS, ImageSet

#: Relative class frequencies: disgust is rarer, as in FER2013 (about 1.5 % there).
CLASS_SHARES = np.array([1.0, 0.4, 1.0, 1.4, 1.0, 1.0, 1.2])
USAGES = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}


@dataclass(frozen=True)
class SplitSizes:
    """Images per split of a generated dataset."""

    train: int = 420
    val: int = 140
    test: int = 140


def make_images(count: int, seed: int, size_px: int = FER2013_SIZE_PX) -> ImageSet:
    """Generate ``count`` labelled gray images with class shares ``CLASS_SHARES``."""
    generator = np.random.default_rng(seed)
    shares = CLASS_SHARES / CLASS_SHARES.sum()
    labels = generator.choice(len(FER2013_LABELS), size=count, p=shares).astype(np.int64)
    rows = np.arange(size_px, dtype=np.float64)[:, None] / size_px
    images = np.empty((count, size_px, size_px), dtype=np.uint8)
    for index, label in enumerate(labels):
        background = cv2.GaussianBlur(generator.normal(0.0, 40.0, (size_px, size_px)), (0, 0), 3.0)
        phase = generator.uniform(0, 2 * np.pi)
        stripes = 45.0 * np.sin(2 * np.pi * (label + 2) * rows + phase)
        noise = generator.normal(0.0, 12.0, (size_px, size_px))
        image = 128.0 + generator.uniform(-30, 30) + background + stripes + noise
        images[index] = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return ImageSet(images, labels)


def write_fer2013_csv(path: Path, sizes: SplitSizes = SplitSizes(), seed: int = 0) -> dict[str, ImageSet]:
    """Write a ``fer2013.csv`` with the three Usage values and return the images per split."""
    sets = {split: make_images(getattr(sizes, split), seed + offset) for offset, split in enumerate(USAGES)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["emotion", "pixels", "Usage"])
        for split, usage in USAGES.items():
            for image, label in zip(sets[split].images, sets[split].labels, strict=True):
                writer.writerow([int(label), " ".join(str(int(value)) for value in image.ravel()), usage])
    return sets


def write_image_folder(root: Path, sizes: SplitSizes = SplitSizes(), seed: int = 0) -> dict[str, ImageSet]:
    """Write ``train/<class>/*.png`` (train and val images together) and ``test/<class>/*.png``."""
    train = make_images(sizes.train + sizes.val, seed)
    test = make_images(sizes.test, seed + 2)
    for folder, images in (("train", train), ("test", test)):
        for label in FER2013_LABELS:
            (Path(root) / folder / label).mkdir(parents=True, exist_ok=True)
        for index, (image, label) in enumerate(zip(images.images, images.labels, strict=True)):
            cv2.imwrite(str(Path(root) / folder / FER2013_LABELS[label] / f"{index:05d}.png"), image)
    return {"train": train, "test": test}


def write_ferplus_csv(path: Path, votes: list[list[int]]) -> None:
    """Write a ``fer2013new.csv`` with one row of ten vote counts per FER2013 row."""
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["Usage", "Image name", *FERPLUS_VOTE_COLUMNS])
        for index, row in enumerate(votes):
            writer.writerow(["Training", f"fer{index:07d}.png", *row])
