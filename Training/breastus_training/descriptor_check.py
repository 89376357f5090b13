"""``breastus-train descriptors``: the lexicon descriptors against the radiologists, and the malignancy likelihood.

Research use only, not for diagnosis. On one subset of the split (the test split once per shipped rule),
for the largest lesion region of every lesion image, on the ground-truth masks or on the masks the model
finds (``--masks model``: the weights' model card settings, as the extension runs it):

* agreement with BrEaST's radiologists (cases.csv), Cohen's kappa of the terms: shape (oval, round,
  irregular), margin (circumscribed or not), echo pattern (6 terms), posterior features (4 terms).
  BrEaST gives no orientation read, so orientation is not checked;
* AUC of the number for the main split: irregular vs oval/round (lower solidity), not circumscribed vs
  circumscribed (higher boundary irregularity), shadowing (or combined) vs not (lower posterior ratio);
* AUC of the malignancy likelihood for malignant vs benign on each dataset, and of the radiologists'
  BI-RADS category (1 < 2 < 3 < 4a < 4b < 4c < 5) on BrEaST as the reference. An image where the model
  finds no lesion gets likelihood 0 (it would not be flagged); for agreement it is left out and counted.

Each number gets a 95% percentile-bootstrap interval over the images (``intervals.bootstrap_interval``).
Writes ``report.json`` (with every image's numbers and terms) and ``report.md`` to ``--output``.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

from BreastUSSegmentLib import BUNDLED_WEIGHTS
from BreastUSSegmentLib.descriptors import RESEARCH_USE, RULES
from BreastUSSegmentLib.device import DEVICE_CHOICES, select_device
from BreastUSSegmentLib.fileio import write_text_atomically
from BreastUSSegmentLib.likelihood import MODEL_PATH, load_likelihood_model
from BreastUSSegmentLib.modelcard import WeightsError

from .busi import SPLITS, load_manifest
from .descriptor_data import BIRADS_ORDER, READ_DESCRIPTORS, cohen_kappa, describe_cases, roc_auc
from .intervals import RESAMPLES, bootstrap_interval

REPORT_FORMAT_VERSION = 1
# name: (descriptor read, positive reads, number, sign making a higher score mean positive)
NUMBER_SPLITS = {
    "irregular vs oval/round (solidity, lower)": ("shape", ("irregular",), "solidity", -1.0),
    "not circumscribed vs circumscribed (boundary irregularity)": ("margin", ("not circumscribed",),
                                                                   "margin_irregularity", 1.0),
    "shadowing or combined vs not (posterior ratio, lower)": ("posterior", ("shadowing", "combined"),
                                                              "posterior_ratio", -1.0),
}
NOT_CHECKED = {"orientation": "BrEaST gives no orientation read"}


def with_interval(statistic, columns: list, resamples: int, seed: int) -> dict:
    """``statistic(*columns)`` over the images (one per row of the columns) with its bootstrap interval."""
    low, high = bootstrap_interval(statistic, columns, resamples, seed)
    return {"images": len(columns[0]), "value": statistic(*columns), "low": low, "high": high}


def agreement(rows: list[dict], resamples: int, seed: int) -> dict:
    """Kappa of each descriptor's terms against the reads, over described BrEaST images with that read."""
    result = {}
    for descriptor in READ_DESCRIPTORS:
        pairs = [(row["terms"][descriptor], row["reads"][descriptor]) for row in rows
                 if row.get("terms") and row.get("reads", {}).get(descriptor)]
        if not pairs:
            continue
        ours, theirs = (list(side) for side in zip(*pairs))
        result[descriptor] = with_interval(cohen_kappa, [ours, theirs], resamples, seed)
    return result


def number_aucs(rows: list[dict], resamples: int, seed: int) -> dict:
    result = {}
    for name, (descriptor, positive, number, sign) in NUMBER_SPLITS.items():
        pairs = [(sign * row["numbers"][number], row["reads"][descriptor] in positive) for row in rows
                 if row.get("numbers") and row["numbers"].get(number) is not None
                 and row.get("reads", {}).get(descriptor)]
        if not pairs:
            continue
        scores, labels = (list(side) for side in zip(*pairs))
        result[name] = with_interval(roc_auc, [scores, labels], resamples, seed)
    return result


def malignancy_aucs(rows: list[dict], resamples: int, seed: int) -> dict:
    """Likelihood AUC per dataset and, on BrEaST, the radiologists' BI-RADS category's AUC."""
    result = {}
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        subset = [row for row in rows if row["dataset"] == dataset]
        scores = [row["likelihood"] for row in subset]
        labels = [row["label"] == "malignant" for row in subset]
        result[f"{dataset}: malignancy likelihood"] = with_interval(roc_auc, [scores, labels], resamples, seed)
        graded = [row for row in subset if row.get("reads", {}).get("birads") in BIRADS_ORDER]
        if graded:
            scores = [BIRADS_ORDER.index(row["reads"]["birads"]) for row in graded]
            labels = [row["label"] == "malignant" for row in graded]
            result[f"{dataset}: radiologists' BI-RADS category"] = with_interval(roc_auc, [scores, labels], resamples,
                                                                                 seed)
    return result


