"""Tiling of large frames for a detector with a small fixed input, and merging of the boxes.

A classroom camera frame of 1920x1080 squeezed into BlazeFace's 192x192 input shrinks a
30 px face to 3 px, far below what the model finds. ``plan_tiles`` therefore cuts the
frame into overlapping square tiles in levels. The first level's tiles are small enough
that a face of ``min_face_px`` reaches the model's minimum face size. Each further level
doubles the tile and the face size it is responsible for. The levels stop where the
whole frame, letterboxed into one input, already shows the faces of the next level at
the minimum size; that whole-frame pass is always run and finds the largest faces.

Within a level, neighbouring tiles overlap by the largest face of that level, so every
such face lies wholly inside at least one tile. Faces cut by a tile edge still produce
partial boxes in the other tiles; ``merge_boxes`` ranks boxes that touch an inner tile
edge after whole ones, then removes boxes that overlap (IoU) or are mostly contained in
a box ranked before them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Each level covers faces from its minimum up to twice that size. The tile count of a
# level falls with the square of its stride (tile minus overlap). BlazeFace's first tiles
# are 10.7 times the minimum face (192 / 18 px). For that case, an estimate that ignores
# rounding gives 8 % more model runs over all levels for a ratio of 3 than for 2, and
# 21 % more for a ratio of 1.5.
LEVEL_FACE_RATIO = 2.0
# Boxes that pass within this many model input pixels of an inner tile edge count as cut.
CUT_MARGIN_MODEL_PX = 2.0
# A box whose area lies at least this fraction inside a box ranked before it is a duplicate:
# the partial box of a face cut at a tile edge, or a box at another level's scale.
CONTAINMENT_THRESHOLD = 0.6


@dataclass(frozen=True, slots=True)
class Region:
    """Rectangle of a frame in pixels that is letterboxed into one model input.

    ``level`` is 0 for the finest tiles and counts up to the whole-frame pass, so a face
    smaller than a level's minimum is shown at the model's minimum size at a lower level.
    """

    x_px: int
    y_px: int
    width_px: int
    height_px: int
    level: int


@dataclass(frozen=True, slots=True)
class TilePlan:
    """Regions that the detector runs on for one frame size: all tiles, then the whole frame."""

    frame_width_px: int
    frame_height_px: int
    tile_sizes_px: tuple[int, ...]
    regions: tuple[Region, ...]

    @property
    def tile_count(self) -> int:
        """Number of tiles, not counting the whole-frame pass."""
        return len(self.regions) - 1


@dataclass(frozen=True, slots=True)
class FrameBoxes:
    """Candidate boxes in frame pixels from all regions of one frame.

    ``boxes`` has shape (N, 4) as x_min, y_min, x_max, y_max; ``scores`` (N,) is in [0, 1];
    ``cut`` (N,) is true for boxes that touch an edge of their tile inside the frame.
    """

    boxes: np.ndarray
    scores: np.ndarray
    cut: np.ndarray

    @classmethod
    def concatenate(cls, parts: list[FrameBoxes]) -> FrameBoxes:
        """Join the boxes of several regions into one set."""
        if not parts:
            return cls(boxes=np.zeros((0, 4)), scores=np.zeros(0), cut=np.zeros(0, dtype=bool))
        return cls(
            boxes=np.concatenate([part.boxes for part in parts]),
            scores=np.concatenate([part.scores for part in parts]),
            cut=np.concatenate([part.cut for part in parts]),
        )


def tile_starts(length_px: int, tile_px: int, overlap_px: int) -> list[int]:
    """Return tile start positions along one axis, evenly spread, overlapping by at least ``overlap_px``."""
    if tile_px >= length_px:
        return [0]
    stride_px = tile_px - overlap_px
    count = math.ceil((length_px - tile_px) / stride_px) + 1
    return [round(index * (length_px - tile_px) / (count - 1)) for index in range(count)]


def plan_tiles(
    frame_width_px: int,
    frame_height_px: int,
    min_face_px: float,
    min_model_face_px: float,
    input_size_px: int,
) -> TilePlan:
    """Plan the tiles that let a detector of the given input size find faces of ``min_face_px`` and up.

    ``min_model_face_px`` is the smallest face width, in model input pixels, that the
    detector finds reliably. A frame whose whole-frame pass already shows a face of
    ``min_face_px`` at that width gets no tiles.
    """
    longest_side_px = max(frame_width_px, frame_height_px)
    regions: list[Region] = []
    tile_sizes_px: list[int] = []
    level_face_px = float(min_face_px)
    while True:
        # Rounding the tile down keeps a face of level_face_px at min_model_face_px or more.
        tile_px = math.floor(level_face_px * input_size_px / min_model_face_px)
        if tile_px >= longest_side_px:
            break
        overlap_px = math.ceil(level_face_px * LEVEL_FACE_RATIO)
        if tile_px <= overlap_px:
            raise ValueError(
                f"min_model_face_px {min_model_face_px} is too large for a {input_size_px} px input: "
                f"tiles of {tile_px} px cannot overlap by {overlap_px} px; use a smaller value"
            )
        for y_px in tile_starts(frame_height_px, tile_px, overlap_px):
            for x_px in tile_starts(frame_width_px, tile_px, overlap_px):
                width_px = min(tile_px, frame_width_px)
                height_px = min(tile_px, frame_height_px)
                regions.append(Region(x_px, y_px, width_px, height_px, level=len(tile_sizes_px)))
        tile_sizes_px.append(tile_px)
        level_face_px *= LEVEL_FACE_RATIO
    regions.append(Region(0, 0, frame_width_px, frame_height_px, level=len(tile_sizes_px)))
    return TilePlan(frame_width_px, frame_height_px, tuple(tile_sizes_px), tuple(regions))


def mark_cut_boxes(
    boxes: np.ndarray, region: Region, frame_width_px: int, frame_height_px: int, margin_px: float
) -> np.ndarray:
    """Return a flag per box that is true where the box reaches an edge of ``region`` inside the frame.

    An edge on the frame border does not count: a face there is cut by the frame itself,
    and no other tile shows more of it.
    """
    right_px = region.x_px + region.width_px
    bottom_px = region.y_px + region.height_px
    cut = np.zeros(len(boxes), dtype=bool)
    if region.x_px > 0:
        cut |= boxes[:, 0] <= region.x_px + margin_px
    if region.y_px > 0:
        cut |= boxes[:, 1] <= region.y_px + margin_px
    if right_px < frame_width_px:
        cut |= boxes[:, 2] >= right_px - margin_px
    if bottom_px < frame_height_px:
        cut |= boxes[:, 3] >= bottom_px - margin_px
    return cut


def merge_boxes(
    candidates: FrameBoxes, iou_threshold: float, containment_threshold: float = CONTAINMENT_THRESHOLD
) -> np.ndarray:
    """Select one box per face with hard non-maximum suppression and return the kept indices.

    Boxes are ranked whole before cut, then by score. Going down the ranking, a box is
    kept unless its IoU with a kept box exceeds ``iou_threshold`` or at least
    ``containment_threshold`` of its area lies inside a kept box.

    Hard suppression keeps the single best box. Weighted suppression averages the
    overlapping boxes instead, which here would blend in the partial boxes of faces cut by
    tile edges and the coarser boxes of other levels.
    """
    boxes = candidates.boxes
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.intp)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    # lexsort takes its last key as the primary one: whole (cut=False) before cut, then by descending score.
    order = np.lexsort((-candidates.scores, candidates.cut))
    kept_indices: list[int] = []
    while len(order):
        best = order[0]
        kept_indices.append(int(best))
        rest = order[1:]
        intersection_width = np.clip(
            np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]), 0, None
        )
        intersection_height = np.clip(
            np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]), 0, None
        )
        intersection = intersection_width * intersection_height
        union = areas[best] + areas[rest] - intersection
        iou = np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)
        # A box without area counts as contained, so degenerate boxes are dropped.
        contained = np.divide(
            intersection, areas[rest], out=np.ones_like(intersection), where=areas[rest] > 0
        )
        order = rest[(iou <= iou_threshold) & (contained < containment_threshold)]
    return np.array(kept_indices, dtype=np.intp)
