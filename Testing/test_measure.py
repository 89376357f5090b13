"""Lesion sizes from masks of known geometry: every region measured on its own, with anisotropic spacings."""

import math

import numpy as np
import pytest

from BreastUSSegmentLib.measure import (
    LESION_COLUMNS,
    Lesion,
    LesionMeasurement,
    boundary_pixels,
    convex_hull,
    largest_diameter_mm,
    lesion_area_mm2,
    measure_frames,
    measure_lesion,
    measure_lesions,
    result_in_words,
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
    [alone] = measure_frames(masks[1], (0.5, 0.5))
    assert (alone.area_mm2, alone.largest_diameter_mm) == (results[1].area_mm2, results[1].largest_diameter_mm)
    assert [lesion.frame for lesion in results[1].lesions] == [2] and alone.lesions[0].frame == 1


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


# --- Every region on its own ---


def rectangle_expectations(rows, cols, spacing):
    """Analytic sizes of a rows x cols block of pixels (lengths between outer pixel centres)."""
    depth, width = (rows - 1) * spacing[0], (cols - 1) * spacing[1]
    diagonal = math.hypot(depth, width)
    # The longest chord of a rectangle perpendicular to its diagonal crosses its centre: diagonal * short / long side.
    perpendicular = diagonal * min(depth, width) / max(depth, width)
    return depth, width, diagonal, perpendicular


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.5, 0.25), (0.07, 0.11)])
def test_a_rectangle_gives_exact_sizes(spacing):
    mask = np.zeros((60, 80), dtype=bool)
    mask[10:30, 20:61] = True  # 20 rows x 41 columns
    [lesion] = measure_lesions(mask, spacing)
    depth, width, diagonal, perpendicular = rectangle_expectations(20, 41, spacing)
    assert lesion.pixel_count == 820 and lesion.area == pytest.approx(820 * spacing[0] * spacing[1])
    assert lesion.longest_diameter == pytest.approx(diagonal)
    assert lesion.perpendicular_diameter == pytest.approx(perpendicular)
    assert (lesion.depth, lesion.width) == (pytest.approx(depth), pytest.approx(width))
    assert lesion.depth_to_width == pytest.approx(depth / width)
    assert (lesion.centroid_x, lesion.centroid_y) == (pytest.approx(40.0), pytest.approx(19.5))
    (x0, y0), (x1, y1) = lesion.longest_ends
    assert {(round(x0), round(y0)), (round(x1), round(y1))} in (
        {(20, 10), (60, 29)}, {(60, 10), (20, 29)})  # a diagonal's corners


@pytest.mark.parametrize("spacing", [(0.1, 0.1), (0.08, 0.12)])
def test_an_ellipse_gives_its_axes_and_a_disc_its_diameter_twice(spacing):
    rows, cols = np.indices((300, 300))
    y, x = rows * spacing[0], cols * spacing[1]
    centre_y, centre_x = 150 * spacing[0], 150 * spacing[1]
    # An ellipse taller than wide: vertical semi-axis 10 mm, horizontal 6 mm.
    ellipse = ((y - centre_y) / 10.0) ** 2 + ((x - centre_x) / 6.0) ** 2 <= 1.0
    [lesion] = measure_lesions(ellipse, spacing)
    pixel = max(spacing)
    assert abs(lesion.longest_diameter - 20.0) <= 2 * pixel
    assert abs(lesion.perpendicular_diameter - 12.0) <= 2 * pixel
    assert abs(lesion.depth - 20.0) <= 2 * pixel and abs(lesion.width - 12.0) <= 2 * pixel
    assert lesion.depth_to_width == pytest.approx(20.0 / 12.0, rel=0.03)
    disc = (y - centre_y) ** 2 + (x - centre_x) ** 2 <= 8.0**2
    [round_one] = measure_lesions(disc, spacing)
    assert abs(round_one.longest_diameter - 16.0) <= 2 * pixel
    assert abs(round_one.perpendicular_diameter - 16.0) <= 2 * pixel
    assert round_one.depth_to_width == pytest.approx(1.0, abs=0.03)


