"""The command line's overlay figure: the outline and heatmap halves, at a bounded size."""

import numpy as np
import pytest
from scipy import ndimage

from BreastUSSegmentLib.visualize import (
    BOX_COLOR, FIGURE_CAPTION, FIGURE_FOOTER, FIGURE_GAP, FIGURE_MAX_SIDE, OUTLINE_COLOR, figure_size, heat_colormap,
    mask_outline, overlay_figure,
)

GAP, CAPTION = FIGURE_GAP, FIGURE_CAPTION  # between the halves, above them


def square_case(rows, columns):
    frame = np.zeros((rows, columns), np.uint8)
    mask = np.zeros((rows, columns), bool)
    mask[rows // 4 : rows // 2, columns // 4 : columns // 2] = True
    frame[mask] = 200
    attention = np.linspace(0, 1, rows * columns, dtype=np.float32).reshape(rows, columns)
    return frame, mask, attention


def test_a_small_frame_is_shown_at_its_own_size():
    figure = overlay_figure(*square_case(60, 80))
    assert figure.size == (2 * 80 + GAP, 60 + CAPTION + FIGURE_FOOTER)


@pytest.mark.parametrize("shape", [(3000, 2000), (1500, 4100)])
def test_a_large_frame_is_shown_shrunk_to_the_maximum_side_with_its_outline(shape):
    rows, columns = figure_size(shape)
    assert max(rows, columns) == FIGURE_MAX_SIDE
    assert rows / columns == pytest.approx(shape[0] / shape[1], rel=0.01)
    figure = overlay_figure(*square_case(*shape))
    assert figure.size == (2 * columns + GAP, rows + CAPTION + FIGURE_FOOTER)
    left = np.asarray(figure)[CAPTION:CAPTION + rows, :columns]
    outline = np.all(left == OUTLINE_COLOR, axis=-1)
    found_rows, found_columns = np.nonzero(outline)
    # The outline lies on the square's border, from 1/4 to 1/2 of each side (within a few figure pixels).
    assert found_rows.min() == pytest.approx(rows / 4, abs=3) and found_rows.max() == pytest.approx(rows / 2, abs=3)
    assert found_columns.min() == pytest.approx(columns / 4, abs=3)
    assert found_columns.max() == pytest.approx(columns / 2, abs=3)


def heat_half(figure, rows, columns):
    return np.asarray(figure)[CAPTION:CAPTION + rows, columns + GAP:]


def test_the_heatmap_scale_is_fixed_not_stretched_per_image():
    """A flat low attention map stays blue; it used to be stretched over its own percentiles."""
    frame, mask, _ = square_case(60, 80)
    low = np.full((60, 80), 0.1, np.float32)
    low[0, 0] = 0.12  # a speckle that per-image stretching would paint red
    doubled = np.full((60, 80), 0.2, np.float32)
    first = heat_half(overlay_figure(frame, mask, low, opacity=1.0), 60, 80)
    second = heat_half(overlay_figure(frame, mask, doubled, opacity=1.0), 60, 80)
    assert np.array_equal(first[30, 60], heat_colormap(np.float32(0.1)))
    assert np.array_equal(second[30, 60], heat_colormap(np.float32(0.2)))
    assert not np.array_equal(first[30, 60], second[30, 60])
    assert np.array_equal(first[0, 0], heat_colormap(np.float32(0.12)))  # not red


def test_the_figure_draws_the_boxes_and_has_a_colour_bar_and_the_result_in_words():
    frame, mask, attention = square_case(120, 160)
    plain = np.asarray(overlay_figure(frame, mask, attention))
    figure = np.asarray(overlay_figure(frame, mask, attention, result_text="no lesion found in box 1",
                                       boxes=[(1, (10, 20, 60, 90))], frame_text="frame 3 of 7"))
    box = np.all(figure[CAPTION:CAPTION + 120, :160] == BOX_COLOR, axis=-1)
    rows, columns = np.nonzero(box)
    assert rows.min() == 20 and columns.min() == 10 and columns.max() == 59 and rows.max() == 89
    assert np.all(figure[CAPTION:CAPTION + 120, 160 + GAP:] == BOX_COLOR, axis=-1).sum() == box.sum()
    footer = figure[CAPTION + 120:]
    assert not np.array_equal(footer[:, :160], plain[CAPTION + 120:, :160])  # the frame text is written
    bar = footer[6:16, 160 + GAP + 24:-24]
    colours = {tuple(pixel) for pixel in bar[5]}
    assert tuple(heat_colormap(np.float32(0.0))) in colours and tuple(heat_colormap(np.float32(1.0))) in colours
    blank = np.asarray(overlay_figure(frame, mask, attention, result_text=""))[CAPTION + 120:, :160]
    worded = np.asarray(overlay_figure(frame, mask, attention, result_text="2 lesions"))[CAPTION + 120:, :160]
    assert blank.sum() == 0 and worded.sum() > 0


@pytest.mark.parametrize("thickness", [1, 3])
def test_the_outline_is_the_mask_less_its_erosion_on_the_whole_array(thickness):
    """mask_outline erodes only the box around the mask; the outline must be the whole array's, also for regions
    on the border, several regions and a stack of masks."""
    rng = np.random.default_rng(thickness)
    flat = ndimage.binary_opening(rng.random((40, 50)) > 0.6, iterations=1)
    flat[:6, -9:] = True  # on the corner
    stacked = np.stack([flat, np.zeros_like(flat), np.roll(flat, 7, axis=1)])
    for mask in (flat, stacked, np.zeros((8, 9), bool)):
        expected = mask & ~ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
        np.testing.assert_array_equal(mask_outline(mask, thickness), expected)
    assert mask_outline(flat, thickness).any()
