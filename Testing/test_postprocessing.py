"""Post-processing on constructed probability maps with known answers."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from BreastUSSegmentLib.options import PostprocessOptions, UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.postprocessing import (
    fill_holes,
    keep_largest_component,
    postprocess_frames,
    postprocess_mask,
    remove_small_components,
    remove_uncertain_components,
    smooth_boundary,
    strongest_hidden_confidence,
)

def untuned(**settings):
    """The untuned post-processing with ``settings`` changed."""
    return dataclasses.replace(UNTUNED_POSTPROCESSING, **settings)


RAW_ONLY = dict(min_area_fraction=0.0, keep_largest=False, fill_holes=False, smoothing_sigma=0.0)


def disc(shape, center, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def test_threshold_only_equals_raw_mask():
    probability = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    for threshold in (0.3, 0.5, 0.8):
        mask = postprocess_mask(probability, untuned(threshold=threshold, **RAW_ONLY))
        np.testing.assert_array_equal(mask, probability >= threshold)


def test_small_components_removed_by_area_fraction():
    mask = np.zeros((100, 100), bool)
    mask[10:30, 10:30] = True  # 400 px
    mask[60:65, 60:65] = True  # 25 px
    kept = remove_small_components(mask, 26)
    assert kept[15, 15] and not kept[62, 62]
    options = untuned(min_area_fraction=0.003, keep_largest=False, fill_holes=False, smoothing_sigma=0)
    assert postprocess_mask(mask.astype(np.float32), options).sum() == 400


def test_uncertain_components_removed_by_mean_probability():
    probability = np.zeros((100, 100), np.float32)
    probability[10:30, 10:30] = 0.95  # a confident lesion
    probability[60:90, 60:90] = 0.7  # a larger, lukewarm blob
    probability[62, 62] = 1.0  # one bright pixel does not make the blob confident
    mask = probability >= 0.5
    kept = remove_uncertain_components(mask, probability, 0.8)
    assert kept[15, 15] and not kept[70, 70]
    np.testing.assert_array_equal(remove_uncertain_components(mask, probability, 0.0), mask)
    # In the pipeline the filter runs before keep-largest, so the confident lesion survives.
    options = untuned(min_mean_probability=0.8, min_area_fraction=0, fill_holes=False, smoothing_sigma=0)
    assert postprocess_mask(probability, options).sum() == 400
    assert postprocess_mask(probability, dataclasses.replace(options, min_mean_probability=0)).sum() == 900


def test_strongest_hidden_confidence_reports_the_best_region_the_confidence_bar_hid():
    probability = np.zeros((2, 100, 100), np.float32)
    probability[0, 10:30, 10:30] = 0.95  # confident: shown, not reported
    probability[0, 60:90, 60:90] = 0.7  # hidden by a bar of 0.8
    probability[1, 40:70, 40:70] = 0.75  # hidden, the strongest of the stack
    probability[1, 5:8, 5:8] = 0.79  # 9 px: removed as too small, not by the bar
    options = untuned(threshold=0.5, min_area_fraction=0.005, min_mean_probability=0.8)
    assert strongest_hidden_confidence(probability, options) == pytest.approx(0.75)
    assert strongest_hidden_confidence(probability[0], options) == pytest.approx(0.7)
    assert strongest_hidden_confidence(probability[0], dataclasses.replace(options, min_mean_probability=0.6)) is None
    assert strongest_hidden_confidence(probability, dataclasses.replace(options, min_mean_probability=0)) is None
    assert strongest_hidden_confidence(np.zeros((100, 100), np.float32), options) is None


def test_keep_largest_component():
    mask = np.zeros((50, 50), bool)
    mask[5:15, 5:15] = True  # 100
    mask[30:45, 30:45] = True  # 225
    largest = keep_largest_component(mask)
    assert largest.sum() == 225 and not largest[10, 10]
    # Diagonal neighbours belong to one component (8-connectivity).
    diagonal = np.eye(6, dtype=bool)
    assert keep_largest_component(diagonal).sum() == 6


def test_fill_holes():
    ring = disc((60, 60), (30, 30), 20) & ~disc((60, 60), (30, 30), 8)
    filled = postprocess_mask(ring.astype(np.float32), untuned(**{**RAW_ONLY, "fill_holes": True}))
    np.testing.assert_array_equal(filled, disc((60, 60), (30, 30), 20))


def test_fill_holes_equals_scipy_on_random_masks():
    rng = np.random.default_rng(5)
    for density in (0.3, 0.5, 0.7, 0.9):
        mask = ndimage.binary_opening(rng.random((61, 77)) < density)
        np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
    for trivial in (np.zeros((5, 6), bool), np.ones((5, 6), bool)):
        np.testing.assert_array_equal(fill_holes(trivial), trivial)


def test_smoothing_removes_jagged_boundary_but_keeps_a_disc():
    clean = disc((256, 256), (128, 128), 50)
    rng = np.random.default_rng(1)
    jagged = clean.copy()
    border = clean ^ np.roll(clean, 2, axis=1)
    jagged[border & (rng.random(clean.shape) < 0.5)] ^= True
    smoothed = smooth_boundary(jagged, sigma=2.0)
    assert np.sum(smoothed ^ clean) < np.sum(jagged ^ clean)
    assert abs(int(smoothed.sum()) - int(clean.sum())) < 0.03 * clean.sum()


def test_empty_probability_stays_empty_and_frames_are_independent():
    probabilities = np.zeros((3, 32, 32), np.float32)
    probabilities[1][disc((32, 32), (16, 16), 6)] = 0.9
    masks = postprocess_frames(probabilities, UNTUNED_POSTPROCESSING)
    assert masks.shape == (3, 32, 32) and masks.dtype == bool
    assert not masks[0].any() and masks[1].any() and not masks[2].any()


@pytest.mark.parametrize("bad", [dict(threshold=0.0), dict(threshold=1.0), dict(min_area_fraction=-0.1), dict(min_mean_probability=1.0), dict(smoothing_sigma=-1)])
def test_invalid_options(bad):
    with pytest.raises(ValueError):
        untuned(**bad)


def test_options_round_trip_ignores_unknown_keys():
    options = untuned(threshold=0.4, keep_largest=False)
    assert PostprocessOptions.from_dict({**options.to_dict(), "future_option": 1}) == options


def test_options_from_a_card_block_need_every_setting():
    block = UNTUNED_POSTPROCESSING.to_dict()
    del block["min_mean_probability"]
    with pytest.raises(ValueError, match="lacks min_mean_probability"):
        PostprocessOptions.from_dict(block)


def test_with_overrides_changes_only_given_settings_and_validates():
    base = untuned(threshold=0.6, min_mean_probability=0.75, keep_largest=False)
    changed = base.with_overrides(threshold=0.4, min_mean_probability=None, keep_largest=None)
    assert changed == dataclasses.replace(base, threshold=0.4)
    assert base.with_overrides() == base
    with pytest.raises(ValueError, match="min_mean_probability"):
        base.with_overrides(min_mean_probability=1.0)


def whole_frame_steps(probability, options):
    """The post-processing steps one after the other on the whole frame, each its own labelling: the definition
    that postprocess_mask's windows and single labelling must match."""
    mask = remove_small_components(probability >= options.threshold,
                                   int(round(options.min_area_fraction * probability.size)))
    mask = remove_uncertain_components(mask, probability, options.min_mean_probability)
    if options.keep_largest:
        mask = keep_largest_component(mask)
    if options.fill_holes:
        mask = fill_holes(mask)
    mask = smooth_boundary(mask, options.smoothing_sigma * min(probability.shape) / 256)
    if options.fill_holes:  # smoothing can open a hole or split a thin bridge
        mask = fill_holes(mask)
    if options.keep_largest:
        mask = keep_largest_component(mask)
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_post_processing_on_the_window_around_the_lesions_equals_it_on_the_whole_frame(seed):
    """postprocess_mask labels once and runs its steps on the windows around the pixels above the threshold
    and around the regions kept; the mask must be the one the steps give on the whole frame, also for lesions
    at the frame's edges, with several regions and with ties."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(120, 300)), int(rng.integers(120, 300)))
    probability = ndimage.gaussian_filter(rng.random(shape), 6)
    probability = np.clip((probability - probability.mean()) * 12 + 0.3, 0, 1).astype(np.float32)
    probability[: shape[0] // 5, -shape[1] // 4:] = 0.97  # a region on the frame's corner
    probability[-30:, :16] = 0.0
    probability[-12:-2, 2:12] = probability[-26:-16, 2:12] = 0.99  # two lone regions of one size: a tie
    base = UNTUNED_POSTPROCESSING.with_overrides(fill_holes=True, smoothing_sigma=1.5)
    for options in (base, base.with_overrides(keep_largest=True, min_mean_probability=0.6),
                    base.with_overrides(keep_largest=True, min_mean_probability=0.98, min_area_fraction=0.0),
                    base.with_overrides(fill_holes=False, smoothing_sigma=3.0, min_area_fraction=0.0)):
        expected = whole_frame_steps(probability, options)
        np.testing.assert_array_equal(postprocess_mask(probability, options), expected)
        assert expected.any()
