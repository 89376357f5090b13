"""Streams: frames in, results out a chunk at a time; chunked NRRD clips; the temporal rule; bounded memory."""

import json
import math
import os
import signal
import stat
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from BreastUSSegmentLib import imagetypes
from BreastUSSegmentLib.cli import main
from BreastUSSegmentLib.clipio import NrrdClipWriter, open_clip
from BreastUSSegmentLib.descriptors import describe_frames
from BreastUSSegmentLib.imageio import read_image, write_image
from BreastUSSegmentLib.imagetypes import ImageGeometry, ImageReadError
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
    streamed = [outcome for result in results for outcome in result.boxes]
    # the network sees other batches in chunks, and PyTorch's CPU convolutions differ by a few units in the last
    # place between batch sizes: the peaks agree to that, everything else exactly
    assert [replace(outcome, peak_probability=0.0) for outcome in streamed] == \
        [replace(outcome, peak_probability=0.0) for outcome in whole.boxes]
    assert [outcome.peak_probability for outcome in streamed] == \
        pytest.approx([outcome.peak_probability for outcome in whole.boxes], abs=1e-6)
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


def rotated_geometry():
    """An input's geometry that is none of the defaults: rotated, offset, anisotropic, slices 2.5 mm apart."""
    angle = math.radians(25)
    direction = np.eye(3)
    direction[:2, :2] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    return ImageGeometry((0.2, 0.35, 2.5), (-12.0, 30.5, 7.25), tuple(direction.ravel()))


def test_a_streamed_nrrd_has_the_geometry_it_is_given(tmp_path):
    geometry = rotated_geometry()
    clip = random_clip(frames=5)
    writer = NrrdClipWriter(tmp_path / "s.nrrd", 5, clip.shape[1:], np.uint8, geometry=geometry)
    writer.write(clip)
    streamed = sitk.ReadImage(str(writer.close()))
    assert streamed.GetSpacing() == pytest.approx(geometry.spacing)
    assert streamed.GetOrigin() == pytest.approx(geometry.origin)
    assert streamed.GetDirection() == pytest.approx(geometry.direction)
    assert np.array_equal(sitk.GetArrayFromImage(streamed), clip)


def test_an_unfinished_or_aborted_writer_leaves_nothing(tmp_path):
    writer = NrrdClipWriter(tmp_path / "c.nrrd", 3, (4, 5), np.uint8, (1.0, 1.0))
    writer.write(np.zeros((2, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="2 of 3 frames"):
        writer.close()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "c.nrrd").write_text("keep me")
    writer = NrrdClipWriter(tmp_path / "c.nrrd", 1, (4, 5), np.uint8, (1.0, 1.0))
    writer.write(np.zeros((1, 4, 5), np.uint8))
    with pytest.raises(FileExistsError):
        writer.close(exclusive=True)
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
    sitk.WriteImage(sitk.GetImageFromArray(random_clip(frames=6)), str(path), True)
    path.write_bytes(path.read_bytes()[:-200])  # the gzip stream cut short
    with pytest.raises(ImageReadError, match="the compressed data after frame 4 of 6 cannot be read") as error:
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
    described = describe_frames(clip, expected.processed_mask, (0.2, 0.3))  # as for a clip segmented whole
    lesions = json.loads((out / "clip_measurements.json").read_text())["lesions"]
    assert len(lesions) == sum(len(rows) for rows in described) > 0
    for row, expected_row in zip(lesions, [row for rows in described for row in rows]):
        assert {name: row[name] for name in expected_row} == pytest.approx(expected_row)


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


def rotated_nrrd_clip(path, clip, geometry, compressed=True):
    image = sitk.GetImageFromArray(clip)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    sitk.WriteImage(image, str(path), compressed)
    return path


def test_a_streamed_clip_output_keeps_the_inputs_geometry_and_provenance(tmp_path, weights):
    """An NRRD clip read in chunks and written in chunks: the mask and probability keep the input's origin,
    direction and spacings (slices included), carry the provenance header fields and get the umask's mode."""
    geometry = rotated_geometry()
    clip = moving_square_clip()
    source = rotated_nrrd_clip(tmp_path / "clip.nrrd", clip, geometry)
    assert open_clip(source).chunked
    out = tmp_path / "out"
    assert main([str(source), "-o", str(out), "--weights", str(weights), "--device", "cpu", "--batch-size", "4"]) == 0
    record = json.loads((out / "clip_measurements.json").read_text())
    umask = os.umask(0o022)
    os.umask(umask)
    for kind in ("mask", "probability"):
        path = out / f"clip_{kind}.nrrd"
        written = sitk.ReadImage(str(path))
        assert written.GetSize() == (60, 48, 12)
        assert written.GetSpacing() == pytest.approx(geometry.spacing)
        assert written.GetOrigin() == pytest.approx(geometry.origin)
        assert written.GetDirection() == pytest.approx(geometry.direction)
        assert written.GetMetaData("BreastUS_input_sha256") == record["input"]["sha256"]
        assert written.GetMetaData("BreastUS_model_sha256") == record["provenance"]["model"]["sha256"]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "clip_mask.nrrd")))
    assert mask[5, 20, 25] == 1 and mask[5, 40, 5] == 0  # the square moves 2 columns a frame
    assert main([str(source), "-o", str(tmp_path / "spaced"), "--weights", str(weights), "--device", "cpu",
                 "--spacing", "0.3,0.1"]) == 0
    spaced = sitk.ReadImage(str(tmp_path / "spaced" / "clip_mask.nrrd"))
    assert spaced.GetSpacing() == pytest.approx((0.1, 0.3, 2.5))  # the user's pixel spacing, the file's slices
    assert spaced.GetOrigin() == pytest.approx(geometry.origin)
    assert spaced.GetDirection() == pytest.approx(geometry.direction)


