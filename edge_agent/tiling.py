"""Image pyramid and tiling for a detector that finds faces only within a band of sizes.

A classroom camera frame of 1920x1080 squeezed into BlazeFace's 192x192 input shrinks a
30 px face to 3 px, far below what the model finds. ``plan_pyramid`` therefore scales
the frame in levels. The first level scales it so that a face of ``min_face_px`` reaches
the model's minimum face size. Each further level shrinks the frame by
``LEVEL_FACE_RATIO``, so it shows the faces that were too large for the level before at
the minimum size again. The levels stop at the first one that fits into one model input
and on which a face as tall as the frame is no larger than the largest face the model
finds.

A level larger than ``max_input_area_px`` is cut into tiles of one shape, so that one
interpreter with a bounded memory arena serves the whole level. Neighbouring tiles
overlap by the largest face of that level, so every such face lies wholly inside at
least one tile. Faces cut by a tile edge still produce partial boxes in the other tiles.
``merge_boxes`` ranks boxes that touch an inner tile edge after whole ones, then removes
boxes that overlap (IoU) or are mostly contained in a box ranked before them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Each level covers faces from the model's minimum face size up to this many times that
# size. The model finds faces of up to about 128 px, 8 times its 16 px minimum, in a
# 192 px input, so 4 leaves a margin. A larger ratio means fewer, cheaper coarse levels
# but a wider tile overlap at each level.
LEVEL_FACE_RATIO = 4.0
# Boxes that pass within this many model input pixels of an inner tile edge count as cut.
CUT_MARGIN_MODEL_PX = 2.0
# A box whose area lies at least this fraction inside a box ranked before it is a duplicate:
# the partial box of a face cut at a tile edge, or a box at another level's scale.
CONTAINMENT_THRESHOLD = 0.6
# Upper bound of columns (and of rows) that the tile search tries per level.
MAX_TILES_PER_AXIS = 64


@dataclass(frozen=True, slots=True)
class Tile:
    """Top-left corner of one model input inside its level's image, in level pixels."""

    x_px: int
    y_px: int


@dataclass(frozen=True, slots=True)
class Level:
    """The frame scaled for one band of face sizes, and the tiles that the detector runs on.

    ``width_px`` and ``height_px`` are the scaled frame. Every tile has the input shape
    ``tile_width_px`` by ``tile_height_px``, which may exceed the scaled frame: the part
    outside it is padded black. ``index`` is 0 for the finest level.
    """

    index: int
    width_px: int
    height_px: int
    tile_width_px: int
    tile_height_px: int
    tiles: tuple[Tile, ...]

    @property
    def canvas_width_px(self) -> int:
        """Width of the padded image that contains every tile."""
        return max(self.width_px, max(tile.x_px for tile in self.tiles) + self.tile_width_px)

    @property
    def canvas_height_px(self) -> int:
        """Height of the padded image that contains every tile."""
        return max(self.height_px, max(tile.y_px for tile in self.tiles) + self.tile_height_px)

    @property
    def input_area_px(self) -> int:
        """Model input pixels that the level costs: tiles times tile area."""
        return len(self.tiles) * self.tile_width_px * self.tile_height_px


@dataclass(frozen=True, slots=True)
class PyramidPlan:
    """Levels that the detector runs on for one frame size, finest first."""

    frame_width_px: int
    frame_height_px: int
    levels: tuple[Level, ...]

    @property
    def tile_count(self) -> int:
        """Number of model runs per frame over all levels."""
        return sum(len(level.tiles) for level in self.levels)

    @property
    def input_area_px(self) -> int:
        """Model input pixels per frame over all levels, the main cost of detection."""
        return sum(level.input_area_px for level in self.levels)


