"""The command line: outputs per input, formats, clips, no silent overwrite, clear errors."""

import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from BreastUSSegmentLib.cli import main
from BreastUSSegmentLib.model import AttentionUNet
from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.weights import load_model, save_model
from conftest import brightness_model


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny model that calls every pixel brighter than the frame's middle grey a lesion."""
    model = brightness_model()
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_model(model, path, input_size=(64, 64), postprocessing=UNTUNED_POSTPROCESSING)
    return path


def bright_square_png(path, size=(80, 100)):
    frame = np.full(size, 30, np.uint8)
    frame[20:50, 30:70] = 220
    Image.fromarray(frame).save(path)
    return frame > 128


def test_segments_png_and_writes_all_outputs(tmp_path, weights, capsys):
    truth = bright_square_png(tmp_path / "frame.png")
    out = tmp_path / "out"
    assert main([str(tmp_path / "frame.png"), "-o", str(out), "--weights", str(weights), "--device", "cpu"]) == 0
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "frame_mask.nrrd")))
    probability = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "frame_probability.nrrd")))
    assert mask.shape == probability.shape == truth.shape
    overlap = np.logical_and(mask > 0, truth).sum() / np.logical_or(mask > 0, truth).sum()
    assert overlap > 0.9
    assert 0.0 <= probability.min() and probability.max() <= 1.0
    figure = Image.open(out / "frame_overlay.png")
    assert figure.size[0] > 2 * truth.shape[1] and figure.size[1] > truth.shape[0]
    assert "lesion in 1/1 frame(s)" in capsys.readouterr().out


