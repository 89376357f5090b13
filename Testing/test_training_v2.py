"""Training v2 pieces: scanner-look augmentation, precision choice, up-sampling choice and the lattice measure."""

import numpy as np
import pytest
import torch

from BreastUSSegmentLib.metrics import LATTICE_MAX_FRACTION, high_frequency_fraction
from BreastUSSegmentLib.model import AttentionUNet, ModelConfig
from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.weights import save_model
from breastus_training import cli
from breastus_training.augment import get_augmentation
from breastus_training.precision import cpu_has_native_bf16, resolve_precision
from breastus_training.scanner_augment import (
    SCANNER_RANGES, TRANSFORMS, apply_sector, crop_pair, crop_window, scanner_look,
)


def block_frame(size=(96, 128), box=(30, 50, 40, 80)):
    """A dark frame with one bright rectangle (rows y0:y1, columns x0:x1) that is also the mask."""
    image = torch.full((1, *size), 0.2)
    y0, y1, x0, x1 = box
    image[:, y0:y1, x0:x1] = 0.9
    return image, (image > 0.5).float()


@pytest.mark.parametrize("seed", range(12))
def test_crop_keeps_the_lesion_inside_and_fills_the_frame_within_range(seed):
    image, mask = block_frame()
    generator = torch.Generator().manual_seed(seed)
    window = crop_window(mask, generator)
    assert window is not None
    out_image, out_mask = crop_pair(image, mask, window, (64, 64))
    fill = float(out_mask.mean())
    low, high = SCANNER_RANGES.lesion_fill
    assert low * 0.8 <= fill <= high * 1.25  # pixel rounding at the window's edges
    bright = out_image[0] > 0.55
    assert float((bright == (out_mask[0] > 0)).float().mean()) > 0.97  # the mask follows the image


def test_crop_of_a_large_lesion_is_skipped_and_normal_frames_get_random_crops():
    image, mask = block_frame(box=(5, 90, 5, 120))  # fills ~80% of the frame, more than the range allows
    assert crop_window(mask, torch.Generator().manual_seed(0)) is None
    empty = torch.zeros_like(mask)
    x0, y0, width, height = crop_window(empty, torch.Generator().manual_seed(0))
    assert 0 <= x0 <= 1 - width and 0 <= y0 <= 1 - height
    assert SCANNER_RANGES.normal_crop_area[0] * 0.7 < width * height <= 1.0


@pytest.mark.parametrize("name", ["depth_gain", "blur", "speckle", "marks"])
def test_appearance_transforms_change_the_image_but_never_the_mask(name):
    image, mask = block_frame()
    changed = 0
    for seed in range(10):
        out_image, out_mask = scanner_look(image, mask, torch.Generator().manual_seed(seed), frozenset({name}))
        assert torch.equal(out_mask, mask)
        assert out_image.shape == image.shape and 0 <= float(out_image.min()) and float(out_image.max()) <= 1
        changed += not torch.allclose(out_image, image)
    assert changed >= 1  # each transform fires with its probability


def test_sector_blacks_out_the_corners_and_the_mask_keeps_only_what_stays_visible():
    image, mask = block_frame(box=(0, 30, 0, 30))  # a lesion in the upper left corner
    out_image, out_mask = apply_sector(image, mask, torch.Generator().manual_seed(3))
    assert float(out_image[0, 0, 0]) == 0.0 and float(out_image[0, 0, -1]) == 0.0  # the fan is narrowest on top
    assert float(out_image[0, 48, 64]) > 0  # the centre stays
    assert float(out_mask.sum()) < float(mask.sum())
    assert torch.all(out_mask[0][out_image[0] == 0] == 0)


def test_scanner_augmentation_is_switchable_by_name_and_aligned_end_to_end():
    with pytest.raises(ValueError, match="unknown augmentation transform"):
        get_augmentation("scanner", ["glare"])
    assert get_augmentation("scanner", ["marks"]).scanner == frozenset(TRANSFORMS) - {"marks"}
    assert get_augmentation("strong").scanner == frozenset()
    augment = get_augmentation("scanner", ["marks", "sector"])
    image, mask = block_frame(size=(64, 64), box=(20, 40, 20, 44))
    source = block_frame(size=(128, 128), box=(40, 80, 40, 88))
    for seed in range(20):
        out_image, out_mask = augment(image, mask, torch.Generator().manual_seed(seed), source=source)
        assert out_image.shape == (1, 64, 64) and set(out_mask.unique().tolist()) <= {0.0, 1.0}
        if out_mask.sum() > 20:
            inside, outside = out_image[0][out_mask[0] > 0].mean(), out_image[0][out_mask[0] == 0].mean()
            assert inside > outside  # the bright block is still where the mask says


def test_precision_auto_follows_the_cpu_and_fp16_needs_cuda():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        resolve_precision("fp16", cpu)


def test_lattice_measure_flags_a_checkerboard_and_passes_a_smooth_map():
    rows, columns = np.mgrid[:256, :256]
    smooth = np.exp(-((rows - 120) ** 2 + (columns - 140) ** 2) / (2 * 30.0 ** 2))
    assert high_frequency_fraction(smooth) < 0.001
    lattice = smooth + 0.2 * ((rows // 2 + columns // 2) % 2)  # the 2x2 imprint of a stride-2 transposed conv
    assert high_frequency_fraction(lattice) > 3 * LATTICE_MAX_FRACTION
    assert high_frequency_fraction(np.zeros((8, 8))) == 0.0


def test_init_weights_from_a_transposed_convolution_model_fails_with_one_clear_line(tmp_path, capsys):
    from busi_synthetic import write_synthetic_busi

    busi = write_synthetic_busi(tmp_path / "BUSI")
    split = tmp_path / "split.json"
    assert cli.main(["prepare", "--data", str(busi.root), "--output", str(split)]) == 0
    old = tmp_path / "old.safetensors"
    save_model(AttentionUNet(ModelConfig(base_channels=4, depth=2, upsample="transposed")), old, input_size=(64, 64),
               postprocessing=UNTUNED_POSTPROCESSING)
    capsys.readouterr()
    code = cli.main(["train", "--data", str(busi.root), "--split", str(split), "--run-dir", str(tmp_path / "run"),
                     "--epochs", "1", "--base-channels", "4", "--depth", "2", "--input-size", "64",
                     "--init-weights", str(old), "--no-progress"])
    error = capsys.readouterr().err
    assert code == 2 and "--upsample transposed" in error and "upsample='transposed'" in error
    assert "size mismatch" not in error and "Missing key" not in error
