"""Segmentation metrics between binary masks (used by evaluation, training and the self-test).

Conventions:

* ``dice_score`` and ``iou_score``: two empty masks agree perfectly (1.0).
* ``hausdorff95``: the 95th percentile of the symmetric surface distances
  (the distances from every boundary pixel of the prediction to the nearest
  boundary pixel of the target, pooled with the distances the other way
  round), in millimetres when ``spacing`` is given, in pixels by default.
  Both masks empty gives 0.0; exactly one empty mask gives NaN, because no
  distance exists. Callers averaging HD95 exclude the NaN values and report
  how many there were (see :func:`nan_summary`).
* ``pooled_iou``: the sum of intersections over the sum of unions of a set of
  mask pairs, so large lesions weigh more than in the mean of per-image IoU.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy import ndimage

from .imagetypes import check_spacing
from .measure import boundary_pixels

HD95_PERCENTILE = 95.0


def _as_bool_pair(prediction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction, target = np.asarray(prediction, dtype=bool), np.asarray(target, dtype=bool)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from target shape {target.shape}")
    return prediction, target


def dice_score(prediction: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A|+|B|); two empty masks agree perfectly (1.0)."""
    prediction, target = _as_bool_pair(prediction, target)
    total = int(prediction.sum()) + int(target.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, target).sum()) / total


def iou_score(prediction: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union |A∩B| / |A∪B|; two empty masks agree perfectly (1.0)."""
    prediction, target = _as_bool_pair(prediction, target)
    union = int(np.logical_or(prediction, target).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(prediction, target).sum()) / union


def overlap_counts(prediction: np.ndarray, target: np.ndarray) -> tuple[int, int]:
    """Pixel counts ``(|A∩B|, |A∪B|)`` of two masks of the same shape."""
    prediction, target = _as_bool_pair(prediction, target)
    return int(np.logical_and(prediction, target).sum()), int(np.logical_or(prediction, target).sum())


def pooled_iou_from_counts(intersections: Iterable[int], unions: Iterable[int]) -> float:
    """Sum of intersections over sum of unions; 1.0 when every union is empty."""
    total_intersection, total_union = int(np.sum(list(intersections))), int(np.sum(list(unions)))
    if total_union == 0:
        return 1.0
    return total_intersection / total_union


def pooled_iou(predictions: Iterable[np.ndarray], targets: Iterable[np.ndarray]) -> float:
    """IoU pooled over a set of mask pairs: Σ|A∩B| / Σ|A∪B| (masks may differ in size between pairs)."""
    predictions, targets = list(predictions), list(targets)
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    counts = [overlap_counts(prediction, target) for prediction, target in zip(predictions, targets)]
    return pooled_iou_from_counts([c[0] for c in counts], [c[1] for c in counts])


def surface_distances(prediction: np.ndarray, target: np.ndarray, spacing=(1.0, 1.0)) -> np.ndarray:
    """Symmetric surface distances: prediction boundary -> target boundary, then target -> prediction.

    Both masks must be non-empty. ``spacing`` is ``(row, column)`` pixel size.
    """
    prediction, target = _as_bool_pair(prediction, target)
    if prediction.ndim != 2:
        raise ValueError(f"surface distances need 2-D masks, got shape {prediction.shape}")
    if not prediction.any() or not target.any():
        raise ValueError("surface distances need two non-empty masks")
    sampling = check_spacing(spacing)
    prediction_surface, target_surface = boundary_pixels(prediction), boundary_pixels(target)
    to_target = ndimage.distance_transform_edt(~target_surface, sampling=sampling)
    to_prediction = ndimage.distance_transform_edt(~prediction_surface, sampling=sampling)
    return np.concatenate([to_target[prediction_surface], to_prediction[target_surface]])


def hausdorff95(prediction: np.ndarray, target: np.ndarray, spacing=(1.0, 1.0)) -> float:
    """95th percentile of the symmetric surface distances (pixels, or mm with ``spacing``).

    Both masks empty -> 0.0; exactly one empty -> NaN (undefined; leave it out
    of means and count it separately).
    """
    prediction, target = _as_bool_pair(prediction, target)
    check_spacing(spacing)
    has_prediction, has_target = bool(prediction.any()), bool(target.any())
    if not has_prediction and not has_target:
        return 0.0
    if has_prediction != has_target:
        return float("nan")
    return float(np.percentile(surface_distances(prediction, target, spacing), HD95_PERCENTILE))


def nan_summary(values: Iterable[float]) -> dict:
    """Mean, population standard deviation and median of the finite values, and how many were NaN.

    Statistics of an empty set of finite values are ``None``.
    """
    values = np.asarray(list(values), dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        mean = std = median = None
    else:
        mean, std, median = float(finite.mean()), float(finite.std()), float(np.median(finite))
    return {"mean": mean, "std": std, "median": median, "count": int(finite.size), "undefined": int(values.size - finite.size)}

# The attention lattice check: the share of an attention map's variance that a Gaussian blur of this
# sigma (pixels of the network's input grid) removes. A map with a regular grid of hot spots loses much
# of its variance to the blur; a smooth map, or a sharp lesion outline, very little.
LATTICE_BLUR_SIGMA = 2.0
LATTICE_MAX_FRACTION = 0.02


def high_frequency_fraction(attention: np.ndarray, sigma: float = LATTICE_BLUR_SIGMA) -> float:
    """``var(map - blur(map)) / var(map)`` of a 2-D map, blurred with a Gaussian of ``sigma`` pixels (0 for a flat map)."""
    values = np.asarray(attention, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D attention map, got shape {values.shape}")
    variance = values.var()
    if variance == 0:
        return 0.0
    return float((values - ndimage.gaussian_filter(values, sigma)).var() / variance)
