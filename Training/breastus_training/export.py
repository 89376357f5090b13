"""Export evaluated weights as the extension's bundled model, with the evaluation in its model card.

The weights are loaded (their sha256 verified), re-saved through the core's
``save_model`` and given a model card whose ``metrics`` are the numbers of an
evaluation report made with these very weights, and whose ``training`` block
is the training provenance plus the split's and the report's sha256.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from BreastUSSegmentLib import BUNDLED_WEIGHTS
from BreastUSSegmentLib.postprocessing import PostprocessOptions
from BreastUSSegmentLib.weights import ModelCard, WeightsError, card_path_for, load_model, save_model, sha256_of_file

REQUIRED_REPORT_KEYS = (
    ("subset",),
    ("summary", "processed", "lesion"),
    ("summary", "raw", "lesion"),
    ("summary", "processed", "normal"),
    ("weights", "sha256"),
    ("split", "sha256"),
    ("options", "test_time_flip"),
    ("options", "postprocessing", "threshold"),
)
SUMMARY_KEYS = ("dice_mean", "dice_std", "iou_mean", "iou_std", "pooled_iou", "hd95_px_mean", "hd95_px_median", "hd95_undefined")


class ExportError(ValueError):
    """The export would be inconsistent or would overwrite a file."""


def read_report(path: str | os.PathLike) -> dict:
    """Read an evaluation ``report.json`` and check that it holds the parts export needs."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"evaluation report not found: {path}")
    try:
        report = json.loads(path.read_text())
        for keys in REQUIRED_REPORT_KEYS:
            value = report
            for key in keys:
                value = value[key]
    except (ValueError, KeyError, TypeError) as error:
        raise ExportError(
            f"{path} is not an evaluation report written by 'breastus-train evaluate' (missing or unreadable {error})"
        ) from error
    return report


def card_metrics(report: dict) -> dict:
    """The model card's ``metrics``: subset, options and the headline numbers with post-processing on and off,
    pooled and (for a split over several datasets) per dataset."""
    summary = report["summary"]
    metrics = {
        "subset": report["subset"],
        "test_time_flip": report["options"]["test_time_flip"],
        "threshold": report["options"]["postprocessing"]["threshold"],
        **summary_metrics(summary),
    }
    if summary.get("per_dataset"):
        metrics["per_dataset"] = {name: summary_metrics(part) for name, part in summary["per_dataset"].items()}
    return metrics


def summary_metrics(summary: dict) -> dict:
    """Image counts and, per post-processing mode, the headline numbers of one evaluation summary."""
    metrics = {"lesion_images": summary["processed"]["lesion"]["images"],
               "normal_images": summary["processed"]["normal"]["images"]}
    for mode in ("processed", "raw"):
        lesion, normal = summary[mode]["lesion"], summary[mode]["normal"]
        block = {f"lesion_{key}": lesion[key] for key in SUMMARY_KEYS}
        block["normal_false_positive_rate"] = normal["false_positive_rate"]
        block["all_image_dice"] = summary[mode].get("all_image_dice")  # absent from reports made before it existed
        if "empty" in lesion:
            block["lesions_left_empty"] = lesion["empty"]
        for label in ("benign", "malignant"):
            block[f"{label}_dice_mean"] = summary[mode][label]["dice_mean"]
            block[f"{label}_iou_mean"] = summary[mode][label]["iou_mean"]
        metrics[mode] = block
    return metrics


def export_model(
    weights: str | os.PathLike,
    report_path: str | os.PathLike,
    output: str | os.PathLike = BUNDLED_WEIGHTS,
    threshold: float | None = None,
    force: bool = False,
) -> ModelCard:
    """Write ``output`` (.safetensors) and its model card; return the new card."""
    weights, report_path, output = Path(weights), Path(report_path), Path(output)
    if output.suffix != ".safetensors":
        raise ExportError(f"the output must be a .safetensors file, got {output}")
    existing = [path for path in (output, card_path_for(output)) if path.exists()]
    if existing and not force:
        raise ExportError(f"{existing[0]} already exists; pass --force to replace it")
    model, card = load_model(weights, device="cpu")
    report = read_report(report_path)
    if report["weights"]["sha256"] != card.sha256:
        raise ExportError(
            f"{report_path} evaluates weights with sha256 {report['weights']['sha256']}, but {weights} has "
            f"{card.sha256}; evaluate these weights first"
        )
    if report["options"].get("box_prompt") is not None:
        raise ExportError(
            f"{report_path} evaluates box prompts (--box-margin); a model card carries the automatic evaluation"
        )
    evaluated = report["options"]["postprocessing"]
    if threshold is not None and threshold != evaluated["threshold"]:
        raise ExportError(
            f"{report_path} was computed at threshold {evaluated['threshold']}, not {threshold}; "
            f"run 'breastus-train evaluate --threshold {threshold}' and export that report"
        )
    options = PostprocessOptions.from_dict(evaluated)  # exactly what was evaluated
    training = dict(card.training)
    training.update({
        "source_weights_sha256": card.sha256,
        "split_sha256": report["split"]["sha256"],
        "evaluation_report": {"path": str(report_path), "sha256": sha256_of_file(report_path)},
    })
    return save_model(
        model, output, input_size=tuple(card.input_size), postprocessing=options,
        training=training, metrics=card_metrics(report), name=card.name,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, required=True, help="trained .safetensors, e.g. run/best.safetensors")
    parser.add_argument("--report", type=Path, required=True, help="report.json written by 'evaluate' for these weights")
    parser.add_argument("--output", type=Path, default=BUNDLED_WEIGHTS, help=f"default: {BUNDLED_WEIGHTS}")
    parser.add_argument("--threshold", type=float, help="must equal the threshold the report was computed at")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> int:
    try:
        card = export_model(args.weights, args.report, args.output, args.threshold, args.force)
    except WeightsError as error:  # reported by the command line like any other bad input
        raise ExportError(str(error)) from error
    print(f"wrote {args.output} and {card_path_for(args.output)}")
    print(f"sha256 {card.sha256}")
    return 0
