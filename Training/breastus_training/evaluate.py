"""Evaluate a saved model on one subset of a split, the way the extension runs it.

Every image goes through the core's :class:`LesionSegmenter` at its original
resolution (the pipeline resizes to the network and back), and both masks it
returns are scored against the ground truth: the raw thresholded mask
(post-processing off) and the processed mask (post-processing on).

Metrics, for each of the two masks:

* lesion images (benign + malignant), and each class alone: per-image Dice and
  IoU (mean and population standard deviation), pooled IoU (sum of
  intersections over sum of unions) and HD95 in pixels (mean and median over
  the images where it is defined; an empty prediction has no HD95 and is
  counted as ``undefined`` instead);
* normal images: the false-positive rate, the fraction of normal images on
  which any lesion pixel is predicted.

Outputs in ``--output``: ``report.json`` (every number, per-case rows, the
weights' and split's sha256 and the options), ``report.md`` (tables),
``cases.png`` (the best and worst cases by processed Dice) and, with
``--run-dir``, ``training_curves.png``.

With ``--box-margin M`` the model is prompted the way a user would prompt it:
every lesion image gets one box, its mask's bounding box grown by ``M`` of its
width (height) on each side and each edge moved by up to ``--box-jitter J`` of
that size (seeded by the case id, so reruns give the same boxes). Normal images
get no box (a user draws none) and are not scored. Each row also holds the
automatic result's processed scores, and the summary counts the lesion images
on which the box made the processed Dice worse.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from BreastUSSegmentLib.boxes import CONTEXT_MARGIN, FRAME_WEIGHT, Box, check_frame_weight
from BreastUSSegmentLib.device import DEVICE_CHOICES, select_device
from BreastUSSegmentLib.fileio import write_text_atomically
from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.metrics import dice_score, hausdorff95, iou_score, nan_summary, overlap_counts, pooled_iou_from_counts
from BreastUSSegmentLib.modelcard import WeightsError
from BreastUSSegmentLib.options import add_settings_arguments, settings_from_args

from .busi import LEGACY_DATASET, LESION_CLASSES, NORMAL_CLASS, SPLITS, load_case, load_manifest
from .datasets import DataRoots
from .figures import CaseFigure, plot_case_grid, plot_training_curves
from . import runtime

REPORT_FORMAT_VERSION = 1
MODES = ("raw", "processed")
MODE_TITLES = {"raw": "off", "processed": "on"}
EXTREME_CASES = 3
BOX_SEED = 16  # the simulated boxes' jitter comes from this seed and the case id
# A box result counts as worse than the automatic one when its processed Dice is lower by more than this.
WORSE_THAN_AUTOMATIC_BY = 0.01


@dataclass(frozen=True)
class BoxPrompt:
    """How the evaluation simulates a user's box: the mask's bounding box, grown and jittered."""

    margin: float  # fraction of the bounding box's width (height) added on each side
    jitter: float = 0.0  # each edge moves by up to this fraction of the bounding box's width (height)
    context_margin: float = CONTEXT_MARGIN  # the segmenter's own context around the box
    frame_weight: float = FRAME_WEIGHT  # the segmenter's weight of the whole frame's probability in the box

    def __post_init__(self) -> None:
        if self.margin < 0 or not 0 <= self.jitter < 0.5 or self.context_margin < 0:
            raise ValueError(f"box margin and context must be >= 0 and jitter in [0, 0.5); got {self}")
        check_frame_weight(self.frame_weight)  # the core's own check (a BoxError, which is a ValueError)

    def box_for(self, case_id: str, target: np.ndarray) -> Box:
        """The simulated box around ``target``'s lesion pixels (may reach past the frame; the core clips it)."""
        rows, columns = np.nonzero(target)
        x0, x1, y0, y1 = columns.min(), columns.max() + 1, rows.min(), rows.max() + 1
        width, height = x1 - x0, y1 - y0
        rng = np.random.default_rng([BOX_SEED, zlib.crc32(case_id.encode("utf-8"))])
        shift = rng.uniform(-self.jitter, self.jitter, size=4) * np.array([width, height, width, height])
        grown = np.array([x0 - self.margin * width, y0 - self.margin * height,
                          x1 + self.margin * width, y1 + self.margin * height]) + shift
        left, top, right, bottom = (int(round(value)) for value in grown)
        return Box(left, top, max(right, left + 1), max(bottom, top + 1))

    def to_dict(self) -> dict:
        return {"margin": self.margin, "jitter": self.jitter, "context_margin": self.context_margin,
                "frame_weight": self.frame_weight, "seed": BOX_SEED}


