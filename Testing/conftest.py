"""Fixtures shared by the test files: tiny untrained models, fast enough for every test to build."""

import pytest
import torch

from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.model import AttentionUNet, ModelConfig
from BreastUSSegmentLib.postprocessing import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.weights import save_model


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
