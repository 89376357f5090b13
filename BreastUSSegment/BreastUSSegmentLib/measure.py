"""Lesion sizes from a binary mask, every lesion (connected region) measured on its own (numpy; scipy when measuring).

Conventions:

* ``spacing`` is ``(row_mm, col_mm)``: the distance between the centres of two
  neighbouring pixels along the rows (vertical) and along the columns
  (horizontal). Without calibration use ``(1.0, 1.0)``: lengths are then in
  pixels and areas in pixels².
* A lesion is an 8-connected region of the mask (as in post-processing). With
  box prompts a region also belongs to one box: the regions of each box are
  found separately, so no region spans two boxes.
* Lengths are measured between pixel centres (a caliper placed on pixel
  centres), so a one-pixel lesion measures 0 mm. No length ever joins two regions.

Per lesion (:class:`Lesion`):

* ``area``: number of pixels times the area of one pixel.
* ``longest_diameter``: longest distance between two of its pixel centres (the maximum Feret diameter).
* ``perpendicular_diameter``: longest segment perpendicular to the longest diameter that fits in the
  convex hull of its pixel centres (the second of the two orthogonal diameters radiologists report).
* ``depth`` and ``width``: extent along the image's vertical axis (rows, away from the transducer) and
  horizontal axis (columns), between the outermost pixel centres; ``depth_to_width`` is depth / width
  (above 1: "taller than wide"), None when the width is 0.
* ``centroid_x``, ``centroid_y``: mean pixel position (x = column, y = row, pixels from the top-left
  pixel's centre).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Optional

import numpy as np

from .imagetypes import check_spacing

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class Column(NamedTuple):
    """One column of the per-lesion table: the :class:`Lesion` field, its unit (calibrated) and what it is."""

    name: str
    unit: str  # "mm", "mm²", "px" or "" (a count or a ratio); an uncalibrated image has px for mm
    description: str


# The per-lesion table, shared by the sidecar files and the Slicer measurement table.
LESION_COLUMNS = (
    Column("frame", "", "frame number (1 is the first)"),
    Column("lesion", "", "lesion number in the frame (1 is the largest; with boxes, numbered box by box)"),
    Column("box", "", "number of the box the lesion was found in (empty: automatic)"),
    Column("pixel_count", "", "number of lesion pixels"),
    Column("area", "mm²", "lesion area"),
    Column("longest_diameter", "mm", "longest distance between two lesion pixel centres (maximum Feret diameter)"),
    Column("perpendicular_diameter", "mm", "longest diameter perpendicular to the longest diameter"),
    Column("depth", "mm", "vertical extent (along the image rows, away from the transducer)"),
    Column("width", "mm", "horizontal extent (along the image columns)"),
    Column("depth_to_width", "", "depth / width (above 1: taller than wide)"),
    Column("centroid_x", "px", "centre of the lesion: column, from the left image edge's first pixel centre"),
    Column("centroid_y", "px", "centre of the lesion: row, from the top image edge's first pixel centre"),
)


def column_unit(column: Column, calibrated: bool) -> str:
    """``column``'s unit; for an uncalibrated image (spacing unknown, 1 pixel = 1) mm reads as px."""
    return column.unit if calibrated else column.unit.replace("mm", "px")


@dataclass(frozen=True)
class Lesion:
    """The measurements of one lesion (connected region) in one frame; see the module's docstring."""

    frame: int  # 1 is the first frame
    lesion: int  # 1 is the largest of the frame (with boxes: numbered box by box)
    box: Optional[int]  # 1 is the first box; None without box prompts
    pixel_count: int
    area: float
    longest_diameter: float
    perpendicular_diameter: float
    depth: float
    width: float
    depth_to_width: Optional[float]
    centroid_x: float
    centroid_y: float
    longest_ends: tuple = ()  # the two (x, y) pixel positions the longest diameter joins
    perpendicular_ends: tuple = ()  # the two (x, y) pixel positions the perpendicular diameter joins

    def row(self) -> dict:
        """The :data:`LESION_COLUMNS` values, by column name."""
        return {column.name: getattr(self, column.name) for column in LESION_COLUMNS}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LesionMeasurement:
    """One frame's lesions, with a summary that never joins two of them.

    ``area_mm2`` is the area of all lesions of the frame, ``largest_diameter_mm`` the longest of
    their own longest diameters; ``lesions`` holds each one's measurements.
    """

    pixel_count: int
    area_mm2: float
    largest_diameter_mm: float
    lesions: tuple = field(default=())

    def to_dict(self) -> dict:
        return asdict(self)


def _check_mask(mask: np.ndarray) -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got an array of shape {array.shape}")
    return array.astype(bool, copy=False)


