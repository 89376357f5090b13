"""Overlap metrics between binary masks (used by evaluation, training and the self-test)."""

from __future__ import annotations

import numpy as np


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