@dataclass
class Sample:
    """One evaluation image with its ground truth."""

    case_id: str
    label: str
    image: np.ndarray
    target: np.ndarray  # bool (H, W)
    dataset: str = "BUSI"


def score_masks(prediction: np.ndarray, target: np.ndarray) -> dict:
    """Dice, IoU, HD95 (pixels; None when undefined) and the pixel counts of one mask pair."""
    intersection, union = overlap_counts(prediction, target)
    hd95 = hausdorff95(prediction, target)
    return {
        "dice": dice_score(prediction, target),
        "iou": iou_score(prediction, target),
        "hd95_px": None if math.isnan(hd95) else hd95,
        "intersection": intersection,
        "union": union,
        "predicted_pixels": int(np.count_nonzero(prediction)),
    }


def segment_sample(segmenter: LesionSegmenter, sample: Sample, prompt: BoxPrompt | None):
    """The segmentation of one sample with the segmenter's settings (test-time flip included): automatic, or
    inside the simulated box when ``prompt`` is given."""
    if prompt is None:
        return segmenter.segment(sample.image)
    box = prompt.box_for(sample.case_id, np.asarray(sample.target, dtype=bool))
    return segmenter.segment(
        sample.image, box=box.as_tuple(), context_margin=prompt.context_margin, frame_weight=prompt.frame_weight,
    )


def evaluate_sample(segmenter: LesionSegmenter, sample: Sample, prompt: BoxPrompt | None = None):
    """Segment one image; return its per-case row and the segmentation result."""
    target = np.asarray(sample.target, dtype=bool)
    result = segment_sample(segmenter, sample, prompt)
    if result.processed_mask.shape[1:] != target.shape:
        raise ValueError(
            f"case {sample.case_id}: prediction size {result.processed_mask.shape[1:]} differs from its mask {target.shape}"
        )
    row = {
        "id": sample.case_id,
        "dataset": sample.dataset,
        "label": sample.label,
        "height": int(target.shape[0]),
        "width": int(target.shape[1]),
        "target_pixels": int(target.sum()),
        "raw": score_masks(result.raw_mask[0], target),
        "processed": score_masks(result.processed_mask[0], target),
    }
    if result.lesion_probability is not None:
        row["lesion_probability"] = float(result.lesion_probability[0])
    if prompt is not None:
        automatic = segmenter.segment(sample.image)
        row["automatic"] = score_masks(automatic.processed_mask[0], target)
        row["box"] = list(result.boxes[0].box.as_tuple())
        row["box_found"] = result.boxes[0].found
    return row, result


def evaluate_samples(
    segmenter: LesionSegmenter,
    samples: Iterable[Sample],
    total: int | None = None,
    progress: bool = True,
    prompt: BoxPrompt | None = None,
) -> list[dict]:
    """Per-case rows for every sample (with ``prompt``, lesion samples only), with a progress bar over the cases."""
    rows = []
    for sample in tqdm(samples, total=total, desc="evaluating", unit="image", disable=not progress):
        if prompt is None or sample.label in LESION_CLASSES:
            rows.append(evaluate_sample(segmenter, sample, prompt)[0])
    return rows


def lesion_statistics(rows: list[dict], mode: str) -> dict:
    """Dice, IoU, pooled IoU and HD95 over lesion rows for ``mode`` ("raw" or "processed")."""
    scores = [row[mode] for row in rows]
    dice, iou = nan_summary(s["dice"] for s in scores), nan_summary(s["iou"] for s in scores)
    hd95 = nan_summary(math.nan if s["hd95_px"] is None else s["hd95_px"] for s in scores)
    return {
        "images": len(rows),
        "empty": sum(1 for s in scores if s["predicted_pixels"] == 0),
        "dice_mean": dice["mean"],
        "dice_std": dice["std"],
        "iou_mean": iou["mean"],
        "iou_std": iou["std"],
        "pooled_iou": pooled_iou_from_counts([s["intersection"] for s in scores], [s["union"] for s in scores])
        if rows else None,
        "hd95_px_mean": hd95["mean"],
        "hd95_px_median": hd95["median"],
        "hd95_undefined": hd95["undefined"],
    }


