"""breastus-train box-rule: lesion-free boxes placed away from the lesion, and the rules scored on them."""

import numpy as np

from BreastUSSegmentLib.boxes import Box
from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
from breastus_training.box_rule import free_box, score


def test_a_free_box_has_the_size_asked_lies_in_the_frame_and_misses_the_lesion():
    rng = np.random.default_rng(0)
    lesion = Box(20, 30, 60, 70)
    for _ in range(50):
        box = free_box(rng, (25, 35), (100, 120), lesion)
        assert (box.height, box.width) == (25, 35)
        assert 0 <= box.x0 and box.x1 <= 120 and 0 <= box.y0 and box.y1 <= 100
        assert box.x1 <= lesion.x0 or lesion.x1 <= box.x0 or box.y1 <= lesion.y0 or lesion.y1 <= box.y0
    assert free_box(rng, (90, 110), (100, 120), lesion) is None  # no room beside the lesion


def test_score_counts_lukewarm_lesion_free_boxes_until_the_bar_drops_them():
    options = UNTUNED_POSTPROCESSING.with_overrides(smoothing_sigma=0.0)
    sure = np.zeros((20, 20), np.float32)
    sure[5:15, 5:15] = 0.95
    lukewarm = np.zeros((20, 20), np.float32)
    lukewarm[5:15, 5:15] = 0.7
    target = sure > 0.5
    boxes = [
        {"dataset": "A", "kind": "lesion", "probability": sure, "target": target, "target_pixels": int(target.sum())},
        {"dataset": "A", "kind": "beside", "probability": lukewarm, "target": np.zeros_like(target), "target_pixels": 100},
        {"dataset": "A", "kind": "normal", "probability": lukewarm, "target": np.zeros_like(target), "target_pixels": 0},
    ]
    table = score(boxes, options, [0.0, 0.8])
    before, after = table["0"]["A"], table["0.8"]["A"]
    assert (before["beside_given_a_lesion"], before["normal_given_a_lesion"]) == (1, 1)
    assert (after["beside_given_a_lesion"], after["normal_given_a_lesion"]) == (0, 0)
    assert before["lesion_dice_mean"] == after["lesion_dice_mean"] == 1.0 and after["lesion_boxes_empty"] == 0
    assert table["0.8"]["all"] == after
