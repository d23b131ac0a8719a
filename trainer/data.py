"""FER2013 in its two public shapes, optional FER+ labels, and the report of malformed rows.

- ``fer2013.csv``: columns ``emotion,pixels,Usage``. ``emotion`` is 0..6 in the order of
  ``FER2013_LABELS``, ``pixels`` is 2304 space-separated gray values of a 48x48 image, and
  ``Usage`` is Training, PublicTest or PrivateTest, which become the train, validation and
  test splits.
- The image-folder tree: ``train/<class>/*`` and ``test/<class>/*`` with one folder per
  label. The validation split is drawn from ``train`` per class with a seeded shuffle.
- ``fer2013new.csv`` (FER+): one row per row of ``fer2013.csv``, in the same order, with
  ten annotators' votes for neutral, happiness, surprise, sadness, anger, disgust, fear,
  contempt, unknown and not a face (NF). The label is the class with the most votes.

A malformed row (wrong pixel count, a value outside 0..255, a label out of range, an
unknown Usage, an unreadable image) is skipped, counted, and listed by file and row or
file path. ``load_dataset`` raises ``DataError`` when the skipped share exceeds
``max_malformed_share``, because a large share means a wrong or damaged file rather than
a few bad rows.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_agent.payload import FER2013_LABELS
from trainer.errors import DataError

log = logging.getLogger(__name__)

#: Side of a FER2013 image in pixels.
FER2013_SIZE_PX = 48
FER2013_COLUMNS = ("emotion", "pixels", "Usage")
#: ``Usage`` value of each split.
USAGE_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
SPLITS = ("train", "val", "test")

#: FER+ vote columns in file order, mapped to FER2013 labels. Contempt has no FER2013 class,
#: and unknown and NF (not a face) are not expressions, so rows that they win are dropped.
FERPLUS_VOTE_COLUMNS = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF",
)
FERPLUS_TO_FER2013 = {
    "neutral": "neutral",
    "happiness": "happy",
    "surprise": "surprise",
    "sadness": "sad",
    "anger": "angry",
    "disgust": "disgust",
    "fear": "fear",
}

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
#: Folder names of the image-folder shape: the top-level split folders.
FOLDER_SPLITS = {"train": "train", "test": "test"}

#: Malformed rows listed one by one in the log and in error messages; the rest are counted.
MAX_LISTED_ROWS = 20


@dataclass(frozen=True)
class MalformedRow:
    """A skipped row or image: the file, the 1-based line (0 for image files) and the reason."""

    file: str
    row: int
    reason: str

    def describe(self) -> str:
        return f"{self.file}:{self.row}: {self.reason}" if self.row else f"{self.file}: {self.reason}"


@dataclass
class DataReport:
    """Rows read, rows kept per split and the malformed and dropped rows of one dataset load."""

    source: str
    rows_read: int = 0
    kept: Counter[str] = field(default_factory=Counter)
    malformed: list[MalformedRow] = field(default_factory=list)
    #: FER+ rows left out on purpose (contempt, unknown, not a face, tied votes), by reason.
    dropped: Counter[str] = field(default_factory=Counter)

    @property
    def malformed_share(self) -> float:
        return len(self.malformed) / self.rows_read if self.rows_read else 0.0

    def summary(self) -> str:
        kept = ", ".join(f"{split} {self.kept[split]}" for split in SPLITS if self.kept[split])
        text = f"{self.source}: {self.rows_read} rows, kept {kept or 'none'}, {len(self.malformed)} malformed"
        if self.dropped:
            text += ", dropped " + ", ".join(f"{count} {reason}" for reason, count in sorted(self.dropped.items()))
        return text

    def listed_malformed(self) -> str:
        lines = [row.describe() for row in self.malformed[:MAX_LISTED_ROWS]]
        if len(self.malformed) > MAX_LISTED_ROWS:
            lines.append(f"... and {len(self.malformed) - MAX_LISTED_ROWS} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class ImageSet:
    """Gray images (N, S, S) uint8 and their label indices (N,) int64."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_classes)

    def resized(self, size_px: int) -> ImageSet:
        """Return the set at ``size_px`` x ``size_px``: area interpolation down, linear up."""
        if self.images.shape[1:] == (size_px, size_px):
            return self
        flag = cv2.INTER_AREA if size_px < self.images.shape[1] else cv2.INTER_LINEAR
        resized = np.empty((len(self), size_px, size_px), dtype=np.uint8)
        for index, image in enumerate(self.images):
            resized[index] = cv2.resize(image, (size_px, size_px), interpolation=flag)
        return ImageSet(resized, self.labels)


