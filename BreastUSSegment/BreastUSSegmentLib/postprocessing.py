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

from dataclasses import asdict, dataclass, fields, replace

import numpy as np
from scipy import ndimage

from .boxes import NO_LESION_PROBABILITY, Box, centre_region

# Smoothing strength is given on the model's 256-pixel grid and scaled to the image.
REFERENCE_SIZE = 256


@dataclass(frozen=True)
class PostprocessOptions:
    """The settings that turn the network's output into a mask, chosen on val for each model.

    No defaults here: a model's own come from its model card.
    """

    threshold: float  # a pixel is lesion when its probability is at least this
    min_area_fraction: float  # components below this fraction of the frame are dropped; 0 keeps all
    min_mean_probability: float  # components whose mean probability is below this are dropped; 0 keeps all
    keep_largest: bool  # keep only the largest component
    fill_holes: bool
    smoothing_sigma: float  # Gaussian sigma in pixels of a 256-pixel frame; 0 disables
    # frames whose lesion-head probability is below this get an empty mask; 0 keeps all (needs a lesion head)
    min_lesion_probability: float
    test_time_flip: bool  # average the network's output with that of the horizontally mirrored frame

    def __post_init__(self) -> None:
        if not isinstance(self.test_time_flip, bool):
            raise ValueError(f"test_time_flip must be true or false, got {self.test_time_flip!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be strictly between 0 and 1, got {self.threshold}")
        if not 0.0 <= self.min_area_fraction < 1.0:
            raise ValueError(f"min_area_fraction must be in [0, 1), got {self.min_area_fraction}")
        if not 0.0 <= self.min_mean_probability < 1.0:
            raise ValueError(f"min_mean_probability must be in [0, 1), got {self.min_mean_probability}")
        if not 0.0 <= self.min_lesion_probability < 1.0:
            raise ValueError(f"min_lesion_probability must be in [0, 1), got {self.min_lesion_probability}")
        if self.smoothing_sigma < 0:
            raise ValueError(f"smoothing_sigma must be >= 0, got {self.smoothing_sigma}")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **overrides) -> "PostprocessOptions":
        """A validated copy with the given settings changed; a setting given as None keeps its value."""
        return replace(self, **{name: value for name, value in overrides.items() if value is not None})

    @classmethod
    def from_dict(cls, values: dict) -> "PostprocessOptions":
        """Options from a model card's ``postprocessing`` block; every setting must be there (unknown keys are ignored),
        except those added later (``LATER_SETTINGS``), which cards written before them mean as their value there."""
        values = {**LATER_SETTINGS, **values}
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in values]
        if missing:
            raise ValueError(f"the post-processing block lacks {', '.join(missing)}")
        return cls(**{name: values[name] for name in names})


# Settings added after the first model cards, with the value that gives the behaviour before them.
LATER_SETTINGS = {"min_lesion_probability": 0.0, "test_time_flip": False}

