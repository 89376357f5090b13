"""breastus-train temporal: simulated sweeps and the scores of the temporal rule."""

import numpy as np

from breastus_training.temporal_sweeps import score, sweep_frames
from BreastUSSegmentLib.temporal import TemporalRule


def test_a_sweep_pans_a_window_from_the_left_edge_to_the_right():
    image = np.tile(np.arange(100, dtype=np.uint8), (30, 1))
    frames, columns = sweep_frames(image, window=0.4, frames=5, noise=0.0, seed=0)
    assert frames.shape == (5, 30, 40)
    assert columns[0] == slice(0, 40) and columns[-1] == slice(60, 100)
    assert frames[0, 0, 0] == 0 and frames[-1, 0, -1] == 99
    noisy, _ = sweep_frames(image, window=0.4, frames=5, noise=4.0, seed=0)
    assert 2.0 < np.std(noisy - frames) < 6.0


def test_scores_count_false_lesions_on_lesion_free_frames_and_dice_on_the_others():
    empty = np.zeros((10, 10), bool)
    lesion = np.zeros((10, 10), bool)
    lesion[2:6, 2:6] = True
    flicker = np.zeros((10, 10), bool)
    flicker[8:, 8:] = True
    lesion_sweep = {"masks": np.stack([lesion, lesion, lesion]), "targets": np.stack([lesion] * 3), "normal": False}
    normal_sweep = {"masks": np.stack([empty, flicker, empty]), "targets": np.stack([empty] * 3), "normal": True}
    off = score([lesion_sweep, normal_sweep], None)
    assert off["false_lesion_share"] == off["normal_false_lesion_share"] == 1 / 3
    assert off["lesion_dice_mean"] == 1.0 and off["lesion_frames"] == 3
    ruled = score([lesion_sweep, normal_sweep], TemporalRule(1, 1))
    assert ruled["false_lesion_share"] == 0.0 and ruled["lesion_dice_mean"] == 2 / 3  # the first frame is hidden
    assert score([lesion_sweep, normal_sweep], TemporalRule(1, 1), skip_first=1)["lesion_dice_mean"] == 1.0
