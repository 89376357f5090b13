"""Lesion area and largest diameter from masks of known geometry."""

import math

import numpy as np
import pytest

from BreastUSSegmentLib.measure import (
    LesionMeasurement,
    boundary_pixels,
    convex_hull,
    largest_diameter_mm,
    lesion_area_mm2,
    measure_frames,
    measure_lesion,
)


def disc_mask(shape, centre_mm, radius_mm, spacing):
    """Pixels whose centre lies within ``radius_mm`` of ``centre_mm`` (row, col in mm)."""
    rows, cols = np.indices(shape)
    distance = np.hypot(rows * spacing[0] - centre_mm[0], cols * spacing[1] - centre_mm[1])
    return distance <= radius_mm


def test_rectangle_area_and_diagonal_are_exact():
    mask = np.zeros((40, 50), dtype=bool)
    mask[5:15, 10:30] = True  # 10 rows x 20 columns
    spacing = (0.5, 0.25)
    assert lesion_area_mm2(mask, spacing) == pytest.approx(200 * 0.5 * 0.25)
    # Opposite corner pixel centres: 9 rows and 19 columns apart.
    assert largest_diameter_mm(mask, spacing) == pytest.approx(math.hypot(9 * 0.5, 19 * 0.25))


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.1, 0.1), (0.08, 0.12)])
def test_disc_of_known_radius_within_a_pixel(spacing):
    radius = 40 * max(spacing)
    shape = (int(2.6 * radius / spacing[0]), int(2.6 * radius / spacing[1]))
    mask = disc_mask(shape, (1.3 * radius, 1.3 * radius), radius, spacing)
    measured = measure_lesion(mask, spacing)
    pixel = max(spacing)
    assert abs(measured.largest_diameter_mm - 2 * radius) <= pixel
    # Pixels cut by the circle make the area error at most the circumference times a pixel.
    assert abs(measured.area_mm2 - math.pi * radius**2) <= 2 * math.pi * radius * pixel
    assert measured.pixel_count == int(mask.sum())


def test_spacing_changes_results_in_proportion():
    mask = disc_mask((60, 60), (30, 30), 20, (1.0, 1.0))
    in_pixels = measure_lesion(mask)
    scaled = measure_lesion(mask, (0.2, 0.2))
    assert scaled.area_mm2 == pytest.approx(in_pixels.area_mm2 * 0.04)
    assert scaled.largest_diameter_mm == pytest.approx(in_pixels.largest_diameter_mm * 0.2)


def test_diameter_follows_the_longest_direction_of_an_ellipse():
    rows, cols = np.indices((80, 120))
    ellipse = ((rows - 40) / 15.0) ** 2 + ((cols - 60) / 50.0) ** 2 <= 1.0
    assert largest_diameter_mm(ellipse) == pytest.approx(100.0, abs=1.0)
    assert largest_diameter_mm(ellipse.T) == pytest.approx(100.0, abs=1.0)


def test_empty_and_single_pixel_masks():
    empty = np.zeros((10, 10), dtype=bool)
    assert measure_lesion(empty, (0.3, 0.3)) == LesionMeasurement(0, 0.0, 0.0)
    single = empty.copy()
    single[4, 7] = True
    measured = measure_lesion(single, (0.3, 0.3))
    assert measured.pixel_count == 1
    assert measured.area_mm2 == pytest.approx(0.09)
    assert measured.largest_diameter_mm == 0.0


def test_boundary_and_hull_of_a_square():
    mask = np.zeros((7, 7), dtype=bool)
    mask[1:6, 1:6] = True
    boundary = boundary_pixels(mask)
    assert boundary.sum() == 16 and not boundary[3, 3]
    hull = convex_hull(np.argwhere(boundary))
    assert {tuple(map(int, point)) for point in hull} == {(1, 1), (1, 5), (5, 1), (5, 5)}


def test_measure_frames_one_result_per_frame():
    masks = np.zeros((3, 20, 20), dtype=bool)
    masks[1, 2:5, 2:12] = True
    results = measure_frames(masks, (0.5, 0.5))
    assert [r.pixel_count for r in results] == [0, 30, 0]
    assert results[1].largest_diameter_mm == pytest.approx(0.5 * math.hypot(2, 9))
    assert measure_frames(masks[1], (0.5, 0.5)) == [results[1]]


@pytest.mark.parametrize(
    "mask, spacing, message",
    [
        (np.zeros((2, 3, 4)), (1, 1), "2-D mask"),
        (np.zeros((3, 4)), (0, 1), "positive"),
        (np.zeros((3, 4)), (1, float("nan")), "positive"),
        (np.zeros((3, 4)), (1,), "two numbers"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(mask, spacing, message):
    with pytest.raises(ValueError, match=message):
        measure_lesion(mask, spacing)
