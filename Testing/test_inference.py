"""The inference pipeline on every dtype and channel layout, attention maps, TTA, devices."""

import numpy as np
import pytest
import torch

from BreastUSSegmentLib.device import select_device
from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.model import AttentionUNet, ModelConfig
from BreastUSSegmentLib.modelcard import WeightsError
from BreastUSSegmentLib.options import PostprocessOptions, UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.postprocessing import strongest_hidden_confidence
from BreastUSSegmentLib.preprocessing import prepare_frames, resize_frames
from BreastUSSegmentLib.weights import save_model


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(base_channels=4, depth=3, dropout=0.0))
    return LesionSegmenter(model, (64, 64), UNTUNED_POSTPROCESSING, device="cpu")


def gray_frame(height=70, width=90, seed=0):
    return np.random.default_rng(seed).random((height, width))


LAYOUTS = {
    "uint8 gray": ((gray_frame() * 255).astype(np.uint8), 1, (70, 90)),
    "uint16 gray": ((gray_frame() * 60000).astype(np.uint16), 1, (70, 90)),
    "float64 gray": (gray_frame() * 3.5 - 1, 1, (70, 90)),
    "uint8 RGB": ((np.random.default_rng(1).random((70, 90, 3)) * 255).astype(np.uint8), 1, (70, 90)),
    "uint8 RGBA": ((np.random.default_rng(2).random((70, 90, 4)) * 255).astype(np.uint8), 1, (70, 90)),
    "uint16 cine": ((np.random.default_rng(3).random((5, 70, 90)) * 4000).astype(np.uint16), 5, (70, 90)),
    "RGB cine": ((np.random.default_rng(4).random((3, 70, 90, 3)) * 255).astype(np.uint8), 3, (70, 90)),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_outputs_on_original_grid_for_every_layout(segmenter, name):
    image, frames, size = LAYOUTS[name]
    result = segmenter.segment(image, batch_size=2)
    assert result.frame_count == frames
    for array in (result.probability, result.raw_mask, result.processed_mask, result.combined_attention):
        assert array.shape == (frames, *size)
    for array in (result.probability, result.combined_attention):
        assert array.dtype == np.float32 and array.min() >= 0.0 and array.max() <= 1.0
    np.testing.assert_array_equal(result.raw_mask, result.probability >= 0.5)


def test_attention_is_the_mean_of_the_gates_each_resized_to_the_frame(segmenter):
    """The one-product sum of the gates equals the plain definition: every gate resized alone, then averaged."""
    image = LAYOUTS["uint16 cine"][0]
    result = segmenter.segment(image, batch_size=2)
    gates = segmenter.runner.run(prepare_frames(image, segmenter.input_size)[0]).attention
    assert len(gates) == 3 and len({gate.shape for gate in gates}) == 3  # one per level, each its own size
    expected = np.mean([np.clip(resize_frames(gate[:, 0], image.shape[-2:]), 0, 1) for gate in gates], axis=0)
    np.testing.assert_allclose(result.combined_attention, expected, atol=1e-6)
    assert result.combined_attention.std() > 1e-3  # not a constant map, which any mean would match


def test_identical_frames_give_identical_results_in_any_batch(segmenter):
    frame = gray_frame(seed=5)
    single = segmenter.segment(frame)
    clip = segmenter.segment(np.stack([frame] * 5), batch_size=2)
    for index in range(5):
        np.testing.assert_allclose(clip.probability[index], single.probability[0], atol=1e-5)


def test_same_frame_in_any_dtype_gives_the_same_probability(segmenter):
    frame = gray_frame(seed=6)
    as_float = segmenter.segment(frame).probability
    as_uint16 = segmenter.segment((frame * 65535).round().astype(np.uint16)).probability
    np.testing.assert_allclose(as_float, as_uint16, atol=1e-3)


def test_test_time_flip_makes_prediction_mirror_symmetric(segmenter):
    frame = gray_frame(64, 64, seed=7)
    plain = segmenter.segment(frame).probability[0]
    flipped_input = segmenter.segment(frame[:, ::-1].copy()).probability[0][:, ::-1]
    averaged = segmenter.segment(frame, test_time_flip=True).probability[0]
    np.testing.assert_allclose(averaged, 0.5 * (plain + flipped_input), atol=1e-5)
    mirrored = segmenter.segment(frame[:, ::-1].copy(), test_time_flip=True).probability[0][:, ::-1]
    np.testing.assert_allclose(averaged, mirrored, atol=1e-5)


def test_postprocessing_override_and_progress(segmenter):
    calls = []
    result = segmenter.segment(
        np.random.default_rng(8).random((5, 40, 40)),
        postprocessing=PostprocessOptions(threshold=0.01, min_area_fraction=0, min_mean_probability=0, keep_largest=False,
                                          fill_holes=False, smoothing_sigma=0, min_lesion_probability=0,
                                          test_time_flip=False),
        batch_size=2,
        progress=lambda done, total: calls.append((done, total)),
    )
    np.testing.assert_array_equal(result.processed_mask, result.probability >= 0.01)
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_from_weights_uses_the_card(tmp_path):
    model = AttentionUNet(ModelConfig(base_channels=4, depth=2, dropout=0.0))
    with torch.no_grad():
        model.head.bias.fill_(20.0)  # everything is lesion
    path = tmp_path / "m.safetensors"
    save_model(model, path, input_size=(32, 48), postprocessing=UNTUNED_POSTPROCESSING.with_overrides(threshold=0.7))
    loaded = LesionSegmenter.from_weights(path, device="cpu")
    assert loaded.input_size == (32, 48) and loaded.postprocessing.threshold == 0.7
    assert loaded.card.sha256 and loaded.card.postprocess_options == loaded.postprocessing
    changed = LesionSegmenter.from_weights(path, device="cpu", threshold=0.3, keep_largest=None)
    assert changed.postprocessing == loaded.postprocessing.with_overrides(threshold=0.3)
    assert loaded.segment(gray_frame(50, 60)).processed_mask.all()


def test_input_size_must_suit_the_model():
    with pytest.raises(ValueError, match="multiple of 8"):
        LesionSegmenter(AttentionUNet(ModelConfig(base_channels=2, depth=3)), (60, 64), UNTUNED_POSTPROCESSING, device="cpu")


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="unknown device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA was requested"):
            select_device("cuda")


