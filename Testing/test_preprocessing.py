"""Preprocessing: every dtype and colour layout becomes the same normalised network input."""

import numpy as np
import pytest
import torch

from BreastUSSegmentLib.preprocessing import (
    InvalidImageError,
    normalize_intensity,
    prepare_input,
    resize_frames,
    to_grayscale_frames,
)


def ramp(height=20, width=30):
    return np.linspace(0, 1, height * width, dtype=np.float64).reshape(height, width)


@pytest.mark.parametrize("dtype,scale", [(np.uint8, 255), (np.uint16, 65535), (np.int16, 3000), (np.float32, 1.0), (np.float64, 7.5)])
def test_every_dtype_normalises_to_the_same_frame(dtype, scale):
    frame = (ramp() * scale).astype(dtype)
    normalised = normalize_intensity(to_grayscale_frames(frame))
    assert normalised.dtype == np.float32 and normalised.shape == (1, 20, 30)
    assert normalised.min() == 0.0 and normalised.max() == 1.0
    np.testing.assert_allclose(normalised[0], ramp(), atol=1.0 / 255 + 1e-6)


def test_rgb_and_rgba_use_bt601_luma_and_drop_alpha():
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 50, 200
    expected = 0.299 * 100 + 0.587 * 50 + 0.114 * 200
    assert to_grayscale_frames(rgb)[0, 0, 0] == pytest.approx(expected, rel=1e-5)
    rgba = np.concatenate([rgb, np.full((4, 5, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_allclose(to_grayscale_frames(rgba), to_grayscale_frames(rgb))


def test_equal_channel_rgb_matches_grayscale():
    gray = (ramp() * 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_allclose(normalize_intensity(to_grayscale_frames(rgb)), normalize_intensity(to_grayscale_frames(gray)), atol=1e-5)


def test_stacks_of_frames_and_explicit_colour_flag():
    stack = np.random.default_rng(0).random((3, 10, 12))
    assert to_grayscale_frames(stack).shape == (3, 10, 12)
    # Three gray frames of width 3 would look like RGB; the flag decides.
    three_wide = np.random.default_rng(1).random((5, 8, 3))
    assert to_grayscale_frames(three_wide, color=False).shape == (5, 8, 3)
    assert to_grayscale_frames(three_wide).shape == (1, 5, 8)
    rgb_clip = np.random.default_rng(2).integers(0, 255, (4, 10, 12, 3), dtype=np.uint8)
    assert to_grayscale_frames(rgb_clip).shape == (4, 10, 12)


def test_each_frame_is_normalised_on_its_own_and_blank_frames_become_zero():
    stack = np.stack([ramp() * 10, ramp() * 1000, np.full((20, 30), 42.0)])
    normalised = normalize_intensity(stack)
    np.testing.assert_allclose(normalised[0], normalised[1], atol=1e-6)
    assert not normalised[2].any()


@pytest.mark.parametrize(
    "bad,message",
    [
        (np.zeros((0, 5)), "empty"),
        (np.zeros((5,)), "shape"),
        (np.zeros((2, 3, 4, 5, 6)), "shape"),
        (np.zeros((2, 6, 6, 5)), "shape"),
        (np.array([[1.0, np.nan], [0, 0]]), "NaN"),
        (np.array([[1.0, np.inf], [0, 0]]), "NaN or infinite"),
        (np.array([["a", "b"], ["c", "d"]]), "pixel type"),
        (np.zeros((1, 9)), "at least 2x2"),
    ],
)
def test_bad_arrays_raise_clear_errors(bad, message):
    with pytest.raises(InvalidImageError, match=message):
        to_grayscale_frames(bad)


def test_prepare_input_shape_and_range():
    tensor = prepare_input((ramp(300, 500) * 65535).astype(np.uint16), (256, 256))
    assert tensor.shape == (1, 1, 256, 256) and tensor.dtype == torch.float32
    assert 0.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0
    # A horizontal ramp stays a horizontal ramp after resizing.
    assert float(tensor[0, 0, 128, 10]) < float(tensor[0, 0, 128, 245])


def test_resize_is_identity_at_target_size_and_nearest_keeps_labels():
    frames = torch.rand(2, 1, 16, 16)
    assert resize_frames(frames, (16, 16)) is frames
    labels = (torch.rand(1, 1, 40, 40) > 0.5).float()
    assert set(resize_frames(labels, (17, 23), mode="nearest").unique().tolist()) <= {0.0, 1.0}
