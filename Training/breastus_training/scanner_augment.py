"""Augmentations that make a frame look as if another scanner had made it.

BUSI comes from one hospital and one machine. Frames from other scanners
differ in ways a flip or a gamma curve does not cover; each transform below
imitates one of them on a preprocessed ``(1, H, W)`` image in [0, 1]:

================  =======================================================  ============  ===========
transform         what it imitates                                          range         probability
================  =======================================================  ============  ===========
``crop``          zoomed acquisitions, and a frame cropped around a lesion  lesion fills  0.5
                  (the box-prompt case)                                     2%-60% of
                                                                            the frame
``depth_gain``    overall gain and time-gain-compensation (brightness      gain 0.7-1.3, 0.5
                  that changes with depth)                                  4 TGC knots
                                                                            0.6-1.5
``blur``          a softer beam, or a lower-resolution scanner/export      Gaussian       0.3
                  (down- then up-sampling)                                  sigma 0.5-1.5
                                                                            px, or 1.5-3x
                                                                            down-sampling
``speckle``       speckle of another grain size                             grain 1-4 px,  0.3
                                                                            sigma 0.05-0.25
``sector``        the dark outline of a convex probe around the image       fan 100-150%   0.2
                                                                            of the width
                                                                            at the bottom
``marks``         on-screen marks: caliper crosses, dotted lines, text     1-4 marks,     0.3
                                                                            brightness
                                                                            0.75-1
================  =======================================================  ============  ===========

Only ``crop`` and ``sector`` change the mask (a crop moves it; the region a
probe outline blacks out holds no visible lesion). The ranges live in
:data:`SCANNER_RANGES`; every transform can be switched off by name
(``breastus-train train --augment scanner --augment-off marks,sector``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch.nn import functional as F

TRANSFORMS = ("crop", "depth_gain", "blur", "speckle", "sector", "marks")


@dataclass(frozen=True)
class ScannerRanges:
    """How far, and how often, each scanner transform goes (see the module docstring's table)."""

    crop_probability: float = 0.5
    lesion_fill: Tuple[float, float] = (0.02, 0.6)  # lesion area / frame area after the crop
    normal_crop_area: Tuple[float, float] = (0.3, 1.0)  # crop area / frame area on a lesion-free frame
    crop_aspect: Tuple[float, float] = (0.75, 1.33)
    depth_gain_probability: float = 0.5
    overall_gain: Tuple[float, float] = (0.7, 1.3)
    tgc_knot_gain: Tuple[float, float] = (0.6, 1.5)
    tgc_knots: int = 4
    blur_probability: float = 0.3
    blur_sigma: Tuple[float, float] = (0.5, 1.5)  # pixels
    downsample_factor: Tuple[float, float] = (1.5, 3.0)
    speckle_probability: float = 0.3
    speckle_grain: Tuple[float, float] = (1.0, 4.0)  # pixels
    speckle_sigma: Tuple[float, float] = (0.05, 0.25)
    sector_probability: float = 0.2
    sector_bottom_half_width: Tuple[float, float] = (1.0, 1.5)  # the fan's half-width at the bottom / half the width
    sector_apex_height: Tuple[float, float] = (0.3, 1.5)  # apex above the top edge, in frame heights
    marks_probability: float = 0.3
    marks_count: Tuple[int, int] = (1, 4)
    marks_brightness: Tuple[float, float] = (0.75, 1.0)


SCANNER_RANGES = ScannerRanges()


def uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def log_uniform(generator: torch.Generator, low: float, high: float) -> float:
    return math.exp(uniform(generator, math.log(low), math.log(high)))


def chance(generator: torch.Generator, probability: float) -> bool:
    return float(torch.rand((), generator=generator)) < probability


# ------------------------------------------------------------------ crop


def crop_window(mask: torch.Tensor, generator: torch.Generator,
                ranges: ScannerRanges = SCANNER_RANGES) -> Optional[Tuple[float, float, float, float]]:
    """A crop ``(x0, y0, width, height)`` in fractions of the frame, or None to leave the frame as it is.

    With a lesion, the crop's area is chosen so that the lesion fills a log-uniform share of it within
    ``ranges.lesion_fill`` (a crop only zooms in: a lesion already filling more than the top of the range
    is left alone), and it is placed so that it holds the lesion's bounding box where that fits.
    """
    fill = float(mask.mean())
    aspect = log_uniform(generator, *ranges.crop_aspect)
    if fill > 0:
        low, high = max(ranges.lesion_fill[0], fill), ranges.lesion_fill[1]
        if low >= high:
            return None
        area = fill / log_uniform(generator, low, high)
    else:
        area = uniform(generator, *ranges.normal_crop_area)
    width, height = min(math.sqrt(area * aspect), 1.0), min(math.sqrt(area / aspect), 1.0)
    rows, columns = torch.nonzero(mask[0] >= 0.5, as_tuple=True)
    frame_height, frame_width = mask.shape[-2:]
    if len(rows):
        box_x = (float(columns.min()) / frame_width, (float(columns.max()) + 1) / frame_width)
        box_y = (float(rows.min()) / frame_height, (float(rows.max()) + 1) / frame_height)
    else:
        box_x = box_y = (0.0, 1.0)
    return (_place(box_x, width, generator), _place(box_y, height, generator), width, height)


def _place(box: Tuple[float, float], size: float, generator: torch.Generator) -> float:
    """Start of a window of ``size`` (fractions) that holds ``box`` where it can, inside [0, 1]."""
    low, high = max(0.0, box[1] - size), min(box[0], 1.0 - size)
    if low > high:  # the box is wider than the window: centre the window on it
        return min(max((box[0] + box[1] - size) / 2, 0.0), 1.0 - size)
    return uniform(generator, low, high)


def crop_pair(image: torch.Tensor, mask: torch.Tensor, window: Tuple[float, float, float, float],
              output_size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Resample the ``window`` of image and mask to ``output_size`` (bilinear; the mask thresholded at 0.5)."""
    x0, y0, width, height = window
    centre_x, centre_y = 2 * (x0 + width / 2) - 1, 2 * (y0 + height / 2) - 1
    theta = torch.tensor([[width, 0.0, centre_x], [0.0, height, centre_y]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, 1, *output_size], align_corners=False)
    both = torch.cat([image.float(), mask.float()], dim=0)[None]
    sampled = F.grid_sample(both, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    return sampled[:1], (sampled[1:] >= 0.5).to(mask.dtype)


# ------------------------------------------------------------------ intensity and texture


def depth_gain(image: torch.Tensor, generator: torch.Generator, ranges: ScannerRanges = SCANNER_RANGES) -> torch.Tensor:
    """Multiply by an overall gain and a smooth depth (row) curve through ``tgc_knots`` random gains."""
    knots = torch.tensor([log_uniform(generator, *ranges.tgc_knot_gain) for _ in range(ranges.tgc_knots)])
    height = image.shape[-2]
    curve = F.interpolate(knots[None, None], size=height, mode="linear", align_corners=True)[0, 0]
    gain = uniform(generator, *ranges.overall_gain)
    return (image * (gain * curve)[:, None]).clamp(0.0, 1.0)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a ``(1, H, W)`` image (edges replicated)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(image[None], (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1))[0]


def blur_or_resample(image: torch.Tensor, generator: torch.Generator,
                     ranges: ScannerRanges = SCANNER_RANGES) -> torch.Tensor:
    """Either a Gaussian blur or a down-sampling by a random factor followed by up-sampling."""
    if chance(generator, 0.5):
        return gaussian_blur(image, uniform(generator, *ranges.blur_sigma))
    factor = uniform(generator, *ranges.downsample_factor)
    size = image.shape[-2:]
    small = F.interpolate(image[None], size=(max(2, round(size[0] / factor)), max(2, round(size[1] / factor))),
                          mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(small, size=size, mode="bilinear", align_corners=False)[0].clamp(0.0, 1.0)


def grainy_speckle(image: torch.Tensor, generator: torch.Generator,
                   ranges: ScannerRanges = SCANNER_RANGES) -> torch.Tensor:
    """Multiplicative noise whose grain (correlation length) is 1-4 pixels."""
    grain = uniform(generator, *ranges.speckle_grain)
    sigma = uniform(generator, *ranges.speckle_sigma)
    height, width = image.shape[-2:]
    coarse = torch.randn((1, 1, max(2, round(height / grain)), max(2, round(width / grain))), generator=generator)
    noise = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
    noise = noise / noise.std().clamp_min(1e-6)
    return (image * (1.0 + sigma * noise)).clamp(0.0, 1.0)


# ------------------------------------------------------------------ geometry of the display


def sector_mask(size: Tuple[int, int], generator: torch.Generator,
                ranges: ScannerRanges = SCANNER_RANGES) -> torch.Tensor:
    """A ``(1, H, W)`` bool fan of a convex probe: apex above the top edge, straight sides, arc at the top."""
    height, width = size
    apex_height = uniform(generator, *ranges.sector_apex_height) * height
    half_width = uniform(generator, *ranges.sector_bottom_half_width) * width / 2
    half_angle = math.atan2(half_width, apex_height + height)
    rows = torch.arange(height, dtype=torch.float32)[:, None] + 0.5 + apex_height
    columns = torch.arange(width, dtype=torch.float32)[None, :] + 0.5 - width / 2
    inside = (torch.atan2(columns.abs(), rows) <= half_angle) & (torch.hypot(rows, columns) >= apex_height)
    return inside[None]


def apply_sector(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator,
                 ranges: ScannerRanges = SCANNER_RANGES) -> Tuple[torch.Tensor, torch.Tensor]:
    """Black out everything outside a convex-probe fan; the lesion mask keeps only what stays visible."""
    inside = sector_mask(tuple(image.shape[-2:]), generator, ranges)
    return image * inside, mask * inside


def draw_marks(image: torch.Tensor, generator: torch.Generator, ranges: ScannerRanges = SCANNER_RANGES) -> torch.Tensor:
    """Draw 1-4 bright marks: caliper crosses, dotted measuring lines or a short line of text-like glyphs."""
    image = image.clone()
    height, width = image.shape[-2:]
    count = int(torch.randint(ranges.marks_count[0], ranges.marks_count[1] + 1, (), generator=generator))
    for _ in range(count):
        value = uniform(generator, *ranges.marks_brightness)
        x, y = int(uniform(generator, 0, width - 1)), int(uniform(generator, 0, height - 1))
        kind = int(torch.randint(0, 3, (), generator=generator))
        if kind == 0:  # caliper cross "+"
            arm = int(uniform(generator, 3, 7))
            image[0, y, max(0, x - arm):x + arm + 1] = value
            image[0, max(0, y - arm):y + arm + 1, x] = value
        elif kind == 1:  # dotted line to a second point
            x1, y1 = int(uniform(generator, 0, width - 1)), int(uniform(generator, 0, height - 1))
            steps = max(abs(x1 - x), abs(y1 - y)) // 4 + 1
            for step in range(steps + 1):
                fraction = step / steps
                image[0, round(y + (y1 - y) * fraction), round(x + (x1 - x) * fraction)] = value
        else:  # text: a row of 3-8 glyph-sized blocks with strokes
            glyphs = int(torch.randint(3, 9, (), generator=generator))
            for glyph in range(glyphs):
                left = x + glyph * 5
                if left + 3 >= width or y + 5 >= height:
                    break
                strokes = torch.rand((5, 3), generator=generator) < 0.5
                image[0, y:y + 5, left:left + 3][strokes] = value
    return image


# ------------------------------------------------------------------ all together


def scanner_look(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, enabled: frozenset,
                 ranges: ScannerRanges = SCANNER_RANGES) -> Tuple[torch.Tensor, torch.Tensor]:
    """The enabled transforms except ``crop`` (which needs the full-resolution source, see ``dataset``)."""
    if "depth_gain" in enabled and chance(generator, ranges.depth_gain_probability):
        image = depth_gain(image, generator, ranges)
    if "blur" in enabled and chance(generator, ranges.blur_probability):
        image = blur_or_resample(image, generator, ranges)
    if "speckle" in enabled and chance(generator, ranges.speckle_probability):
        image = grainy_speckle(image, generator, ranges)
    if "sector" in enabled and chance(generator, ranges.sector_probability):
        image, mask = apply_sector(image, mask, generator, ranges)
    if "marks" in enabled and chance(generator, ranges.marks_probability):
        image = draw_marks(image, generator, ranges)
    return image, mask