def check(data_roots, split_path, subset: str, masks: str, output: Path, weights=BUNDLED_WEIGHTS,
          device: str = "auto", likelihood_path=MODEL_PATH, resamples: int = RESAMPLES, seed: int = 0,
          progress: bool = True, log=print) -> dict:
    """Describe ``subset``'s lesion images, score the descriptors and the likelihood, write the report."""
    manifest = load_manifest(split_path)
    cases = manifest.cases_for(subset)
    segmenter = None
    if masks == "model":
        from BreastUSSegmentLib.inference import LesionSegmenter  # torch only when the model runs

        try:
            segmenter = LesionSegmenter.from_weights(weights, select_device(device), backend="torch")  # as evaluate
        except (WeightsError, RuntimeError) as error:
            raise ValueError(str(error)) from error
    model = load_likelihood_model(likelihood_path)
    rows = describe_cases(data_roots, cases, segmenter, progress)
    if not rows:
        raise ValueError(f"the split {split_path} has no lesion image in subset {subset!r}")
    for row in rows:
        row["likelihood"] = model.probability(row["numbers"]) if row.get("numbers") else 0.0
    report = {
        "format_version": REPORT_FORMAT_VERSION,
        "research_use": RESEARCH_USE,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "subset": subset,
        "masks": masks,
        "split": {"path": str(split_path), "sha256": manifest.sha256},
        "weights": None if segmenter is None else {"path": str(weights), "sha256": segmenter.card.sha256,
                                                   "postprocessing": segmenter.postprocessing.to_dict()},
        "rules": {descriptor: rule for descriptor, (_, rule) in RULES.items()},
        "likelihood": model.to_dict(),
        "no_lesion_found": {dataset: sum(1 for row in rows if row["dataset"] == dataset and not row["found"])
                            for dataset in dict.fromkeys(row["dataset"] for row in rows)},
        "agreement_kappa": agreement(rows, resamples, seed),
        "number_auc": number_aucs(rows, resamples, seed),
        "not_checked": NOT_CHECKED,
        "malignancy_auc": malignancy_aucs(rows, resamples, seed),
        "cases": rows,
    }
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomically(output / "report.json", json.dumps(report, indent=1) + "\n")
    write_text_atomically(output / "report.md", markdown_report(report) + "\n")
    log(f"wrote {output / 'report.json'} and {output / 'report.md'}")
    return report


def _line(name: str, stats: dict) -> str:
    interval = "too few images" if stats["low"] is None else f"{stats['low']:.2f} - {stats['high']:.2f}"
    return f"| {name} | {stats['images']} | {stats['value']:.2f} | {interval} |"


def markdown_report(report: dict) -> str:
    """The report's numbers as a table with their 95% bootstrap intervals."""
    lines = [f"Descriptors on {report['subset']}, {report['masks']} masks ({report['research_use']}); "
             "95% percentile-bootstrap intervals over images", "",
             "| number | images | value | 95% interval |", "| --- | --- | --- | --- |"]
    lines += [_line(f"kappa, {name}", stats) for name, stats in report["agreement_kappa"].items()]
    lines += [_line(f"AUC, {name}", stats) for name, stats in report["number_auc"].items()]
    lines += [_line(f"AUC, {name}", stats) for name, stats in report["malignancy_auc"].items()]
    lines += ["", "Not checked: " + "; ".join(f"{name} ({why})" for name, why in report["not_checked"].items())]
    missing = {dataset: count for dataset, count in report["no_lesion_found"].items() if count}
    if missing:
        lines.append("No lesion found (likelihood 0, left out of the agreement): "
                     + ", ".join(f"{dataset} {count}" for dataset, count in missing.items()))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, action="append",
                        help="a dataset folder of the split (BUSI or BrEaST); repeat for each")
    parser.add_argument("--split", type=Path, required=True, help="split file, e.g. Training/splits/busi_breast_split.json")
    parser.add_argument("--subset", default="val", choices=SPLITS, help="which part of the split (default: val)")
    parser.add_argument("--masks", default="truth", choices=("truth", "model"),
                        help="describe the ground-truth masks or the model's (default: truth)")
    parser.add_argument("--weights", type=Path, default=BUNDLED_WEIGHTS,
                        help="with --masks model: model .safetensors, card beside it (default: the bundled model)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="where the model runs (default: auto)")
    parser.add_argument("--likelihood", type=Path, default=MODEL_PATH,
                        help=f"likelihood model JSON (default: the core's {MODEL_PATH.name})")
    parser.add_argument("--output", type=Path, required=True, help="report folder")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help=f"bootstrap resamples (default {RESAMPLES})")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the resampling (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.resamples < 2:
        raise ValueError(f"--resamples must be at least 2, got {args.resamples}")
    report = check(args.data, args.split, args.subset, args.masks, args.output, args.weights, args.device,
                   args.likelihood, args.resamples, args.seed, progress=not args.no_progress)
    print(markdown_report(report))
    return 0
