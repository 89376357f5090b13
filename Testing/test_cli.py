"""The command line: outputs per input, formats, clips, no silent overwrite, clear errors."""

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from BreastUSSegmentLib.cli import main
from BreastUSSegmentLib.postprocessing import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.weights import save_model
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
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "a_probability.png"]
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