def test_png_format_and_no_figure(tmp_path, weights):
    bright_square_png(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main([str(tmp_path / "a.png"), "-o", str(out), "--weights", str(weights), "--format", "png", "--no-figure"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "a_mask.png", "a_measurements.json", "a_probability.png", "measurements.csv"]
    assert set(np.unique(np.array(Image.open(out / "a_mask.png")))) <= {0, 255}


def test_clip_in_nrrd_keeps_frames_and_spacing(tmp_path, weights):
    clip = np.full((4, 40, 48), 20, np.uint8)
    clip[1, 10:30, 10:30] = 200
    image = sitk.GetImageFromArray(clip)
    image.SetSpacing((0.2, 0.3, 1.0))
    sitk.WriteImage(image, str(tmp_path / "clip.nrrd"))
    assert main([str(tmp_path / "clip.nrrd"), "-o", str(tmp_path / "o"), "--weights", str(weights)]) == 0
    written = sitk.ReadImage(str(tmp_path / "o" / "clip_mask.nrrd"))
    mask = sitk.GetArrayFromImage(written)
    assert mask.shape == (4, 40, 48) and written.GetSpacing()[:2] == pytest.approx((0.2, 0.3))
    assert mask[1].any() and not mask[0].any()


def test_existing_outputs_are_not_overwritten_without_flag(tmp_path, weights, capsys):
    bright_square_png(tmp_path / "f.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "f_mask.nrrd").write_text("keep me")
    assert main([str(tmp_path / "f.png"), "-o", str(out), "--weights", str(weights)]) == 1
    assert (out / "f_mask.nrrd").read_text() == "keep me"
    assert "would overwrite" in capsys.readouterr().err
    assert main([str(tmp_path / "f.png"), "-o", str(out), "--weights", str(weights), "--overwrite"]) == 0
    assert (out / "f_mask.nrrd").read_bytes() != b"keep me"


def test_bad_file_is_reported_and_others_still_processed(tmp_path, weights, capsys):
    (tmp_path / "notes.png").write_text("this is not an image")
    bright_square_png(tmp_path / "good.png")
    code = main([str(tmp_path / "notes.png"), str(tmp_path / "good.png"), "-o", str(tmp_path / "o"), "--weights", str(weights)])
    assert code == 1
    assert "notes.png" in capsys.readouterr().err
    assert (tmp_path / "o" / "good_mask.nrrd").exists() and not (tmp_path / "o" / "notes_mask.nrrd").exists()


def test_missing_weights_give_clear_error(tmp_path, capsys):
    bright_square_png(tmp_path / "f.png")
    assert main([str(tmp_path / "f.png"), "-o", str(tmp_path / "o"), "--weights", str(tmp_path / "none.safetensors")]) == 2
    assert "model weights not found" in capsys.readouterr().err


def test_min_confidence_drops_a_lukewarm_region_and_rejects_bad_values(tmp_path, weights, capsys):
    frame = np.full((80, 100), 30, np.uint8)
    frame[10:40, 10:40] = 220  # probability about 1
    frame[45:78, 35:98] = 130  # probability about 0.7: larger, so keep-largest alone picks it
    Image.fromarray(frame).save(tmp_path / "two.png")
    masks = {}
    for name, value in (("all", "0"), ("confident", "0.9")):
        out = tmp_path / name
        assert main([str(tmp_path / "two.png"), "-o", str(out), "--weights", str(weights), "--device", "cpu",
                     "--format", "png", "--no-figure", "--min-confidence", value]) == 0
        masks[name] = np.array(Image.open(out / "two_mask.png")) > 0
    assert masks["all"][60, 75] and not masks["all"][25, 25]
    assert masks["confident"][25, 25] and not masks["confident"][60, 75]
    capsys.readouterr()
    # Only the lukewarm region is left (a speck below the minimum area keeps the intensity range): it is hidden, and
    # the summary says so.
    frame[10:40, 10:40] = 30
    frame[10:13, 10:13] = 220
    Image.fromarray(frame).save(tmp_path / "one.png")
    assert main([str(tmp_path / "one.png"), "-o", str(tmp_path / "one"), "--weights", str(weights), "--device", "cpu",
                 "--no-figure", "--min-confidence", "0.9"]) == 0
    summary = capsys.readouterr().out
    assert "one.png: no lesion found (the strongest candidate region, mean probability 0." in summary
    assert "below --min-confidence 0.90" in summary
    assert main([str(tmp_path / "two.png"), "-o", str(tmp_path / "bad"), "--weights", str(weights),
                 "--min-confidence", "1.5"]) == 2
    assert "min_mean_probability must be in [0, 1)" in capsys.readouterr().err


def test_min_lesion_probability_empties_frames_the_head_rejects_and_needs_a_head(tmp_path, weights, capsys):
    plain = brightness_model()
    model = AttentionUNet(replace(plain.config, lesion_head=True))
    model.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():  # the hand-set bottleneck is all zeros, so the head gives its bias: probability 0.4
        model.lesion_head.linear.weight.zero_()
        model.lesion_head.linear.bias.fill_(math.log(0.4 / 0.6))
    head_weights = tmp_path / "head.safetensors"
    save_model(model, head_weights, input_size=(64, 64), postprocessing=UNTUNED_POSTPROCESSING)
    bright_square_png(tmp_path / "f.png")
    found = {}
    for bar in ("0.3", "0.5"):
        capsys.readouterr()
        assert run([tmp_path / "f.png"], tmp_path / bar, head_weights, "--format", "png", "--no-figure",
                   "--min-lesion-probability", bar) == 0
        found[bar] = (np.array(Image.open(tmp_path / bar / "f_mask.png")) > 0).any(), capsys.readouterr().out
    assert found["0.3"][0] and "lesion in 1/1 frame(s)" in found["0.3"][1]
    assert not found["0.5"][0]
    assert ("f.png: no lesion found (the lesion head's probability, 0.40 at most, is below "
            "--min-lesion-probability 0.50)") in found["0.5"][1]
    assert run([tmp_path / "f.png"], tmp_path / "plain", weights, "--min-lesion-probability", "0.5") == 2
    assert f"{weights}: min_lesion_probability 0.5 needs a model with a lesion head" in capsys.readouterr().err


def run(inputs, out, weights, *options):
    return main([*map(str, inputs), "-o", str(out), "--weights", str(weights), "--device", "cpu", *options])


# ---------------------------------------------------------------- output names and collisions


def test_outputs_are_named_after_the_file_name_without_its_last_extension(tmp_path, weights, capsys):
    """DICOM files named by UID used to collide as '1_*'; .nii.gz is one extension."""
    names = ["1.2.826.0.1.3680043.101.png", "1.2.826.0.1.3680043.303.png"]
    for name in names:
        bright_square_png(tmp_path / name)
    scan = sitk.GetImageFromArray(np.array(Image.open(tmp_path / names[0])))
    sitk.WriteImage(scan, str(tmp_path / "scan.nii.gz"))
    out = tmp_path / "out"
    assert run([tmp_path / name for name in names] + [tmp_path / "scan.nii.gz"], out, weights, "--no-figure") == 0
    stems = ("1.2.826.0.1.3680043.101", "1.2.826.0.1.3680043.303", "scan")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{stem}_{kind}.nrrd" for stem in stems for kind in ("mask", "probability")]
        + [f"{stem}_measurements.json" for stem in stems] + ["measurements.csv"]
    )
    assert capsys.readouterr().out.strip().endswith("3 segmented, 0 failed")


def test_inputs_whose_outputs_collide_are_refused_before_anything_runs(tmp_path, weights, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        bright_square_png(tmp_path / folder / "frame.png")
    out = tmp_path / "out"
    assert run([tmp_path / "a" / "frame.png", tmp_path / "b" / "frame.png"], out, weights) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'a' / 'frame.png'} and {tmp_path / 'b' / 'frame.png'} would both write {out / 'frame_mask.nrrd'}" in err
    assert "nothing was segmented" in err and not out.exists()
    # An output that would replace an input of the same run is refused too, also with --overwrite.
    bright_square_png(tmp_path / "f.png")
    bright_square_png(tmp_path / "f_mask.png")
    assert run([tmp_path / "f.png", tmp_path / "f_mask.png"], tmp_path, weights, "--format", "png", "--overwrite") == 2
    assert f"would write {tmp_path / 'f_mask.png'}, which is an input of this run" in capsys.readouterr().err
    assert not (tmp_path / "f_probability.png").exists()


# ---------------------------------------------------------------- one input's failure stays its own


def test_a_failing_overlay_stops_neither_the_batch_nor_leaves_half_the_outputs(tmp_path, weights, monkeypatch, capsys):
    bright_square_png(tmp_path / "first.png")
    bright_square_png(tmp_path / "second.png")
    out = tmp_path / "out"
    (out / "first_overlay.png").mkdir(parents=True)  # a folder where the overlay should go
    assert run([tmp_path / "first.png", tmp_path / "second.png"], out, weights, "--overwrite") == 1
    captured = capsys.readouterr()
    assert f"error: {tmp_path / 'first.png'}: cannot write {out / 'first_overlay.png'}: Is a directory" in captured.err
    assert captured.out.strip().endswith("1 segmented, 1 failed")
    assert sorted(p.name for p in out.iterdir()) == [
        "first_overlay.png", "measurements.csv", "second_mask.nrrd", "second_measurements.json", "second_overlay.png",
        "second_probability.nrrd"]
    assert (out / "first_overlay.png").is_dir()

    from BreastUSSegmentLib import cli

    figures = iter([MemoryError(), None])

    def overlay_out_of_memory(*args, **kwargs):
        error = next(figures)
        if error:
            raise error
        return overlay_figure(*args, **kwargs)

    overlay_figure = cli.overlay_figure
    monkeypatch.setattr(cli, "overlay_figure", overlay_out_of_memory)
    out = tmp_path / "oom"
    assert run([tmp_path / "first.png", tmp_path / "second.png"], out, weights) == 1
    captured = capsys.readouterr()
    assert f"error: {tmp_path / 'first.png'}: out of memory" in captured.err
    assert captured.out.strip().endswith("1 segmented, 1 failed")
    assert sorted(p.name for p in out.iterdir()) == [
        "measurements.csv", "second_mask.nrrd", "second_measurements.json", "second_overlay.png",
        "second_probability.nrrd"]


def test_a_run_killed_while_writing_leaves_no_half_written_output(tmp_path, weights, monkeypatch, capsys):
    """A kill inside the probability write (simulated by an interrupt) leaves nothing a rerun would refuse."""
    bright_square_png(tmp_path / "f.png")
    out = tmp_path / "out"
    real_write = sitk.WriteImage

    def killed_inside_the_second_write(image, target, *args, **kwargs):
        if "probability" in str(target):
            with open(target, "wb") as stream:
                stream.write(b"NRRD0004\n truncated")
            raise KeyboardInterrupt
        real_write(image, target, *args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", killed_inside_the_second_write)
    assert run([tmp_path / "f.png"], out, weights) == 130
    assert capsys.readouterr().err.strip().endswith("interrupted: 0 segmented, 1 not run")
    assert list(out.iterdir()) == []
    monkeypatch.setattr(sitk, "WriteImage", real_write)
    assert run([tmp_path / "f.png"], out, weights) == 0  # no --overwrite needed


def test_a_concurrent_run_that_writes_first_is_never_overwritten(tmp_path, weights, monkeypatch, capsys):
    """The other run creates the mask after our existence check: we fail cleanly instead of replacing it."""
    from BreastUSSegmentLib import cli

    bright_square_png(tmp_path / "f.png")
    out = tmp_path / "out"
    real_read = cli.read_image

    def read_while_another_run_writes(path):
        (out / "f_mask.nrrd").write_text("the other run's mask")
        return real_read(path)

    monkeypatch.setattr(cli, "read_image", read_while_another_run_writes)
    assert run([tmp_path / "f.png"], out, weights) == 1
    captured = capsys.readouterr()
    assert f"would overwrite {out / 'f_mask.nrrd'}" in captured.err
    assert captured.out.strip().endswith("0 segmented, 1 failed")
    assert (out / "f_mask.nrrd").read_text() == "the other run's mask"
    assert sorted(p.name for p in out.iterdir()) == ["f_mask.nrrd"]


def test_a_frame_too_small_to_segment_is_reported_with_its_file_name(tmp_path, weights, capsys):
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "dot.png")
    assert run([tmp_path / "dot.png"], tmp_path / "out", weights) == 1
    assert f"error: {tmp_path / 'dot.png'}: a frame must be at least 2x2 pixels" in capsys.readouterr().err


def test_an_image_over_the_size_limit_is_refused_and_the_batch_goes_on(tmp_path, weights, monkeypatch, capsys):
    from BreastUSSegmentLib import imagetypes

    monkeypatch.setattr(imagetypes, "MAX_INPUT_PIXELS", 80 * 100)
    bright_square_png(tmp_path / "big.png", size=(81, 100))
    bright_square_png(tmp_path / "fits.png", size=(80, 100))
    assert run([tmp_path / "big.png", tmp_path / "fits.png"], tmp_path / "out", weights, "--no-figure") == 1
    captured = capsys.readouterr()
    assert f"error: {tmp_path / 'big.png'}: the image is too large: 1 frame(s) of 81 x 100 pixels" in captured.err
    assert captured.out.strip().endswith("1 segmented, 1 failed")


# ---------------------------------------------------------------- problems that stop the whole batch


def test_an_unusable_output_folder_is_a_clean_error(tmp_path, weights, capsys):
    bright_square_png(tmp_path / "f.png")
    (tmp_path / "taken").write_text("a file")
    assert run([tmp_path / "f.png"], tmp_path / "taken", weights) == 2
    assert f"error: --output {tmp_path / 'taken'} is a file, not a folder" in capsys.readouterr().err
    assert run([tmp_path / "f.png"], tmp_path / "taken" / "sub", weights) == 2
    assert f"error: cannot create the output folder {tmp_path / 'taken' / 'sub'}" in capsys.readouterr().err


def test_weights_that_overflow_stop_the_batch_with_an_error_naming_the_model(tmp_path, weights, capsys):
    """Finite weights (NaN or infinite ones are refused at loading) whose output overflows to NaN."""
    model, card = load_model(weights)
    with torch.no_grad():
        model.encoders[0][0].weight[0, 0, 1, 1] = 3e38
        model.encoders[0][2].weight[0, 0, 1, 1] = 3e38  # 3e38 x 3e38 is infinite, and infinity x 0 is NaN
    broken = tmp_path / "broken.safetensors"
    save_model(model, broken, input_size=tuple(card.input_size), postprocessing=card.postprocess_options)
    bright_square_png(tmp_path / "a.png")
    bright_square_png(tmp_path / "b.png")
    assert run([tmp_path / "a.png", tmp_path / "b.png"], tmp_path / "out", broken) == 2
    captured = capsys.readouterr()
    assert f"the network output is NaN or infinite: the model {broken} is broken" in captured.err
    assert captured.out.strip().endswith("0 segmented, 1 failed, 1 not run (the model is broken)")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("change, message", [
    ({"input_size": [-64, 64]}, "input_size must be two whole numbers >= 1"),
    ({"normalization": "z-score"}, "normalization 'z-score' is not implemented"),
])
def test_a_model_card_the_code_cannot_honour_stops_the_batch_before_it_starts(tmp_path, weights, capsys, change,
                                                                              message):
    model, card = load_model(weights)
    broken = tmp_path / "broken.safetensors"
    save_model(model, broken, input_size=tuple(card.input_size), postprocessing=card.postprocess_options)
    card_path = broken.with_suffix(".json")
    card_path.write_text(json.dumps({**json.loads(card_path.read_text()), **change}))
    bright_square_png(tmp_path / "a.png")
    assert run([tmp_path / "a.png"], tmp_path / "out", broken) == 2
    assert f"error: model card {card_path} is not valid: {message}" in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == []


def test_a_failed_overwrite_keeps_the_earlier_outputs_of_that_input(tmp_path, weights, monkeypatch, capsys):
    """A full disk while the probability map is written (simulated inside SimpleITK's write) leaves the three
    earlier outputs exactly as they were, not a mix of old and new."""
    bright_square_png(tmp_path / "f.png")
    out = tmp_path / "out"
    assert run([tmp_path / "f.png"], out, weights) == 0
    earlier = {path.name: path.read_bytes() for path in out.iterdir()}
    assert sorted(earlier) == ["f_mask.nrrd", "f_measurements.json", "f_overlay.png", "f_probability.nrrd",
                               "measurements.csv"]
    bright_square_png(tmp_path / "f.png", size=(90, 110))  # new outputs would differ from the earlier ones
    real_write = sitk.WriteImage

    def disk_full_on_the_probability(image, target, *args, **kwargs):
        if "probability" in str(target):
            with open(target, "wb") as stream:
                stream.write(b"NRRD0004\n")
            raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: No space left on device")
        real_write(image, target, *args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", disk_full_on_the_probability)
    capsys.readouterr()
    assert run([tmp_path / "f.png"], out, weights, "--overwrite") == 1
    captured = capsys.readouterr()
    assert f"error: {tmp_path / 'f.png'}: Cannot write '{out / 'f_probability.nrrd'}'" in captured.err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == earlier
    monkeypatch.setattr(sitk, "WriteImage", real_write)
    assert run([tmp_path / "f.png"], out, weights, "--overwrite") == 0
    assert sitk.ReadImage(str(out / "f_mask.nrrd")).GetSize() == (110, 90)


@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_a_batch_size_below_one_is_a_usage_error(tmp_path, weights, capsys, value):
    bright_square_png(tmp_path / "f.png")
    with pytest.raises(SystemExit) as stop:
        run([tmp_path / "f.png"], tmp_path / "out", weights, "--batch-size", value)
    assert stop.value.code == 2
    assert "argument --batch-size:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def rotation(degrees: float, dimension: int) -> tuple:
    """Direction cosines of a rotation about the last axis (row by row, as SimpleITK takes them)."""
    angle = math.radians(degrees)
    matrix = np.eye(dimension)
    matrix[:2, :2] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    return tuple(matrix.ravel())


@pytest.mark.parametrize("name, shape, spacing, origin, direction, output_format", [
    ("clip.nii.gz", (3, 40, 48), (0.2, 0.3, 2.5), (-12.0, 30.5, 7.25), rotation(30, 3), "nrrd"),
    ("clip.nii.gz", (3, 40, 48), (0.2, 0.3, 2.5), (-12.0, 30.5, 7.25), rotation(30, 3), "nifti"),
    ("frame.nrrd", (40, 48), (0.15, 0.4), (5.0, -3.0), rotation(-20, 2), "nrrd"),
    ("slice.nrrd", (1, 40, 48), (0.2, 0.3, 4.0), (1.0, 2.0, 3.0), rotation(45, 3), "nifti"),
])
def test_masks_and_probabilities_keep_the_inputs_geometry(tmp_path, weights, name, shape, spacing, origin,
                                                          direction, output_format):
    """Origin, direction and every spacing (slices included) of an NRRD or NIfTI input reach both image outputs."""
    pixels = np.full(shape, 20, np.uint8)
    pixels[..., 10:30, 10:30] = 200
    image = sitk.GetImageFromArray(pixels)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(tmp_path / name))
    source = sitk.ReadImage(str(tmp_path / name))  # as the file holds it (NIfTI stores float32 numbers)
    assert run([tmp_path / name], tmp_path / "out", weights, "--no-figure", "--format", output_format) == 0
    suffix = {"nrrd": ".nrrd", "nifti": ".nii.gz"}[output_format]
    for kind in ("mask", "probability"):
        written = sitk.ReadImage(str(tmp_path / "out" / f"{name.split('.')[0]}_{kind}{suffix}"))
        assert written.GetSize() == source.GetSize()
        assert written.GetSpacing() == pytest.approx(source.GetSpacing(), abs=1e-5)
        assert written.GetOrigin() == pytest.approx(source.GetOrigin(), abs=1e-5)
        assert written.GetDirection() == pytest.approx(source.GetDirection(), abs=1e-5)
        if kind == "mask":  # the lesion is where the bright square is, in physical space too
            mask = sitk.GetArrayFromImage(written).reshape(shape)
            assert mask[..., 15, 15].all() and not mask[..., 35, 40].any()


# ---------------------------------------------------------------- signals and odd file names (real processes)

SLOW_DRIVER = '''
import sys, time
import SimpleITK as sitk
from BreastUSSegmentLib import cli

real_write = sitk.WriteImage

def write_then_wait(image, target, *args, **kwargs):
    real_write(image, target, *args, **kwargs)
    if "second_mask" in str(target):  # the first of the second input's outputs is written: stop here a while
        print("WRITING", flush=True)
        time.sleep(60)

sitk.WriteImage = write_then_wait
sys.exit(cli.main(sys.argv[1:]))
'''


@pytest.mark.parametrize("number, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_run_keeps_finished_inputs_cleans_the_current_one_and_says_what_was_not_run(
        tmp_path, weights, number, status):
    names = ["first", "second", "third"]
    for name in names:
        bright_square_png(tmp_path / f"{name}.png")
    (tmp_path / "driver.py").write_text(SLOW_DRIVER)
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), *(str(tmp_path / f"{name}.png") for name in names),
         "-o", str(out), "--weights", str(weights), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("WRITING"):
                break
        process.send_signal(number)
        rest, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == status, err
    assert "first.png: lesion in 1/1 frame(s)" in "".join(lines)
    assert err.strip().splitlines()[-1] == "interrupted: 1 segmented, 2 not run"
    assert "Traceback" not in err
    assert sorted(path.name for path in out.iterdir()) == ["first_mask.nrrd", "first_measurements.json",
                                                            "first_overlay.png", "first_probability.nrrd",
                                                            "measurements.csv"]
    assert "second" not in (out / "measurements.csv").read_text()


def test_file_and_folder_names_that_are_not_utf8_are_segmented(tmp_path, weights):
    """Linux file names are bytes; SimpleITK used to abort the whole process on a name that is not UTF-8."""
    folder = os.path.join(os.fsencode(tmp_path), b"caf\xe9")
    try:
        os.mkdir(folder)
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    bright_square_png(os.fsdecode(os.path.join(folder, b"frame\xfe.png")))
    scan = sitk.GetImageFromArray(np.array(Image.open(os.fsdecode(os.path.join(folder, b"frame\xfe.png")))))
    scan.SetSpacing((0.25, 0.5))
    sitk.WriteImage(scan, str(tmp_path / "plain.nii.gz"))
    os.rename(os.fsencode(tmp_path / "plain.nii.gz"), os.path.join(folder, b"scan\xff.nii.gz"))
    bright_square_png(tmp_path / "last.png")
    out = os.path.join(os.fsencode(tmp_path), b"out\xe9")
    inputs = [os.path.join(folder, b"scan\xff.nii.gz"), os.path.join(folder, b"frame\xfe.png"),
              os.fsencode(tmp_path / "last.png")]
    result = subprocess.run([sys.executable, "-m", "BreastUSSegmentLib", *inputs, b"-o", out, b"--weights",
                             os.fsencode(weights), b"--device", b"cpu", b"--format", b"nifti"],
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(b"3 segmented, 0 failed")
    assert sorted(os.listdir(out)) == sorted([b"measurements.csv"] + [
        stem + kind for stem in (b"scan\xff", b"frame\xfe", b"last")
        for kind in (b"_mask.nii.gz", b"_probability.nii.gz", b"_overlay.png", b"_measurements.json")])
    with open(os.path.join(out, b"frame\xfe_measurements.json"), encoding="utf-8") as stream:
        assert os.fsencode(json.load(stream)["input"]["path"]) == os.path.join(folder, b"frame\xfe.png")
    os.link(os.path.join(out, b"scan\xff_mask.nii.gz"), os.fsencode(tmp_path / "mask.nii.gz"))
    mask = sitk.ReadImage(str(tmp_path / "mask.nii.gz"))
    assert mask.GetSpacing() == pytest.approx((0.25, 0.5)) and sitk.GetArrayFromImage(mask).any()


def test_a_spacing_given_by_the_user_replaces_only_the_spacing_of_the_inputs_geometry(tmp_path, weights):
    pixels = np.full((40, 48), 20, np.uint8)
    pixels[10:30, 10:30] = 200
    image = sitk.GetImageFromArray(pixels)
    image.SetSpacing((0.15, 0.4))
    image.SetOrigin((5.0, -3.0))
    image.SetDirection(rotation(-20, 2))
    sitk.WriteImage(image, str(tmp_path / "frame.nrrd"))
    assert run([tmp_path / "frame.nrrd"], tmp_path / "out", weights, "--no-figure", "--spacing", "0.3,0.2") == 0
    written = sitk.ReadImage(str(tmp_path / "out" / "frame_mask.nrrd"))
    assert written.GetSpacing() == pytest.approx((0.2, 0.3))  # (column, row) for (row 0.3, column 0.2)
    assert written.GetOrigin() == pytest.approx((5.0, -3.0))
    assert written.GetDirection() == pytest.approx(rotation(-20, 2))