@dataclass(frozen=True)
class Dataset:
    """The three splits of one dataset load, the labels and the report of skipped rows."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    labels: tuple[str, ...]
    report: DataReport

    def split(self, name: str) -> ImageSet:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}: use one of {', '.join(SPLITS)}")
        return getattr(self, name)


def load_dataset(
    path: Path,
    ferplus_path: Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_malformed_share: float = 0.01,
) -> Dataset:
    """Load ``fer2013.csv`` or an image-folder tree, whichever ``path`` is.

    ``val_fraction`` and ``seed`` apply to the image-folder shape only, whose validation
    split is drawn from ``train``. ``ferplus_path`` applies to the CSV shape only.

    Raises:
        DataError: the path is missing or of neither shape, a split is empty, or the share of
            malformed rows exceeds ``max_malformed_share``.
    """
    path = Path(path)
    if path.is_file():
        dataset = _load_csv_dataset(path, ferplus_path)
    elif path.is_dir():
        if ferplus_path is not None:
            raise DataError(
                f"FER+ labels ({ferplus_path}) align with the rows of fer2013.csv, not with an image folder "
                f"({path}): pass the CSV file as the data path, or drop the FER+ path"
            )
        dataset = _load_folder_dataset(path, val_fraction, seed)
    else:
        raise DataError(f"Dataset not found: {path}. Pass fer2013.csv or a folder with train/ and test/")

    report = dataset.report
    log.info("%s", report.summary())
    if report.malformed:
        log.warning("Skipped %d malformed rows:\n%s", len(report.malformed), report.listed_malformed())
    if report.malformed_share > max_malformed_share:
        raise DataError(
            f"{len(report.malformed)} of {report.rows_read} rows of {report.source} are malformed "
            f"({report.malformed_share:.1%}, limit {max_malformed_share:.1%}):\n{report.listed_malformed()}\n"
            "Check that the file is the FER2013 download, or raise max_malformed_share"
        )
    for name in SPLITS:
        if len(dataset.split(name)) == 0:
            raise DataError(f"{report.source}: the {name} split is empty")
    return dataset


def _load_csv_dataset(path: Path, ferplus_path: Path | None) -> Dataset:
    report = DataReport(source=str(path))
    images: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    labels: dict[str, list[int]] = {split: [] for split in SPLITS}
    ferplus = _read_ferplus(ferplus_path, report) if ferplus_path is not None else None

    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if header is None or tuple(column.strip() for column in header[:3]) != FER2013_COLUMNS:
            raise DataError(
                f"{path}: the header is {header}, expected {','.join(FER2013_COLUMNS)}: "
                "pass the fer2013.csv of the FER2013 download"
            )
        # Line 1 is the header, so data row i (0-based) sits on line i + 2.
        for row_index, row in enumerate(reader):
            line = row_index + 2
            report.rows_read += 1
            parsed = _parse_csv_row(row, path, line, report)
            if parsed is None:
                continue
            label, pixels, split = parsed
            if ferplus is not None:
                if row_index >= len(ferplus):
                    report.malformed.append(MalformedRow(str(path), line, "no matching FER+ row"))
                    continue
                label = ferplus[row_index]
                if label < 0:
                    continue
            images[split].append(pixels)
            labels[split].append(label)
            report.kept[split] += 1
    return Dataset(
        *(_image_set(images[split], labels[split], FER2013_SIZE_PX) for split in SPLITS),
        labels=FER2013_LABELS,
        report=report,
    )


def _parse_csv_row(
    row: list[str], path: Path, line: int, report: DataReport
) -> tuple[int, np.ndarray, str] | None:
    def reject(reason: str) -> None:
        report.malformed.append(MalformedRow(str(path), line, reason))

    if len(row) < 3:
        reject(f"{len(row)} columns, expected 3")
        return None
    emotion, pixel_text, usage = row[0].strip(), row[1], row[2].strip()
    try:
        label = int(emotion)
    except ValueError:
        reject(f"emotion {emotion!r} is not an integer")
        return None
    if not 0 <= label < len(FER2013_LABELS):
        reject(f"emotion {label} is out of range 0..{len(FER2013_LABELS) - 1}")
        return None
    if usage not in USAGE_SPLITS:
        reject(f"Usage {usage!r} is not one of {', '.join(USAGE_SPLITS)}")
        return None
    values = pixel_text.split()
    expected = FER2013_SIZE_PX * FER2013_SIZE_PX
    if len(values) != expected:
        reject(f"{len(values)} pixel values, expected {expected}")
        return None
    try:
        pixels = np.array(values, dtype=np.int64)
    except ValueError:
        reject("pixels contain a value that is not an integer")
        return None
    if pixels.min() < 0 or pixels.max() > 255:
        reject(f"pixel values span {pixels.min()}..{pixels.max()}, expected 0..255")
        return None
    return label, pixels.astype(np.uint8).reshape(FER2013_SIZE_PX, FER2013_SIZE_PX), USAGE_SPLITS[usage]


def _read_ferplus(path: Path, report: DataReport) -> list[int]:
    """Return one FER2013 label index per FER+ row, or -1 for a row to drop (reason counted)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"FER+ file not found: {path}. Pass fer2013new.csv from the FER+ repository")
    labels: list[int] = []
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        header = [column.strip() for column in next(reader, [])]
        missing = [column for column in FERPLUS_VOTE_COLUMNS if column not in header]
        if missing:
            raise DataError(
                f"{path}: columns {', '.join(missing)} are missing from the header {header}: "
                "pass fer2013new.csv from the FER+ repository"
            )
        positions = [header.index(column) for column in FERPLUS_VOTE_COLUMNS]
        for row_index, row in enumerate(reader):
            labels.append(_ferplus_label(row, positions, path, row_index + 2, report))
    return labels


