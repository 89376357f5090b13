"""Showing results: the range an attention map is displayed over in the Slicer module, and the command
line's figures of the lesion outline and attention heatmap over the frame (Pillow)."""

from __future__ import annotations

from functools import lru_cache

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
# Attention coefficients of a trained model sit in a narrow band; the Slicer display spans these percentiles.
ATTENTION_DISPLAY_PERCENTILES = (2.0, 99.5)
# The figures' heatmaps span this fixed range, so figures compare and a normal frame is not stretched into colour.
FIGURE_ATTENTION_RANGE = (0.0, 1.0)
BOX_COLOR = (255, 0, 255)
FIGURE_GAP, FIGURE_CAPTION, FIGURE_FOOTER = 8, 22, 40  # pixels between the halves, above them, below them


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
# The table's colours packed one per 32-bit word (RGB and a spare byte): one lookup per pixel, several times
# faster than looking up rows of three bytes.
_HEAT_WORDS = np.concatenate([HEAT_TABLE, np.zeros((HEAT_STEPS + 1, 1), np.uint8)], axis=1).view(np.uint32)[:, 0]


def heat_colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to uint8 RGB colours along the blue-to-red scale."""
    return _heat_colours_and_spare(values)[..., :3]


def _heat_colours_and_spare(values: np.ndarray) -> np.ndarray:
    """:func:`heat_colormap`'s colours with the table's spare byte: ``(..., 4)`` uint8, contiguous."""
    indices = (np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0) * HEAT_STEPS + 0.5).astype(np.intp)
    return np.atleast_1d(_HEAT_WORDS.take(indices)).view(np.uint8).reshape(*indices.shape, 4)


def mask_outline(mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """Pixels on the inner border of ``mask``, ``thickness`` pixels wide (eroded only around the mask: outside
    its bounding box there is nothing to erode)."""
    mask = np.asarray(mask, dtype=bool)
    outline = np.zeros_like(mask)
    for box in ndimage.find_objects(mask.view(np.uint8)):  # the box around the mask's pixels, if any
        inside = mask[box]
        outline[box] = inside & ~ndimage.binary_erosion(inside, iterations=max(1, thickness), border_value=0)
    return outline


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


def overlay_figure(
    frame: np.ndarray, mask: np.ndarray, attention: np.ndarray, opacity: float = 0.5, *, result_text: str = "",
    boxes=(), frame_text: str = "",
) -> Image.Image:
    """Side by side: the frame with the lesion outline (left) and with the attention heatmap (right).

    The heatmap's colours span the fixed range :data:`FIGURE_ATTENTION_RANGE` (0 to 1, the same on every
    figure), shown by the colour bar below it; below the outline goes ``result_text`` (the result in
    words) and ``frame_text`` (which frame of a clip this is). ``boxes`` are ``(number, (x0, y0, x1, y1))``
    box prompts (pixels of the frame), drawn on both halves. Each half is at most
    :data:`FIGURE_MAX_SIDE` pixels long.
    """
    gray = normalize_intensity(to_grayscale_frames(frame))[0]
    if mask.shape != gray.shape or attention.shape != gray.shape:
        raise ValueError(f"mask {mask.shape} and attention {attention.shape} must match the frame {gray.shape}")
    size = figure_size(gray.shape)
    scale = (size[0] / gray.shape[0], size[1] / gray.shape[1])
    gray = _shrink(gray, size)
    mask = _shrink(np.asarray(mask, dtype=np.float32), size) >= 0.5
    attention = _shrink(attention, size)
    grey = Image.fromarray((np.clip(gray, 0.0, 1.0) * 255).round().astype(np.uint8)).convert("RGB")
    thickness = max(1, round(min(mask.shape) / 200))
    outlined = grey.copy()
    outlined.paste(tuple(int(value) for value in OUTLINE_COLOR), mask=Image.fromarray(mask_outline(mask, thickness)))
    low, high = FIGURE_ATTENTION_RANGE
    colours = Image.fromarray(_heat_colours_and_spare((attention - low) / (high - low))).convert("RGB")
    heat = Image.blend(grey, colours, opacity)

    width, height = outlined.size
    canvas = _blank_figure(width, height).copy()
    canvas.paste(outlined, (0, FIGURE_CAPTION))
    canvas.paste(heat, (width + FIGURE_GAP, FIGURE_CAPTION))
    draw = ImageDraw.Draw(canvas)
    for number, (x0, y0, x1, y1) in boxes:
        for left in (0, width + FIGURE_GAP):
            corners = (left + x0 * scale[1], FIGURE_CAPTION + y0 * scale[0],
                       left + x1 * scale[1] - 1, FIGURE_CAPTION + y1 * scale[0] - 1)
            draw.rectangle(corners, outline=BOX_COLOR, width=thickness)
            draw.text((corners[0] + 3, corners[1] + 2), f"box {number}", fill=BOX_COLOR)
    footer = height + FIGURE_CAPTION
    draw.text((4, footer + 4), result_text, fill=(255, 255, 255))
    if frame_text:
        draw.text((4, footer + 20), frame_text, fill=(200, 200, 200))
    return canvas


@lru_cache(maxsize=4)
def _blank_figure(width: int, height: int) -> Image.Image:
    """What every figure with halves of ``width`` x ``height`` pixels shares, drawn once per size: the black
    canvas, the two captions and the colour bar (copy it before drawing on it)."""
    canvas = Image.new("RGB", (2 * width + FIGURE_GAP, height + FIGURE_CAPTION + FIGURE_FOOTER), "black")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), "Lesion (processed mask)", fill=(0, 255, 0))
    draw.text((width + FIGURE_GAP + 4, 4), "Attention (mean of gates)", fill=(255, 200, 0))
    _colour_bar(canvas, draw, (width + FIGURE_GAP, height + FIGURE_CAPTION), width)
    return canvas


def _colour_bar(canvas: Image.Image, draw: ImageDraw.ImageDraw, corner: tuple, width: int) -> None:
    """The heatmap's colour scale from 0 to 1 under the attention half, 11 pixels tall, labelled at both ends."""
    left, top = corner[0] + 24, corner[1] + 6
    length = max(2, width - 48)
    strip = np.repeat(heat_colormap(np.linspace(0.0, 1.0, length))[np.newaxis], 11, axis=0)
    canvas.paste(Image.fromarray(strip), (left, top))
    low, high = FIGURE_ATTENTION_RANGE
    draw.text((corner[0] + 4, top), f"{low:g}", fill=(255, 255, 255))
    draw.text((left + length + 4, top), f"{high:g}", fill=(255, 255, 255))
    draw.text((left, top + 14), "attention (fixed scale)", fill=(200, 200, 200))
