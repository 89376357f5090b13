"""``breastus-train intervals``: how much an evaluation's numbers could move with other images of the same kind.

Reads the ``report.json`` that ``evaluate`` wrote and gives each summary number a
95% interval, counting only the variation from which images happened to be in
the subset (not, for example, the training seed):

* mean lesion Dice, mean lesion IoU and all-image Dice (a normal image scores 1
  when left empty, 0 otherwise): percentile bootstrap. Within each dataset the
  lesion images and the normal images are resampled with replacement apart (each
  group keeps its size), every number is recomputed from the same resample, and
  the 2.5th and 97.5th percentiles give the interval. None below ten images;
* the share of lesion images left empty and of normal images with a false
  lesion: the exact (Clopper-Pearson) binomial interval of the count, which
  stays honest for a few events, where a bootstrap interval is too narrow (and
  of zero width for none).

Nothing is segmented again and no image is read, so a test report can be
examined without touching the test split anew.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import beta

from .busi import LESION_CLASSES, NORMAL_CLASS
from .evaluate import MODES, REPORT_FORMAT_VERSION, all_image_dice, dataset_of, lesion_statistics, normal_statistics

RESAMPLES = 10000
CONFIDENCE = 0.95
SCORE_KEYS = {"dice", "iou", "hd95_px", "intersection", "union", "predicted_pixels"}  # a row's scores of one mode
MIN_IMAGES = 10  # below this many images a bootstrap interval says nothing; none is given

# name: (label printed, which images it counts)
METRICS = {
    "lesion_dice": ("lesion Dice", "lesion"),
    "lesion_iou": ("lesion IoU", "lesion"),
    "lesions_empty": ("lesions left empty", "lesion"),
    "normal_false_positives": ("normal images with a false lesion", "normal"),
    "all_image_dice": ("all-image Dice", "all"),
}


def exact_share_interval(count: int, total: int) -> tuple[float, float]:
    """Clopper-Pearson interval of a share ``count / total`` at ``CONFIDENCE``."""
    tail = (1.0 - CONFIDENCE) / 2.0
    low = 0.0 if count == 0 else float(beta.ppf(tail, count, total - count + 1))
    high = 1.0 if count == total else float(beta.ppf(1.0 - tail, count + 1, total - count))
    return low, high


def bootstrap_means(rows: list[dict], mode: str, resamples: int, seed: int) -> dict:
    """Resampled lesion Dice, lesion IoU and all-image Dice of ``rows`` (arrays of ``resamples`` values):
    lesion and normal images of each dataset resampled apart, all three numbers from the same draws."""
    rng = np.random.default_rng(seed)
    dice_sum, iou_sum, normals_empty = np.zeros(resamples), np.zeros(resamples), np.zeros(resamples)
    lesions = normals = 0
    for dataset in dict.fromkeys(dataset_of(row) for row in rows):
        dataset_rows = [row for row in rows if dataset_of(row) == dataset]
        lesion = [row[mode] for row in dataset_rows if row["label"] in LESION_CLASSES]
        normal = [row[mode] for row in dataset_rows if row["label"] == NORMAL_CLASS]
        if lesion:
            picks = rng.integers(0, len(lesion), size=(resamples, len(lesion)))
            dice_sum += np.array([s["dice"] for s in lesion], dtype=float)[picks].sum(axis=1)
            iou_sum += np.array([s["iou"] for s in lesion], dtype=float)[picks].sum(axis=1)
        if normal:
            picks = rng.integers(0, len(normal), size=(resamples, len(normal)))
            normals_empty += np.array([s["predicted_pixels"] == 0 for s in normal], dtype=float)[picks].sum(axis=1)
        lesions, normals = lesions + len(lesion), normals + len(normal)
    return {
        "lesion_dice": dice_sum / max(lesions, 1),
        "lesion_iou": iou_sum / max(lesions, 1),
        "all_image_dice": (dice_sum + normals_empty) / max(lesions + normals, 1),
    }


def intervals_of(rows: list[dict], mode: str = "processed", resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """``{metric: {"images", "value", "low", "high"}}`` for ``rows``: the images the number counts, its value
    and its interval (low and high None for a bootstrap number below ``MIN_IMAGES``). A metric is None where
    ``rows`` hold no such images; all-image Dice is None without normal images (it would be lesion Dice again)."""
    if resamples < 2:
        raise ValueError(f"--resamples must be at least 2, got {resamples}")
    lesion = lesion_statistics([row for row in rows if row["label"] in LESION_CLASSES], mode)
    normal = normal_statistics([row for row in rows if row["label"] == NORMAL_CLASS], mode)
    lesions, normals = lesion["images"], normal["images"]
    values = {  # (images counted, value): evaluate's own summary numbers
        "lesion_dice": (lesions, lesion["dice_mean"] if lesions else None),
        "lesion_iou": (lesions, lesion["iou_mean"] if lesions else None),
        "lesions_empty": (lesions, lesion["empty"] / lesions if lesions else None),
        "normal_false_positives": (normals, normal["false_positive_rate"]),
        "all_image_dice": (len(rows), all_image_dice(rows, mode) if normals else None),
    }
    drawn = bootstrap_means(rows, mode, resamples, seed)
    shares = {"lesions_empty": (lesion["empty"], lesions), "normal_false_positives": (normal["false_positives"], normals)}
    tail = (1.0 - CONFIDENCE) / 2.0
    result = {}
    for name, (images, value) in values.items():
        if value is None:
            result[name] = None
            continue
        if name in shares:
            low, high = exact_share_interval(*shares[name])
        elif images >= MIN_IMAGES:
            low, high = (float(q) for q in np.quantile(drawn[name], [tail, 1.0 - tail]))
        else:
            low = high = None
        result[name] = {"images": images, "value": float(value), "low": low, "high": high}
    return result


def report_intervals(report: dict, mode: str = "processed", resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Intervals for every dataset of the report and, when it has several, for all of them pooled ("all")."""
    rows = report["cases"]
    groups = {name: [row for row in rows if dataset_of(row) == name] for name in dict.fromkeys(map(dataset_of, rows))}
    if len(groups) > 1:
        groups["all"] = rows
    return {name: intervals_of(group, mode, resamples, seed) for name, group in groups.items()}


