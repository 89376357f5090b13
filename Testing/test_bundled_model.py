"""The model shipped in the module's resources: verified checksum, sane card, real segmentation of a sample."""

import json

import numpy as np
import pytest
from PIL import Image
from slicer_module import SAMPLES_DIR

from BreastUSSegmentLib import BUNDLED_WEIGHTS
from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.metrics import dice_score
from BreastUSSegmentLib.modelcard import card_path_for, read_model_card
from BreastUSSegmentLib.weights import sha256_of_file

MAX_WEIGHTS_BYTES = 40 * 1024 * 1024


@pytest.fixture(scope="module")
def segmenter():
    return LesionSegmenter.from_weights(BUNDLED_WEIGHTS, device="cpu")


def test_bundled_weights_match_their_card_and_size_budget():
    card = read_model_card(BUNDLED_WEIGHTS)
    assert sha256_of_file(BUNDLED_WEIGHTS) == card.sha256
    assert BUNDLED_WEIGHTS.stat().st_size <= MAX_WEIGHTS_BYTES
    raw = json.loads(card_path_for(BUNDLED_WEIGHTS).read_text())
    assert raw["training"]["dataset"] == "BUSI + BrEaST" and raw["training"]["split_sha256"]
    assert {item["name"] for item in raw["training"]["datasets"]} == {"BUSI", "BrEaST"}
    assert "CC BY 4.0" in next(item["licence"] for item in raw["training"]["datasets"] if item["name"] == "BrEaST")
    assert raw["metrics"]["subset"] == "test"  # evaluation numbers of the committed test split
    assert set(raw["metrics"]["per_dataset"]) == {"BUSI", "BrEaST"}
    assert card.model_config.upsample == "bilinear"


# The lattice measure of busi_v10 (transposed-convolution up-sampling) on these frames was 0.074 and 0.123.
BUSI_V10_LATTICE = {"benign": 0.074, "malignant": 0.123}


@pytest.mark.parametrize("name", [
    pytest.param("benign", marks=pytest.mark.xfail(strict=True, reason=(
        "model v2 measures 0.025 here, above the 2% target: no lattice is left (see the case grids), but the "
        "finest gates follow tissue edges; README 'Accuracy' lists this as a missed target"))),
    "malignant",
])
def test_bundled_model_attention_has_no_lattice(name):
    """The combined attention map on the 256x256 network grid passes the lattice measure (see metrics)."""
    from BreastUSSegmentLib.metrics import LATTICE_MAX_FRACTION

    fraction = lattice_measure(BUNDLED_WEIGHTS, name)
    print(f"breastus_sample_{name}: lattice measure {fraction:.4f}")
    assert fraction < BUSI_V10_LATTICE[name] / 2  # at least halved against the lattice of busi_v10
    assert fraction <= LATTICE_MAX_FRACTION


def lattice_measure(weights, name: str) -> float:
    """The lattice measure (``metrics.high_frequency_fraction``) of the mean of the attention gates, each
    resized to the network grid, of ``weights`` on the bundled sample frame ``name``."""
    import torch

    from BreastUSSegmentLib.metrics import high_frequency_fraction
    from BreastUSSegmentLib.preprocessing import prepare_input, resize_frames
    from BreastUSSegmentLib.weights import load_model

    model, card = load_model(weights)
    size = tuple(card.input_size)
    image = np.array(Image.open(SAMPLES_DIR / f"breastus_sample_{name}.png"))
    with torch.no_grad():
        attention = model(prepare_input(image, size)).attention
    combined = torch.stack([resize_frames(level, size) for level in attention]).mean(0)[0, 0].numpy()
    return high_frequency_fraction(combined)


@pytest.mark.parametrize("name", ["benign"])
def test_bundled_model_segments_a_sample_frame(segmenter, name):
    image = np.array(Image.open(SAMPLES_DIR / f"breastus_sample_{name}.png"))
    truth = np.array(Image.open(SAMPLES_DIR / f"breastus_sample_{name}_mask.png")) > 0
    result = segmenter.segment(image)
    assert dice_score(result.processed_mask[0], truth) > 0.7


@pytest.mark.parametrize("name", ["benign", "malignant"])
def test_core_pipeline_clears_the_slicer_self_test_bars(segmenter, name):
    """The module's self-test bars (MINIMUM_SAMPLE_DICE) hold for the core pipeline on the bundled samples."""
    from slicer_module import load_module

    bars = load_module().BreastUSSegmentTest.MINIMUM_SAMPLE_DICE
    image = np.array(Image.open(SAMPLES_DIR / f"breastus_sample_{name}.png"))
    truth = np.array(Image.open(SAMPLES_DIR / f"breastus_sample_{name}_mask.png")) > 0
    dice = dice_score(segmenter.segment(image).processed_mask[0], truth)
    print(f"breastus_sample_{name}: processed-mask Dice {dice:.3f}")
    assert dice >= bars[f"breastus_sample_{name}"]


if __name__ == "__main__":  # python Testing/test_bundled_model.py [WEIGHTS ...]: the lattice measure of other models
    import sys

    for path in sys.argv[1:] or [BUNDLED_WEIGHTS]:
        print(path, ", ".join(f"{name} {lattice_measure(path, name):.4f}" for name in BUSI_V10_LATTICE))