def test_two_regions_are_measured_apart_and_never_joined():
    spacing = (0.2, 0.3)
    mask = np.zeros((100, 200), dtype=bool)
    mask[10:30, 10:51] = True  # the larger: 20 x 41
    mask[70:80, 150:161] = True  # the smaller, far away: 10 x 11
    lesions = measure_lesions(mask, spacing, frame=3)
    assert [lesion.lesion for lesion in lesions] == [1, 2] and {lesion.frame for lesion in lesions} == {3}
    assert [lesion.pixel_count for lesion in lesions] == [820, 110]
    assert lesions[0].longest_diameter == pytest.approx(rectangle_expectations(20, 41, spacing)[2])
    assert lesions[1].longest_diameter == pytest.approx(rectangle_expectations(10, 11, spacing)[2])
    across = math.hypot((79 - 10) * spacing[0], (160 - 10) * spacing[1])  # what one diameter over both would be
    summary = measure_lesion(mask, spacing, frame=3)
    assert summary.largest_diameter_mm == pytest.approx(lesions[0].longest_diameter)
    assert summary.largest_diameter_mm < across / 2
    assert largest_diameter_mm(mask, spacing) == pytest.approx(lesions[0].longest_diameter)
    assert summary.area_mm2 == pytest.approx(930 * spacing[0] * spacing[1])
    assert summary.lesions == tuple(lesions)


def test_regions_touching_diagonally_are_one_lesion():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:4, 2:4] = True
    mask[4:6, 4:6] = True  # touches the first at a corner: 8-connected
    assert len(measure_lesions(mask)) == 1


def test_box_labels_split_a_region_across_two_boxes_and_number_by_box():
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:20, 5:55] = True  # one band of pixels running through two adjacent boxes
    labels = np.zeros(mask.shape, dtype=np.uint16)
    labels[:, :30] = 1
    labels[:, 30:] = 2
    lesions = measure_lesions(mask, (1.0, 1.0), box_labels=labels)
    assert [(lesion.box, lesion.lesion, lesion.pixel_count) for lesion in lesions] == [(1, 1, 250), (2, 2, 250)]
    assert max(lesion.longest_diameter for lesion in lesions) < 30  # never across both boxes
    frames = measure_frames(mask[np.newaxis], (1.0, 1.0), labels[np.newaxis])
    assert [lesion.box for lesion in frames[0].lesions] == [1, 2]


def test_a_line_and_a_pixel_have_no_width():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2, 1:8] = True
    [line] = measure_lesions(mask, (0.5, 0.5))
    assert line.longest_diameter == pytest.approx(3.0) and line.perpendicular_diameter == 0.0
    assert line.depth == 0.0 and line.depth_to_width == 0.0
    mask[:] = False
    mask[5, 5] = True
    [pixel] = measure_lesions(mask, (0.5, 0.5))
    assert (pixel.longest_diameter, pixel.perpendicular_diameter, pixel.depth_to_width) == (0.0, 0.0, None)


def test_rows_follow_the_column_list():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:5, 2:6] = True
    [lesion] = measure_lesions(mask)
    assert list(lesion.row()) == [column.name for column in LESION_COLUMNS]
    assert all(hasattr(Lesion, "__dataclass_fields__") and column.name in Lesion.__dataclass_fields__
               for column in LESION_COLUMNS)


def test_result_in_words():
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:3, 1:3] = True
    one = measure_lesions(mask)
    mask[6:8, 6:8] = True
    two = measure_lesions(mask)
    assert result_in_words([]) == "no lesion found"
    assert result_in_words(one) == "1 lesion" and result_in_words(two) == "2 lesions"
    assert result_in_words([], [2, 1]) == "no lesion found in box 1, 2"
    assert result_in_words(one, [2]) == "1 lesion; no lesion found in box 2"
