"""From a probability map to the paper's smoother "processed mask".

Steps, each optional: threshold, remove connected components smaller than a
fraction of the frame, remove components the network is unsure of (low mean
probability), keep only the largest lesion, fill holes, and smooth the
boundary (Gaussian blur of the mask, re-thresholded at one half). With a model
that has a lesion head, a frame whose image-level lesion probability is below
``min_lesion_probability`` gets an empty mask. One setting acts before all
this, in the network's pass: ``test_time_flip`` averages the probability with
that of the mirrored frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from .boxes import NO_LESION_PROBABILITY, Box, centre_region
from .options import PostprocessOptions, check_lesion_head

# Smoothing strength is given on the model's 256-pixel grid and scaled to the image.
REFERENCE_SIZE = 256


def remove_small_components(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Drop 8-connected components with fewer than ``min_pixels`` pixels."""
    if min_pixels <= 1 or not mask.any():
        return mask
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def _component_sums(mask: np.ndarray, probability: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-connected labels of ``mask`` and, per label, its probability sum and pixel count (counted over the
    mask's pixels only, so label 0, the background, gets zeros)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    inside = labels[mask]
    sums = np.bincount(inside, weights=probability[mask], minlength=count + 1)
    sizes = np.bincount(inside, minlength=count + 1)
    return labels, sums, sizes


def remove_uncertain_components(mask: np.ndarray, probability: np.ndarray, min_mean_probability: float) -> np.ndarray:
    """Drop 8-connected components whose mean probability is below ``min_mean_probability``.

    Lesions the network is sure of are bright throughout; the false lesions it
    finds on normal tissue (shadows, fat lobules) are mostly lukewarm.
    """
    if min_mean_probability <= 0 or not mask.any():
        return mask
    labels, sums, sizes = _component_sums(mask, probability)
    keep = sums >= min_mean_probability * sizes  # mean >= bar, without dividing by an empty background
    keep[0] = False
    return keep[labels]


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 8-connected component (the first one on a tie)."""
    if not mask.any():
        return mask
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 1:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not connected (4-connectivity) to the frame border.

    Same result as ``scipy.ndimage.binary_fill_holes`` with its default
    structure, from one labelling pass instead of an iterated dilation.
    """
    if not mask.any():
        return mask
    background, count = ndimage.label(~mask)
    if count == 0:
        return mask
    on_border = np.zeros(count + 1, dtype=bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        on_border[edge] = True
    on_border[0] = True  # label 0 is the mask itself
    return ~on_border[background] | mask


def smooth_boundary(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Blur the binary mask with a Gaussian of ``sigma`` pixels and re-threshold at 0.5."""
    if sigma <= 0 or not mask.any():
        return mask
    return ndimage.gaussian_filter(mask.astype(np.float32), sigma=sigma, mode="constant") >= 0.5


def _shape_lesion(mask: np.ndarray, options: PostprocessOptions, sigma: float | None = None) -> tuple:
    """The last steps, shared by the automatic and the box modes: keep the largest component, fill holes, smooth
    (``sigma`` pixels; by default scaled to the mask's size), then fill and keep the largest again (smoothing can
    open a hole or split a thin bridge).

    Returns the mask before smoothing and the finished mask.
    """
    if options.keep_largest:
        mask = keep_largest_component(mask)
    if options.fill_holes:
        mask = fill_holes(mask)
    if sigma is None:
        sigma = options.smoothing_sigma * min(mask.shape) / REFERENCE_SIZE
    smoothed = smooth_boundary(mask, sigma)
    if options.fill_holes:
        smoothed = fill_holes(smoothed)
    if options.keep_largest:
        smoothed = keep_largest_component(smoothed)
    return mask, smoothed


def postprocess_mask(probability: np.ndarray, options: PostprocessOptions) -> np.ndarray:
    """Processed boolean mask of one ``(H, W)`` probability map."""
    return _postprocess(probability, options)[0]


def _postprocess(probability: np.ndarray, options: PostprocessOptions) -> tuple:
    """:func:`postprocess_mask`, and the highest mean probability among the regions the minimum confidence hid.

    Every step acts only inside the bounding box of the pixels it is given (components and holes lie in
    it, and a blur re-thresholded at 0.5 cannot grow a mask past it), so the region rules run on the box of
    the pixels above the threshold and the shaping steps on the box of the regions kept, each grown by a
    ring of background: the same mask as on the whole frame, several times faster when the lesion is small.
    """
    if probability.ndim != 2:
        raise ValueError(f"expected a 2-D probability map, got shape {probability.shape}")
    mask = np.zeros(probability.shape, dtype=bool)
    window = _bounding_window(probability >= options.threshold)
    if window is None:
        return mask, None
    kept, hidden = _confident_regions(probability[window], options, probability.size)
    inner = _bounding_window(kept)
    if inner is not None:
        sigma = options.smoothing_sigma * min(probability.shape) / REFERENCE_SIZE
        mask[window][inner] = _shape_lesion(kept[inner], options, sigma)[1]
    return mask, hidden


def _bounding_window(mask: np.ndarray) -> tuple | None:
    """Slices of the bounding box of ``mask``'s pixels grown by a ring of one pixel (within the array); None when
    it is empty."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(columns[0] - 1, 0), columns[-1] + 2))


def _confident_regions(probability: np.ndarray, options: PostprocessOptions, frame_pixels: int) -> tuple:
    """The region rules from one labelling: threshold, drop the regions below the minimum area (a fraction of
    ``frame_pixels``) and those below the minimum confidence, and with ``keep_largest`` keep the largest left.

    The same mask as :func:`remove_small_components`, :func:`remove_uncertain_components` and
    :func:`keep_largest_component` one after the other on the thresholded map; also returns the highest mean probability among
    the regions the confidence rule dropped (None when it dropped none).
    """
    labels, sums, sizes = _component_sums(probability >= options.threshold, probability)
    keep = sizes >= int(round(options.min_area_fraction * frame_pixels))
    keep[0] = False
    hidden = None
    if options.min_mean_probability > 0:
        confident = sums >= options.min_mean_probability * sizes  # mean >= bar, without dividing by empty labels
        dropped = keep & ~confident
        if dropped.any():
            hidden = float(np.max(sums[dropped] / sizes[dropped]))
        keep &= confident
    if options.keep_largest and keep.any():
        largest = int(np.argmax(np.where(keep, sizes, 0)))  # the first on a tie, as keep_largest_component
        keep[:] = False
        keep[largest] = True
    return keep[labels], hidden


@dataclass(frozen=True)
class WhyEmpty:
    """What post-processing hid, so that a user whose mask came out empty can be told why (None: nothing of the kind)."""

    hidden_confidence: Optional[float]  # highest mean probability among the regions the minimum confidence dropped
    # the lesion head's highest probability, when it is below min_lesion_probability on every frame (all emptied)
    rejected_lesion_probability: Optional[float]


def postprocess_frames(
    probabilities: np.ndarray, options: PostprocessOptions, lesion_probability: np.ndarray | None = None
) -> np.ndarray:
    """Processed masks of a ``(F, H, W)`` stack, frame by frame.

    ``lesion_probability`` (``(F,)``, from a model's lesion head) empties the frames
    below ``options.min_lesion_probability``.
    """
    return postprocess_frames_explained(probabilities, options, lesion_probability)[0]


def postprocess_frames_explained(
    probabilities: np.ndarray, options: PostprocessOptions, lesion_probability: np.ndarray | None = None
) -> tuple[np.ndarray, WhyEmpty]:
    """:func:`postprocess_frames`, and what it hid (:class:`WhyEmpty`), found in the same pass."""
    check_lesion_head(options, lesion_probability is not None)
    processed = [_postprocess(frame, options) for frame in probabilities]
    masks = np.stack([mask for mask, _ in processed])
    hidden = [value for _, value in processed if value is not None]
    rejected = None
    if options.min_lesion_probability > 0:
        masks[np.asarray(lesion_probability) < options.min_lesion_probability] = False
        strongest = float(np.max(lesion_probability))
        rejected = strongest if strongest < options.min_lesion_probability else None
    return masks, WhyEmpty(float(max(hidden)) if hidden else None, rejected)


def strongest_hidden_confidence(probability: np.ndarray, options: PostprocessOptions) -> float | None:
    """Highest mean probability among the regions the minimum-confidence step hides, or None if it hides none.

    Takes one ``(H, W)`` map or a ``(F, H, W)`` stack.
    """
    frames = probability[None] if probability.ndim == 2 else probability
    return postprocess_frames_explained(frames, options)[1].hidden_confidence


def _component_at_peak(probability: np.ndarray, level: float) -> np.ndarray:
    """The 8-connected component of ``probability >= level`` that holds the highest probability."""
    labels, _ = ndimage.label(probability >= level, structure=np.ones((3, 3), dtype=bool))
    peak = np.unravel_index(int(np.argmax(probability)), probability.shape)
    return labels == labels[peak]


def postprocess_box(probability: np.ndarray, options: PostprocessOptions, min_confidence: float | None = None) -> np.ndarray:
    """Processed mask of the probability inside one user box (the array is the box).

    Keeps the components above the threshold that touch the box's centre region,
    or, if none does, the component around the box's highest probability (at the
    threshold or half that peak, whichever is lower). Of those, the components whose
    mean probability is below ``min_confidence`` (default: ``options.min_mean_probability``,
    the automatic mask's confidence rule) are dropped, so a box on lesion-free tissue
    comes out empty; so does a box whose peak is below ``NO_LESION_PROBABILITY``. The
    area filter is not applied: the user's box says where to look.
    """
    if probability.ndim != 2:
        raise ValueError(f"expected a 2-D probability map, got shape {probability.shape}")
    peak = float(probability.max())
    if peak < NO_LESION_PROBABILITY:
        return np.zeros(probability.shape, dtype=bool)
    labels, _ = ndimage.label(probability >= options.threshold, structure=np.ones((3, 3), dtype=bool))
    centre = centre_region(Box(0, 0, probability.shape[1], probability.shape[0]))
    touching = np.unique(labels[centre.slices])
    touching = touching[touching > 0]
    if touching.size:
        mask = np.isin(labels, touching)
    else:
        mask = _component_at_peak(probability, min(options.threshold, 0.5 * peak))
    bar = options.min_mean_probability if min_confidence is None else min_confidence
    mask = remove_uncertain_components(mask, probability, bar)
    if not mask.any():
        return mask
    mask, smoothed = _shape_lesion(mask, options)
    # Smoothing can erase a lesion of a few pixels; the box still gets the unsmoothed one.
    return (smoothed if smoothed.any() else mask).astype(bool)