@dataclass(frozen=True, slots=True)
class FrameBoxes:
    """Candidate boxes in frame pixels from all tiles of one frame.

    ``boxes`` has shape (N, 4) as x_min, y_min, x_max, y_max; ``scores`` (N,) is in [0, 1];
    ``cut`` (N,) is true for boxes that touch an edge of their tile inside the level's image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    cut: np.ndarray

    @classmethod
    def concatenate(cls, parts: list[FrameBoxes]) -> FrameBoxes:
        """Join the boxes of several tiles into one set."""
        if not parts:
            return cls(boxes=np.zeros((0, 4)), scores=np.zeros(0), cut=np.zeros(0, dtype=bool))
        return cls(
            boxes=np.concatenate([part.boxes for part in parts]),
            scores=np.concatenate([part.scores for part in parts]),
            cut=np.concatenate([part.cut for part in parts]),
        )


def aligned(length_px: float, align_px: int) -> int:
    """Round a length up to a positive multiple of ``align_px``."""
    return max(align_px, math.ceil(length_px / align_px) * align_px)


def tile_starts(length_px: int, tile_px: int, count: int) -> list[int]:
    """Return ``count`` tile start positions along one axis, evenly spread from 0 to the far edge."""
    if count == 1 or tile_px >= length_px:
        return [0]
    return [round(index * (length_px - tile_px) / (count - 1)) for index in range(count)]


def tile_side_px(length_px: int, count: int, overlap_px: int, align_px: int) -> int:
    """Return the smallest aligned tile side whose ``count`` tiles cover a length with the overlap."""
    return aligned((length_px + (count - 1) * overlap_px) / count, align_px)


def choose_tiles(
    width_px: int, height_px: int, overlap_px: int, max_input_area_px: int, align_px: int
) -> tuple[int, int, int, int]:
    """Return columns, rows, tile width and tile height that cover an image with the least input area.

    Each tile has at most ``max_input_area_px`` pixels, and its sides are multiples of
    ``align_px`` and longer than the overlap.
    """
    best: tuple[int, int, int, int] | None = None
    best_area_px = math.inf
    for columns in range(1, MAX_TILES_PER_AXIS + 1):
        tile_width_px = tile_side_px(width_px, columns, overlap_px, align_px)
        if columns > 1 and tile_width_px <= overlap_px:
            break
        for rows in range(1, MAX_TILES_PER_AXIS + 1):
            tile_height_px = tile_side_px(height_px, rows, overlap_px, align_px)
            if rows > 1 and tile_height_px <= overlap_px:
                break
            if tile_width_px * tile_height_px <= max_input_area_px:
                area_px = columns * rows * tile_width_px * tile_height_px
                if area_px < best_area_px:
                    best, best_area_px = (columns, rows, tile_width_px, tile_height_px), area_px
                # More rows of the same columns only add overlap.
                break
    if best is None:
        raise ValueError(
            f"no tiling of a {width_px}x{height_px} image with {overlap_px} px overlap fits tiles of "
            f"{max_input_area_px} px: raise the maximum input area"
        )
    return best


def plan_pyramid(
    frame_width_px: int,
    frame_height_px: int,
    min_face_px: float,
    min_model_face_px: float,
    max_model_face_px: float,
    max_input_area_px: int,
    align_px: int,
) -> PyramidPlan:
    """Plan the levels and tiles that let a detector find faces of ``min_face_px`` and up.

    ``min_model_face_px`` and ``max_model_face_px`` bound the face widths, in model input
    pixels, that the detector finds reliably. Tile sides are multiples of ``align_px``
    and tile areas at most ``max_input_area_px``, except on the last level, which is one
    tile of the whole scaled frame.
    """
    levels: list[Level] = []
    scale = min_model_face_px / min_face_px
    while True:
        # Rounding up keeps every face at least as large as the level's scale makes it.
        width_px = math.ceil(frame_width_px * scale - 1e-9)
        height_px = math.ceil(frame_height_px * scale - 1e-9)
        tile_width_px, tile_height_px = aligned(width_px, align_px), aligned(height_px, align_px)
        fits_one_tile = tile_width_px * tile_height_px <= max_input_area_px
        # The last level must show a face as tall as the frame no larger than the model finds.
        if fits_one_tile and min(width_px, height_px) <= max_model_face_px:
            tiles: tuple[Tile, ...] = (Tile(0, 0),)
            levels.append(Level(len(levels), width_px, height_px, tile_width_px, tile_height_px, tiles))
            break
        overlap_px = math.ceil(min_model_face_px * LEVEL_FACE_RATIO)
        columns, rows, tile_width_px, tile_height_px = choose_tiles(
            width_px, height_px, overlap_px, max_input_area_px, align_px
        )
        tiles = tuple(
            Tile(x_px, y_px)
            for y_px in tile_starts(height_px, tile_height_px, rows)
            for x_px in tile_starts(width_px, tile_width_px, columns)
        )
        levels.append(Level(len(levels), width_px, height_px, tile_width_px, tile_height_px, tiles))
        scale /= LEVEL_FACE_RATIO
    return PyramidPlan(frame_width_px, frame_height_px, tuple(levels))


def mark_cut_boxes(boxes: np.ndarray, level: Level, tile: Tile, margin_px: float) -> np.ndarray:
    """Return a flag per box, in level pixels, that is true where the box reaches an inner edge of its tile.

    An edge on the border of the level's image does not count: a face there is cut by the
    frame itself, and no other tile shows more of it.
    """
    right_px = tile.x_px + level.tile_width_px
    bottom_px = tile.y_px + level.tile_height_px
    cut = np.zeros(len(boxes), dtype=bool)
    if tile.x_px > 0:
        cut |= boxes[:, 0] <= tile.x_px + margin_px
    if tile.y_px > 0:
        cut |= boxes[:, 1] <= tile.y_px + margin_px
    if right_px < level.width_px:
        cut |= boxes[:, 2] >= right_px - margin_px
    if bottom_px < level.height_px:
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
