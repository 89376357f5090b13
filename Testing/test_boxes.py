"""Box prompts: box checks and clipping, and lesions found in a crop landing back where they were."""

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from BreastUSSegmentLib.boxes import (
    Box, BoxError, as_box, boxes_for_frames, centre_region, clip_box, grow_box, parse_box, read_box_table,
    read_table_spacings,
)
from BreastUSSegmentLib.cli import main
from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.postprocessing import postprocess_box
from BreastUSSegmentLib.weights import save_model
from conftest import brightness_model


def frame_with_lesions(shape, *lesions, background=30, value=220):
    """A uint8 frame of ``shape`` with bright rectangles ``(x0, y0, x1, y1)`` planted in it."""
    frame = np.full(shape, background, np.uint8)
    for x0, y0, x1, y1 in lesions:
        frame[y0:y1, x0:x1] = value
    return frame


def rectangle(shape, x0, y0, x1, y1):
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def iou(a, b):
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


def centroid(mask):
    rows, columns = np.nonzero(mask)
    return columns.mean(), rows.mean()


# --- the box itself -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values, message", [
    ((10, 5, 10, 20), "empty: x1 equals x0"),
    ((10, 5, 30, 5), "empty: y1 equals y0"),
    ((30, 5, 10, 20), r"inverted: x1 \(10\) is less than x0 \(30\)"),
    ((10, 20, 30, 5), "inverted: y1"),
    ((1, 2, 3), "four numbers"),
    (("a", 2, 3, 4), "four numbers"),
    ((0, 0, float("nan"), 4), "finite"),
])
def test_bad_boxes_are_refused_with_a_clear_error(values, message):
    with pytest.raises(BoxError, match=message):
        as_box(values)


def test_fractional_boxes_round_outwards():
    assert as_box((1.2, 2.7, 10.1, 11.0)) == Box(1, 2, 11, 11)
    assert as_box(np.array([3, 4, 5, 6])) == Box(3, 4, 5, 6)


def test_boxes_are_clipped_to_the_frame_and_one_outside_is_refused():
    assert clip_box(Box(-5, -3, 20, 200), (100, 50)) == Box(0, 0, 20, 100)
    with pytest.raises(BoxError, match="outside the 50x100 frame"):
        clip_box(Box(60, 10, 80, 20), (100, 50))


def test_crop_window_grows_by_the_margin_and_stays_in_the_frame():
    assert grow_box(Box(20, 30, 40, 70), 0.25, (200, 200)) == Box(15, 20, 45, 80)
    assert grow_box(Box(4, 30, 40, 70), 0.25, (75, 200)) == Box(0, 20, 49, 75)
    assert grow_box(Box(2, 30, 40, 70), 0.0, (75, 200)) == Box(2, 30, 40, 70)


def test_centre_region_is_the_middle_half_and_never_empty():
    assert centre_region(Box(0, 0, 40, 20)) == Box(10, 5, 30, 15)
    assert centre_region(Box(5, 5, 6, 6)) == Box(5, 5, 6, 6)


def test_box_text_and_box_table(tmp_path):
    assert parse_box(" 1, 2,30.5,40") == Box(1, 2, 31, 40)
    with pytest.raises(BoxError, match="not a number"):
        parse_box("1,2,x,4")
    (tmp_path / "sub").mkdir()
    (tmp_path / "boxes.csv").write_text("file,x0,y0,x1,y1\nsub/a.png,1,2,3,4\nsub/a.png,5,6,7,8\n/abs/b.png,0,0,9,9\n")
    table = read_box_table(tmp_path / "boxes.csv")
    assert table == {(tmp_path / "sub" / "a.png").resolve(): [Box(1, 2, 3, 4), Box(5, 6, 7, 8)],
                     Path("/abs/b.png").resolve(): [Box(0, 0, 9, 9)]}
    # An invalid row makes its image fail (the error of its first bad row), not the table.
    (tmp_path / "bad.csv").write_text("file,x0,y0,x1,y1\na.png,1,2,3,4\na.png,5,6,5,8\nb.png,1,2,3,4\n")
    table = read_box_table(tmp_path / "bad.csv")
    assert isinstance(table[(tmp_path / "a.png").resolve()], BoxError)
    assert re.search(r"bad.csv line 3: box .* is empty", str(table[(tmp_path / "a.png").resolve()]))
    assert table[(tmp_path / "b.png").resolve()] == [Box(1, 2, 3, 4)]


