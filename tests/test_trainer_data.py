"""FER2013 parsing in both shapes, FER+ labels, malformed rows, splits and class weights, on generated files."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from edge_agent.payload import FER2013_LABELS
from trainer.data import class_weights, load_dataset
from trainer.errors import DataError
from trainer.synthetic import SplitSizes, make_images, write_fer2013_csv, write_ferplus_csv, write_image_folder

SIZES = SplitSizes(train=70, val=21, test=21)


def append_rows(path, rows):
    with open(path, "a", newline="") as file:
        csv.writer(file).writerows(rows)


def test_csv_splits_by_usage(tmp_path):
    written = write_fer2013_csv(tmp_path / "fer2013.csv", SIZES)
    dataset = load_dataset(tmp_path / "fer2013.csv")
    assert dataset.labels == FER2013_LABELS
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(dataset.split(split).images, written[split].images)
        np.testing.assert_array_equal(dataset.split(split).labels, written[split].labels)
    assert dataset.report.rows_read == 112
    assert not dataset.report.malformed


def test_csv_malformed_rows_reported(tmp_path):
    path = tmp_path / "fer2013.csv"
    write_fer2013_csv(path, SIZES)
    good_pixels = " ".join(["10"] * 2304)
    append_rows(
        path,
        [
            ["3", " ".join(["10"] * 2000), "Training"],
            ["9", good_pixels, "Training"],
            ["2", " ".join(["300"] * 2304), "PublicTest"],
            ["1", good_pixels, "Holdout"],
        ],
    )
    dataset = load_dataset(path, max_malformed_share=0.05)
    rows = {row.row: row.reason for row in dataset.report.malformed}
    # 112 data rows on lines 2..113, so the appended rows are lines 114..117.
    assert set(rows) == {114, 115, 116, 117}
    assert "2000 pixel values" in rows[114]
    assert "out of range" in rows[115]
    assert "0..255" in rows[116]
    assert "Holdout" in rows[117]
    assert len(dataset.train) == 70


def test_csv_malformed_share_stops(tmp_path):
    path = tmp_path / "fer2013.csv"
    write_fer2013_csv(path, SIZES)
    append_rows(path, [["3", "1 2 3", "Training"]] * 3)
    with pytest.raises(DataError) as error:
        load_dataset(path, max_malformed_share=0.02)
    message = str(error.value)
    assert "3 of 115 rows" in message
    assert f"{path}:114: 3 pixel values" in message
    assert "max_malformed_share" in message


def test_csv_wrong_header(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("label,image\n1,2\n")
    with pytest.raises(DataError, match="expected emotion,pixels,Usage"):
        load_dataset(path)


def test_ferplus_majority_labels(tmp_path):
    path = tmp_path / "fer2013.csv"
    write_fer2013_csv(path, SplitSizes(train=6, val=1, test=1))
    # Columns: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF.
    votes = [
        [0, 8, 1, 0, 0, 0, 0, 0, 1, 0],  # happy
        [1, 0, 0, 0, 0, 0, 0, 6, 3, 0],  # contempt: dropped
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],  # not a face: dropped
        [0, 0, 0, 0, 2, 0, 0, 0, 8, 0],  # unknown: dropped
        [4, 0, 0, 4, 0, 0, 0, 0, 2, 0],  # tie: dropped
        [0, 0, 0, 0, 7, 3, 0, 0, 0, 0],  # angry
        [2, 0, 0, 0, 0, 0, 6, 0, 0, 2],  # fear, the val row
        [0, 0, 9, 0, 0, 0, 0, 0, 1, 0],  # surprise, the test row
    ]
    ferplus = tmp_path / "fer2013new.csv"
    write_ferplus_csv(ferplus, votes)
    dataset = load_dataset(path, ferplus_path=ferplus)
    index = FER2013_LABELS.index
    assert dataset.train.labels.tolist() == [index("happy"), index("angry")]
    assert dataset.val.labels.tolist() == [index("fear")]
    assert dataset.test.labels.tolist() == [index("surprise")]
    assert dict(dataset.report.dropped) == {"contempt": 1, "NF": 1, "unknown": 1, "tied votes": 1}
    assert not dataset.report.malformed


def test_ferplus_bad_votes_counted(tmp_path):
    path = tmp_path / "fer2013.csv"
    write_fer2013_csv(path, SplitSizes(train=3, val=1, test=1))
    ferplus = tmp_path / "fer2013new.csv"
    write_ferplus_csv(ferplus, [[0, 9, 0, 0, 0, 0, 0, 0, 1, 0]] * 5)
    lines = ferplus.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 2)[0] + ",x,y"
    ferplus.write_text("\n".join(lines) + "\n")
    dataset = load_dataset(path, ferplus_path=ferplus, max_malformed_share=0.5)
    assert [(row.file, row.row) for row in dataset.report.malformed] == [(str(ferplus), 3)]
    assert len(dataset.train) == 2


def test_folder_stratified_split(tmp_path):
    write_image_folder(tmp_path / "fer", SIZES)
    first = load_dataset(tmp_path / "fer", val_fraction=0.25, seed=3)
    second = load_dataset(tmp_path / "fer", val_fraction=0.25, seed=3)
    np.testing.assert_array_equal(first.val.images, second.val.images)
    train_counts = first.train.class_counts(7) + first.val.class_counts(7)
    val_counts = first.val.class_counts(7)
    for total, in_val in zip(train_counts, val_counts, strict=True):
        assert in_val == round(total * 0.25) or (in_val == 1 and total >= 2)
    assert len(first.test) == 21
    other = load_dataset(tmp_path / "fer", val_fraction=0.25, seed=4)
    assert not np.array_equal(other.val.images, first.val.images)


def test_folder_unreadable_image(tmp_path):
    write_image_folder(tmp_path / "fer", SIZES)
    broken = tmp_path / "fer" / "train" / "happy" / "broken.png"
    broken.write_bytes(b"not a png")
    dataset = load_dataset(tmp_path / "fer", max_malformed_share=0.05)
    assert [(row.file, row.reason) for row in dataset.report.malformed] == [(str(broken), "unreadable image")]
    with pytest.raises(DataError, match="broken.png: unreadable image"):
        load_dataset(tmp_path / "fer", max_malformed_share=0.001)


def test_folder_resizes_other_sizes(tmp_path):
    write_image_folder(tmp_path / "fer", SIZES)
    cv2.imwrite(str(tmp_path / "fer" / "test" / "sad" / "large.png"), np.full((96, 96), 77, np.uint8))
    dataset = load_dataset(tmp_path / "fer")
    assert dataset.test.images.shape[1:] == (48, 48)
    assert len(dataset.test) == 22


def test_folder_unknown_class(tmp_path):
    write_image_folder(tmp_path / "fer", SIZES)
    (tmp_path / "fer" / "train" / "contempt").mkdir()
    with pytest.raises(DataError, match="'contempt' is not a label"):
        load_dataset(tmp_path / "fer")


def test_missing_dataset(tmp_path):
    with pytest.raises(DataError, match="Dataset not found"):
        load_dataset(tmp_path / "absent.csv")


def test_class_weights_inverse_frequency():
    labels = np.array([0] * 6 + [1] * 2 + [2] * 4)
    weights = class_weights(labels, 4)
    np.testing.assert_allclose(weights, [12 / (4 * 6), 12 / (4 * 2), 12 / (4 * 4), 0.0])


def test_synthetic_classes_differ():
    images = make_images(200, seed=0)
    assert set(images.labels.tolist()) == set(range(7))
    # Rarer disgust, as in FER2013.
    counts = images.class_counts(7)
    assert counts[1] < counts[3]