def normal_statistics(rows: list[dict], mode: str) -> dict:
    """False positives on normal images: images with any predicted lesion pixel."""
    positives = sum(1 for row in rows if row[mode]["predicted_pixels"] > 0)
    return {
        "images": len(rows),
        "false_positives": positives,
        "false_positive_rate": positives / len(rows) if rows else None,
    }


def all_image_dice(rows: list[dict], mode: str) -> float | None:
    """Mean Dice over every row, lesion and normal: a normal image scores 1 when empty, 0 with a false lesion."""
    return float(np.mean([row[mode]["dice"] for row in rows])) if rows else None


def dataset_of(row: dict) -> str:
    """The dataset of a per-case row (rows written before there were several datasets are BUSI's)."""
    return row.get("dataset", LEGACY_DATASET)


def summarize(rows: list[dict]) -> dict:
    """Summary per mode (lesion images, each lesion class, normal images), pooled over every dataset,
    and the same for each dataset under ``per_dataset`` when the rows come from more than one."""
    summary = summarize_rows(rows)
    datasets = list(dict.fromkeys(map(dataset_of, rows)))
    if len(datasets) > 1:
        summary["per_dataset"] = {name: summarize_rows([row for row in rows if dataset_of(row) == name])
                                  for name in datasets}
    return summary


def summarize_rows(rows: list[dict]) -> dict:
    """Summary per mode: lesion images, each lesion class, and normal images."""
    lesion_rows = [row for row in rows if row["label"] in LESION_CLASSES]
    normal_rows = [row for row in rows if row["label"] == NORMAL_CLASS]
    summary = {}
    for mode in MODES:
        summary[mode] = {"lesion": lesion_statistics(lesion_rows, mode)}
        for label in LESION_CLASSES:
            summary[mode][label] = lesion_statistics([row for row in lesion_rows if row["label"] == label], mode)
        summary[mode][NORMAL_CLASS] = normal_statistics(normal_rows, mode)
        summary[mode]["all_image_dice"] = all_image_dice(rows, mode)  # one number for both kinds of error
    if any("automatic" in row for row in rows):
        summary["box_prompt"] = box_prompt_statistics(lesion_rows)
    return summary


def box_prompt_statistics(rows: list[dict]) -> dict:
    """How the box result compares with the automatic one on the same lesion images."""
    worse = sum(1 for row in rows if row["processed"]["dice"] < row["automatic"]["dice"] - WORSE_THAN_AUTOMATIC_BY)
    return {
        "images": len(rows),
        "automatic_dice_mean": float(np.mean([row["automatic"]["dice"] for row in rows])) if rows else None,
        "automatic_empty": sum(1 for row in rows if row["automatic"]["predicted_pixels"] == 0),
        "box_empty": sum(1 for row in rows if row["processed"]["predicted_pixels"] == 0),
        "boxes_without_lesion": sum(1 for row in rows if not row["box_found"]),
        "worse_than_automatic": worse,
        "worse_than_automatic_fraction": worse / len(rows) if rows else None,
    }


def select_extremes(rows: list[dict], count: int = EXTREME_CASES) -> tuple[list[dict], list[dict]]:
    """The ``count`` best and worst lesion cases by processed Dice (no case in both lists)."""
    lesion_rows = sorted(
        (row for row in rows if row["label"] in LESION_CLASSES), key=lambda row: (-row["processed"]["dice"], row["id"])
    )
    best = lesion_rows[:count]
    worst = [row for row in reversed(lesion_rows) if row not in best][:count]
    return best, worst


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _mean_std(stats: dict, name: str) -> str:
    if stats[f"{name}_mean"] is None:
        return "n/a"
    return f"{stats[f'{name}_mean']:.3f} ± {stats[f'{name}_std']:.3f}"