def test_a_bad_spacing_cell_fails_its_image_only(tmp_path):
    (tmp_path / "s.csv").write_text('file,x0,y0,x1,y1,spacing\na.png,1,2,3,4,0\nb.png,1,2,3,4,"0.2,0.3"\n'
                                    'c.png,1,2,3,4,0.1\nc.png,5,6,7,8,0.2\nd.png,1,2,3,4,\n')
    spacings = read_table_spacings(tmp_path / "s.csv")
    assert re.search(r"s.csv line 2: .*spacing", str(spacings[(tmp_path / "a.png").resolve()]))
    assert spacings[(tmp_path / "b.png").resolve()] == (0.2, 0.3)
    assert re.search(r"s.csv line 5: spacing '0.2' differs", str(spacings[(tmp_path / "c.png").resolve()]))
    assert (tmp_path / "d.png").resolve() not in spacings


@pytest.mark.parametrize("content, message", [
    ("file,x0,y0,x1,y1\n", "the box table has no rows"),
    ("file,x0,y0,x1\na.png,1,2,3\n", "missing y1"),
    ("", "missing file, x0, y0, x1, y1"),
    ("file,x0,y0,x1,y1\n,1,2,3,4\n", "line 2: the file column is empty"),
    ("file,x0,y0,x1,y1\nb\xe9.png,1,2,3,4\n".encode("latin-1"), "is not UTF-8 text (byte 19 cannot be decoded)"),
])
def test_a_box_table_that_cannot_be_used_says_why(tmp_path, content, message):
    path = tmp_path / "boxes.csv"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(BoxError, match=re.escape(message)):
        read_box_table(path)


def test_boxes_for_frames_same_box_everywhere_or_one_entry_per_frame():
    assert boxes_for_frames((1, 2, 3, 4), None, 2, (10, 10)) == [[Box(1, 2, 3, 4)], [Box(1, 2, 3, 4)]]
    several = boxes_for_frames([(1, 2, 3, 4), (5, 5, 20, 20)], None, 1, (10, 10))
    assert several == [[Box(1, 2, 3, 4), Box(5, 5, 10, 10)]]
    assert boxes_for_frames(None, [(1, 2, 3, 4), None, [(0, 0, 2, 2), (4, 4, 6, 6)]], 3, (10, 10)) == [
        [Box(1, 2, 3, 4)], [], [Box(0, 0, 2, 2), Box(4, 4, 6, 6)]]
    with pytest.raises(BoxError, match="2 entries for 3 frame"):
        boxes_for_frames(None, [(1, 2, 3, 4), None], 3, (10, 10))
    with pytest.raises(BoxError, match="not both"):
        boxes_for_frames((1, 2, 3, 4), [(1, 2, 3, 4)], 1, (10, 10))
    with pytest.raises(BoxError, match="empty list"):
        boxes_for_frames([], None, 1, (10, 10))


# --- the box mask ---------------------------------------------------------------------------------------------------


def test_box_mask_keeps_the_component_at_the_centre(brightness_segmenter):
    probability = np.zeros((40, 60), np.float32)
    probability[15:25, 20:40] = 0.9  # over the centre
    probability[0:5, 0:5] = 0.9  # in a corner
    mask = postprocess_box(probability, brightness_segmenter.postprocessing)
    np.testing.assert_array_equal(mask, rectangle((40, 60), 20, 15, 40, 25))


def test_box_mask_is_never_empty_when_the_network_sees_something(brightness_segmenter):
    options = brightness_segmenter.postprocessing
    probability = np.zeros((40, 60), np.float32)
    probability[0:6, 50:60] = 0.3  # off-centre and below the threshold: the component around the peak
    probability[2, 55] = 0.4
    np.testing.assert_array_equal(postprocess_box(probability, options), rectangle((40, 60), 50, 0, 60, 6))
    assert not postprocess_box(np.full((40, 60), 0.01, np.float32), options).any()


