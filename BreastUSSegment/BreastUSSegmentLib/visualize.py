"""Showing results: the range an attention map is displayed over (the Slicer module and the figures),
and the command line's figures of the lesion outline and attention heatmap over the frame (Pillow)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .preprocessing import normalize_intensity, to_grayscale_frames

# Anchor colours of a blue-cyan-yellow-red scale (low attention blue, high red), evenly spaced in [0, 1].
HEAT_ANCHORS = np.array(
    [[0, 0, 140], [0, 60, 255], [0, 220, 255], [255, 230, 0], [255, 80, 0], [200, 0, 0]], dtype=np.float32
)
OUTLINE_COLOR = np.array([0, 255, 0], dtype=np.uint8)
# Longest side, in pixels, of each half of a figure: larger frames are shown shrunk, which bounds the figure's memory.
FIGURE_MAX_SIDE = 1024
# Attention coefficients of a trained model sit in a narrow band; displays span these percentiles.
ATTENTION_DISPLAY_PERCENTILES = (2.0, 99.5)


def attention_display_range(attention: np.ndarray) -> tuple[float, float]:
    """``(low, high)`` values an attention map is best displayed between (its 2nd-99.5th percentiles)."""
    low, high = np.percentile(attention, ATTENTION_DISPLAY_PERCENTILES)
    return float(low), float(max(high, low + 1e-6))


def _heat_colours(values: np.ndarray) -> np.ndarray:
    """The blue-to-red scale at ``values`` in [0, 1], interpolated between its anchors (uint8 RGB)."""
    positions = np.clip(values, 0.0, 1.0) * (len(HEAT_ANCHORS) - 1)
    lower = np.floor(positions).astype(int).clip(0, len(HEAT_ANCHORS) - 2)
    fraction = (positions - lower)[..., np.newaxis]
    colours = HEAT_ANCHORS[lower] * (1 - fraction) + HEAT_ANCHORS[lower + 1] * fraction
    return colours.round().astype(np.uint8)


# The scale sampled at HEAT_STEPS + 1 evenly spaced values (anchors included: HEAT_STEPS is a multiple of the
# anchor count minus one); a frame's colours are looked up in it, at most one unit off the exact interpolation.
HEAT_STEPS = 1020
HEAT_TABLE = _heat_colours(np.linspace(0.0, 1.0, HEAT_STEPS + 1))


def heat_colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to uint8 RGB colours along the blue-to-red scale."""
    indices = (np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0) * HEAT_STEPS + 0.5).astype(np.intp)
    return HEAT_TABLE[indices]


def mask_outline(mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """Pixels on the inner border of ``mask``, ``thickness`` pixels wide."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, iterations=max(1, thickness), border_value=0)


def figure_size(shape: tuple[int, int]) -> tuple[int, int]:
    """``(rows, columns)`` a frame of ``shape`` is shown at: its own size, shrunk to :data:`FIGURE_MAX_SIDE` if larger."""
    rows, columns = int(shape[0]), int(shape[1])
    scale = min(1.0, FIGURE_MAX_SIDE / max(rows, columns))
    return max(1, round(rows * scale)), max(1, round(columns * scale))


def _shrink(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float frame resized to ``size`` (rows, columns), averaging the pixels it merges."""
    if values.shape == size:
        return values
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))  # mode "F"
    return np.asarray(image.resize((size[1], size[0]), Image.BILINEAR))


def overlay_figure(frame: np.ndarray, mask: np.ndarray, attention: np.ndarray, opacity: float = 0.5) -> Image.Image:
    """Side by side: the frame with the lesion outline (left) and with the attention heatmap (right).

    Each half is at most :data:`FIGURE_MAX_SIDE` pixels long.
    """
    gray = normalize_intensity(to_grayscale_frames(frame))[0]
    if mask.shape != gray.shape or attention.shape != gray.shape:
        raise ValueError(f"mask {mask.shape} and attention {attention.shape} must match the frame {gray.shape}")
    size = figure_size(gray.shape)
    gray = _shrink(gray, size)
    mask = _shrink(np.asarray(mask, dtype=np.float32), size) >= 0.5
    attention = _shrink(attention, size)
    gray8 = (np.clip(gray, 0.0, 1.0) * 255).round().astype(np.uint8)[..., np.newaxis]
    thickness = max(1, round(min(mask.shape) / 200))
    outlined = np.repeat(gray8, 3, axis=-1)
    outlined[mask_outline(mask, thickness)] = OUTLINE_COLOR
    low, high = attention_display_range(attention)
    stretched = np.clip((attention - low) / (high - low), 0.0, 1.0)
    weight = np.uint16(round(256 * opacity))  # blended in 1/256 steps, in integers (a figure, not a measurement)
    heat = ((gray8 * (256 - weight) + heat_colormap(stretched) * weight + 128) >> 8).astype(np.uint8)

    height, width = outlined.shape[:2]
    gap, caption = 8, 22
    canvas = Image.new("RGB", (2 * width + gap, height + caption), "black")
    canvas.paste(Image.fromarray(outlined), (0, caption))
    canvas.paste(Image.fromarray(heat), (width + gap, caption))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), "Lesion (processed mask)", fill=(0, 255, 0))
    draw.text((width + gap + 4, 4), "Attention (mean of gates; blue low, red high)", fill=(255, 200, 0))
    return canvas