def test_a_streamed_clip_failing_midway_with_overwrite_keeps_the_earlier_outputs(tmp_path, weights, capsys,
                                                                                 monkeypatch):
    """The input is cut short after the first run: the rerun with --overwrite fails in its third chunk, after
    32 frames were streamed, and leaves the earlier outputs exactly as they were, and no temporary; so does
    a full disk once the whole clip is streamed, while the overlay is written."""
    from BreastUSSegmentLib import clipio

    clip = moving_square_clip(frames=40)
    source = rotated_nrrd_clip(tmp_path / "clip.nrrd", clip, rotated_geometry(), compressed=False)
    out = tmp_path / "out"
    arguments = [str(source), "-o", str(out), "--weights", str(weights), "--device", "cpu", "--batch-size", "4"]
    assert main(arguments) == 0
    earlier = {path.name: path.read_bytes() for path in out.iterdir()}
    assert sorted(earlier) == ["clip_mask.nrrd", "clip_measurements.json", "clip_overlay.png",
                               "clip_probability.nrrd", "measurements.csv"]
    source.write_bytes(source.read_bytes()[:-4 * 48 * 60 - 10])  # the last 4 frames and a bit missing
    streamed = []
    real_write = clipio.NrrdClipWriter.write

    def counted_write(writer, frames):
        real_write(writer, frames)
        streamed.append(writer.written)

    monkeypatch.setattr(clipio.NrrdClipWriter, "write", counted_write)
    capsys.readouterr()
    assert main(arguments + ["--overwrite"]) == 1
    captured = capsys.readouterr()
    assert f"error: {source}: the data ends at frame 35 of 40 (the file is truncated)" in captured.err
    assert max(streamed) == 32
    assert {path.name: path.read_bytes() for path in out.iterdir()} == earlier

    from BreastUSSegmentLib import cli

    class FullDisk:
        def save(self, target, **_options):
            raise OSError(28, "No space left on device", target)

    rotated_nrrd_clip(source, clip[::-1].copy(), rotated_geometry(), compressed=False)  # whole again, new outputs
    monkeypatch.setattr(cli, "overlay_figure", lambda *args, **kwargs: FullDisk())
    streamed.clear()
    assert main(arguments + ["--overwrite"]) == 1  # the disk fills once both clips are streamed
    assert f"cannot write {out / 'clip_overlay.png'}: No space left on device" in capsys.readouterr().err
    assert max(streamed) == 40
    assert {path.name: path.read_bytes() for path in out.iterdir()} == earlier


SIGNAL_DRIVER = textwrap.dedent("""
    import sys, time
    from BreastUSSegmentLib import cli, clipio

    real_write = clipio.NrrdClipWriter.write

    def write_then_wait(self, frames):
        real_write(self, frames)
        if self.written == 8 and "mask" in self.path.name:  # half the clip streamed: stop here a while
            print("STREAMING", flush=True)
            time.sleep(60)

    clipio.NrrdClipWriter.write = write_then_wait
    sys.exit(cli.main(sys.argv[1:]))
""")


def test_a_signal_while_a_clip_streams_keeps_finished_inputs_and_leaves_no_temporary(tmp_path, weights):
    first = write_image(tmp_path / "first.nrrd", moving_square_clip(frames=3))
    second = rotated_nrrd_clip(tmp_path / "second.nrrd", moving_square_clip(frames=16), rotated_geometry())
    (tmp_path / "driver.py").write_text(SIGNAL_DRIVER)
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), str(first), str(second), "-o", str(out), "--weights",
         str(weights), "--device", "cpu", "--batch-size", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in process.stdout:
            if line.startswith("STREAMING"):
                break
        process.send_signal(signal.SIGTERM)
        _rest, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == "interrupted: 1 segmented, 1 not run"
    assert sorted(path.name for path in out.iterdir()) == ["first_mask.nrrd", "first_measurements.json",
                                                            "first_overlay.png", "first_probability.nrrd",
                                                            "measurements.csv"]


# The process's own peak: Linux's VmHWM starts afresh at exec, where ru_maxrss keeps the peak of the process
# that started it (here pytest's, which other tests can push over the bound).
MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from BreastUSSegmentLib.cli import main

    def peak_kb():
        try:
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    status = main([sys.argv[1], "-o", sys.argv[2], "--weights", sys.argv[3], "--device", "cpu", "--no-figure"])
    print(json.dumps({"status": status, "peak_kb": peak_kb()}))
""")


def test_a_thousand_frame_clip_segments_in_bounded_memory(tmp_path, weights, record_property):
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
    peak = f"peak memory {report['peak_kb'] * 1024 / 1e9:.2f} GB (VmHWM of the segmenting process)"
    record_property("peak_memory_bytes", report["peak_kb"] * 1024)
    print(peak)  # shown with pytest -s or -rP
    assert report["peak_kb"] * 1024 < 1.5e9, peak
    mask = open_clip(tmp_path / "out" / "long_mask.nrrd")
    assert mask.frame_count == frames
    for chunk in mask.chunks(100):
        last = chunk[-1]
    assert last[200, 250] == 1 and last[10, 10] == 0