# --- segmenting inside boxes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, lesion, box", [
    ((71, 93), (40, 21, 63, 44), (33, 15, 70, 50)),  # odd sizes
    ((64, 64), (0, 0, 12, 17), (-8, -8, 16, 22)),  # at the top-left border, box partly outside
    ((57, 101), (80, 40, 101, 57), (75, 35, 140, 90)),  # at the bottom-right border
    ((200, 150), (10, 150, 30, 170), (5, 145, 36, 176)),  # a small lesion in a large frame
])
def test_a_lesion_in_the_box_lands_back_where_it_was(brightness_segmenter, shape, lesion, box):
    frame = frame_with_lesions(shape, lesion, (1, 1, 4, 4))  # and a distractor outside the box
    result = brightness_segmenter.segment(frame, box=box)
    truth = rectangle(shape, *lesion)
    mask = result.processed_mask[0]
    assert iou(mask, truth) > 0.9
    assert np.allclose(centroid(mask), centroid(truth), atol=0.75)
    clipped = clip_box(as_box(box), shape)
    assert not mask[~rectangle(shape, *clipped.as_tuple())].any()  # nothing outside the box
    assert result.boxes[0].box == clipped and result.boxes[0].found
    assert result.box_labels.dtype == np.uint16 and set(np.unique(result.box_labels)) == {0, 1}
    for array in (result.probability, result.raw_mask, result.combined_attention):
        assert array.shape == (1, *shape)


def test_maps_are_zero_outside_the_crop_window(brightness_segmenter):
    frame = frame_with_lesions((80, 80), (30, 30, 50, 50), (0, 0, 10, 10))
    result = brightness_segmenter.segment(frame, box=(25, 25, 55, 55), context_margin=0.0)
    outside = ~rectangle((80, 80), 25, 25, 55, 55)
    assert result.probability[0][outside].max() == 0.0 and result.combined_attention[0][outside].max() == 0.0
    assert result.probability[0][35:45, 35:45].min() > 0.9


def test_rgb_frame_gives_the_same_mask_as_its_grey_version(brightness_segmenter):
    grey = frame_with_lesions((61, 83), (20, 10, 45, 40))
    rgb = np.repeat(grey[..., np.newaxis], 3, axis=-1)
    box = (15, 5, 50, 50)
    np.testing.assert_array_equal(
        brightness_segmenter.segment(rgb, box=box).processed_mask, brightness_segmenter.segment(grey, box=box).processed_mask
    )


def test_stack_with_one_box_per_frame(brightness_segmenter):
    lesions = [(5, 5, 20, 25), (40, 30, 60, 50), (10, 40, 30, 59)]
    stack = np.stack([frame_with_lesions((60, 70), lesion) for lesion in lesions])
    boxes = [(x0 - 4, y0 - 4, x1 + 4, y1 + 4) for x0, y0, x1, y1 in lesions]
    calls = []
    result = brightness_segmenter.segment(stack, frame_boxes=boxes, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    for index, lesion in enumerate(lesions):
        assert iou(result.processed_mask[index], rectangle((60, 70), *lesion)) > 0.9
    assert [outcome.frame for outcome in result.boxes] == [0, 1, 2]
    assert calls == [(2, 6), (3, 6), (5, 6), (6, 6)]  # the three whole frames, then the three boxes
    calls.clear()
    brightness_segmenter.segment(stack, frame_boxes=boxes, frame_weight=0.0, batch_size=2,
                                 progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 3), (3, 3)]  # the crops alone


@pytest.mark.parametrize("weight", [0.25, 0.6, 1.0])
def test_inside_the_crop_window_the_crop_is_blended_with_the_whole_frame(brightness_segmenter, weight):
    # A bright spot outside the box makes the whole frame's scaling differ from the crop's, so the two differ;
    # the lesion reaches past the box's right edge into the window's context ring.
    frame = frame_with_lesions((80, 90), (30, 30, 62, 50), value=150)
    frame[0:6, 80:90] = 255
    box = (24, 24, 56, 56)
    window = grow_box(as_box(box), 0.5, (80, 90)).slices  # the default context margin, 0.5
    whole = brightness_segmenter.segment(frame).probability[0][window]
    crop = brightness_segmenter.segment(frame, box=box, frame_weight=0.0).probability[0][window]
    assert np.abs(whole - crop).max() > 0.1
    blended = brightness_segmenter.segment(frame, box=box, frame_weight=weight)
    np.testing.assert_allclose(blended.probability[0][window], weight * whole + (1 - weight) * crop, atol=1e-6)
    threshold = brightness_segmenter.postprocessing.threshold
    np.testing.assert_array_equal(blended.raw_mask[0][24:56, 24:56], blended.probability[0][24:56, 24:56] >= threshold)
    assert not blended.processed_mask[0][~rectangle((80, 90), *box)].any()


