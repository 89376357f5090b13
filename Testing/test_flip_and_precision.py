"""The test-time flip as a model card's setting, and bfloat16 inference on CPUs that compute in it natively."""

import json

import numpy as np
import pytest
import torch

from BreastUSSegmentLib import inference
from BreastUSSegmentLib.cli import main as segment_main
from BreastUSSegmentLib.imageio import write_image
from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.model import AttentionUNet, ModelConfig
from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.weights import load_model, save_model
from breastus_training import cli, export

from busi_synthetic import write_synthetic_split

CONFIG = ModelConfig(base_channels=4, depth=2, dropout=0.0)


def flip_card_model(folder, test_time_flip=True):
    """An untrained (so not mirror-symmetric) model whose card chooses ``test_time_flip``."""
    torch.manual_seed(3)
    path = folder / f"flip_{test_time_flip}.safetensors"
    save_model(AttentionUNet(CONFIG), path, input_size=(64, 64),
               postprocessing=UNTUNED_POSTPROCESSING.with_overrides(test_time_flip=test_time_flip))
    return path


def frame(seed=0):
    rows, cols = np.indices((48, 72))
    return (np.sin(rows / 5.0) * np.cos(cols / 9.0 + seed) + 0.3 * (cols > 40)).astype(np.float32)


def test_the_cards_flip_is_the_default_and_a_call_or_an_override_changes_it(tmp_path):
    path = flip_card_model(tmp_path)
    segmenter = LesionSegmenter.from_weights(path, device="cpu")
    default = segmenter.segment(frame()).probability
    flipped = segmenter.segment(frame(), test_time_flip=True).probability
    plain = segmenter.segment(frame(), test_time_flip=False).probability
    np.testing.assert_array_equal(default, flipped)
    assert not np.allclose(default, plain, atol=1e-4)  # the flip changes this model's output
    unflipped = LesionSegmenter.from_weights(path, device="cpu", test_time_flip=False)
    np.testing.assert_array_equal(unflipped.segment(frame()).probability, plain)


def test_a_card_written_before_the_flip_setting_means_no_flip(tmp_path):
    path = flip_card_model(tmp_path)
    card = json.loads(path.with_suffix(".json").read_text())
    del card["postprocessing"]["test_time_flip"]
    path.with_suffix(".json").write_text(json.dumps(card))
    assert load_model(path)[1].postprocess_options.test_time_flip is False


def test_the_flip_setting_must_be_true_or_false():
    with pytest.raises(ValueError, match="test_time_flip must be true or false"):
        UNTUNED_POSTPROCESSING.with_overrides(test_time_flip="yes")


def test_bf16_runs_where_the_cpu_has_it_and_gives_float32_outputs_close_to_float32(monkeypatch):
    torch.manual_seed(0)
    model = AttentionUNet(CONFIG)
    monkeypatch.setattr("BreastUSSegmentLib.device.cpu_has_native_bf16", lambda: False)
    reference = LesionSegmenter(model, (64, 64), UNTUNED_POSTPROCESSING, device="cpu")
    monkeypatch.setattr("BreastUSSegmentLib.device.cpu_has_native_bf16", lambda: True)
    fast = LesionSegmenter(model, (64, 64), UNTUNED_POSTPROCESSING, device="cpu")
    assert (reference.cpu_bf16, fast.cpu_bf16) == (False, True)
    expected, result = reference.segment(frame()), fast.segment(frame())
    assert result.probability.dtype == np.float32 and result.combined_attention.dtype == np.float32
    np.testing.assert_allclose(result.probability, expected.probability, atol=0.03)
    assert not np.array_equal(result.probability, expected.probability)  # it did run in bfloat16


@pytest.fixture(scope="module")
def busi(tmp_path_factory):
    root = tmp_path_factory.mktemp("busi_flip")
    data, split = write_synthetic_split(root)
    return {"root": root, "data": data, "split": split, "weights": flip_card_model(root)}


def training_command(busi, command, name, *extra):
    return [command, "--data", str(busi["data"]), "--split", str(busi["split"]), "--weights", str(busi["weights"]),
            "--device", "cpu", "--no-progress", "--output", str(busi["root"] / name), *extra]


def test_evaluate_and_sweep_follow_the_cards_flip_unless_told_and_export_carries_it(busi):
    assert cli.main(training_command(busi, "evaluate", "on", "--subset", "test")) == 0
    on = json.loads((busi["root"] / "on" / "report.json").read_text())
    assert cli.main(training_command(busi, "evaluate", "off", "--subset", "test", "--no-test-time-flip")) == 0
    off = json.loads((busi["root"] / "off" / "report.json").read_text())
    assert on["options"]["test_time_flip"] is True and off["options"]["test_time_flip"] is False
    assert on["options"]["postprocessing"]["test_time_flip"] is True and on["options"]["cpu_bf16"] is False
    assert [row["raw"] for row in on["cases"]] != [row["raw"] for row in off["cases"]]
    assert cli.main(training_command(busi, "sweep", "sweep", "--subset", "val", "--thresholds", "0.5")) == 0
    assert json.loads((busi["root"] / "sweep" / "sweep.json").read_text())["test_time_flip"] is True
    assert cli.main(training_command(busi, "sweep", "sweep_off", "--subset", "val", "--thresholds", "0.5",
                                     "--no-test-time-flip")) == 0
    assert json.loads((busi["root"] / "sweep_off" / "sweep.json").read_text())["test_time_flip"] is False

    exported = busi["root"] / "exported.safetensors"
    export.export_model(busi["weights"], busi["root"] / "off" / "report.json", exported)
    assert load_model(exported)[1].postprocess_options.test_time_flip is False  # what that report evaluated


def test_the_command_line_follows_the_cards_flip_unless_told(busi, tmp_path):
    import SimpleITK as sitk

    image = tmp_path / "frame.png"
    write_image(image, (255 * (frame() - frame().min()) / np.ptp(frame())).astype(np.uint8))
    probability = {}
    for name, extra in (("card", []), ("off", ["--no-test-time-flip"]), ("on", ["--test-time-flip"])):
        output = tmp_path / name
        assert segment_main([str(image), "-o", str(output), "--weights", str(busi["weights"]), "--device", "cpu",
                             "--no-figure", *extra]) == 0
        probability[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(output / "frame_probability.nrrd")))
    np.testing.assert_array_equal(probability["card"], probability["on"])
    assert not np.allclose(probability["card"], probability["off"], atol=1e-4)
