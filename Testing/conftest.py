"""Fixtures shared by the test files: tiny untrained models, fast enough for every test to build."""

import pytest
import torch

from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.model import AttentionUNet, ModelConfig
from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.weights import save_model


@pytest.fixture(scope="session", autouse=True)
def float32_inference():
    """Segmenters compute in float32 in every test, whatever the CPU, so expected values do not depend on the
    machine; the tests of bf16 inference (test_inference.py) switch it on themselves."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("BreastUSSegmentLib.device.cpu_has_native_bf16", lambda: False)  # torch
        patch.setattr("BreastUSSegmentLib.runtime.cpu_has_native_bf16", lambda: False)  # openvino
        yield


def brightness_model() -> AttentionUNet:
    """A hand-set network (depth 1, no batch norm) that calls every pixel brighter than mid grey a lesion.

    After the per-frame min-max scaling, probability is about 1 where the input is
    above 0.5 and about 0 below; a constant frame scales to 0, so it has no lesion.
    """
    model = AttentionUNet(ModelConfig(base_channels=2, depth=1, dropout=0.0, batch_norm=False))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        # Identity path: first conv copies the input; the head turns (x - 0.5) into a steep logit.
        model.encoders[0][0].weight[0, 0, 1, 1] = 1.0
        model.encoders[0][2].weight[0, 0, 1, 1] = 1.0
        conv = model.decoders[0].conv
        conv[0].weight[0, 0, 1, 1] = 1.0  # gated skip channel 0
        conv[2].weight[0, 0, 1, 1] = 1.0
        model.decoders[0].gate.psi.bias.fill_(20.0)  # gate open
        model.head.weight[0, 0] = 40.0
        model.head.bias.fill_(-20.0)
    return model


@pytest.fixture(scope="session")
def brightness_segmenter():
    """:func:`brightness_model` at input size 64x64 on the CPU, without smoothing (masks follow the pixels)."""
    options = UNTUNED_POSTPROCESSING.with_overrides(smoothing_sigma=0.0)
    return LesionSegmenter(brightness_model(), (64, 64), options, device="cpu")


@pytest.fixture(scope="session")
def tiny_segmenter():
    """An untrained network (4 channels, depth 2, seed 0) at input size 32x32 on the CPU."""
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(base_channels=4, depth=2))
    return LesionSegmenter(model, (32, 32), UNTUNED_POSTPROCESSING, device="cpu")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """An untrained network (4 channels, depth 2, no dropout, seed 0) saved with its model card, input size 64x64."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_model") / "tiny.safetensors"
    model = AttentionUNet(ModelConfig(base_channels=4, depth=2, dropout=0.0))
    save_model(model, path, input_size=(64, 64), postprocessing=UNTUNED_POSTPROCESSING)
    return path
