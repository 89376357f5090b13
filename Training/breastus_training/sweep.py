"""Choose post-processing on the validation split: score a grid of settings from one inference pass.

Each image is segmented once (optionally with the test-time flip) at its
original resolution, exactly as ``evaluate`` does, and its probability map is
post-processed with every combination of the listed settings (threshold,
minimum component area, minimum component mean probability, keep-largest,
fill-holes, boundary smoothing and, models with a lesion head, minimum lesion
probability). For each combination the sweep reports the
mean lesion Dice and IoU (benign + malignant), how many normal images get a
false lesion, and one number that weighs both by their share of the subset:
the mean Dice over all images, where a normal image scores 1 when nothing is
predicted on it and 0 otherwise. A setting not listed keeps the model card's value.

The sweep also names the setting the project's rule chooses (``choose_row``):
the highest all-image Dice among the rows that keep every dataset's lesion Dice
at or above its floor (``--min-dataset-lesion-dice``); rows within
``TIE_ALL_IMAGE_DICE`` of the best tie, and a tie goes to the lower minimum
mean probability, then the higher threshold, then the higher all-image Dice,
then the row with the most settings equal to the model card's.

The test split is refused: settings chosen on it would make its numbers
optimistic.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from BreastUSSegmentLib.device import DEVICE_CHOICES, select_device
from BreastUSSegmentLib.fileio import write_text_atomically
from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.metrics import dice_score, iou_score
from BreastUSSegmentLib.modelcard import WeightsError
from BreastUSSegmentLib.options import PostprocessOptions, add_settings_arguments, check_lesion_head, settings_from_args
from BreastUSSegmentLib.postprocessing import postprocess_frames

from .busi import LESION_CLASSES, NORMAL_CLASS, load_case, load_manifest
from .datasets import DataRoots
from . import runtime

SWEEP_SUBSETS = ("train", "val")
TIE_ALL_IMAGE_DICE = 0.002  # rows this close to the best all-image Dice (or closer) tie with it
# Every post-processing setting but the test-time flip (which changes the network's pass, made once per image).
SWEPT_SETTINGS = ("threshold", "min_area_fraction", "min_mean_probability", "keep_largest", "fill_holes",
                  "smoothing_sigma", "min_lesion_probability")


def option_grid(base: PostprocessOptions, **listed) -> list[PostprocessOptions]:
    """Every combination of the ``listed`` settings (``SWEPT_SETTINGS`` names -> lists of values) on top of ``base``
    (the model card's options). A setting not given, or given as None, is not swept: it keeps ``base``'s value.
    """
    unknown = sorted(set(listed) - set(SWEPT_SETTINGS))
    if unknown:
        raise ValueError(f"cannot sweep {', '.join(unknown)}")
    values = [[getattr(base, name)] if listed.get(name) is None else list(listed[name]) for name in SWEPT_SETTINGS]
    return [replace(base, **dict(zip(SWEPT_SETTINGS, combination))) for combination in itertools.product(*values)]


class SweepTally:
    """Running per-setting sums: lesion Dice and IoU, lesion images left empty, normal images with a false lesion."""

    def __init__(self, count: int):
        self.dice = np.zeros(count)
        self.iou = np.zeros(count)
        self.missed = np.zeros(count, dtype=int)
        self.false_positives = np.zeros(count, dtype=int)
        self.lesion_images = 0
        self.normal_images = 0

    def add(self, label: str, masks: list[np.ndarray], target: np.ndarray) -> None:
        if label == NORMAL_CLASS:
            self.normal_images += 1
            self.false_positives += [bool(mask.any()) for mask in masks]
        elif label in LESION_CLASSES:
            self.lesion_images += 1
            self.dice += [dice_score(mask, target) for mask in masks]
            self.iou += [iou_score(mask, target) for mask in masks]
            self.missed += [not mask.any() for mask in masks]
        else:
            raise ValueError(f"unknown class {label!r}")

    def rows(self, grid: list[PostprocessOptions]) -> list[dict]:
        lesions, normals = max(self.lesion_images, 1), self.normal_images
        images = max(self.lesion_images + normals, 1)
        return [
            {
                "threshold": options.threshold,
                "min_area_fraction": options.min_area_fraction,
                "min_mean_probability": options.min_mean_probability,
                "keep_largest": options.keep_largest,
                "fill_holes": options.fill_holes,
                "smoothing_sigma": options.smoothing_sigma,
                "min_lesion_probability": options.min_lesion_probability,
                "all_image_dice": float((self.dice[i] + normals - self.false_positives[i]) / images),
                "lesion_dice": float(self.dice[i] / lesions),
                "lesion_iou": float(self.iou[i] / lesions),
                "lesions_missed": int(self.missed[i]),
                "normal_false_positives": int(self.false_positives[i]),
                "normal_false_positive_rate": float(self.false_positives[i] / normals) if normals else None,
            }
            for i, options in enumerate(grid)
        ]


def sweep_split(
    data_roots, split_path, weights, subset: str, grid_values: dict, *,
    test_time_flip: bool | None = None, device="auto", backend: str = "torch", precision: str = "auto",
    progress: bool = True,
) -> dict:
    """Score every post-processing combination of ``grid_values`` on ``subset``; return the sweep record.

    ``test_time_flip`` None is the model card's."""
    if subset not in SWEEP_SUBSETS:
        raise ValueError(f"sweep chooses settings, so it runs on {' or '.join(SWEEP_SUBSETS)}, not {subset!r}; "
                         "score the chosen settings on test once with 'evaluate'")
    manifest = load_manifest(split_path)
    cases = list(manifest.cases_for(subset))
    if not cases:
        raise ValueError(f"the split {split_path} has no case in subset {subset!r}")
    segmenter = LesionSegmenter.from_weights(weights, device, backend=backend, precision=precision,
                                             test_time_flip=test_time_flip)
    card = segmenter.card
    grid = option_grid(segmenter.postprocessing, **grid_values)
    for options in grid:  # a lesion-probability bar on a model without the head: refused before any image
        check_lesion_head(options, segmenter.has_lesion_head)
    roots = DataRoots.from_paths(data_roots)
    tally = SweepTally(len(grid))
    per_dataset = {name: SweepTally(len(grid)) for name in dict.fromkeys(case.dataset for case in cases)}
    started = time.perf_counter()
    for case in tqdm(cases, desc="sweeping", unit="image", disable=not progress):
        image, target = load_case(roots, case)
        result = segmenter.segment(image)
        masks = [postprocess_frames(result.probability, options, result.lesion_probability)[0] for options in grid]
        tally.add(case.label, masks, target)
        per_dataset[case.dataset].add(case.label, masks, target)
    return {
        "subset": subset,
        "weights": {"path": str(weights), "sha256": card.sha256},
        "split": {"path": str(split_path), "sha256": manifest.sha256},
        "test_time_flip": segmenter.postprocessing.test_time_flip,
        **runtime.record(segmenter),
        "card_postprocessing": card.postprocess_options.to_dict(),
        "fixed_postprocessing": {key: value for key, value in segmenter.postprocessing.to_dict().items()
                                 if key not in SWEPT_SETTINGS},
        "lesion_images": tally.lesion_images,
        "normal_images": tally.normal_images,
        "seconds": round(time.perf_counter() - started, 1),
        "rows": tally.rows(grid),
        "per_dataset": {name: {"lesion_images": part.lesion_images, "normal_images": part.normal_images,
                               "rows": part.rows(grid)} for name, part in per_dataset.items()}
        if len(per_dataset) > 1 else {},
    }


def choose_row(record: dict, min_dataset_lesion_dice: dict | None = None) -> int | None:
    """Index of the row the rule chooses (module docstring), or None when no row meets the floors.

    ``min_dataset_lesion_dice`` maps a dataset name of ``record["per_dataset"]`` to its lowest allowed lesion Dice.
    """
    rows = record["rows"]
    floors = min_dataset_lesion_dice or {}
    parts = record.get("per_dataset") or {}
    unknown = sorted(set(floors) - set(parts))
    if unknown:
        raise ValueError(f"this sweep has no per-dataset rows for {', '.join(unknown)} "
                         f"({'it has ' + ', '.join(parts) if parts else 'it covers a single dataset'})")
    allowed = [index for index in range(len(rows))
               if all(parts[name]["rows"][index]["lesion_dice"] >= floor for name, floor in floors.items())]
    if not allowed:
        return None
    best = max(rows[index]["all_image_dice"] for index in allowed)
    tied = [index for index in allowed if rows[index]["all_image_dice"] >= best - TIE_ALL_IMAGE_DICE]
    card = record.get("card_postprocessing", {})

    def settings_unlike_the_card(row: dict) -> int:
        return sum(1 for key in SWEPT_SETTINGS if key in card and row.get(key) != card[key])

    return min(tied, key=lambda index: (rows[index]["min_mean_probability"], -rows[index]["threshold"],
                                        -rows[index]["all_image_dice"], settings_unlike_the_card(rows[index]), index))


def describe_choice(record: dict) -> str:
    """One line: the setting the rule chose and its scores, or why none was."""
    choice = record["chosen"]
    floors = ", ".join(f"{name} lesion Dice >= {floor}" for name, floor in choice["min_dataset_lesion_dice"].items())
    if choice["index"] is None:
        return f"Chosen by the rule: none (no setting keeps {floors})"
    row = record["rows"][choice["index"]]
    return (f"Chosen by the rule (highest all-image Dice{'; ' + floors if floors else ''}; ties within "
            f"{TIE_ALL_IMAGE_DICE}: lower min mean prob., then higher threshold): threshold {row['threshold']}, "
            f"min area {row['min_area_fraction']}, min mean prob. {row['min_mean_probability']}, keep largest "
            f"{'yes' if row['keep_largest'] else 'no'}, fill holes {'yes' if row['fill_holes'] else 'no'}, smoothing "
            f"{row['smoothing_sigma']}, min lesion prob. {row['min_lesion_probability']}: "
            f"all-image Dice {row['all_image_dice']:.4f}, lesion Dice {row['lesion_dice']:.4f}, "
            f"{row['lesions_missed']}/{record['lesion_images']} lesions missed, "
            f"{row['normal_false_positives']}/{record['normal_images']} normal FP")


def markdown_table(record: dict) -> str:
    """The sweep as Markdown tables, one row per setting: all datasets together, then each dataset."""
    lines = [
        f"Sweep on {record['subset']} ({record['lesion_images']} lesion, {record['normal_images']} normal images), "
        f"weights sha256 `{record['weights']['sha256'][:12]}…`, test-time flip: "
        f"{'yes' if record['test_time_flip'] else 'no'}, {runtime.describe(record)}",
        "",
        *([describe_choice(record), ""] if "chosen" in record else []),
        *setting_rows(record),
    ]
    for name, part in record.get("per_dataset", {}).items():
        lines += ["", f"{name} ({part['lesion_images']} lesion, {part['normal_images']} normal images):", "",
                  *setting_rows(part)]
    return "\n".join(lines) + "\n"


def setting_rows(record: dict) -> list[str]:
    """One table of a sweep record (or of one dataset's part of it)."""
    lines = [
        "| threshold | min area | min mean prob. | keep largest | fill holes | smoothing | min lesion prob. "
        "| all-image Dice | lesion Dice | lesion IoU | lesions missed | normal FP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        lines.append(
            f"| {row['threshold']} | {row['min_area_fraction']} | {row['min_mean_probability']} | "
            f"{'yes' if row['keep_largest'] else 'no'} | {'yes' if row.get('fill_holes', True) else 'no'} | "
            f"{row.get('smoothing_sigma', '')} | {row.get('min_lesion_probability', 0.0)} | "
            f"{row['all_image_dice']:.4f} | "
            f"{row['lesion_dice']:.4f} | {row['lesion_iou']:.4f} | {row['lesions_missed']}/{record['lesion_images']} | "
            f"{row['normal_false_positives']}/{record['normal_images']} |"
        )
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, action="append",
                        help="a dataset folder of the split (BUSI or BrEaST, recognised by its layout); repeat for each")
    parser.add_argument("--split", type=Path, required=True, help="split file, e.g. Training/splits/busi_split.json")
    parser.add_argument("--weights", type=Path, required=True, help="model .safetensors (model card beside it)")
    parser.add_argument("--subset", default="val", choices=SWEEP_SUBSETS, help="where to choose (default: val)")
    add_settings_arguments(parser, several=True)
    parser.add_argument("--min-dataset-lesion-dice", action="append", default=[], metavar="NAME=DICE",
                        type=dataset_floor,
                        help="the rule's choice keeps this dataset's lesion Dice at or above DICE, e.g. BrEaST=0.715; "
                             "repeat for each dataset")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="where the network runs (default: auto)")
    runtime.add_arguments(parser)
    parser.add_argument("--output", type=Path, help="write sweep.json and sweep.md into this folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_floors(floors: list[tuple[str, float]], manifest, subset: str) -> dict:
    """The floors as a dict; ValueError for a name given twice or a dataset without its own rows in a sweep of
    ``subset`` (a sweep has per-dataset rows only when the subset holds two datasets or more)."""
    names = sorted({case.dataset for case in manifest.cases_for(subset)})
    given = [name for name, _ in floors]
    repeated = sorted({name for name in given if given.count(name) > 1})
    if repeated:
        raise ValueError(f"--min-dataset-lesion-dice gives {', '.join(repeated)} more than once")
    unknown = sorted(set(given) - set(names)) if len(names) > 1 else sorted(given)
    if unknown:
        has = f"the datasets {', '.join(names)}" if len(names) > 1 else "one dataset, so no per-dataset rows"
        raise ValueError(f"--min-dataset-lesion-dice names {', '.join(unknown)}, but the {subset} subset has {has}")
    return dict(floors)


def dataset_floor(text: str) -> tuple[str, float]:
    """``NAME=DICE`` of ``--min-dataset-lesion-dice`` as (name, floor)."""
    name, separator, value = (part.strip() for part in text.partition("="))
    try:
        floor = float(value) if separator and name else None
    except ValueError:
        floor = None
    if floor is None or not 0.0 <= floor <= 1.0:
        raise argparse.ArgumentTypeError(f"expected NAME=DICE with DICE in [0, 1], e.g. BrEaST=0.715, got {text!r}")
    return name, floor


def run(args: argparse.Namespace) -> int:
    grid_values = settings_from_args(args)
    test_time_flip = grid_values.pop("test_time_flip")
    floors = check_floors(args.min_dataset_lesion_dice, load_manifest(args.split), args.subset)  # before the slow part
    # Bad weights and an unavailable device are input errors: the command line reports them without a traceback.
    try:
        device = select_device(args.device)
    except RuntimeError as error:
        raise ValueError(str(error)) from error
    try:
        record = sweep_split(args.data, args.split, args.weights, args.subset, grid_values,
                            test_time_flip=test_time_flip, device=device, **runtime.segmenter_options(args),
                            progress=not args.no_progress)
    except WeightsError as error:
        raise ValueError(str(error)) from error
    record["chosen"] = {"index": choose_row(record, floors), "min_dataset_lesion_dice": floors,
                        "tie_all_image_dice": TIE_ALL_IMAGE_DICE}
    table = markdown_table(record)
    if args.output is not None:
        write_sweep(args.output, record, table)
    print(table)
    return 0


def write_sweep(output_dir: str | os.PathLike, record: dict, table: str) -> None:
    output_dir = Path(output_dir)
    write_text_atomically(output_dir / "sweep.json", json.dumps(record, indent=2) + "\n")
    write_text_atomically(output_dir / "sweep.md", table)