def test_overlapping_windows_keep_the_higher_blend_and_each_box_its_own_mask(brightness_segmenter):
    frame = frame_with_lesions((80, 100), (20, 30, 40, 50), (58, 30, 78, 50), value=150)
    frame[0:6, 90:100] = 255
    boxes = [(15, 25, 45, 55), (53, 25, 83, 55)]  # their crop windows overlap
    alone = [brightness_segmenter.segment(frame, box=box) for box in boxes]
    both = brightness_segmenter.segment(frame, box=boxes)
    np.testing.assert_allclose(both.probability, np.maximum(alone[0].probability, alone[1].probability), atol=1e-6)
    for index, result in enumerate(alone):
        np.testing.assert_array_equal(both.box_labels[0] == index + 1, result.processed_mask[0])


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan"), "half", None])
def test_a_frame_weight_outside_zero_to_one_is_refused(brightness_segmenter, weight):
    with pytest.raises(BoxError, match="frame weight"):
        brightness_segmenter.segment(np.zeros((20, 20), np.uint8), box=(2, 2, 10, 10), frame_weight=weight)


def test_a_stack_with_no_box_on_any_frame_gives_empty_results(brightness_segmenter):
    stack = np.stack([frame_with_lesions((30, 40), (5, 5, 20, 20))] * 2)
    result = brightness_segmenter.segment(stack, frame_boxes=[None, []])
    assert result.boxes == [] and not result.processed_mask.any() and not result.raw_mask.any()
    assert result.probability.max() == 0.0 and result.combined_attention.shape == (2, 30, 40)


def test_several_boxes_number_their_lesions_and_the_rest_stays_empty(brightness_segmenter):
    lesions = [(10, 10, 30, 30), (60, 50, 85, 75), (5, 60, 20, 80)]  # the third has no box
    frame = frame_with_lesions((90, 100), *lesions)
    result = brightness_segmenter.segment(frame, box=[(5, 5, 35, 35), (55, 45, 90, 80)])
    labels = result.box_labels[0]
    assert iou(labels == 1, rectangle((90, 100), *lesions[0])) > 0.9
    assert iou(labels == 2, rectangle((90, 100), *lesions[1])) > 0.9
    assert not result.processed_mask[0][rectangle((90, 100), *lesions[2])].any()
    np.testing.assert_array_equal(result.processed_mask, result.box_labels > 0)
    assert [outcome.index for outcome in result.boxes] == [0, 1]


def test_a_box_on_plain_background_says_it_found_no_lesion(brightness_segmenter):
    frame = frame_with_lesions((60, 60), (40, 40, 55, 55))
    result = brightness_segmenter.segment(frame, box=[(35, 35, 58, 58), (2, 2, 20, 20)], context_margin=0.0)
    assert [outcome.found for outcome in result.boxes] == [True, False]
    assert result.empty_boxes == [result.boxes[1]] and result.boxes[1].peak_probability < 0.05
    assert not result.processed_mask[0][2:20, 2:20].any()


def test_bad_box_reaches_the_caller(brightness_segmenter):
    with pytest.raises(BoxError, match="inverted"):
        brightness_segmenter.segment(np.zeros((20, 20)), box=(10, 10, 5, 15))
    with pytest.raises(BoxError, match="outside the 20x20 frame"):
        brightness_segmenter.segment(np.zeros((20, 20)), box=(30, 30, 40, 40))


# --- the command line -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def brightness_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "brightness.safetensors"
    save_model(brightness_model(), path, input_size=(64, 64), postprocessing=UNTUNED_POSTPROCESSING)
    return path


def written_mask(folder, stem):
    (path,) = Path(folder).glob(f"{stem}_mask*")
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0


def test_cli_box_segments_inside_the_boxes_only(tmp_path, brightness_weights, capsys):
    lesions = [(10, 10, 30, 30), (60, 50, 85, 75), (5, 60, 20, 80)]
    Image.fromarray(frame_with_lesions((90, 100), *lesions)).save(tmp_path / "two.png")
    code = main([str(tmp_path / "two.png"), "-o", str(tmp_path / "out"), "--weights", str(brightness_weights),
                 "--device", "cpu", "--no-figure", "--box", "5,5,35,35", "--box", "55,45,90,80"])
    assert code == 0
    mask = written_mask(tmp_path / "out", "two")
    assert iou(mask, rectangle((90, 100), *lesions[0]) | rectangle((90, 100), *lesions[1])) > 0.85
    assert not mask[rectangle((90, 100), *lesions[2])].any()
    assert "lesion in 1/1 frame(s)" in capsys.readouterr().out


