"""Lexicon descriptors and the malignancy likelihood on synthetic lesions with known answers."""

import json

import numpy as np
import pytest

from BreastUSSegmentLib.descriptors import (
    DESCRIPTOR_COLUMNS, DESCRIPTOR_NOTE, ECHO_TERMS, MARGIN_TERMS, ORIENTATION_TERMS, POSTERIOR_TERMS, RESEARCH_USE,
    SHAPE_TERMS, describe_frames, describe_lesion, describe_lesions, measure_numbers,
)
from BreastUSSegmentLib.likelihood import MODEL_PATH, LikelihoodModel, load_likelihood_model, malignancy_likelihood
from BreastUSSegmentLib.measure import measure_lesions

SIZE = (200, 240)


def ellipse(center, half_height, half_width, size=SIZE):
    rows, cols = np.mgrid[: size[0], : size[1]]
    return ((rows - center[0]) / half_height) ** 2 + ((cols - center[1]) / half_width) ** 2 <= 1.0


def star(center, radius, points=8, depth=0.45, size=SIZE):
    """A spiculated star: the radius swings by ``depth`` of itself ``points`` times around."""
    rows, cols = np.mgrid[: size[0], : size[1]]
    angle = np.arctan2(rows - center[0], cols - center[1])
    reach = radius * (1.0 - depth * (0.5 + 0.5 * np.cos(points * angle)))
    return np.hypot(rows - center[0], cols - center[1]) <= reach


def tissue(level=120.0, seed=0):
    """Uniform tissue with mild speckle."""
    return level * np.random.default_rng(seed).uniform(0.9, 1.1, SIZE)


def test_a_wide_ellipse_is_parallel_oval_and_a_tall_one_is_not_parallel():
    wide = describe_lesion(tissue(), ellipse((100, 120), 15, 40))
    tall = describe_lesion(tissue(), ellipse((100, 120), 40, 15))
    assert wide.orientation == "parallel" and wide.shape == "oval" and wide.long_axis_angle_deg < 5
    assert wide.depth_to_width == pytest.approx(30 / 80)
    assert tall.orientation == "not parallel" and tall.long_axis_angle_deg > 85 and tall.depth_to_width > 2.5


def test_pixel_spacing_enters_the_depth_to_width_ratio():
    square = np.zeros(SIZE, bool)
    square[80:120, 100:140] = True
    image = tissue()
    assert describe_lesion(image, square).depth_to_width == pytest.approx(1.0)
    stretched = describe_lesion(image, square, spacing=(0.2, 0.1))  # rows twice as far apart as columns
    assert stretched.depth_to_width == pytest.approx(2.0) and stretched.orientation == "not parallel"


def test_a_spiculated_star_is_irregular_and_not_circumscribed_a_disc_is_round_and_circumscribed():
    disc = describe_lesion(tissue(), ellipse((100, 120), 35, 35))
    spiculated = describe_lesion(tissue(), star((100, 120), 50))
    assert disc.shape == "round" and disc.margin == "circumscribed" and disc.solidity > 0.97
    assert spiculated.shape == "irregular" and spiculated.margin == "not circumscribed"
    assert spiculated.margin_irregularity > 3 * disc.margin_irregularity


def test_echo_pattern_of_dark_and_matching_lesions():
    region = ellipse((110, 120), 20, 35)
    cyst = tissue()
    cyst[region] = 5.0
    dark = tissue()
    dark[region] *= 0.55
    matching = tissue(seed=3)
    assert describe_lesion(cyst, region).echo_pattern == "anechoic"
    hypoechoic = describe_lesion(dark, region)
    assert hypoechoic.echo_pattern == "hypoechoic" and hypoechoic.echo_ratio_surround == pytest.approx(0.55, abs=0.03)
    assert describe_lesion(matching, region).echo_pattern == "isoechoic"


def test_a_dark_band_below_is_shadowing_a_bright_one_enhancement_and_none_without():
    region = ellipse((80, 120), 20, 30)
    band = np.zeros(SIZE, bool)
    band[101:, 90:151] = True
    shadowed, enhanced, plain = tissue(), tissue(), tissue()
    shadowed[band] *= 0.4
    enhanced[band] *= 1.8
    results = {name: describe_lesion(image, region) for name, image in
               (("shadowed", shadowed), ("enhanced", enhanced), ("plain", plain))}
    assert results["shadowed"].posterior == "shadowing" and results["shadowed"].posterior_ratio < 0.5
    assert results["enhanced"].posterior == "enhancement" and results["enhanced"].posterior_ratio > 1.6
    assert results["plain"].posterior == "none"


def test_a_lesion_on_the_bottom_edge_has_no_posterior_number():
    region = ellipse((195, 120), 10, 30)
    described = describe_lesion(tissue(), region)
    assert described.posterior_ratio is None and described.posterior == "none"


def test_every_term_is_a_lexicon_term_and_rgb_images_work():
    image = np.stack([tissue()] * 3, axis=-1)
    described = describe_lesion(image, star((100, 120), 40))
    assert described.shape in SHAPE_TERMS and described.orientation in ORIENTATION_TERMS
    assert described.margin in MARGIN_TERMS and described.echo_pattern in ECHO_TERMS
    assert described.posterior in POSTERIOR_TERMS
    assert json.loads(json.dumps(described.to_dict()))["shape"] == described.shape