def markdown_report(report: dict) -> str:
    """The report's summary as Markdown tables (rows: post-processing off / on), pooled and per dataset."""
    summary, options = report["summary"], report["options"]
    counts = summary["processed"]
    per_dataset = summary.get("per_dataset", {})
    lines = [
        f"# Evaluation on the {report['subset']} subset",
        "",
        f"- Images: {counts['lesion']['images']} with a lesion ({counts['benign']['images']} benign, "
        f"{counts['malignant']['images']} malignant) and {counts['normal']['images']} normal",
        f"- Weights: `{report['weights']['path']}` (sha256 `{report['weights']['sha256']}`)",
        f"- Split: `{report['split']['path']}` (sha256 `{report['split']['sha256']}`)",
        f"- Threshold {options['postprocessing']['threshold']}, minimum component area "
        f"{options['postprocessing']['min_area_fraction']} of the frame, minimum component mean probability "
        f"{options['postprocessing'].get('min_mean_probability', 0.0)}, keep largest component only: "
        f"{'yes' if options['postprocessing']['keep_largest'] else 'no'}, minimum lesion probability "
        f"{options['postprocessing'].get('min_lesion_probability', 0.0)}, "
        f"test-time flip: {'yes' if options['test_time_flip'] else 'no'}, {runtime.describe(options)}",
        *box_prompt_lines(report),
        "",
        "## Lesion images (benign + malignant) and normal images" + (", all datasets" if per_dataset else ""),
        "",
        *overall_table(summary),
    ]
    for name, dataset_summary in per_dataset.items():
        lesion_count = dataset_summary["processed"]["lesion"]["images"]
        normal_count = dataset_summary["processed"]["normal"]["images"]
        lines += ["", f"## {name} ({lesion_count} lesion, {normal_count} normal images)", "",
                  *overall_table(dataset_summary)]
    lines += [
        "",
        "## Per class",
        "",
        "| Post-processing | Class | Images | Dice | IoU | Pooled IoU | HD95 median (px) |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        for label in LESION_CLASSES:
            stats = summary[mode][label]
            lines.append(
                f"| {MODE_TITLES[mode]} | {label} | {stats['images']} | {_mean_std(stats, 'dice')} | "
                f"{_mean_std(stats, 'iou')} | {_number(stats['pooled_iou'])} | {_number(stats['hd95_px_median'], 1)} |"
            )
    lines += [
        "",
        "Dice and IoU: mean ± population standard deviation over images. Pooled IoU: sum of intersections over "
        "sum of unions. HD95: 95th percentile of the symmetric boundary distances, in pixels of the original "
        "image, over images where it is defined (an empty prediction has none; see \"HD95 undefined\"). "
        "Normal FP rate: fraction of normal images with any predicted lesion pixel. All-image Dice: mean Dice over "
        "every image, a normal image scoring 1 when nothing is predicted on it and 0 otherwise.",
        "",
    ]
    return "\n".join(lines)


def overall_table(summary: dict) -> list[str]:
    """The lesion/normal table of one summary, a row per post-processing mode."""
    lines = [
        "| Post-processing | Dice | IoU | Pooled IoU | HD95 mean (px) | HD95 median (px) | HD95 undefined "
        "| Lesions left empty | Normal FP rate | All-image Dice |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        lesion, normal = summary[mode]["lesion"], summary[mode]["normal"]
        lines.append(
            f"| {MODE_TITLES[mode]} | {_mean_std(lesion, 'dice')} | {_mean_std(lesion, 'iou')} | "
            f"{_number(lesion['pooled_iou'])} | {_number(lesion['hd95_px_mean'], 1)} | "
            f"{_number(lesion['hd95_px_median'], 1)} | {lesion['hd95_undefined']} | "
            f"{lesion.get('empty', 0)}/{lesion['images']} | "
            f"{_number(normal['false_positive_rate'])} ({normal['false_positives']}/{normal['images']}) | "
            f"{_number(summary[mode].get('all_image_dice'))} |"
        )
    return lines


def box_prompt_lines(report: dict) -> list[str]:
    """The report's lines on the box prompt; none for an automatic evaluation."""
    prompt, stats = report["options"].get("box_prompt"), report["summary"].get("box_prompt")
    if prompt is None:
        return []
    return [
        f"- Box prompt: each lesion's bounding box grown by {prompt['margin']:g} of its size on each side, edges "
        f"jittered by up to {prompt['jitter']:g} (seed {prompt['seed']}), segmented with a context margin of "
        f"{prompt['context_margin']:g} and a frame weight of {prompt.get('frame_weight', 0):g}; normal images get no box "
        "and are not scored",
        f"- Box vs automatic (processed): Dice {_number(report['summary']['processed']['lesion']['dice_mean'])} vs "
        f"{_number(stats['automatic_dice_mean'])}; empty predictions {stats['box_empty']} vs {stats['automatic_empty']} "
        f"of {stats['images']}; box worse by more than {WORSE_THAN_AUTOMATIC_BY} Dice on {stats['worse_than_automatic']} "
        f"images ({_number(stats['worse_than_automatic_fraction'])}); boxes where the network saw no lesion: "
        f"{stats['boxes_without_lesion']}",
    ]


def write_report(output_dir: str | os.PathLike, report: dict) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``output_dir``."""
    output_dir = Path(output_dir)
    json_path = write_text_atomically(output_dir / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    markdown_path = write_text_atomically(output_dir / "report.md", markdown_report(report))
    return json_path, markdown_path


def case_figures(
    segmenter: LesionSegmenter, samples: list[Sample], rows: list[dict], prompt: BoxPrompt | None = None,
) -> list[CaseFigure]:
    """Segment the given samples again (inference is deterministic) and build grid rows."""
    by_id = {row["id"]: row for row in rows}
    figures = []
    for sample in samples:
        result = segment_sample(segmenter, sample, prompt)
        figures.append(CaseFigure(
            case_id=sample.case_id, label=sample.label, image=sample.image,
            target=np.asarray(sample.target, dtype=bool), raw_mask=result.raw_mask[0],
            processed_mask=result.processed_mask[0], attention=result.combined_attention[0],
            dice=by_id[sample.case_id]["processed"]["dice"],
        ))
    return figures


def evaluate_split(
    data_roots,
    split_path: str | os.PathLike,
    weights: str | os.PathLike,
    subset: str,
    output_dir: str | os.PathLike,
    *,
    device: str | torch.device = "auto",
    backend: str = "torch",
    precision: str = "auto",
    box_prompt: BoxPrompt | None = None,
    run_dir: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    **settings,
) -> dict:
    """Evaluate ``weights`` on ``subset`` of the split, write the report and figures, return the report.

    With ``box_prompt``, each lesion image is segmented inside its simulated box (see the module's docstring).
    ``settings`` (``PostprocessOptions`` field names, the test-time flip among them) override the model card's;
    one given as None is the card's.
    """
    roots, output_dir = DataRoots.from_paths(data_roots), Path(output_dir)
    manifest = load_manifest(split_path)
    cases = list(manifest.cases_for(subset))
    if not cases:
        raise ValueError(f"the split {split_path} has no case in subset {subset!r}")
    # PyTorch by default: the reference the other backends are measured against
    segmenter = LesionSegmenter.from_weights(weights, device, backend=backend, precision=precision, **settings)
    card = segmenter.card

    def sample_of(case) -> Sample:
        image, mask = load_case(roots, case)
        return Sample(case.id, case.label, image, mask, case.dataset)

    started = time.perf_counter()
    rows = evaluate_samples(
        segmenter, (sample_of(case) for case in cases), len(cases), progress, box_prompt
    )
    seconds = time.perf_counter() - started
    report = {
        "format_version": REPORT_FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "subset": subset,
        "data_roots": {name: str(path) for name, path in roots.roots.items()},
        "split": {"path": str(split_path), "sha256": manifest.sha256},
        "weights": {"path": str(weights), "sha256": card.sha256, "name": card.name, "input_size": card.input_size},
        "options": {
            "test_time_flip": segmenter.postprocessing.test_time_flip,
            "device": str(segmenter.device),
            **runtime.record(segmenter),
            "postprocessing": segmenter.postprocessing.to_dict(),
            "box_prompt": None if box_prompt is None else box_prompt.to_dict(),
        },
        "seconds": round(seconds, 2),
        "summary": summarize(rows),
        "cases": rows,
    }
    json_path, markdown_path = write_report(output_dir, report)
    log(f"wrote {json_path} and {markdown_path} ({len(rows)} images in {seconds:.1f} s)")

    by_id = {(case.dataset, case.id): case for case in cases}
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    for dataset in datasets:  # one grid per dataset (cases.png, or cases_<dataset>.png for several)
        dataset_rows = [row for row in rows if row["dataset"] == dataset]
        best, worst = select_extremes(dataset_rows)
        if not best:
            continue
        chosen = [sample_of(by_id[(row["dataset"], row["id"])]) for row in best + worst]
        name = "cases.png" if len(datasets) == 1 else f"cases_{dataset}.png"
        grid = plot_case_grid(
            case_figures(segmenter, chosen, dataset_rows, box_prompt), output_dir / name,
            title=f"{dataset}: {len(best)} best and {len(worst)} worst {subset} cases by processed Dice",
        )
        log(f"wrote {grid}")
    if run_dir is not None:
        curves = plot_training_curves(Path(run_dir) / "metrics.csv", output_dir / "training_curves.png")
        log(f"wrote {curves}")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, action="append",
                        help="a dataset folder of the split (BUSI or BrEaST, recognised by its layout); repeat for each")
    parser.add_argument("--split", type=Path, required=True, help="split file, e.g. Training/splits/busi_split.json")
    parser.add_argument("--weights", type=Path, required=True, help="model .safetensors (model card beside it)")
    parser.add_argument("--subset", default="test", choices=SPLITS, help="which part of the split to evaluate (default: test)")
    parser.add_argument("--output", type=Path, required=True, help="report folder, e.g. reports/NAME")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="where the network runs (default: auto)")
    runtime.add_arguments(parser)
    parser.add_argument("--box-margin", type=float, metavar="M",
                        help="prompt each lesion image with its mask's bounding box grown by M of its size on each side")
    parser.add_argument("--box-jitter", type=float, default=0.0, metavar="J",
                        help="with --box-margin: move each box edge by up to J of the box's size (fixed seed; default 0)")
    parser.add_argument("--box-context", type=float, default=CONTEXT_MARGIN, metavar="C",
                        help=f"with --box-margin: the segmenter's context margin around the box (default {CONTEXT_MARGIN}, "
                             "chosen on BUSI val; for choosing it again)")
    parser.add_argument("--box-frame-weight", type=float, default=FRAME_WEIGHT, metavar="W",
                        help=f"with --box-margin: the segmenter's weight of the whole frame's probability inside the box "
                             f"(default {FRAME_WEIGHT}, chosen on val; 0: the crop alone)")
    parser.add_argument("--run-dir", type=Path, help="training run folder; its metrics.csv gives training curves")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_settings_arguments(parser)


def run(args: argparse.Namespace) -> int:
    # Bad weights and an unavailable device are input errors: the command line reports them without a traceback.
    try:
        device = select_device(args.device)
    except RuntimeError as error:
        raise ValueError(str(error)) from error
    if args.box_margin is None and (
        args.box_jitter or args.box_context != CONTEXT_MARGIN or args.box_frame_weight != FRAME_WEIGHT
    ):
        raise ValueError("--box-jitter, --box-context and --box-frame-weight apply with --box-margin only")
    prompt = None if args.box_margin is None else BoxPrompt(
        args.box_margin, args.box_jitter, args.box_context, args.box_frame_weight
    )
    try:
        report = evaluate_split(
            args.data, args.split, args.weights, args.subset, args.output,
            device=device, box_prompt=prompt, run_dir=args.run_dir, progress=not args.no_progress,
            **runtime.segmenter_options(args), **settings_from_args(args),
        )
    except WeightsError as error:
        raise ValueError(str(error)) from error
    print(markdown_report(report))
    return 0