def segment_two_images_by_box_table(tmp_path, weights, last_row):
    """Run the command line on a.png (lesion at 10..30) and b.png (lesion at 30..50) with a box table that gives
    each its lesion's box and then ``last_row``; returns the exit status."""
    Image.fromarray(frame_with_lesions((60, 60), (10, 10, 30, 30))).save(tmp_path / "a.png")
    Image.fromarray(frame_with_lesions((60, 60), (30, 30, 50, 50))).save(tmp_path / "b.png")
    (tmp_path / "boxes.csv").write_text(f"file,x0,y0,x1,y1\na.png,5,5,35,35\nb.png,25,25,55,55\n{last_row}\n")
    return main(["--boxes", str(tmp_path / "boxes.csv"), "-o", str(tmp_path / "out"), "--weights",
                 str(weights), "--device", "cpu", "--no-figure"])


def test_cli_box_table_for_many_images(tmp_path, brightness_weights, capsys):
    code = segment_two_images_by_box_table(tmp_path, brightness_weights, "b.png,0,0,15,15")
    assert code == 0
    assert iou(written_mask(tmp_path / "out", "a"), rectangle((60, 60), 10, 10, 30, 30)) > 0.85
    assert iou(written_mask(tmp_path / "out", "b"), rectangle((60, 60), 30, 30, 50, 50)) > 0.85
    output = capsys.readouterr().out
    assert "b.png: lesion in 1/1 frame(s)" in output and "b.png" in output.split("no lesion found in box 2")[0]


def test_cli_refuses_bad_box_arguments(tmp_path, brightness_weights, capsys):
    Image.fromarray(frame_with_lesions((60, 60), (10, 10, 30, 30))).save(tmp_path / "a.png")
    common = ["-o", str(tmp_path / "out"), "--weights", str(brightness_weights), "--device", "cpu"]
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a.png"), "--box", "30,5,10,20", *common])
    assert "inverted" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--box", "1,2,3,4", *common])
    assert "single input" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("file,x0,y0,x1\na.png,1,2,3\n")
    with pytest.raises(SystemExit):
        main(["--boxes", str(tmp_path / "bad.csv"), *common])
    assert "missing y1" in capsys.readouterr().err
    (tmp_path / "other.csv").write_text("file,x0,y0,x1,y1\nelse.png,1,2,3,4\n")
    assert main([str(tmp_path / "a.png"), "--boxes", str(tmp_path / "other.csv"), *common]) == 1
    assert "no box for it in" in capsys.readouterr().err
    assert main([str(tmp_path / "a.png"), "--box", "100,100,120,120", *common]) == 1
    assert "a.png: box (100, 100, 120, 120) lies outside the 60x60 frame" in capsys.readouterr().err
    (tmp_path / "latin.csv").write_bytes("file,x0,y0,x1,y1\n\xe9.png,1,2,3,4\n".encode("latin-1"))
    with pytest.raises(SystemExit) as stop:
        main(["--boxes", str(tmp_path / "latin.csv"), *common])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "latin.csv: the box table is not UTF-8 text" in err and "Traceback" not in err


def test_cli_an_invalid_row_fails_its_image_and_the_others_run(tmp_path, brightness_weights, capsys):
    code = segment_two_images_by_box_table(tmp_path, brightness_weights, "b.png,9,9,9,9")
    assert code == 1
    captured = capsys.readouterr()
    assert f"error: {tmp_path / 'b.png'}: {tmp_path / 'boxes.csv'} line 4: box (9, 9, 9, 9) is empty" in captured.err
    assert captured.out.strip().endswith("1 segmented, 1 failed")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_mask.nrrd", "a_measurements.json",
                                                                     "a_probability.nrrd", "measurements.csv"]


def test_where_crop_windows_overlap_the_attention_map_is_the_larger_crop_map(tiny_segmenter):
    """Each crop's attention map is the mean of its gates; where two windows overlap the larger map is kept."""
    frame = (np.random.default_rng(7).random((64, 64)) * 255).astype(np.uint8)
    first_box, second_box = (2, 2, 32, 32), (21, 21, 63, 63)
    both = tiny_segmenter.segment(frame, box=[first_box, second_box], frame_weight=0.0)
    first = tiny_segmenter.segment(frame, box=first_box, frame_weight=0.0).combined_attention
    second = tiny_segmenter.segment(frame, box=second_box, frame_weight=0.0).combined_attention
    overlap = (first > 0) & (second > 0)
    assert overlap.sum() > 100 and np.abs(first - second)[overlap].max() > 1e-3  # the two maps differ there
    np.testing.assert_allclose(both.combined_attention, np.maximum(first, second), atol=1e-6)
