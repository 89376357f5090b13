"""Export evaluated weights as the extension's bundled model, with the evaluation in its model card.

The weights are loaded (their sha256 verified), re-saved through the core's
``save_model`` and given a model card whose ``metrics`` are the numbers of an
evaluation report made with these very weights, and whose ``training`` block
is the training provenance plus the split's and the report's sha256.

With ``--storage-dtype float16`` (or ``bfloat16``) the floating-point tensors
are stored in half precision, which halves the file, but only if the processed
masks do not change: before writing, every val image of the report's split is
segmented by the float32 model and by its stored copy, and the export is refused
unless their mean processed-mask Dice is at least ``AGREEMENT_DICE``. The
measured agreement goes into the card's ``training`` block.

The network's ONNX graph is written beside the weights (``<name>.onnx``, float16
weights unless ``--onnx-dtype float32``) and listed in the card (see
:mod:`.onnx_graph`); ``breastus-train onnx --data ... --split ...`` then measures
each backend's agreement with PyTorch float32.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from BreastUSSegmentLib import BUNDLED_WEIGHTS
from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.metrics import dice_score
from BreastUSSegmentLib.model import AttentionUNet, AttentionUNetEnsemble
from BreastUSSegmentLib.modelcard import STORAGE_DTYPES, ModelCard, WeightsError, card_path_for, check_storage_dtype
from BreastUSSegmentLib.options import PostprocessOptions
from BreastUSSegmentLib.weights import load_model, save_model, sha256_of_file, stored_copy

from .busi import load_case, load_manifest
from .onnx_graph import AGREEMENT_DICE, AGREEMENT_SUBSET, GRAPH_DTYPES, attach_graph
from .datasets import DataRoots

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


def storage_agreement(
    model: AttentionUNet | AttentionUNetEnsemble,
    input_size: tuple[int, int],
    postprocessing: PostprocessOptions,
    storage_dtype: str,
    data_roots,
    split_path: str | os.PathLike,
    progress: bool = True,
) -> dict:
    """Processed-mask Dice between ``model`` (float32) and its copy stored in ``storage_dtype``, per val image.

    Both run on the CPU in float32 compute (so only the storage differs) with the same post-processing; two
    empty masks agree (Dice 1). Returns the subset, the split's sha256, the image count, the mean and
    minimum Dice and how many images are below ``AGREEMENT_DICE``.
    """
    roots, manifest = DataRoots.from_paths(data_roots), load_manifest(split_path)
    cases = manifest.cases_for(AGREEMENT_SUBSET)
    if not cases:
        raise ExportError(f"the split {split_path} has no {AGREEMENT_SUBSET} case to check the storage dtype on")
    reference = LesionSegmenter(model, input_size, postprocessing, device="cpu", precision="fp32")
    stored = LesionSegmenter(stored_copy(model, storage_dtype), input_size, postprocessing, device="cpu",
                             precision="fp32")
    dice = []
    for case in tqdm(cases, desc=f"{storage_dtype} vs float32", unit="image", disable=not progress):
        image, _ = load_case(roots, case)
        masks = [segmenter.segment(image).processed_mask[0] for segmenter in (reference, stored)]
        dice.append(dice_score(*masks))
    return {
        "storage_dtype": storage_dtype,
        "subset": AGREEMENT_SUBSET,
        "split_sha256": manifest.sha256,
        "test_time_flip": postprocessing.test_time_flip,
        "images": len(dice),
        "processed_dice_mean": float(np.mean(dice)),
        "processed_dice_min": float(np.min(dice)),
        "images_below": sum(1 for value in dice if value < AGREEMENT_DICE),
        "required_mean": AGREEMENT_DICE,
    }


def describe_agreement(agreement: dict) -> str:
    """One line: the measured agreement of a stored copy with the float32 model."""
    return (f"processed-mask Dice {agreement['storage_dtype']} vs float32 on {agreement['images']} "
            f"{agreement['subset']} images: mean {agreement['processed_dice_mean']:.4f}, "
            f"min {agreement['processed_dice_min']:.4f}, {agreement['images_below']} below {AGREEMENT_DICE}")


def export_model(
    weights: str | os.PathLike,
    report_path: str | os.PathLike,
    output: str | os.PathLike = BUNDLED_WEIGHTS,
    threshold: float | None = None,
    force: bool = False,
    storage_dtype: str = "float32",
    data_roots=None,
    split_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> ModelCard:
    """Write ``output`` (.safetensors) and its model card; return the new card.

    A half-precision ``storage_dtype`` needs ``data_roots`` and ``split_path`` (the report's split) for the
    agreement check; the export is refused if the stored copy's mean val Dice is below ``AGREEMENT_DICE``.
    """
    weights, report_path, output = Path(weights), Path(report_path), Path(output)
    if output.suffix != ".safetensors":
        raise ExportError(f"the output must be a .safetensors file, got {output}")
    half = check_storage_dtype(storage_dtype) != "float32"
    if half and (not data_roots or split_path is None):
        raise ExportError(f"storing in {storage_dtype} needs --data and --split: the {AGREEMENT_SUBSET} images "
                          "on which the stored copy must agree with the float32 model")
    if not half and (data_roots or split_path is not None):
        raise ExportError("--data and --split are only used to check a half-precision --storage-dtype")
    existing = [path for path in (output, card_path_for(output), output.with_suffix(".onnx")) if path.exists()]
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
    # exactly what was evaluated (reports written before the flip was a card setting give it beside the block)
    options = PostprocessOptions.from_dict({**evaluated, "test_time_flip": report["options"]["test_time_flip"]})
    training = dict(card.training)
    training.update({
        "source_weights_sha256": card.sha256,
        "split_sha256": report["split"]["sha256"],
        "evaluation_report": {"path": str(report_path), "sha256": sha256_of_file(report_path)},
    })
    if half:
        training["storage_agreement"] = checked_agreement(
            model, card, options, storage_dtype, data_roots, split_path, report, progress)
    return save_model(
        model, output, input_size=tuple(card.input_size), postprocessing=options,
        training=training, metrics=card_metrics(report), name=card.name, storage_dtype=storage_dtype,
    )


def checked_agreement(model, card, options, storage_dtype, data_roots, split_path, report, progress) -> dict:
    """The storage agreement on the report's split; ExportError if that split is not the one given or the
    agreement misses ``AGREEMENT_DICE``."""
    manifest = load_manifest(split_path)
    if manifest.sha256 != report["split"]["sha256"]:
        raise ExportError(f"--split {split_path} is not the split the report was computed on "
                          f"(cases sha256 {manifest.sha256}, the report's {report['split']['sha256']})")
    agreement = storage_agreement(model, tuple(card.input_size), options, storage_dtype, data_roots, split_path,
                                  progress)
    if agreement["processed_dice_mean"] < AGREEMENT_DICE:
        raise ExportError(f"{storage_dtype} storage changes the processed masks: {describe_agreement(agreement)}; "
                          f"the mean must be at least {AGREEMENT_DICE}. Export in float32 instead")
    return agreement


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, required=True, help="trained .safetensors, e.g. run/best.safetensors")
    parser.add_argument("--report", type=Path, required=True, help="report.json written by 'evaluate' for these weights")
    parser.add_argument("--output", type=Path, default=BUNDLED_WEIGHTS, help=f"default: {BUNDLED_WEIGHTS}")
    parser.add_argument("--threshold", type=float, help="must equal the threshold the report was computed at")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.add_argument("--storage-dtype", choices=STORAGE_DTYPES, default="float32",
                        help="how the weights are stored (default float32); float16 or bfloat16 halves the file "
                             f"and needs --data and --split: refused unless the stored copy's processed masks "
                             f"agree with float32 by mean Dice >= {AGREEMENT_DICE} on the {AGREEMENT_SUBSET} images")
    parser.add_argument("--data", type=Path, action="append",
                        help="with a half-precision --storage-dtype: a dataset folder of the split; repeat for each")
    parser.add_argument("--split", type=Path, help="with a half-precision --storage-dtype: the report's split file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar during the agreement check")
    parser.add_argument("--onnx-dtype", choices=GRAPH_DTYPES, default="float16",
                        help="how the ONNX graph written beside the weights stores its weights (default float16)")


def run(args: argparse.Namespace) -> int:
    try:
        card = export_model(args.weights, args.report, args.output, args.threshold, args.force,
                            args.storage_dtype, args.data, args.split, progress=not args.no_progress)
    except WeightsError as error:  # reported by the command line like any other bad input
        raise ExportError(str(error)) from error
    if "storage_agreement" in card.training:
        print(describe_agreement(card.training["storage_agreement"]))
    graph = attach_graph(args.output, args.onnx_dtype)
    print(f"wrote {args.output} and {card_path_for(args.output)} (stored in {card.storage_dtype}), and its ONNX "
          f"graph {args.output.with_suffix('.onnx')} (sha256 {graph['sha256']}); measure each backend's agreement "
          "with 'breastus-train onnx --weights ... --data ... --split ...'")
    print(f"sha256 {card.sha256}")
    if Path(args.output).resolve() == BUNDLED_WEIGHTS.resolve():
        print(f"set BUNDLED_SHA256 = \"{card.sha256}\" in BreastUSSegmentLib/__init__.py: the bundled model loads "
              "only with its checksum pinned there")
    return 0
