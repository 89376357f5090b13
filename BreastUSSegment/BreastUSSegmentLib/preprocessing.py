"""Turning any supported frame into the network's input, identically for training and inference.

Steps, in order: colour to luminance (ITU-R BT.601 weights, alpha dropped),
per-frame min-max scaling to [0, 1] in float32, then bilinear resizing
(antialiased when shrinking) to the model's input size.

Everything here is numpy, so inference runs without PyTorch (an ONNX Runtime or
OpenVINO backend); ``resize_frames`` computes what PyTorch's
``F.interpolate(..., align_corners=False, antialias=shrinking)`` does, and also
takes and returns tensors for the training code.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import sparse

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


def resize_frames(frames, size: tuple[int, int], mode: str = "bilinear"):
    """Resize ``(..., H, W)`` frames (numpy, or a CPU torch tensor) to ``size``; same type out, float32.

    Bilinear with half-pixel centres, antialiased (a triangle filter widened by the
    scale) along an axis that shrinks; ``nearest`` picks ``floor(i * H / h)``.
    """
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    if not isinstance(frames, np.ndarray):  # a torch tensor (training code); imported only then
        import torch

        return torch.from_numpy(resize_frames(frames.detach().float().cpu().numpy(), size, mode))
    frames = np.asarray(frames, dtype=np.float32)
    if mode == "nearest":
        rows, columns = (_nearest_indices(frames.shape[axis], out) for axis, out in zip((-2, -1), size))
        return np.ascontiguousarray(frames[..., rows[:, None], columns[None, :]])
    if mode != "bilinear":
        raise ValueError(f"unknown resize mode {mode!r}; choose bilinear or nearest")
    stack = frames.reshape(-1, *frames.shape[-2:])
    return resized_sum([stack], size).reshape(*frames.shape[:-2], int(size[0]), int(size[1]))


def resized_sum(levels: list, size: tuple[int, int]) -> np.ndarray:
    """The sum of float32 stacks ``(n, h_i, w_i)``, each first resized to ``size`` as :func:`resize_frames`
    does (bilinear, antialiased along an axis that shrinks): ``(n, H, W)`` float32.

    Resizing is linear, ``R_i(a) = rows_i @ a @ columns_i.T``, so the sum over the stacks takes one product
    per stack and one for all: each stack resized along its columns, the results stacked row-wise, times the
    stacks' row weights side by side. Summing the attention gates this way costs about what one resize does.
    One stack whose rows shrink is resized rows first, so that the large frame is never transposed.
    """
    rows_out, columns_out = int(size[0]), int(size[1])
    levels = [np.asarray(level, dtype=np.float32) for level in levels]
    out = np.empty((levels[0].shape[0], rows_out, columns_out), dtype=np.float32)
    if len(levels) == 1 and levels[0].shape[-2] > rows_out:
        rows = _bilinear_weights(levels[0].shape[-2], rows_out)
        columns = _bilinear_weights(levels[0].shape[-1], columns_out).T  # CSC: fast on the right of a dense array
        for index, frame in enumerate(levels[0]):  # frame by frame: a long clip is never copied whole
            out[index] = (rows @ frame) @ columns
        return out
    rows = _stacked_weights(tuple(int(level.shape[-2]) for level in levels), rows_out)
    columns = [_bilinear_weights(level.shape[-1], columns_out) for level in levels]
    along_columns = np.empty((rows.shape[1], columns_out), dtype=np.float32)  # C order, as the product wants it
    for index in range(out.shape[0]):
        start = 0
        for weights, level in zip(columns, levels):
            along_columns[start:start + level.shape[-2]] = (weights @ level[index].T).T
            start += level.shape[-2]
        out[index] = rows @ along_columns
    return out


@lru_cache(maxsize=64)
def _stacked_weights(heights: tuple, target: int) -> sparse.csr_matrix:
    """The row weights of stacks of ``heights`` rows side by side: ``(target, sum(heights))``."""
    return sparse.hstack([_bilinear_weights(height, target) for height in heights], format="csr")


def _nearest_indices(source: int, target: int) -> np.ndarray:
    scale = np.float32(source / target)
    return np.minimum(np.floor(np.arange(target, dtype=np.float32) * scale).astype(np.int64), source - 1)


@lru_cache(maxsize=64)
def _bilinear_weights(source: int, target: int) -> sparse.csr_matrix:
    """The sparse ``(target, source)`` matrix of one axis: row i holds output pixel i's weights over the input pixels.

    Output pixel i is centred at ``scale * (i + 0.5)`` in input pixels; a triangle of half-width
    ``max(scale, 1)`` (wider than one pixel when shrinking: antialiasing) weighs the input pixel centres, and the
    weights inside the frame are normalised to sum to 1 (so edges repeat the border pixel).
    """
    scale = source / target
    support = max(scale, 1.0)
    centres = scale * (np.arange(target) + 0.5)
    distance = np.abs(np.arange(source)[None, :] + 0.5 - centres[:, None]) / support
    weights = np.clip(1.0 - distance, 0.0, None)
    return sparse.csr_matrix((weights / weights.sum(axis=1, keepdims=True)).astype(np.float32))


def to_network_input(frames: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Grey frames ``(F, H, W)`` (whole frames or crops) to the network's float32 input ``(F, 1, h, w)``: each
    frame scaled to [0, 1] by its own minimum and maximum, then resized to ``input_size``."""
    return resize_frames(normalize_intensity(frames)[:, np.newaxis], tuple(input_size))


def prepare_frames(
    image: np.ndarray, input_size: tuple[int, int], color: bool | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Full preprocessing: the float32 network input ``(F, 1, h, w)`` (numpy) and the frames' original ``(H, W)``."""
    frames = to_grayscale_frames(image, color=color)
    original_size = (int(frames.shape[-2]), int(frames.shape[-1]))
    return to_network_input(frames, input_size), original_size


def prepare_input(image: np.ndarray, input_size: tuple[int, int], color: bool | None = None):
    """Full preprocessing as a torch tensor ``(F, 1, h, w)``, for training code (imports PyTorch)."""
    import torch

    return torch.from_numpy(prepare_frames(image, input_size, color)[0])
