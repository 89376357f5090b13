"""On-the-fly augmentation of a preprocessed image and its mask (tensors ``(1, H, W)``).

Each augmentation applies, with values drawn from the given generator:

* a horizontal flip (probability 0.5). Never a vertical flip: the transducer is
  always at the top of a breast ultrasound frame;
* a rotation and a scaling about the centre (and, for ``strong``, a shift), the
  same ``affine_grid`` sampling the image (bilinear) and the mask (bilinear, then
  thresholded at 0.5); outside pixels become 0 (black, like the frame border);
* brightness, contrast (about the mean) and gamma jitter;
* multiplicative speckle-like noise ``image * (1 + s * n)``, n ~ N(0, 1)
  (probability 0.5).

The ranges:

=============  ==========  ============  ===========
range          standard    strong        unit
=============  ==========  ============  ===========
rotation       +-10        +-15          degrees
scale          0.9-1.1     0.8-1.25      zoom factor
shift          0           +-0.08        image size
brightness     +-0.1       +-0.15        intensity
contrast       0.8-1.2     0.7-1.3       factor
gamma          0.8-1.25    0.7-1.4       exponent
speckle sigma  up to 0.1   up to 0.15
=============  ==========  ============  ===========

The image is clamped to [0, 1] afterwards, the range ``prepare_input`` produces.

``scanner`` is ``strong`` plus the transforms of :mod:`.scanner_augment` that
imitate other scanners (crops around the lesion, depth gain, blur and
resolution, speckle grain, a convex-probe outline, on-screen marks), each of
which can be switched off by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch.nn import functional as F

from .scanner_augment import SCANNER_RANGES, TRANSFORMS, chance, crop_pair, crop_window, scanner_look, uniform


@dataclass(frozen=True)
class AugmentRanges:
    """How far each random transform of an augmentation may go."""

    max_rotation_degrees: float
    scale: tuple[float, float]
    max_shift_fraction: float
    max_brightness: float
    contrast: tuple[float, float]
    gamma: tuple[float, float]
    max_speckle_sigma: float


STANDARD = AugmentRanges(10.0, (0.9, 1.1), 0.0, 0.1, (0.8, 1.2), (0.8, 1.25), 0.1)
STRONG = AugmentRanges(15.0, (0.8, 1.25), 0.08, 0.15, (0.7, 1.3), (0.7, 1.4), 0.15)
RANGES = {"standard": STANDARD, "strong": STRONG, "scanner": STRONG}
AUGMENTATIONS = ("none", *RANGES)
# A crop narrower than this share of the frame is cut from the 2x-resolution source, so that zooming in
# stays sharp (from the network-size image it would be up-sampled by more than 2x).
SOURCE_CROP_BELOW = 0.5


def affine_pair(image: torch.Tensor, mask: torch.Tensor, angle_degrees: float, scale: float,
                shift: tuple[float, float] = (0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate by ``angle_degrees``, zoom by ``scale`` (>1 enlarges) and move by ``shift``
    (x, y as fractions of the width and height) image and mask identically."""
    angle = math.radians(angle_degrees)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    height, width = image.shape[-2:]
    aspect = height / width  # keeps the rotation rigid on non-square inputs (normalised coordinates)
    # affine_grid maps output to input coordinates, which span 2 per image side: moving the
    # content by +f of the side means sampling from -2f.
    theta = torch.tensor([[cos, -sin * aspect, -2.0 * shift[0]],
                          [sin / aspect, cos, -2.0 * shift[1]]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, 1, height, width], align_corners=False)
    both = torch.cat([image, mask], dim=0)[None]  # one sampling call for both
    warped = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return warped[:1], (warped[1:] >= 0.5).to(mask.dtype)


def jitter_intensity(image: torch.Tensor, generator: torch.Generator, ranges: AugmentRanges = STANDARD) -> torch.Tensor:
    """Brightness, contrast and gamma jitter, clamped to [0, 1]."""
    image = image + uniform(generator, -ranges.max_brightness, ranges.max_brightness)
    mean = image.mean()
    image = (image - mean) * uniform(generator, *ranges.contrast) + mean
    gamma = math.exp(uniform(generator, math.log(ranges.gamma[0]), math.log(ranges.gamma[1])))
    return image.clamp(0.0, 1.0) ** gamma


def speckle_noise(image: torch.Tensor, generator: torch.Generator, max_sigma: float = 0.1) -> torch.Tensor:
    """Multiplicative Gaussian noise, a simple stand-in for ultrasound speckle."""
    sigma = uniform(generator, 0.0, max_sigma)
    noise = torch.randn(image.shape, generator=generator, dtype=image.dtype)
    return (image * (1.0 + sigma * noise)).clamp(0.0, 1.0)


def random_augment(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator,
                   ranges: AugmentRanges) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip, affine, intensity jitter and speckle within ``ranges`` (see the module docstring)."""
    if chance(generator, 0.5):
        image, mask = image.flip(-1), mask.flip(-1)
    angle = uniform(generator, -ranges.max_rotation_degrees, ranges.max_rotation_degrees)
    scale = uniform(generator, *ranges.scale)
    shift = (0.0, 0.0)
    if ranges.max_shift_fraction > 0:  # no draw otherwise, so "standard" keeps its random stream
        limit = ranges.max_shift_fraction
        shift = (uniform(generator, -limit, limit), uniform(generator, -limit, limit))
    image, mask = affine_pair(image, mask, angle, scale, shift)
    image = jitter_intensity(image, generator, ranges)
    if chance(generator, 0.5):
        image = speckle_noise(image, generator, ranges.max_speckle_sigma)
    return image.contiguous(), mask.contiguous()


@dataclass(frozen=True)
class Augmentation:
    """One named augmentation: flip, affine and intensity within ``ranges``, then the enabled scanner transforms.

    Call it as ``augment(image, mask, generator, source=None)``; ``source`` is the ``(image, mask)`` pair at
    twice the network's resolution, used by the ``crop`` transform when it zooms in far.
    """

    ranges: AugmentRanges
    scanner: frozenset = frozenset()

    @property
    def uses_source(self) -> bool:
        return "crop" in self.scanner

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator,
                 source: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.uses_source and chance(generator, SCANNER_RANGES.crop_probability):
            window = crop_window(mask, generator)
            if window is not None:
                zoom_source = source if source is not None and min(window[2:]) < SOURCE_CROP_BELOW else (image, mask)
                image, mask = crop_pair(*zoom_source, window, tuple(image.shape[-2:]))
        image, mask = random_augment(image, mask, generator, self.ranges)
        if self.scanner:
            image, mask = scanner_look(image, mask, generator, self.scanner)
        return image.contiguous(), mask.contiguous()


standard_augment = Augmentation(STANDARD)


def get_augmentation(name: str, switched_off=()) -> Optional[Augmentation]:
    """The augmentation called ``name`` ("none" gives None); ``switched_off`` names scanner transforms to skip."""
    unknown = sorted(set(switched_off) - set(TRANSFORMS))
    if unknown:
        raise ValueError(f"unknown augmentation transform(s) {', '.join(unknown)}; choose from {', '.join(TRANSFORMS)}")
    if name == "none":
        return None
    if name not in RANGES:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}")
    scanner = frozenset(TRANSFORMS) - frozenset(switched_off) if name == "scanner" else frozenset()
    return Augmentation(RANGES[name], scanner)
