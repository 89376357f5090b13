"""The command line's overlay figure: the outline and heatmap halves, at a bounded size."""

import numpy as np
import pytest

from BreastUSSegmentLib.visualize import FIGURE_MAX_SIDE, OUTLINE_COLOR, figure_size, overlay_figure

GAP, CAPTION = 8, 22  # between the halves, above them


def square_case(rows, columns):
    frame = np.zeros((rows, columns), np.uint8)
    mask = np.zeros((rows, columns), bool)
    mask[rows // 4 : rows // 2, columns // 4 : columns // 2] = True
    frame[mask] = 200
    attention = np.linspace(0, 1, rows * columns, dtype=np.float32).reshape(rows, columns)
    return frame, mask, attention


def test_a_small_frame_is_shown_at_its_own_size():
    figure = overlay_figure(*square_case(60, 80))
    assert figure.size == (2 * 80 + GAP, 60 + CAPTION)


@pytest.mark.parametrize("shape", [(3000, 2000), (1500, 4100)])
def test_a_large_frame_is_shown_shrunk_to_the_maximum_side_with_its_outline(shape):
    rows, columns = figure_size(shape)
    assert max(rows, columns) == FIGURE_MAX_SIDE
    assert rows / columns == pytest.approx(shape[0] / shape[1], rel=0.01)
    figure = overlay_figure(*square_case(*shape))
    assert figure.size == (2 * columns + GAP, rows + CAPTION)
    left = np.asarray(figure)[CAPTION:, :columns]
    outline = np.all(left == OUTLINE_COLOR, axis=-1)
    found_rows, found_columns = np.nonzero(outline)
    # The outline lies on the square's border, from 1/4 to 1/2 of each side (within a few figure pixels).
    assert found_rows.min() == pytest.approx(rows / 4, abs=3) and found_rows.max() == pytest.approx(rows / 2, abs=3)
    assert found_columns.min() == pytest.approx(columns / 4, abs=3)
    assert found_columns.max() == pytest.approx(columns / 2, abs=3)
