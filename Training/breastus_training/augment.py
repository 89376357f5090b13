"""On-the-fly augmentation of a preprocessed image and its mask (tensors ``(1, H, W)``).

``standard`` applies, each drawn from the given generator:

* a horizontal flip (probability 0.5). Never a vertical flip: the transducer is
  always at the top of a breast ultrasound frame;
* a rotation of up to +-10 degrees and a scaling of 0.9-1.1 about the centre,
  the same ``affine_grid`` sampling the image (bilinear) and the mask (bilinear,
  then thresholded at 0.5); outside pixels become 0 (black, like the frame border);
* brightness (+-0.1), contrast (x0.8-1.2 about the mean) and gamma (0.8-1.25) jitter;
* multiplicative speckle-like noise ``image * (1 + s * n)``, n ~ N(0, 1), s up to 0.1
  (probability 0.5).

The image is clamped to [0, 1] afterwards, the range ``prepare_input`` produces.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

AUGMENTATIONS = ("none", "standard")
MAX_ROTATION_DEGREES = 10.0
SCALE_RANGE = (0.9, 1.1)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def affine_pair(image: torch.Tensor, mask: torch.Tensor, angle_degrees: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate by ``angle_degrees`` and zoom by ``scale`` (>1 enlarges) image and mask identically."""
    angle = math.radians(angle_degrees)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    height, width = image.shape[-2:]
    aspect = height / width  # keeps the rotation rigid on non-square inputs (normalised coordinates)
    theta = torch.tensor([[cos, -sin * aspect, 0.0], [sin / aspect, cos, 0.0]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, 1, height, width], align_corners=False)
    both = torch.cat([image, mask], dim=0)[None]  # one sampling call for both
    warped = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return warped[:1], (warped[1:] >= 0.5).to(mask.dtype)


def jitter_intensity(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and gamma jitter, clamped to [0, 1]."""
    image = image + _uniform(generator, -0.1, 0.1)
    mean = image.mean()
    image = (image - mean) * _uniform(generator, 0.8, 1.2) + mean
    gamma = math.exp(_uniform(generator, math.log(0.8), math.log(1.25)))
    return image.clamp(0.0, 1.0) ** gamma


def speckle_noise(image: torch.Tensor, generator: torch.Generator, max_sigma: float = 0.1) -> torch.Tensor:
    """Multiplicative Gaussian noise, a simple stand-in for ultrasound speckle."""
    sigma = _uniform(generator, 0.0, max_sigma)
    noise = torch.randn(image.shape, generator=generator, dtype=image.dtype)
    return (image * (1.0 + sigma * noise)).clamp(0.0, 1.0)


def standard_augment(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``standard`` augmentation described in the module docstring."""
    if float(torch.rand((), generator=generator)) < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    angle = _uniform(generator, -MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES)
    scale = _uniform(generator, *SCALE_RANGE)
    image, mask = affine_pair(image, mask, angle, scale)
    image = jitter_intensity(image, generator)
    if float(torch.rand((), generator=generator)) < 0.5:
        image = speckle_noise(image, generator)
    return image.contiguous(), mask.contiguous()


def get_augmentation(name: str):
    """The augmentation function for ``name`` ("none" gives None)."""
    if name == "none":
        return None
    if name == "standard":
        return standard_augment
    raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}")