# What ``train`` writes into the card of a new model, until ``sweep`` on val and ``export`` choose its own.
UNTUNED_POSTPROCESSING = PostprocessOptions(
    threshold=0.5,
    min_area_fraction=0.005,  # chosen on BUSI val
    min_mean_probability=0.0,
    keep_largest=True,
    fill_holes=True,
    smoothing_sigma=1.5,
    min_lesion_probability=0.0,
    test_time_flip=False,
)


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
    """8-connected labels of ``mask`` and, per label (0 is the background), its probability sum and pixel count."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sums = np.bincount(labels.ravel(), weights=probability.ravel(), minlength=count + 1)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
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


def candidate_mask(probability: np.ndarray, options: PostprocessOptions, frame_pixels: int | None = None) -> np.ndarray:
    """The first steps of post-processing: threshold, then drop components below the minimum area
    (a fraction of ``frame_pixels``, by default the map's own size)."""
    mask = probability >= options.threshold
    return remove_small_components(mask, int(round(options.min_area_fraction * (frame_pixels or mask.size))))


def strongest_hidden_confidence(probability: np.ndarray, options: PostprocessOptions) -> float | None:
    """Highest mean probability among the regions the minimum-confidence step hides, or None if it hides none.

    Takes one ``(H, W)`` map or a ``(F, H, W)`` stack. Lets a user whose frame came
    out empty see how far the best hidden candidate is from the bar.
    """
    if options.min_mean_probability <= 0:
        return None
    hidden_means = []
    for frame in probability[None] if probability.ndim == 2 else probability:
        _, sums, sizes = _component_sums(candidate_mask(frame, options), frame)
        hidden = sums[1:] < options.min_mean_probability * sizes[1:]
        hidden_means.extend(sums[1:][hidden] / sizes[1:][hidden])
    return float(max(hidden_means)) if hidden_means else None


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


def postprocess_mask(probability: np.ndarray, options: PostprocessOptions) -> np.ndarray:
    """Processed boolean mask of one ``(H, W)`` probability map.

    Every step acts only inside the bounding box of the pixels above the threshold
    (components and holes lie in it, and a blur re-thresholded at 0.5 cannot grow a
    mask past it), so the steps run on that box, grown by a ring of background, and
    the result is pasted into an empty frame: the same mask, several times faster
    when the lesion is small.
    """
    if probability.ndim != 2:
        raise ValueError(f"expected a 2-D probability map, got shape {probability.shape}")
    above = probability >= options.threshold
    rows, columns = np.flatnonzero(above.any(axis=1)), np.flatnonzero(above.any(axis=0))
    mask = np.zeros(probability.shape, dtype=bool)
    if rows.size == 0:
        return mask
    sigma = options.smoothing_sigma * min(probability.shape) / REFERENCE_SIZE
    margin = 1  # a ring of background around the box
    window = (slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
              slice(max(columns[0] - margin, 0), columns[-1] + margin + 1))
    mask[window] = _postprocess_window(probability[window], options, probability.size, sigma)
    return mask


def _postprocess_window(probability: np.ndarray, options: PostprocessOptions, frame_pixels: int,
                        sigma: float) -> np.ndarray:
    """:func:`postprocess_mask`'s steps on a window of the frame (``frame_pixels``: the whole frame's size)."""
    mask = candidate_mask(probability, options, frame_pixels)
    mask = remove_uncertain_components(mask, probability, options.min_mean_probability)
    if options.keep_largest:
        mask = keep_largest_component(mask)
    if options.fill_holes:
        mask = fill_holes(mask)
    mask = smooth_boundary(mask, sigma)
    if options.fill_holes:
        mask = fill_holes(mask)
    # Smoothing can split a thin bridge; keep the promise of a single lesion.
    if options.keep_largest:
        mask = keep_largest_component(mask)
    return mask.astype(bool)


def check_lesion_head(options: PostprocessOptions, has_lesion_head: bool) -> None:
    """ValueError when ``options`` ask for the lesion head's probability and the model has no lesion head."""
    if options.min_lesion_probability > 0 and not has_lesion_head:
        raise ValueError(f"min_lesion_probability {options.min_lesion_probability} needs a model with a lesion head; "
                         "this model has none (use 0)")


def postprocess_frames(
    probabilities: np.ndarray, options: PostprocessOptions, lesion_probability: np.ndarray | None = None
) -> np.ndarray:
    """Processed masks of a ``(F, H, W)`` stack, frame by frame.

    ``lesion_probability`` (``(F,)``, from a model's lesion head) empties the frames
    below ``options.min_lesion_probability``.
    """
    check_lesion_head(options, lesion_probability is not None)
    masks = np.stack([postprocess_mask(frame, options) for frame in probabilities])
    if options.min_lesion_probability > 0:
        masks[np.asarray(lesion_probability) < options.min_lesion_probability] = False
    return masks


def strongest_rejected_lesion_probability(
    lesion_probability: np.ndarray | None, options: PostprocessOptions
) -> float | None:
    """The lesion head's highest probability when it is below ``options.min_lesion_probability`` on every
    frame (the head emptied them all), else None. Tells a user why a frame came out empty."""
    if lesion_probability is None or options.min_lesion_probability <= 0:
        return None
    strongest = float(np.max(lesion_probability))
    return strongest if strongest < options.min_lesion_probability else None


def _component_at_peak(probability: np.ndarray, level: float) -> np.ndarray:
    """The 8-connected component of ``probability >= level`` that holds the highest probability."""
    labels, _ = ndimage.label(probability >= level, structure=np.ones((3, 3), dtype=bool))
    peak = np.unravel_index(int(np.argmax(probability)), probability.shape)
    return labels == labels[peak]


def postprocess_box(probability: np.ndarray, options: PostprocessOptions) -> np.ndarray:
    """Processed mask of the probability inside one user box (the array is the box).

    Keeps the components above the threshold that touch the box's centre region,
    or, if none does, the component around the box's highest probability (at the
    threshold or half that peak, whichever is lower), so a box always gets a lesion
    unless its peak is below ``NO_LESION_PROBABILITY``. The area and confidence
    filters are not applied: the user's box says a lesion is there.
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
    if options.keep_largest:
        mask = keep_largest_component(mask)
    if options.fill_holes:
        mask = fill_holes(mask)
    smoothed = smooth_boundary(mask, options.smoothing_sigma * min(mask.shape) / REFERENCE_SIZE)
    if options.fill_holes:
        smoothed = fill_holes(smoothed)
    if options.keep_largest:
        smoothed = keep_largest_component(smoothed)
    # Smoothing can erase a lesion of a few pixels; the box still gets the unsmoothed one.
    return (smoothed if smoothed.any() else mask).astype(bool)
