"""Lesion size from a binary mask: area in mm² and largest diameter in mm (numpy only).

Conventions:

* ``spacing`` is ``(row_mm, col_mm)``: the distance between the centres of two
  neighbouring pixels along the rows (vertical) and along the columns
  (horizontal). Without calibration use ``(1.0, 1.0)``: results are then in
  pixels² and pixels.
* The area is the number of lesion pixels times the area of one pixel.
* The largest diameter is the longest distance between the centres of two
  lesion pixels (like a caliper placed on pixel centres), so a one-pixel lesion
  measures 0 mm. It is found on the convex hull of the lesion's boundary pixels.
* All lesion pixels count, even in several pieces: post-processing normally
  keeps a single lesion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .imagetypes import check_spacing


@dataclass(frozen=True)
class LesionMeasurement:
    """Size of the lesion in one frame."""

    pixel_count: int
    area_mm2: float
    largest_diameter_mm: float

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
    """Vertices of the convex hull of ``(N, 2)`` points (Andrew's monotone chain)."""
    unique = np.unique(np.asarray(points, dtype=float), axis=0)  # sorted by x, then y
    if len(unique) <= 2:
        return unique
    lower: list[np.ndarray] = []
    for point in unique:
        while len(lower) >= 2 and _cross(lower[-2], lower[-1], point) <= 0:
            lower.pop()
        lower.append(point)
    upper: list[np.ndarray] = []
    for point in unique[::-1]:
        while len(upper) >= 2 and _cross(upper[-2], upper[-1], point) <= 0:
            upper.pop()
        upper.append(point)
    return np.array(lower[:-1] + upper[:-1])


def largest_diameter_mm(mask: np.ndarray, spacing=(1.0, 1.0)) -> float:
    """Longest distance in mm between the centres of two lesion pixels; 0 for fewer than two pixels."""
    mask = _check_mask(mask)
    row_mm, col_mm = check_spacing(spacing)
    rows, cols = np.nonzero(boundary_pixels(mask))
    if rows.size < 2:
        return 0.0
    hull = convex_hull(np.column_stack([rows * row_mm, cols * col_mm]))
    differences = hull[:, np.newaxis, :] - hull[np.newaxis, :, :]
    return float(np.sqrt((differences**2).sum(axis=-1)).max())


def measure_lesion(mask: np.ndarray, spacing=(1.0, 1.0)) -> LesionMeasurement:
    """Pixel count, area (mm²) and largest diameter (mm) of the lesion in a 2-D mask."""
    mask = _check_mask(mask)
    return LesionMeasurement(
        pixel_count=int(np.count_nonzero(mask)),
        area_mm2=lesion_area_mm2(mask, spacing),
        largest_diameter_mm=largest_diameter_mm(mask, spacing),
    )


def measure_frames(masks: np.ndarray, spacing=(1.0, 1.0)) -> list[LesionMeasurement]:
    """One :class:`LesionMeasurement` per frame of a ``(F, H, W)`` stack (or of a single ``(H, W)`` mask)."""
    array = np.asarray(masks)
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3:
        raise ValueError(f"expected a mask (H, W) or a stack of masks (F, H, W), got shape {array.shape}")
    return [measure_lesion(frame, spacing) for frame in array]
