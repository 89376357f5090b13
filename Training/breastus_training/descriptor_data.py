"""Descriptor rows of a split's lesion images and the radiologists' reads to check them against.

Shared by ``descriptors-fit`` (choosing the rules and fitting the likelihood) and
``descriptors`` (checking them). One row per lesion image: the numbers and terms
of its largest lesion region (ground-truth or model mask), its class and, for
BrEaST, the radiologists' Shape, Margin, Echogenicity, Posterior features and
BI-RADS from ``cases.csv``. Research use only, not for diagnosis.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy.stats import rankdata
from tqdm import tqdm

from BreastUSSegmentLib.descriptors import measure_numbers, terms_of
from BreastUSSegmentLib.postprocessing import keep_largest_component

from .busi import LESION_CLASSES, load_case
from .datasets import DataRoots, DatasetError

READS_TABLE = "cases.csv"
BIRADS_ORDER = ("1", "2", "3", "4a", "4b", "4c", "5")  # the category as an ordinal score 1..7
POSTERIOR_READS = {"no": "none", "enhancement": "enhancement", "shadowing": "shadowing", "combined": "combined"}


# The descriptors that BrEaST's reads give (and read_reads returns, with the BI-RADS category).
READ_DESCRIPTORS = ("shape", "margin", "echo_pattern", "posterior")


def read_reads(root: Path) -> dict:
    """``{case id: {"shape", "margin", "echo_pattern", "posterior", "birads"}}`` from BrEaST's cases.csv, in
    the descriptors' terms (margin as circumscribed / not circumscribed); "not applicable" reads are left out."""
    path = Path(root) / READS_TABLE
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            table = list(csv.DictReader(stream))
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read the radiologists' reads {path}: {error}") from error
    reads = {}
    for row in table:
        try:
            case_id = Path(row["Image_filename"].strip()).stem
            margin = row["Margin"].strip()
            read = {
                "shape": row["Shape"].strip(),
                "margin": "circumscribed" if margin == "circumscribed" else
                          "not circumscribed" if margin.startswith("not circumscribed") else None,
                "echo_pattern": row["Echogenicity"].strip(),
                "posterior": POSTERIOR_READS.get(row["Posterior_features"].strip()),
                "birads": row["BIRADS"].strip().lower(),
            }
        except (KeyError, AttributeError):
            raise DatasetError(f"{path} needs the columns Image_filename, Shape, Margin, Echogenicity, "
                               "Posterior_features and BIRADS") from None
        reads[case_id] = {key: (None if value in ("not applicable", "") else value) for key, value in read.items()}
    return reads


def describe_cases(data_roots, cases: list, segmenter=None, progress: bool = True) -> list[dict]:
    """One row per lesion case: id, dataset, label, the reads (BrEaST) and the numbers and terms of its largest
    ground-truth region, or of the largest region ``segmenter`` (a LesionSegmenter) finds ("found": False and
    no numbers when it finds none)."""
    roots = DataRoots.from_paths(data_roots)
    reads_of = {}
    rows = []
    lesion_cases = [case for case in cases if case.label in LESION_CLASSES]
    for case in tqdm(lesion_cases, desc="describing", unit="image", disable=not progress):
        image, mask = load_case(roots, case)
        if segmenter is not None:
            mask = segmenter.segment(image).processed_mask[0]
        region = keep_largest_component(mask) if mask.any() else None
        row = {"id": case.id, "dataset": case.dataset, "label": case.label, "found": region is not None}
        if case.dataset == "BrEaST":
            if "BrEaST" not in reads_of:
                reads_of["BrEaST"] = read_reads(roots.root_for("BrEaST"))
            row["reads"] = reads_of["BrEaST"].get(case.id, {})
        if region is not None:
            spacing = (case.pixel_size_mm,) * 2 if case.pixel_size_mm else (1.0, 1.0)
            row["numbers"] = measure_numbers(image, region, spacing)
            row["terms"] = terms_of(row["numbers"])
        rows.append(row)
    return rows


def cohen_kappa(first, second) -> float:
    """Cohen's kappa of two lists of labels (nan when chance agreement is 1)."""
    first, second = np.asarray(first, dtype=object), np.asarray(second, dtype=object)
    labels = sorted(set(first.tolist()) | set(second.tolist()))
    observed = float(np.mean(first == second))
    chance = sum(float(np.mean(first == label)) * float(np.mean(second == label)) for label in labels)
    return float("nan") if chance >= 1.0 else (observed - chance) / (1.0 - chance)


def roc_auc(scores, positives) -> float:
    """Area under the ROC curve of ``scores`` for the bool ``positives`` (ties count half; nan with one class)."""
    scores, positives = np.asarray(scores, dtype=float), np.asarray(positives, dtype=bool)
    count_positive, count_negative = int(positives.sum()), int((~positives).sum())
    if not count_positive or not count_negative:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - count_positive * (count_positive + 1) / 2)
                 / (count_positive * count_negative))