def lesion_area_mm2(mask: np.ndarray, spacing=(1.0, 1.0)) -> float:
    """Area of the lesion pixels of a 2-D mask in mm² (pixels² with the default spacing)."""
    mask = _check_mask(mask)
    row_mm, col_mm = check_spacing(spacing)
    return float(np.count_nonzero(mask)) * row_mm * col_mm


def boundary_pixels(mask: np.ndarray) -> np.ndarray:
    """Lesion pixels with at least one 4-neighbour outside the lesion (or on the image border)."""
    mask = _check_mask(mask)
    padded = np.pad(mask, 1, constant_values=False)
    interior = (
        padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )
    return mask & ~interior


def _cross(origin: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return (a[0] - origin[0]) * (b[1] - origin[1]) - (a[1] - origin[1]) * (b[0] - origin[0])


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Vertices of the convex hull of ``(N, 2)`` points in order around it (Andrew's monotone chain)."""
    unique = np.unique(np.asarray(points, dtype=float), axis=0)  # sorted by x, then y
    if len(unique) <= 2:
        return unique
    lower: list = []
    for point in unique:
        while len(lower) >= 2 and _cross(lower[-2], lower[-1], point) <= 0:
            lower.pop()
        lower.append(point)
    upper: list = []
    for point in unique[::-1]:
        while len(upper) >= 2 and _cross(upper[-2], upper[-1], point) <= 0:
            upper.pop()
        upper.append(point)
    return np.array(lower[:-1] + upper[:-1])


def _hull_mm(region: np.ndarray, spacing: tuple) -> np.ndarray:
    """Convex hull, in mm as ``(x, y)``, of the pixel centres of one region (a 2-D bool array)."""
    rows, cols = np.nonzero(boundary_pixels(region))
    return convex_hull(np.column_stack([cols * spacing[1], rows * spacing[0]]))


def _longest_pair(hull: np.ndarray) -> tuple:
    """The two hull vertices farthest apart and their distance (the maximum Feret diameter)."""
    if len(hull) < 2:
        return hull[0], hull[0], 0.0
    squared = ((hull[:, np.newaxis, :] - hull[np.newaxis, :, :]) ** 2).sum(axis=-1)
    first, second = np.unravel_index(int(np.argmax(squared)), squared.shape)
    return hull[first], hull[second], float(np.sqrt(squared[first, second]))


def _perpendicular_chord(hull: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple:
    """The longest segment perpendicular to ``start``-``end`` inside the convex polygon ``hull``: its ends and length.

    Along the axis the chord's length is a concave, piecewise linear function, so its maximum lies
    at the axial position of a vertex: only those positions are tried.
    """
    length = float(np.hypot(*(end - start)))
    if len(hull) < 3 or length == 0.0:
        return start, start, 0.0
    along = (end - start) / length
    across = np.array([-along[1], along[0]])
    a = (hull - start) @ along  # position of each vertex along the axis
    b = (hull - start) @ across  # and across it
    a_next, b_next = np.roll(a, -1), np.roll(b, -1)
    moving = a != a_next  # edges not perpendicular to the axis
    best = (0.0, 0.0, 0.0, 0.0)  # length, position, low, high
    for position in a:
        crossing = moving & (np.minimum(a, a_next) <= position) & (position <= np.maximum(a, a_next))
        fraction = (position - a[crossing]) / (a_next[crossing] - a[crossing])
        values = np.concatenate([b[a == position], b[crossing] + fraction * (b_next[crossing] - b[crossing])])
        if values.max() - values.min() > best[0]:
            best = (float(values.max() - values.min()), float(position), float(values.min()), float(values.max()))
    chord, position, low, high = best
    base = start + position * along
    return base + low * across, base + high * across, chord


def _to_pixels(point_mm: np.ndarray, spacing: tuple) -> tuple:
    """An ``(x, y)`` point in mm as ``(x, y)`` in pixels."""
    return (float(point_mm[0] / spacing[1]), float(point_mm[1] / spacing[0]))


def _measure_region(region: np.ndarray, spacing: tuple, frame: int, number: int, box: Optional[int]) -> Lesion:
    """The :class:`Lesion` of one region (a 2-D bool array holding only it)."""
    rows, cols = np.nonzero(region)
    hull = _hull_mm(region, spacing)
    start, end, longest = _longest_pair(hull)
    low, high, perpendicular = _perpendicular_chord(hull, start, end)
    depth = float(rows.max() - rows.min()) * spacing[0]
    width = float(cols.max() - cols.min()) * spacing[1]
    return Lesion(
        frame=frame, lesion=number, box=box, pixel_count=int(rows.size),
        area=float(rows.size) * spacing[0] * spacing[1],
        longest_diameter=longest, perpendicular_diameter=perpendicular, depth=depth, width=width,
        depth_to_width=depth / width if width > 0 else None,
        centroid_x=float(cols.mean()), centroid_y=float(rows.mean()),
        longest_ends=(_to_pixels(start, spacing), _to_pixels(end, spacing)),
        perpendicular_ends=(_to_pixels(low, spacing), _to_pixels(high, spacing)),
    )


def _regions(mask: np.ndarray) -> list:
    """The 8-connected regions of ``mask``, largest first (ties: top-left first), each as a bool array."""
    from scipy import ndimage  # here, so the Slicer module imports this module before scipy is installed

    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = sorted(range(count), key=lambda index: -sizes[index])  # stable: label order (top-left first) on ties
    return [labels == index + 1 for index in order]


def lesion_regions(mask: np.ndarray, box_labels=None) -> list:
    """The lesions of a 2-D mask as ``(box, region)`` pairs in lesion-number order (``region``: a bool array
    holding only that lesion; ``box``: its box number, None without boxes).

    ``box_labels`` (same shape; 0 outside the boxes, N for the pixels of box N) assigns each region
    to its box: the regions of each box are found separately and numbered box by box.
    """
    mask = _check_mask(mask)
    if box_labels is None:
        groups = [(None, mask)]
    else:
        box_labels = np.asarray(box_labels)
        if box_labels.shape != mask.shape:
            raise ValueError(f"box labels {box_labels.shape} must match the mask {mask.shape}")
        groups = [(int(value), mask & (box_labels == value)) for value in np.unique(box_labels[mask]) if value > 0]
    return [(box, region) for box, group in groups for region in _regions(group)]


def measure_lesions(mask: np.ndarray, spacing=(1.0, 1.0), frame: int = 1, box_labels=None) -> list:
    """One :class:`Lesion` per connected region of a 2-D mask (:func:`lesion_regions`), in the frame numbered
    ``frame``."""
    spacing = check_spacing(spacing)
    return [_measure_region(region, spacing, frame, number, box)
            for number, (box, region) in enumerate(lesion_regions(mask, box_labels), start=1)]


def largest_diameter_mm(mask: np.ndarray, spacing=(1.0, 1.0)) -> float:
    """The longest of the mask's lesions' own longest diameters, in mm; 0 for fewer than two pixels."""
    return max((lesion.longest_diameter for lesion in measure_lesions(mask, spacing)), default=0.0)


def summarize_frame(lesions: list) -> LesionMeasurement:
    """A frame's :class:`LesionMeasurement` from its lesions."""
    return LesionMeasurement(
        pixel_count=sum(lesion.pixel_count for lesion in lesions),
        area_mm2=float(sum(lesion.area for lesion in lesions)),
        largest_diameter_mm=max((lesion.longest_diameter for lesion in lesions), default=0.0),
        lesions=tuple(lesions),
    )


def measure_lesion(mask: np.ndarray, spacing=(1.0, 1.0), frame: int = 1, box_labels=None) -> LesionMeasurement:
    """The lesions of a 2-D mask, each measured on its own, with the frame's summary."""
    return summarize_frame(measure_lesions(mask, spacing, frame, box_labels))


def measure_frames(masks: np.ndarray, spacing=(1.0, 1.0), box_labels=None) -> list:
    """One :class:`LesionMeasurement` per frame of a ``(F, H, W)`` stack (or of a single ``(H, W)`` mask).

    ``box_labels`` (same shape, with box prompts) assigns each lesion to its box.
    """
    array = np.asarray(masks)
    if array.ndim == 2:
        array = array[np.newaxis]
        box_labels = None if box_labels is None else np.asarray(box_labels)[np.newaxis]
    if array.ndim != 3:
        raise ValueError(f"expected a mask (H, W) or a stack of masks (F, H, W), got shape {array.shape}")
    return [measure_lesion(frame, spacing, number + 1, None if box_labels is None else box_labels[number])
            for number, frame in enumerate(array)]


def result_in_words(lesions: list, empty_boxes=()) -> str:
    """A frame's result in words: "no lesion found", "1 lesion", "2 lesions"; with box numbers that gave
    none, "...; no lesion found in box 2" (or "no lesion found in box 1, 2" when no box gave one)."""
    empty = sorted(set(empty_boxes))
    boxes = ", ".join(str(number) for number in empty)
    if not lesions:
        return f"no lesion found in box {boxes}" if empty else "no lesion found"
    text = "1 lesion" if len(lesions) == 1 else f"{len(lesions)} lesions"
    return text + (f"; no lesion found in box {boxes}" if empty else "")
