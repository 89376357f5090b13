"""Streams: frames in, results out a chunk at a time; chunked NRRD clips; the temporal rule; bounded memory."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk

from BreastUSSegmentLib import imagetypes
from BreastUSSegmentLib.cli import main
from BreastUSSegmentLib.clipio import NrrdClipWriter, open_clip
from BreastUSSegmentLib.imageio import read_image, write_image
from BreastUSSegmentLib.imagetypes import ImageReadError
from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.stream import FrameStepper, chunk_size, segment_stream
from BreastUSSegmentLib.temporal import TemporalFilter, TemporalRule
from BreastUSSegmentLib.weights import save_model
from conftest import brightness_model


def random_clip(frames=11, rows=40, columns=52, seed=0):
    return (np.random.default_rng(seed).random((frames, rows, columns)) * 255).astype(np.uint8)


# ---------------------------------------------------------------- the stream equals the whole-clip run


@pytest.mark.parametrize("chunk_frames", [1, 3, 8, 100])
def test_a_stream_gives_what_segmenting_the_whole_clip_gives(tiny_segmenter, chunk_frames):
    clip = random_clip()
    whole = tiny_segmenter.segment(clip, batch_size=4)
    for source in (clip, iter(clip)):
        results = list(segment_stream(tiny_segmenter, source, chunk_frames=chunk_frames, batch_size=4))
        assert [result.index for result in results] == list(range(len(clip)))
        for index, result in enumerate(results):
            assert np.array_equal(result.probability, whole.probability[index])
            assert np.array_equal(result.raw_mask, whole.raw_mask[index])
            assert np.array_equal(result.processed_mask, whole.processed_mask[index])
            assert np.array_equal(result.combined_attention, whole.combined_attention[index])


def test_box_prompts_per_frame_keep_their_clip_frame_numbers(tiny_segmenter):
    clip = random_clip(frames=5)
    boxes = [(4, 4, 30, 30), None, [(2, 2, 20, 20), (20, 10, 50, 38)], (0, 0, 10, 10), None]
    whole = tiny_segmenter.segment(clip, frame_boxes=boxes, batch_size=2)
    results = list(segment_stream(tiny_segmenter, clip, frame_boxes=boxes, chunk_frames=2, batch_size=2))
    assert [outcome for result in results for outcome in result.boxes] == whole.boxes
    assert np.array_equal(np.stack([result.box_labels for result in results]), whole.box_labels)


def test_chunks_are_whole_batches():
    assert chunk_size(16, 8) == 16 and chunk_size(10, 8) == 16 and chunk_size(1, 4) == 4 and chunk_size(3, 1) == 3


def test_a_stepper_numbers_frames_and_starts_again_on_reset(tiny_segmenter):
    stepper = FrameStepper(tiny_segmenter)
    frames = random_clip(frames=3)
    assert [stepper.step(frame).index for frame in frames] == [0, 1, 2]
    colour = np.stack([frames[0]] * 3, axis=-1)
    assert stepper.step(colour).probability.shape == frames[0].shape
    stepper.reset()
    assert stepper.step(frames[0]).index == 0


def test_a_frame_over_the_pixel_limit_is_refused_but_a_clip_over_it_is_not(tiny_segmenter, monkeypatch):
    monkeypatch.setattr(imagetypes, "MAX_INPUT_PIXELS", 40 * 52)
    assert len(list(segment_stream(tiny_segmenter, random_clip(frames=6)))) == 6  # 6 x the limit in all
    with pytest.raises(ValueError, match="the frame is too large"):
        list(segment_stream(tiny_segmenter, random_clip(frames=1, rows=41)))


# ---------------------------------------------------------------- the temporal rule


def square(top, left, size=6, shape=(30, 30)):
    mask = np.zeros(shape, bool)
    mask[top:top + size, left:left + size] = True
    return mask


def test_a_lesion_that_flickers_on_for_one_frame_is_removed_and_a_steady_one_kept():
    rule = TemporalFilter(TemporalRule(2, 3))
    empty = np.zeros((30, 30), bool)
    steady = [square(10, 10 + step) for step in range(5)]  # a lesion drifting by a pixel a frame
    flicker = square(0, 20)
    shown = [rule(mask) for mask in [steady[0], steady[1], steady[2] | flicker, steady[3], steady[4]]]
    assert not shown[0].any() and not shown[1].any()  # fewer than 2 frames before it
    assert np.array_equal(shown[2], steady[2])  # the flicker is gone, the steady lesion stays
    assert np.array_equal(shown[3], steady[3]) and np.array_equal(shown[4], steady[4])
    assert not rule(empty).any()


def test_the_rule_counts_frames_before_the_rule_and_forgets_on_a_new_frame_size():
    rule = TemporalFilter(TemporalRule(1, 1))
    first = square(5, 5)
    assert not rule(first).any()
    assert np.array_equal(rule(first), first)  # the first frame's lesion counts, though the rule hid it
    assert not rule(square(5, 5, shape=(40, 40))).any()  # new size: nothing before it


def test_off_keeps_every_mask_and_bad_rules_are_refused():
    mask = square(3, 3)
    assert np.array_equal(TemporalFilter(None)(mask), mask)
    assert TemporalRule.parse("off") is None and TemporalRule.parse(" 2/3 ") == TemporalRule(2, 3)
    for text in ("3/2", "0/2", "2", "a/b", "1/0"):
        with pytest.raises(ValueError, match="K/N"):
            TemporalRule.parse(text)


def test_the_rule_applies_to_a_streamed_clip(brightness_segmenter):
    clip = np.full((6, 40, 40), 20, np.uint8)
    clip[:, 10:30, 10:30] = 200  # a steady lesion
    clip[3, 0:6, 34:40] = 255  # on for one frame
    options = brightness_segmenter.postprocessing.with_overrides(keep_largest=False, min_area_fraction=0.0)
    plain = list(segment_stream(brightness_segmenter, clip, postprocessing=options))
    ruled = list(segment_stream(brightness_segmenter, clip, temporal=TemporalRule(2, 2), postprocessing=options))
    assert plain[3].processed_mask[:6, 34:].any()
    assert not ruled[3].processed_mask[:6, 34:].any() and ruled[3].processed_mask[20, 20]
    assert not ruled[0].processed_mask.any() and not ruled[1].processed_mask.any()


# ---------------------------------------------------------------- chunked NRRD


def test_a_streamed_nrrd_reads_back_like_one_written_whole(tmp_path):
    for dtype in (np.uint8, np.float32):
        clip = (random_clip(frames=7) / (255.0 if dtype == np.float32 else 1)).astype(dtype)
        writer = NrrdClipWriter(tmp_path / f"s_{dtype.__name__}.nrrd", 7, clip.shape[1:], dtype, (0.3, 0.2))
        for start in range(0, 7, 3):
            writer.write(clip[start:start + 3])
        streamed = sitk.ReadImage(str(writer.close()))
        whole = sitk.ReadImage(str(write_image(tmp_path / f"w_{dtype.__name__}.nrrd", clip, spacing=(0.3, 0.2))))
        assert np.array_equal(sitk.GetArrayFromImage(streamed), sitk.GetArrayFromImage(whole))
        assert sitk.GetArrayFromImage(streamed).dtype == dtype
        for attribute in ("GetSpacing", "GetOrigin", "GetDirection"):
            assert getattr(streamed, attribute)() == getattr(whole, attribute)()


def test_an_unfinished_or_aborted_writer_leaves_nothing(tmp_path):
    writer = NrrdClipWriter(tmp_path / "c.nrrd", 3, (4, 5), np.uint8, (1.0, 1.0))
    writer.write(np.zeros((2, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="2 of 3 frames"):
        writer.close()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "c.nrrd").write_text("keep me")
    writer = NrrdClipWriter(tmp_path / "c.nrrd", 1, (4, 5), np.uint8, (1.0, 1.0), exclusive=True)
    writer.write(np.zeros((1, 4, 5), np.uint8))
    with pytest.raises(FileExistsError):
        writer.close()
    assert [path.name for path in tmp_path.iterdir()] == ["c.nrrd"] and (tmp_path / "c.nrrd").read_text() == "keep me"


@pytest.mark.parametrize("compressed", [True, False])
def test_nrrd_clips_are_read_in_chunks_as_read_image_reads_them(tmp_path, compressed):
    clip = random_clip(frames=9).astype(np.uint16) * 3
    image = sitk.GetImageFromArray(clip)
    image.SetSpacing((0.25, 0.5, 1.0))
    path = tmp_path / "clip.nrrd"
    sitk.WriteImage(image, str(path), compressed)
    opened, whole = open_clip(path), read_image(path)
    assert opened.chunked and opened.frame_count == 9 and opened.frame_shape == whole.frame_shape
    assert opened.spacing == whole.spacing == (0.5, 0.25)
    assert np.array_equal(np.concatenate(list(opened.chunks(4))), whole.pixels)


def test_a_truncated_nrrd_clip_names_the_file_and_frame(tmp_path):
    path = tmp_path / "clip.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(random_clip(frames=6)), str(path), False)
    path.write_bytes(path.read_bytes()[:-40 * 52 * 2 - 10])
    with pytest.raises(ImageReadError, match="ends at frame 3 of 6") as error:
        list(open_clip(path).chunks(2))
    assert str(path) in str(error.value)


def test_other_formats_are_read_whole(tmp_path):
    path = write_image(tmp_path / "clip.nii.gz", random_clip(frames=3))
    opened = open_clip(path)
    assert not opened.chunked and opened.frame_count == 3
    assert np.array_equal(np.concatenate(list(opened.chunks(2))), read_image(path).pixels)


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "bright.safetensors"
    save_model(brightness_model(), path, input_size=(64, 64), postprocessing=UNTUNED_POSTPROCESSING)
    return path


def moving_square_clip(frames=12):
    clip = np.full((frames, 48, 60), 25, np.uint8)
    for index in range(frames):
        clip[index, 10:30, 5 + 2 * index:25 + 2 * index] = 210
    return clip


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_the_command_line_writes_what_segmenting_the_whole_clip_gives(tmp_path, weights, suffix, brightness_segmenter):
    """Today's outputs: the segmenter's whole-clip arrays, written by write_image."""
    from BreastUSSegmentLib.inference import LesionSegmenter

    clip = moving_square_clip()
    source = write_image(tmp_path / f"clip{suffix}", clip, spacing=(0.2, 0.3))
    out = tmp_path / "out"
    format_name = "nrrd" if suffix == ".nrrd" else "nifti"
    assert main([str(source), "-o", str(out), "--weights", str(weights), "--device", "cpu", "--format", format_name,
                 "--batch-size", "4"]) == 0
    expected = LesionSegmenter.from_weights(weights, device="cpu").segment(clip, batch_size=4)
    mask, probability = read_image(out / f"clip_mask{suffix}"), read_image(out / f"clip_probability{suffix}")
    assert np.array_equal(mask.pixels, expected.processed_mask.astype(np.uint8))
    assert np.array_equal(probability.pixels, expected.probability)
    assert mask.spacing == probability.spacing == pytest.approx((0.2, 0.3))


def test_a_clip_over_the_old_limit_is_segmented_as_nrrd_and_refused_as_nifti(tmp_path, weights, monkeypatch, capsys):
    monkeypatch.setattr(imagetypes, "MAX_INPUT_PIXELS", 48 * 60 * 3)
    clip = moving_square_clip()
    writer = NrrdClipWriter(tmp_path / "long.nrrd", len(clip), clip.shape[1:], np.uint8, (1.0, 1.0))
    writer.write(clip)
    source = writer.close()
    out = tmp_path / "out"
    assert main([str(source), "-o", str(out), "--weights", str(weights), "--temporal", "1/2", "--no-figure"]) == 0
    assert "lesion in 11/12 frame(s)" in capsys.readouterr().out  # the first frame has none before it
    assert open_clip(out / "long_mask.nrrd").frame_count == len(clip)
    assert main([str(source), "-o", str(tmp_path / "nifti"), "--weights", str(weights), "--format", "nifti"]) == 1
    assert "too long to write as .nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "nifti").exists() or list((tmp_path / "nifti").iterdir()) == []


def test_a_bad_temporal_rule_is_a_usage_error(tmp_path, weights, capsys):
    with pytest.raises(SystemExit):
        main(["x.png", "-o", str(tmp_path), "--weights", str(weights), "--temporal", "4/2"])
    assert "K/N" in capsys.readouterr().err


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from BreastUSSegmentLib.cli import main
    status = main([sys.argv[1], "-o", sys.argv[2], "--weights", sys.argv[3], "--device", "cpu", "--no-figure"])
    print(json.dumps({"status": status, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")


def test_a_thousand_frame_clip_segments_in_bounded_memory(tmp_path, weights):
    """1,000 frames of 500 x 500 (250 million pixels, five times the old clip limit) under 1.5 GB of peak memory.

    The model is a tiny one: the bound is about the pipeline (reading, outputs, writing), not the network's size.
    """
    frames, rows, columns = 1000, 500, 500
    writer = NrrdClipWriter(tmp_path / "long.nrrd", frames, (rows, columns), np.uint8, (0.1, 0.1))
    frame = np.full((rows, columns), 30, np.uint8)
    frame[100:300, 150:350] = 220
    for _ in range(frames // 50):
        writer.write(np.broadcast_to(frame, (50, rows, columns)))
    source = writer.close()
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(source), str(tmp_path / "out"), str(weights)],
                          capture_output=True, text=True, timeout=1800)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["status"] == 0, done.stderr
    assert report["peak_kb"] * 1024 < 1.5e9, f"peak memory {report['peak_kb'] / 1e6:.2f} GB"
    mask = open_clip(tmp_path / "out" / "long_mask.nrrd")
    assert mask.frame_count == frames
    for chunk in mask.chunks(100):
        last = chunk[-1]
    assert last[200, 250] == 1 and last[10, 10] == 0
