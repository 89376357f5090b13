"""Metrics on constructed masks whose answers are worked out by hand."""

import math

import numpy as np
import pytest

from BreastUSSegmentLib.measure import boundary_pixels
from BreastUSSegmentLib.metrics import (
    dice_score,
    hausdorff95,
    iou_score,
    nan_summary,
    overlap_counts,
    pooled_iou,
    pooled_iou_from_counts,
    surface_distances,
)


def square(shape, top, left, side):
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_dice_and_iou_of_squares_offset_by_k_pixels():
    # Two 10x10 squares shifted by 3 columns overlap in a 10x7 block.
    a, b = square((30, 30), 5, 5, 10), square((30, 30), 5, 8, 10)
    assert dice_score(a, b) == pytest.approx(2 * 70 / 200)
    assert iou_score(a, b) == pytest.approx(70 / 130)
    assert overlap_counts(a, b) == (70, 130)


def test_dice_and_iou_empty_cases():
    empty, lesion = np.zeros((8, 8), bool), square((8, 8), 2, 2, 3)
    assert dice_score(empty, empty) == 1.0 and iou_score(empty, empty) == 1.0
    assert dice_score(empty, lesion) == 0.0 and iou_score(lesion, empty) == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differs"):
        dice_score(np.zeros((4, 4)), np.zeros((4, 5)))


def test_pooled_iou_weights_large_lesions_more_than_the_mean():
    # Pair 1: perfect 10x10 (I=100, U=100). Pair 2: 2x2 prediction vs a disjoint 2x2 target (I=0, U=8).
    perfect = square((20, 20), 0, 0, 10)
    small_prediction, small_target = square((6, 6), 0, 0, 2), square((6, 6), 3, 3, 2)
    pooled = pooled_iou([perfect, small_prediction], [perfect, small_target])
    assert pooled == pytest.approx(100 / 108)
    assert np.mean([1.0, 0.0]) != pytest.approx(pooled)
    assert pooled_iou_from_counts([0, 0], [0, 0]) == 1.0
    with pytest.raises(ValueError, match="2 predictions but 1 targets"):
        pooled_iou([perfect, perfect], [perfect])


def test_surface_of_a_square_is_its_border_ring():
    mask = square((12, 12), 2, 3, 5)
    surface = boundary_pixels(mask)
    assert surface.sum() == 4 * 5 - 4
    assert not surface[4, 5] and surface[2, 3] and surface[6, 7]
    # A pixel on the image edge is a boundary pixel.
    assert boundary_pixels(np.ones((3, 3), bool)).sum() == 8


def test_hausdorff95_of_identical_masks_is_zero():
    mask = square((20, 20), 4, 4, 8)
    assert hausdorff95(mask, mask) == 0.0


def test_hausdorff95_of_two_single_pixels_is_their_distance():
    a, b = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    a[2, 3], b[5, 7] = True, True  # 3 rows and 4 columns apart
    assert hausdorff95(a, b) == pytest.approx(5.0)
    # 0.5 mm rows, 2 mm columns: sqrt(1.5^2 + 8^2)
    assert hausdorff95(a, b, spacing=(0.5, 2.0)) == pytest.approx(math.hypot(1.5, 8.0))


def test_hausdorff95_of_a_line_shifted_by_k_rows_is_k():
    a = np.zeros((20, 30), bool)
    a[4, 5:25] = True
    b = np.roll(a, 3, axis=0)
    assert hausdorff95(a, b) == pytest.approx(3.0)
    assert hausdorff95(a, b, spacing=(0.25, 1.0)) == pytest.approx(0.75)


def test_hausdorff95_interpolates_the_pooled_distances():
    # Prediction: pixels p and q; target: only p. Pooled distances are [0, d] from the
    # prediction and [0] from the target: sorted [0, 0, d]; the 95th percentile with linear
    # interpolation sits at position 0.95 * 2 = 1.9, i.e. 0.9 * d.
    prediction, target = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    prediction[1, 1] = prediction[1, 11] = True
    target[1, 1] = True
    assert sorted(surface_distances(prediction, target)) == [0.0, 0.0, 10.0]
    assert hausdorff95(prediction, target) == pytest.approx(9.0)


def brute_force_surface_distances(a, b):
    """Independent check: border pixels by explicit neighbour test, distances by all pairs."""

    def border(mask):
        padded = np.pad(mask, 1)
        inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        return np.argwhere(mask & ~inner)

    pa, pb = border(a), border(b)
    pair = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return np.concatenate([pair.min(axis=1), pair.min(axis=0)])


@pytest.mark.parametrize("k", [1, 4, 9])
def test_hausdorff95_of_squares_offset_by_k_matches_brute_force(k):
    a, b = square((40, 40), 10, 8, 12), square((40, 40), 10 + k, 8 + k, 12)
    expected = np.percentile(brute_force_surface_distances(a, b), 95)
    assert hausdorff95(a, b) == pytest.approx(expected)
    # Every distance is at most the diagonal shift and the bulk of the border is k pixels away or less.
    assert 0 < hausdorff95(a, b) <= k * math.sqrt(2) + 1e-9


def test_hausdorff95_empty_cases():
    empty, lesion = np.zeros((10, 10), bool), square((10, 10), 2, 2, 4)
    assert hausdorff95(empty, empty) == 0.0
    assert math.isnan(hausdorff95(empty, lesion))
    assert math.isnan(hausdorff95(lesion, empty))


def test_hausdorff95_rejects_bad_spacing():
    lesion = square((10, 10), 2, 2, 4)
    with pytest.raises(ValueError, match="spacing"):
        hausdorff95(lesion, lesion, spacing=(0.0, 1.0))


def test_nan_summary_leaves_out_undefined_values():
    summary = nan_summary([1.0, float("nan"), 3.0, 8.0])
    assert summary == {"mean": 4.0, "std": pytest.approx(math.sqrt(26 / 3)), "median": 3.0, "count": 3, "undefined": 1}
    assert nan_summary([float("nan")]) == {"mean": None, "std": None, "median": None, "count": 0, "undefined": 1}