def _ferplus_label(row: list[str], positions: list[int], path: Path, line: int, report: DataReport) -> int:
    try:
        votes = np.array([int(row[position]) for position in positions])
    except (IndexError, ValueError):
        report.malformed.append(MalformedRow(str(path), line, "FER+ vote counts are missing or not integers"))
        return -1
    if votes.sum() == 0 or votes.min() < 0:
        report.malformed.append(MalformedRow(str(path), line, f"FER+ votes {votes.tolist()} are invalid"))
        return -1
    winners = np.flatnonzero(votes == votes.max())
    if len(winners) > 1:
        report.dropped["tied votes"] += 1
        return -1
    winner = FERPLUS_VOTE_COLUMNS[winners[0]]
    if winner not in FERPLUS_TO_FER2013:
        report.dropped[winner] += 1
        return -1
    return FER2013_LABELS.index(FERPLUS_TO_FER2013[winner])


def _load_folder_dataset(root: Path, val_fraction: float, seed: int) -> Dataset:
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    report = DataReport(source=str(root))
    sets: dict[str, ImageSet] = {}
    for folder in FOLDER_SPLITS:
        split_dir = root / folder
        if not split_dir.is_dir():
            raise DataError(f"{root} has no {folder}/ folder: the image-folder shape needs train/ and test/")
        sets[folder] = _read_class_folders(split_dir, report)
    train, val = _stratified_split(sets["train"], val_fraction, seed)
    report.kept.update({"train": len(train), "val": len(val), "test": len(sets["test"])})
    return Dataset(train, val, sets["test"], labels=FER2013_LABELS, report=report)


def _read_class_folders(split_dir: Path, report: DataReport) -> ImageSet:
    images: list[np.ndarray] = []
    labels: list[int] = []
    for class_dir in sorted(path for path in split_dir.iterdir() if path.is_dir()):
        if class_dir.name not in FER2013_LABELS:
            raise DataError(
                f"{class_dir}: folder name {class_dir.name!r} is not a label; name the class folders "
                f"{', '.join(FER2013_LABELS)}"
            )
        label = FER2013_LABELS.index(class_dir.name)
        for image_path in sorted(class_dir.iterdir()):
            if image_path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            report.rows_read += 1
            image = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
            if image is None:
                report.malformed.append(MalformedRow(str(image_path), 0, "unreadable image"))
                continue
            if image.shape != (FER2013_SIZE_PX, FER2013_SIZE_PX):
                image = cv2.resize(image, (FER2013_SIZE_PX, FER2013_SIZE_PX), interpolation=cv2.INTER_AREA)
            images.append(image)
            labels.append(label)
    return _image_set(images, labels, FER2013_SIZE_PX)


def _stratified_split(images: ImageSet, val_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Move ``val_fraction`` of each class, at least one image of a class with two or more, to val."""
    generator = np.random.default_rng(seed)
    val_indices: list[np.ndarray] = []
    for label in np.unique(images.labels):
        members = np.flatnonzero(images.labels == label)
        generator.shuffle(members)
        count = round(len(members) * val_fraction)
        if count == 0 and len(members) >= 2:
            count = 1
        val_indices.append(members[:count])
    val_mask = np.zeros(len(images), dtype=bool)
    if val_indices:
        val_mask[np.concatenate(val_indices)] = True
    return (
        ImageSet(images.images[~val_mask], images.labels[~val_mask]),
        ImageSet(images.images[val_mask], images.labels[val_mask]),
    )


def _image_set(images: list[np.ndarray], labels: list[int], size_px: int) -> ImageSet:
    if not images:
        return ImageSet(np.empty((0, size_px, size_px), np.uint8), np.empty(0, np.int64))
    return ImageSet(np.stack(images), np.asarray(labels, dtype=np.int64))


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Return inverse-frequency weights ``N / (classes * count)``, 0 for a class with no samples.

    A class of average frequency gets weight 1; disgust, under 2 % of FER2013, gets about 7.
    """
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes, dtype=np.float64)
    present = counts > 0
    weights[present] = len(labels) / (num_classes * counts[present])
    return weights.astype(np.float32)
