"""Turning any supported frame into the network's input, identically for training and inference.

Steps, in order: colour to luminance (ITU-R BT.601 weights, alpha dropped),
per-frame min-max scaling to [0, 1] in float32, then bilinear resizing
(antialiased when shrinking) to the model's input size.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class InvalidImageError(ValueError):
    """The array cannot be segmented (wrong shape, empty, non-finite values...)."""


def to_grayscale_frames(image: np.ndarray, color: bool | None = None) -> np.ndarray:
    """Return a float32 stack of grayscale frames of shape ``(F, H, W)``.

    Accepted shapes: ``(H, W)``, ``(H, W, C)`` with C in {3, 4} (colour),
    ``(F, H, W)`` (cine) and ``(F, H, W, C)``. For a 3-D array the last axis is
    read as colour when it has 3 or 4 entries, unless ``color`` says otherwise.
    """
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InvalidImageError(f"unsupported pixel type {array.dtype}")
    if array.size == 0:
        raise InvalidImageError(f"the image is empty (shape {array.shape})")

    if array.ndim == 3 and color is None:
        color = array.shape[-1] in (3, 4)
    if array.ndim == 2:
        frames = array[np.newaxis].astype(np.float32)
    elif array.ndim == 3 and not color:
        frames = array.astype(np.float32)
    elif array.ndim in (3, 4) and array.shape[-1] in (3, 4):
        rgb = array[..., :3].astype(np.float32)
        frames = rgb @ LUMA_WEIGHTS
        if frames.ndim == 2:
            frames = frames[np.newaxis]
    elif array.ndim == 4 and array.shape[-1] == 1:
        frames = array[..., 0].astype(np.float32)
    else:
        raise InvalidImageError(
            f"expected a 2-D frame, an RGB(A) frame or a stack of frames; got an array of shape {array.shape}"
        )
    if min(frames.shape[-2:]) < 2:
        raise InvalidImageError(f"a frame must be at least 2x2 pixels, got {frames.shape[-2:]}")
    # Only floating-point pixels can be NaN or infinite; skip the scan for integer ones.
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(frames).all():
        raise InvalidImageError("the image contains NaN or infinite values")
    return frames


def normalize_intensity(frames: np.ndarray) -> np.ndarray:
    """Scale each frame of ``(F, H, W)`` to [0, 1] by its own minimum and maximum.

    A constant frame (a blank frame in a clip) becomes all zeros.
    """
    frames = np.asarray(frames, dtype=np.float32)
    low = frames.min(axis=(-2, -1), keepdims=True)
    span = frames.max(axis=(-2, -1), keepdims=True) - low
    span[span == 0] = 1.0
    normalized = frames - low  # a new array, so dividing in place leaves the caller's frames alone
    normalized /= span
    return normalized


def resize_frames(frames: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a ``(N, C, H, W)`` tensor to ``size`` (antialiased when shrinking with bilinear)."""
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    if mode == "nearest":
        return F.interpolate(frames, size=size, mode="nearest")
    shrinking = frames.shape[-2] > size[0] or frames.shape[-1] > size[1]
    return F.interpolate(frames, size=size, mode=mode, align_corners=False, antialias=shrinking)


def to_network_input(frames: np.ndarray, input_size: tuple[int, int]) -> torch.Tensor:
    """Grey frames ``(F, H, W)`` (whole frames or crops) to the network's input ``(F, 1, h, w)``: each frame
    scaled to [0, 1] by its own minimum and maximum, then resized to ``input_size``."""
    return resize_frames(torch.from_numpy(normalize_intensity(frames)).unsqueeze(1), tuple(input_size))


def prepare_frames(
    image: np.ndarray, input_size: tuple[int, int], color: bool | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Full preprocessing: the network input ``(F, 1, h, w)`` and the frames' original ``(H, W)``."""
    frames = to_grayscale_frames(image, color=color)
    original_size = (int(frames.shape[-2]), int(frames.shape[-1]))
    return to_network_input(frames, input_size), original_size


def prepare_input(image: np.ndarray, input_size: tuple[int, int], color: bool | None = None) -> torch.Tensor:
    """Full preprocessing: any supported array to a float32 tensor ``(F, 1, h, w)`` for the network."""
    return prepare_frames(image, input_size, color)[0]