def read_report(path: str | Path, mode: str = "processed") -> dict:
    """The report.json at ``path`` (a file or the report folder); ValueError naming the file when unusable."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such report; pass the report.json (or its folder) that evaluate wrote") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the report: {error}") from None
    if not isinstance(report, dict) or report.get("format_version") != REPORT_FORMAT_VERSION \
            or not isinstance(report.get("cases"), list):
        raise ValueError(f"{path}: not a report of this version of breastus-train evaluate "
                         f"(format_version {REPORT_FORMAT_VERSION} with per-case rows)")
    if not report["cases"]:
        raise ValueError(f"{path}: the report has no cases")
    labels = (*LESION_CLASSES, NORMAL_CLASS)
    for row in report["cases"]:
        scores = row.get(mode) if isinstance(row, dict) else None
        if not isinstance(scores, dict) or row.get("label") not in labels \
                or not SCORE_KEYS <= scores.keys():
            case = row.get("id") if isinstance(row, dict) else row
            raise ValueError(f"{path}: case {case!r} needs a label ({', '.join(labels)}) and {mode} scores "
                             f"({', '.join(sorted(SCORE_KEYS))})")
    return report


def markdown_table(intervals: dict, mode: str) -> str:
    """One row per group and number: images counted, value and its 95% interval."""
    lines = [f"95% intervals, {mode} masks (Dice and IoU: bootstrap; shares: exact binomial)",
             "",
             "| dataset | number | images counted | value | 95% interval |",
             "| --- | --- | --- | --- | --- |"]
    for name, group in intervals.items():
        for key, (label, _) in METRICS.items():
            stats = group[key]
            if stats is None:
                continue
            interval = "too few images" if stats["low"] is None else f"{stats['low']:.3f} - {stats['high']:.3f}"
            lines.append(f"| {name} | {label} | {stats['images']} | {stats['value']:.3f} | {interval} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report", type=Path, required=True, help="report.json written by evaluate (or its folder)")
    parser.add_argument("--mode", choices=MODES, default="processed", help="which masks (default: processed)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help=f"bootstrap resamples (default {RESAMPLES})")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the resampling (default 0)")


def run(args: argparse.Namespace) -> int:
    report = read_report(args.report, args.mode)
    print(markdown_table(report_intervals(report, args.mode, args.resamples, args.seed), args.mode))
    return 0


def bootstrap_interval(statistic, columns: list, resamples: int = RESAMPLES, seed: int = 0):
    """Percentile bootstrap interval at ``CONFIDENCE`` of ``statistic(*columns)``, the cases (the rows of the
    equally long ``columns``) resampled with replacement; resamples where the statistic is undefined (nan,
    e.g. one class only) are skipped. ``(None, None)`` below ``MIN_IMAGES`` cases."""
    arrays = [np.asarray(column) for column in columns]
    count = len(arrays[0])
    if count < MIN_IMAGES:
        return None, None
    rng = np.random.default_rng(seed)
    values = np.array([statistic(*(array[picks] for array in arrays))
                       for picks in rng.integers(0, count, size=(resamples, count))], dtype=float)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return None, None
    tail = (1.0 - CONFIDENCE) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)
