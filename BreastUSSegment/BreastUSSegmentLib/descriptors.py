"""BI-RADS ultrasound lexicon descriptors of one lesion, from its mask and the image (numpy and scipy only).

RESEARCH USE ONLY, NOT FOR DIAGNOSIS. The descriptors are measured on a mask, so
they are only as good as the outline they are given.

For one lesion (one connected region of a mask) every descriptor is a number and
the lexicon term a rule maps it to:

* shape: solidity (area over convex-hull area) and the axis ratio of the
  lesion's moment ellipse (minor over major) -> irregular / round / oval;
* orientation: depth-to-width ratio (vertical over horizontal extent in mm, as
  :mod:`.measure` defines it)
  and the angle of the ellipse's long axis to the image rows -> parallel /
  not parallel ("taller than wide");
* margin: boundary irregularity, measured on the outline: the area between the
  outline and its convex hull (1 - solidity) plus the area a morphological
  opening and closing change (radius a fixed share of the lesion's size), both
  as shares of the lesion -> circumscribed / not circumscribed;
* echo pattern: the lesion's median intensity against the ring of tissue
  around it and against the band under the skin above it (subcutaneous fat,
  where the image holds it), and the spread of its intensities against the
  surround's level -> anechoic,
  hypoechoic, isoechoic, hyperechoic, heterogeneous, complex cystic/solid;
* posterior features: the mean intensity of the band below the lesion against
  the bands beside it at the same depth -> enhancement, shadowing, combined,
  none.

The thresholds are constants below, each with how it was chosen: on BrEaST's
train split (ground-truth masks, the radiologists' reads in its cases.csv) with
``breastus-train descriptors-fit``. BrEaST reads give no orientation, so that
rule is the lexicon's own definition.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from .imagetypes import check_spacing
from .likelihood import RESEARCH_USE
from .measure import Column, boundary_pixels, convex_hull, lesion_regions

# Shown wherever descriptors are (sidecar, run table, Slicer table and panel); numbers from README.md,
# "Lesion descriptors and malignancy likelihood".
DESCRIPTOR_NOTE = (f"Descriptors and likelihood: {RESEARCH_USE}. From the model's outline they are weak, shape and "
                   "margin especially (agreement with radiologists on BrEaST test: kappa 0.07 and 0.08, against "
                   "0.60 and 0.52 on the radiologists' outlines; likelihood AUC 0.78).")

SHAPE_TERMS = ("oval", "round", "irregular")
ORIENTATION_TERMS = ("parallel", "not parallel")
MARGIN_TERMS = ("circumscribed", "not circumscribed")
ECHO_TERMS = ("anechoic", "hypoechoic", "isoechoic", "hyperechoic", "heterogeneous", "complex cystic/solid")
POSTERIOR_TERMS = ("none", "enhancement", "shadowing", "combined")

# --- Rules (numbers -> terms), one dict per descriptor. Chosen with ``breastus-train descriptors-fit`` on
# BrEaST's train split (ground-truth masks): each threshold in turn set to the train quantile (2.5% to 97.5%)
# of its number that gives the highest Cohen's kappa against the radiologists' reads, three rounds. Kappa
# on BrEaST train / val (176 / 25 images): shape 0.54 / 0.39, margin 0.52 / 0.36, echo pattern 0.21 / 0.09,
# posterior features 0.44 / 0.25 (Training/EXPERIMENTS.md, "Lesion descriptors").
# Shape: irregular below the solidity cut; otherwise round from the axis-ratio cut, else oval.
SHAPE_RULE = {"irregular_below_solidity": 0.9358, "round_from_axis_ratio": 0.9105}
# Orientation: not parallel when deeper than wide, the lexicon's own "taller than wide" (BrEaST has no
# orientation read to tune it on).
ORIENTATION_RULE = {"not_parallel_above_depth_to_width": 1.0}
# Margin: not circumscribed above the boundary-irregularity cut.
MARGIN_RULE = {"not_circumscribed_above_irregularity": 0.0762}
# Echo pattern, tested in this order: anechoic (median against the surround), complex cystic/solid (share of
# anechoic-dark pixels), heterogeneous (spread), then hyperechoic / isoechoic / hypoechoic against the fat
# band above the lesion (against the surround where the image holds no fat band).
ECHO_RULE = {"anechoic_below_ratio": 0.3796, "complex_from_dark_share": 0.4671, "heterogeneous_above_spread": 0.4192,
             "hyperechoic_above_ratio": 1.3802, "isoechoic_above_ratio": 0.8603}
# Posterior features (band below over bands beside): shadowing below, enhancement above; combined when one
# third of the band is below the shadowing cut and another above the enhancement cut.
POSTERIOR_RULE = {"shadowing_below_ratio": 0.7717, "enhancement_above_ratio": 1.5002}

# --- Geometry of the measurements (relative to the lesion, so images without a pixel size work). ---
SMOOTHING_RADIUS_SHARE = 0.1  # opening/closing radius for the margin: this share of the equivalent diameter
RING_WIDTH_SHARE = 0.25  # surrounding-tissue ring: this share of the equivalent diameter wide
FAT_BAND = (0.05, 0.25)  # subcutaneous fat band: from 5% to 25% of the image height, above the lesion
MIN_PIXELS = 20  # a reference region with fewer pixels is "not measurable"
DARK_PIXEL_RATIO = 0.35  # a lesion pixel darker than this share of the surround's median is anechoic-dark


def _ndimage():
    """scipy.ndimage, imported when measuring so the Slicer module can import this module before scipy is installed."""
    from scipy import ndimage

    return ndimage


@dataclass(frozen=True)
class LesionDescriptors:
    """Numbers and lexicon terms of one lesion (see the module docstring). None: not measurable here."""

    solidity: float
    axis_ratio: float
    depth_to_width: Optional[float]
    long_axis_angle_deg: float
    margin_irregularity: float
    echo_ratio_surround: Optional[float]
    echo_ratio_fat: Optional[float]
    echo_spread: float
    dark_share: float
    posterior_ratio: Optional[float]
    posterior_low: Optional[float]
    posterior_high: Optional[float]
    shape: str
    orientation: str
    margin: str
    echo_pattern: str
    posterior: str

    def to_dict(self) -> dict:
        return asdict(self)


def _gray(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3].mean(axis=-1)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale or RGB(A) image, got an array of shape {np.shape(image)}")
    return array.astype(float)


def _check_region(mask: np.ndarray, shape: tuple) -> np.ndarray:
    ndimage = _ndimage()
    region = np.asarray(mask, dtype=bool)
    if region.shape != tuple(shape):
        raise ValueError(f"the lesion mask is {region.shape} but the image is {tuple(shape)}")
    if np.count_nonzero(region) < 3:
        raise ValueError("the lesion mask has fewer than 3 pixels: too small to describe")
    if ndimage.label(region, structure=np.ones((3, 3)))[1] != 1:
        raise ValueError("the lesion mask must be one connected region (describe each lesion on its own)")
    return region


def _hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of (N, 2) points (the shoelace formula over :func:`.measure.convex_hull`)."""
    hull = convex_hull(points)
    if len(hull) < 3:
        return 0.0
    x, y = hull[:, 0], hull[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def shape_numbers(region: np.ndarray, spacing) -> dict:
    """Solidity, moment-ellipse axis ratio, depth-to-width ratio and long-axis angle (degrees from the rows)."""
    row_mm, col_mm = spacing
    rows, cols = np.nonzero(region)
    area = rows.size * row_mm * col_mm
    edge_rows, edge_cols = np.nonzero(boundary_pixels(region))
    corners = np.concatenate([np.column_stack([(edge_rows + dr) * row_mm, (edge_cols + dc) * col_mm])
                              for dr in (-0.5, 0.5) for dc in (-0.5, 0.5)])
    solidity = min(1.0, area / _hull_area(corners))
    y, x = rows * row_mm, cols * col_mm
    covariance = np.cov(np.vstack([x, y])) + np.eye(2) * (row_mm * col_mm / 12.0)  # a pixel's own extent
    values, vectors = np.linalg.eigh(covariance)
    major = vectors[:, 1]
    angle = float(np.degrees(np.arctan2(abs(major[1]), abs(major[0]))))
    depth = (rows.max() - rows.min()) * row_mm  # between the outermost pixel centres, as measure.py
    width = (cols.max() - cols.min()) * col_mm
    return {"solidity": float(solidity), "axis_ratio": float(np.sqrt(values[0] / values[1])),
            "depth_to_width": float(depth / width) if width > 0 else None, "long_axis_angle_deg": angle}


def _grow(region: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within ``radius`` pixels of ``region`` (dilation by a disk, through the distance transform)."""
    ndimage = _ndimage()
    return ndimage.distance_transform_edt(~region) <= radius


def _shrink(region: np.ndarray, radius: float) -> np.ndarray:
    """Pixels of ``region`` farther than ``radius`` pixels from outside it (erosion by a disk)."""
    ndimage = _ndimage()
    return ndimage.distance_transform_edt(region) > radius


def margin_roughness(region: np.ndarray) -> float:
    """Share of the lesion's area that a morphological opening then closing (a disk of
    ``SMOOTHING_RADIUS_SHARE`` of the equivalent diameter) changes: spicules, angles and lobules."""
    diameter = 2.0 * np.sqrt(np.count_nonzero(region) / np.pi)
    radius = max(1.0, SMOOTHING_RADIUS_SHARE * diameter)
    rows, cols = np.nonzero(region)
    pad = int(np.ceil(2 * radius)) + 2
    crop = np.pad(region[rows.min():rows.max() + 1, cols.min():cols.max() + 1], pad)
    opened = _grow(_shrink(crop, radius), radius)
    smooth = _shrink(_grow(opened, radius), radius)
    return float(np.count_nonzero(smooth ^ crop) / rows.size)


def _ring(region: np.ndarray, width: float) -> np.ndarray:
    ndimage = _ndimage()
    distance = ndimage.distance_transform_edt(~region)
    return (distance > 1.5) & (distance <= max(2.0, width))


def echo_numbers(gray: np.ndarray, region: np.ndarray) -> dict:
    """The lesion's median against the surrounding ring and the fat band above it, its spread (interquartile
    range over the surround's median) and the share of its pixels darker than ``DARK_PIXEL_RATIO``."""
    inside = gray[region]
    median = float(np.median(inside))
    diameter = 2.0 * np.sqrt(inside.size / np.pi)
    ring = gray[_ring(region, RING_WIDTH_SHARE * diameter)]
    surround = float(np.median(ring)) if ring.size >= MIN_PIXELS else None
    rows, cols = np.nonzero(region)
    height = gray.shape[0]
    top, bottom = int(FAT_BAND[0] * height), min(int(FAT_BAND[1] * height), rows.min())
    band = gray[top:bottom, cols.min():cols.max() + 1]
    fat = float(np.median(band)) if band.size >= MIN_PIXELS else None
    q1, q3 = np.percentile(inside, [25, 75])
    scale = max(surround or median, 1.0)  # the tissue's level: a cyst's median can be 0
    dark_cut = DARK_PIXEL_RATIO * (surround if surround else median)
    return {
        "echo_ratio_surround": None if not surround else median / surround,
        "echo_ratio_fat": None if not fat else median / fat,
        "echo_spread": float((q3 - q1) / scale),
        "dark_share": float(np.mean(inside < dark_cut)),
    }


def posterior_numbers(gray: np.ndarray, region: np.ndarray) -> dict:
    """Mean intensity of the band below the lesion over that of the bands beside it (same depth, same
    width each side), overall and the lowest and highest of its thirds; None where the image has no room."""
    rows, cols = np.nonzero(region)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    depth = max(3, (bottom - top) // 2)
    band_rows = slice(bottom, min(gray.shape[0], bottom + depth))
    if band_rows.stop - band_rows.start < 3:
        return {"posterior_ratio": None, "posterior_low": None, "posterior_high": None}
    width = right - left
    below = gray[band_rows, left:right]
    beside = np.concatenate([gray[band_rows, max(0, left - width):left].ravel(),
                             gray[band_rows, right:right + width].ravel()])
    if beside.size < MIN_PIXELS or beside.mean() <= 0:
        return {"posterior_ratio": None, "posterior_low": None, "posterior_high": None}
    reference = float(beside.mean())
    thirds = [part.mean() / reference for part in np.array_split(below, 3, axis=1) if part.size]
    return {"posterior_ratio": float(below.mean() / reference),
            "posterior_low": float(min(thirds)), "posterior_high": float(max(thirds))}


def shape_term(numbers: dict, rule: dict = SHAPE_RULE) -> str:
    if numbers["solidity"] < rule["irregular_below_solidity"]:
        return "irregular"
    return "round" if numbers["axis_ratio"] >= rule["round_from_axis_ratio"] else "oval"


def orientation_term(numbers: dict, rule: dict = ORIENTATION_RULE) -> str:
    ratio = numbers["depth_to_width"]  # None: no width, a vertical sliver
    return "not parallel" if ratio is None or ratio > rule["not_parallel_above_depth_to_width"] else "parallel"


def margin_term(numbers: dict, rule: dict = MARGIN_RULE) -> str:
    irregular = numbers["margin_irregularity"] > rule["not_circumscribed_above_irregularity"]
    return "not circumscribed" if irregular else "circumscribed"


def echo_term(numbers: dict, rule: dict = ECHO_RULE) -> str:
    surround, fat = numbers["echo_ratio_surround"], numbers["echo_ratio_fat"]
    if surround is not None and surround < rule["anechoic_below_ratio"]:
        return "anechoic"
    if numbers["dark_share"] >= rule["complex_from_dark_share"]:
        return "complex cystic/solid"
    if numbers["echo_spread"] > rule["heterogeneous_above_spread"]:
        return "heterogeneous"
    reference = fat if fat is not None else surround
    if reference is None:
        return "hypoechoic"
    if reference > rule["hyperechoic_above_ratio"]:
        return "hyperechoic"
    return "isoechoic" if reference > rule["isoechoic_above_ratio"] else "hypoechoic"


def posterior_term(numbers: dict, rule: dict = POSTERIOR_RULE) -> str:
    ratio, low, high = numbers["posterior_ratio"], numbers["posterior_low"], numbers["posterior_high"]
    if ratio is None:
        return "none"
    shadow, enhance = rule["shadowing_below_ratio"], rule["enhancement_above_ratio"]
    if low < shadow and high > enhance:
        return "combined"
    if ratio < shadow:
        return "shadowing"
    return "enhancement" if ratio > enhance else "none"


# descriptor: (rule function, its rule)
RULES = {
    "shape": (shape_term, SHAPE_RULE),
    "orientation": (orientation_term, ORIENTATION_RULE),
    "margin": (margin_term, MARGIN_RULE),
    "echo_pattern": (echo_term, ECHO_RULE),
    "posterior": (posterior_term, POSTERIOR_RULE),
}


def measure_numbers(image: np.ndarray, mask: np.ndarray, spacing=(1.0, 1.0)) -> dict:
    """Every descriptor number of one lesion (``mask``: one connected region; ``spacing``: (row_mm, col_mm))."""
    gray = _gray(image)
    region = _check_region(mask, gray.shape)
    spacing = check_spacing(spacing)
    numbers = shape_numbers(region, spacing)
    numbers["margin_irregularity"] = 1.0 - numbers["solidity"] + margin_roughness(region)
    numbers.update(echo_numbers(gray, region))
    numbers.update(posterior_numbers(gray, region))
    return numbers


def terms_of(numbers: dict) -> dict:
    """The lexicon terms the rules give ``numbers``."""
    return {descriptor: term(numbers, rule) for descriptor, (term, rule) in RULES.items()}


def describe_lesion(image: np.ndarray, mask: np.ndarray, spacing=(1.0, 1.0)) -> LesionDescriptors:
    """Numbers and lexicon terms of the lesion ``mask`` (one connected region) in ``image``."""
    numbers = measure_numbers(image, mask, spacing)
    return LesionDescriptors(**numbers, **terms_of(numbers))


# The per-lesion table's descriptor columns (after :data:`.measure.LESION_COLUMNS`, whose depth_to_width
# is the orientation's number); one name per :class:`LesionDescriptors` field, plus the likelihood.
DESCRIPTOR_COLUMNS = (
    Column("shape", "", "BI-RADS shape (oval, round, irregular), from solidity and axis_ratio; research use"),
    Column("solidity", "", "area over convex-hull area (below 1: concave outline)"),
    Column("axis_ratio", "", "minor over major axis of the moment ellipse (1: round)"),
    Column("orientation", "", "BI-RADS orientation (parallel, not parallel), from depth_to_width; research use"),
    Column("long_axis_angle_deg", "°", "angle of the moment ellipse's long axis to the image rows"),
    Column("margin", "", "BI-RADS margin (circumscribed, not circumscribed), from margin_irregularity; research use"),
    Column("margin_irregularity", "", "1 - solidity plus the share of the area an opening and closing change"),
    Column("echo_pattern", "", "BI-RADS echo pattern, from the echo numbers; research use"),
    Column("echo_ratio_surround", "", "lesion median intensity over that of the ring around it"),
    Column("echo_ratio_fat", "", "lesion median intensity over that of the band under the skin above it"),
    Column("echo_spread", "", "interquartile range of the lesion's intensities over the surround's median"),
    Column("dark_share", "", f"share of lesion pixels darker than {DARK_PIXEL_RATIO} x the surround's median"),
    Column("posterior", "", "BI-RADS posterior features (none, enhancement, shadowing, combined); research use"),
    Column("posterior_ratio", "", "mean intensity of the band below the lesion over the bands beside it"),
    Column("posterior_low", "", "lowest posterior_ratio of the band's thirds"),
    Column("posterior_high", "", "highest posterior_ratio of the band's thirds"),
    Column("malignancy_likelihood", "", "likelihood of malignancy (0-1) from the descriptor numbers; research use, "
                                        "not for diagnosis"),
)


def describe_lesions(image: np.ndarray, mask: np.ndarray, spacing=(1.0, 1.0), box_labels=None, model=None) -> list:
    """The :data:`DESCRIPTOR_COLUMNS` of every lesion of a 2-D mask (the regions :func:`.measure.lesion_regions`
    gives, in the same order as :func:`.measure.measure_lesions`), as dicts; all None for a lesion too small
    to describe. ``model``: the likelihood model (the bundled one by default)."""
    from .likelihood import load_likelihood_model

    regions = lesion_regions(mask, box_labels)
    if model is None and regions:
        model = load_likelihood_model()
    rows = []
    for _box, region in regions:
        if np.count_nonzero(region) < 3:
            rows.append({column.name: None for column in DESCRIPTOR_COLUMNS})
            continue
        described = describe_lesion(image, region, spacing).to_dict()
        described["malignancy_likelihood"] = model.probability(described)
        rows.append({column.name: described[column.name] for column in DESCRIPTOR_COLUMNS})
    return rows


def describe_frames(pixels: np.ndarray, masks: np.ndarray, spacing=(1.0, 1.0), box_labels=None, color=False) -> list:
    """:func:`describe_lesions` for each frame of an ``(F, H, W)`` mask stack (or one ``(H, W)`` mask) and its
    image (``(F, H, W[, C])``, or ``(H, W[, C])`` for one frame; ``color``: the last axis holds RGB(A))."""
    from .likelihood import load_likelihood_model

    masks = np.asarray(masks)
    pixels = np.asarray(pixels)
    if masks.ndim == 2:
        masks = masks[np.newaxis]
        box_labels = None if box_labels is None else np.asarray(box_labels)[np.newaxis]
    if pixels.ndim == 2 + (1 if color else 0):  # one frame
        pixels = pixels[np.newaxis]
    if pixels.ndim != masks.ndim + (1 if color else 0) or pixels.shape[:3] != masks.shape:
        raise ValueError(f"an image of shape {pixels.shape} does not match masks of shape {masks.shape}")
    model = load_likelihood_model() if masks.any() else None
    return [describe_lesions(frame, mask, spacing, None if box_labels is None else box_labels[number], model)
            for number, (frame, mask) in enumerate(zip(pixels, masks))]
