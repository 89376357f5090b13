"""``breastus-train intervals``: how much an evaluation's numbers could move with other images of the same kind.

Reads the ``report.json`` that ``evaluate`` wrote and bootstraps its per-case rows:
within each dataset, the lesion images and the normal images are each resampled
with replacement (every group keeps its size), the summary numbers are
recomputed for each resample, and the 2.5th and 97.5th percentiles of the
resampled values give a 95% interval (the percentile bootstrap). Nothing is
segmented again and no image is read, so a test report can be examined without
touching the test split anew.

The numbers are the report's own: mean lesion Dice and IoU, the share of lesion
images left empty, the share of normal images with a false lesion, and the
all-image Dice (a normal image scores 1 when left empty, 0 otherwise). A number
counted over fewer than ten images gets no interval.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .busi import LEGACY_DATASET, LESION_CLASSES, NORMAL_CLASS
from .evaluate import MODES, REPORT_FORMAT_VERSION

RESAMPLES = 10000
CONFIDENCE = 0.95
MIN_IMAGES = 10  # below this many images a percentile interval says nothing; none is given

# name: (label printed, which images it counts)
METRICS = {
    "lesion_dice": ("lesion Dice", "lesion"),
    "lesion_iou": ("lesion IoU", "lesion"),
    "lesions_empty": ("lesions left empty", "lesion"),
    "normal_false_positives": ("normal images with a false lesion", "normal"),
    "all_image_dice": ("all-image Dice", "all"),
}


class Strata:
    """Per-image values of one group of rows, split by dataset and kind (lesion / normal)."""

    def __init__(self, rows: list[dict], mode: str):
        self.lesion, self.normal = [], []  # one dict of value arrays per dataset
        for dataset in dict.fromkeys(row.get("dataset", LEGACY_DATASET) for row in rows):
            scores = [row for row in rows if row.get("dataset", LEGACY_DATASET) == dataset]
            lesion = [row[mode] for row in scores if row["label"] in LESION_CLASSES]
            normal = [row[mode] for row in scores if row["label"] == NORMAL_CLASS]
            self.lesion.append({
                "dice": np.array([s["dice"] for s in lesion], dtype=float),
                "iou": np.array([s["iou"] for s in lesion], dtype=float),
                "empty": np.array([s["predicted_pixels"] == 0 for s in lesion], dtype=float),
            })
            self.normal.append({"false_positive": np.array([s["predicted_pixels"] > 0 for s in normal], dtype=float)})
        self.lesion_images = sum(len(s["dice"]) for s in self.lesion)
        self.normal_images = sum(len(s["false_positive"]) for s in self.normal)

    def sums(self, draw) -> dict:
        """Sum of each value over the groups, each group drawn by ``draw(values)`` (identity: the sample itself)."""
        lesion = {key: sum(draw(s[key]) for s in self.lesion) for key in ("dice", "iou", "empty")}
        lesion["false_positive"] = sum(draw(s["false_positive"]) for s in self.normal)
        return lesion

    def metrics(self, sums: dict) -> dict:
        """The report's numbers from summed values (None where the group has no such images)."""
        lesions, normals = self.lesion_images, self.normal_images
        return {
            "lesion_dice": sums["dice"] / lesions if lesions else None,
            "lesion_iou": sums["iou"] / lesions if lesions else None,
            "lesions_empty": sums["empty"] / lesions if lesions else None,
            "normal_false_positives": sums["false_positive"] / normals if normals else None,
            "all_image_dice": (sums["dice"] + normals - sums["false_positive"]) / (lesions + normals)
            if lesions + normals else None,
        }


def bootstrap(rows: list[dict], mode: str = "processed", resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """``{metric: {"images", "value", "low", "high"}}`` for ``rows``: the images the number counts, its value
    and its interval (low and high None below ``MIN_IMAGES``; the metric None where there are no such images)."""
    if resamples < 2:
        raise ValueError(f"--resamples must be at least 2, got {resamples}")
    strata = Strata(rows, mode)
    rng = np.random.default_rng(seed)

    def resampled_sums(values: np.ndarray) -> np.ndarray:
        if len(values) == 0:
            return np.zeros(resamples)
        return values[rng.integers(0, len(values), size=(resamples, len(values)))].sum(axis=1)

    point = strata.metrics(strata.sums(np.sum))
    drawn = strata.metrics(strata.sums(resampled_sums))
    counted = {"lesion": strata.lesion_images, "normal": strata.normal_images,
               "all": strata.lesion_images + strata.normal_images}
    tail = (1.0 - CONFIDENCE) / 2.0
    result = {}
    for name, value in point.items():
        if value is None:
            result[name] = None
            continue
        images = counted[METRICS[name][1]]
        low, high = np.quantile(drawn[name], [tail, 1.0 - tail]) if images >= MIN_IMAGES else (None, None)
        result[name] = {"images": images, "value": float(value),
                        "low": None if low is None else float(low), "high": None if high is None else float(high)}
    return result


def report_intervals(report: dict, mode: str = "processed", resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Intervals for every dataset of the report and, with more than one, for all of them pooled."""
    rows = report["cases"]
    datasets = list(dict.fromkeys(row.get("dataset", LEGACY_DATASET) for row in rows))
    groups = {name: [row for row in rows if row.get("dataset", LEGACY_DATASET) == name] for name in datasets}
    if len(datasets) > 1:
        groups["all"] = rows
    return {
        name: {"images": len(group), "intervals": bootstrap(group, mode, resamples, seed)}
        for name, group in groups.items()
    }


def read_report(path: str | Path) -> dict:
    """The report.json at ``path`` (a file or the report folder); ValueError naming the file when unusable."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such report; pass the report.json (or its folder) that evaluate wrote") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the report: {error}") from None
    if not isinstance(report, dict) or report.get("format_version") != REPORT_FORMAT_VERSION or "cases" not in report:
        raise ValueError(f"{path}: not a report of this version of breastus-train evaluate "
                         f"(format_version {REPORT_FORMAT_VERSION} with per-case rows)")
    return report


def markdown_table(intervals: dict, mode: str) -> str:
    """One row per group and number: value and its 95% interval."""
    lines = [f"95% bootstrap intervals, {mode} masks",
             "",
             "| dataset | number | images counted | value | 95% interval |",
             "| --- | --- | --- | --- | --- |"]
    for name, group in intervals.items():
        for key, (label, _) in METRICS.items():
            stats = group["intervals"][key]
            if stats is None:
                continue
            interval = ("too few images" if stats["low"] is None
                        else f"{stats['low']:.3f} - {stats['high']:.3f}")
            lines.append(f"| {name} | {label} | {stats['images']} | {stats['value']:.3f} | {interval} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report", type=Path, required=True, help="report.json written by evaluate (or its folder)")
    parser.add_argument("--mode", choices=MODES, default="processed", help="which masks (default: processed)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help=f"bootstrap resamples (default {RESAMPLES})")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the resampling (default 0)")


def run(args: argparse.Namespace) -> int:
    report = read_report(args.report)
    print(markdown_table(report_intervals(report, args.mode, args.resamples, args.seed), args.mode))
    return 0