def test_two_regions_a_tiny_one_or_a_wrong_size_are_refused():
    two = ellipse((60, 60), 10, 10) | ellipse((140, 180), 10, 10)
    with pytest.raises(ValueError, match="one connected region"):
        describe_lesion(tissue(), two)
    with pytest.raises(ValueError, match="fewer than 3 pixels"):
        describe_lesion(tissue(), np.zeros(SIZE, bool))
    with pytest.raises(ValueError, match="the image is"):
        describe_lesion(tissue(), np.ones((10, 10), bool))


def test_bundled_likelihood_rises_with_irregularity_and_falls_with_solidity():
    model = load_likelihood_model()
    base = measure_numbers(tissue(), ellipse((100, 120), 20, 35))
    probability = malignancy_likelihood(base, model)
    assert 0.0 < probability < 1.0
    weight = dict(zip(model.features, model.weights))
    assert weight["margin_irregularity"] > 0 and weight["solidity"] < 0 and weight["depth_to_width"] > 0
    rising = [malignancy_likelihood({**base, "margin_irregularity": value}, model) for value in (0.0, 0.1, 0.3, 0.6)]
    assert rising == sorted(rising) and rising[-1] > rising[0]
    falling = [malignancy_likelihood({**base, "solidity": value}, model) for value in (0.6, 0.8, 0.95, 1.0)]
    assert falling == sorted(falling, reverse=True) and falling[0] > falling[-1]
    spiculated = measure_numbers(tissue(), star((100, 120), 50))
    assert malignancy_likelihood(spiculated, model) > probability


def test_a_number_not_measured_counts_as_its_mean():
    model = LikelihoodModel(("a", "b"), (1.0, 2.0), (1.0, 1.0), (2.0, -1.0), 0.5, {})
    assert model.linear({"a": None, "b": 2.0}) == pytest.approx(0.5)
    assert model.linear({"a": 2.0}) == pytest.approx(2.5)


def test_bundled_likelihood_says_research_use_and_bad_files_name_themselves(tmp_path):
    values = json.loads(MODEL_PATH.read_text())
    assert "not for diagnosis" in values["research_use"] and values["notes"]["fitted_on"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**values, "scale": [0.0] * len(values["features"])}))
    with pytest.raises(ValueError, match="broken.json"):
        load_likelihood_model(broken)
    with pytest.raises(ValueError, match="missing.json"):
        load_likelihood_model(tmp_path / "missing.json")


def test_describe_lesions_gives_each_region_measure_lesions_finds_its_own_descriptors():
    image = tissue()
    image[150:] *= 0.5  # darker deep tissue: posterior numbers differ by depth
    mask = ellipse((60, 60), 12, 30) | star((120, 170), 30)
    mask[190, 5] = True  # a one-pixel lesion: too small to describe
    lesions = measure_lesions(mask)
    rows = describe_lesions(image, mask)
    assert [lesion.pixel_count for lesion in lesions][-1] == 1 and len(rows) == len(lesions) == 3
    assert [row["shape"] for row in rows] == ["irregular", "oval", None]  # the star is the larger
    assert rows[0]["solidity"] == pytest.approx(describe_lesion(image, star((120, 170), 30)).solidity)
    assert rows[2] == {column.name: None for column in DESCRIPTOR_COLUMNS}
    assert list(rows[0]) == [column.name for column in DESCRIPTOR_COLUMNS]
    assert rows[0]["malignancy_likelihood"] > rows[1]["malignancy_likelihood"]
    # With boxes, a region split by two boxes is two lesions, as measure_lesions numbers them.
    boxes = np.zeros(SIZE, np.uint16)
    boxes[:, :60] = 1
    boxes[:, 60:] = 2
    split = describe_lesions(image, ellipse((60, 60), 12, 30), box_labels=boxes)
    assert len(split) == len(measure_lesions(ellipse((60, 60), 12, 30), box_labels=boxes)) == 2


def test_describe_frames_describes_each_frame_of_a_clip_and_refuses_a_mismatched_image():
    masks = np.zeros((3,) + SIZE, bool)
    masks[1] = ellipse((60, 60), 12, 30)
    masks[2] = ellipse((60, 60), 12, 30) | ellipse((140, 160), 20, 20)
    pixels = np.stack([tissue(seed=seed) for seed in range(3)])
    frames = describe_frames(pixels, masks, spacing=(0.1, 0.1))
    assert [[row["shape"] for row in rows] for rows in frames] == [[], ["oval"], ["round", "oval"]]  # largest first
    rgb = np.repeat(pixels[1][..., np.newaxis], 3, axis=-1)
    (from_rgb,), = describe_frames(rgb, masks[1], color=True)
    assert from_rgb == pytest.approx(describe_lesions(pixels[1], masks[1])[0])
    with pytest.raises(ValueError, match="does not match"):
        describe_frames(pixels[:2], masks)


def test_the_descriptor_note_says_research_use_and_weak_on_model_outlines():
    assert RESEARCH_USE in DESCRIPTOR_NOTE and "model's outline" in DESCRIPTOR_NOTE and "weak" in DESCRIPTOR_NOTE