class _OutOfMemoryOnce(torch.nn.Module):
    """Wraps a model; the first forward on a non-CPU device raises CUDA out-of-memory."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config, self.failed = model, model.config, False

    def forward(self, x):
        if not self.failed:
            self.failed = True
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(x)


def test_out_of_memory_falls_back_to_cpu_with_warning(caplog, monkeypatch):
    monkeypatch.setattr("BreastUSSegmentLib.device.cpu_has_native_bf16", lambda: True)
    segmenter = LesionSegmenter(
        _OutOfMemoryOnce(AttentionUNet(ModelConfig(base_channels=2, depth=2))), (32, 32), UNTUNED_POSTPROCESSING, device="cpu"
    )
    segmenter.runner.device, segmenter.runner.precision = torch.device("meta"), "fp32"  # pretend a GPU is in use
    result = segmenter.segment(gray_frame(40, 40))
    assert segmenter.device.type == "cpu" and result.probability.shape == (1, 40, 40)
    assert segmenter.cpu_bf16  # on the CPU now: bf16 where the CPU has it
    assert "ran out of memory" in caplog.text


def test_a_non_finite_network_output_is_an_error_naming_the_model_file(tiny_weights):
    """NaN weights used to give a silent 'no lesion' with an all-NaN probability map."""
    segmenter = LesionSegmenter.from_weights(tiny_weights, device="cpu")
    segmenter.segment(gray_frame())  # finite weights: no error
    with torch.no_grad():
        segmenter.model.head.bias.fill_(float("nan"))
    with pytest.raises(WeightsError, match="NaN or infinite") as error:
        segmenter.segment(gray_frame())
    assert str(tiny_weights) in str(error.value)


def test_an_empty_result_says_what_post_processing_hid(brightness_segmenter):
    frame = np.zeros((64, 64), np.float32)
    frame[10:40, 10:40] = 0.55  # a lukewarm region: probability about 0.88
    frame[60, 60] = 1.0  # one pixel that sets the scale, dropped as too small
    options = brightness_segmenter.postprocessing.with_overrides(min_mean_probability=0.95)
    result = brightness_segmenter.segment(frame, postprocessing=options)
    assert not result.processed_mask.any()
    assert result.why_empty.hidden_confidence == pytest.approx(strongest_hidden_confidence(result.probability, options))
    assert 0.8 < result.why_empty.hidden_confidence < 0.95
    assert result.why_empty.rejected_lesion_probability is None
    shown = brightness_segmenter.segment(frame, postprocessing=options.with_overrides(min_mean_probability=0.8))
    assert shown.processed_mask.any() and shown.why_empty is None
