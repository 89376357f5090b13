"""Choosing the box rule's minimum confidence: lesion boxes and boxes on lesion-free tissue of one subset.

Three kinds of box, each segmented once with the core's box prompt (the network's probability inside
the box is kept), then turned into a mask by ``postprocess_box`` at every minimum confidence tried:

* ``lesion``: every lesion image's box, as ``evaluate --box-margin M`` draws it (scored by Dice);
* ``beside``: on every lesion image a box of the same size placed away from the lesion (its mask's
  bounding box grown by ``M``), at a seeded random position, where one fits;
* ``normal``: on every normal image a box of the size (relative to the frame) of a seeded random
  lesion box of the same dataset, at a seeded random position.

A lesion-free box should come out empty; a lesion box should not. The report (JSON, printed as a table)
gives per rule: the lesion boxes' mean Dice and empty count, and the share of lesion-free boxes given a lesion.
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from BreastUSSegmentLib.boxes import Box, clip_box
from BreastUSSegmentLib.device import DEVICE_CHOICES, select_device
from BreastUSSegmentLib.fileio import write_text_atomically
from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.metrics import dice_score
from BreastUSSegmentLib.postprocessing import postprocess_box

from .busi import LESION_CLASSES, SPLITS, load_case, load_manifest
from .datasets import DataRoots
from .evaluate import BoxPrompt

PLACEMENT_SEED = 36
PLACEMENT_TRIES = 200
DEFAULT_CONFIDENCES = (0.0, 0.5, 0.6, 0.7, 0.75, 0.8)  # 0: the rule before issue 36 (any box gets a lesion)


def free_box(rng: np.random.Generator, size: tuple, frame: tuple, avoid: Box | None) -> Box | None:
    """A box of ``size`` (height, width) inside ``frame`` (height, width), not overlapping ``avoid``; None if none fits."""
    height, width = min(size[0], frame[0]), min(size[1], frame[1])
    for _ in range(PLACEMENT_TRIES):
        y0 = int(rng.integers(0, frame[0] - height + 1))
        x0 = int(rng.integers(0, frame[1] - width + 1))
        box = Box(x0, y0, x0 + width, y0 + height)
        if avoid is None or box.x1 <= avoid.x0 or avoid.x1 <= box.x0 or box.y1 <= avoid.y0 or avoid.y1 <= box.y0:
            return box
    return None


def box_probability(segmenter: LesionSegmenter, image: np.ndarray, box: Box) -> tuple:
    """The box as the core clips it and the network's probability inside it (the core's box prompt)."""
    result = segmenter.segment(image, box=box.as_tuple())
    used = result.boxes[0].box
    return used, result.probability[0][used.slices]


def collect(segmenter, roots, cases, margin: float, progress: bool = True) -> list:
    """Every box of the subset (see the module's docstring) with its in-box probability and target."""
    prompt = BoxPrompt(margin)
    loaded = {}
    sizes: dict = {}
    for case in cases:
        if case.label in LESION_CLASSES:
            image, target = load_case(roots, case)
            box = prompt.box_for(case.id, target)
            clipped = clip_box(box, target.shape)
            sizes.setdefault(case.dataset, []).append((clipped.height / target.shape[0], clipped.width / target.shape[1]))
            loaded[case.id] = (box, clipped)
    boxes = []
    for case in tqdm(cases, desc="boxes", unit="image", disable=not progress):
        image, target = load_case(roots, case)
        rng = np.random.default_rng([PLACEMENT_SEED, zlib.crc32(case.id.encode("utf-8"))])
        frame = target.shape
        if case.label in LESION_CLASSES:
            box, clipped = loaded[case.id]
            planned = [("lesion", box), ("beside", free_box(rng, (clipped.height, clipped.width), frame, clipped))]
        else:
            relative = sizes[case.dataset][int(rng.integers(len(sizes[case.dataset])))]
            size = (max(2, round(relative[0] * frame[0])), max(2, round(relative[1] * frame[1])))
            planned = [("normal", free_box(rng, size, frame, None))]
        for kind, box in planned:
            if box is None:
                continue
            used, probability = box_probability(segmenter, image, box)
            boxes.append({"id": case.id, "dataset": case.dataset, "kind": kind, "box": used,
                          "probability": probability, "target": target[used.slices],
                          "target_pixels": int(target.sum())})
    return boxes


def score(boxes: list, options, confidences) -> dict:
    """Per minimum confidence: lesion boxes' mean Dice and empty count, lesion-free boxes given a lesion."""
    table = {}
    for confidence in confidences:
        rows = {}
        for dataset in sorted({item["dataset"] for item in boxes}) + ["all"]:
            chosen = [item for item in boxes if dataset in ("all", item["dataset"])]
            masks = [postprocess_box(item["probability"], options, confidence) for item in chosen]
            lesion = [(item, mask) for item, mask in zip(chosen, masks) if item["kind"] == "lesion"]
            dice = [_frame_dice(item, mask) for item, mask in lesion]
            entry = {"lesion_boxes": len(lesion), "lesion_dice_mean": float(np.mean(dice)) if dice else None,
                     "lesion_boxes_empty": sum(1 for _, mask in lesion if not mask.any())}
            for kind in ("beside", "normal"):
                free = [mask for item, mask in zip(chosen, masks) if item["kind"] == kind]
                entry[f"{kind}_boxes"] = len(free)
                entry[f"{kind}_given_a_lesion"] = sum(1 for mask in free if mask.any())
            rows[dataset] = entry
        table[f"{confidence:g}"] = rows
    return table


def _frame_dice(item: dict, mask: np.ndarray) -> float:
    """Dice of the box's mask against the whole target (lesion pixels outside the box count as missed)."""
    inside = int(item["target"].sum())
    missed = item["target_pixels"] - inside
    if missed == 0:
        return dice_score(mask, item["target"])
    found = int(np.count_nonzero(mask & item["target"]))
    return 2.0 * found / (int(mask.sum()) + item["target_pixels"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, action="append", help="a dataset folder of the split; repeat")
    parser.add_argument("--split", type=Path, required=True, help="split file")
    parser.add_argument("--weights", type=Path, required=True, help="model .safetensors (model card beside it)")
    parser.add_argument("--subset", default="val", choices=SPLITS, help="which part of the split (default: val)")
    parser.add_argument("--box-margin", type=float, default=0.15, help="lesion boxes as evaluate draws them (default 0.15)")
    parser.add_argument("--confidences", default=",".join(f"{value:g}" for value in DEFAULT_CONFIDENCES),
                        help="minimum confidences to score, comma-separated (0: no confidence rule)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--output", type=Path, required=True, help="report JSON file")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    confidences = [float(value) for value in args.confidences.split(",")]
    segmenter = LesionSegmenter.from_weights(args.weights, select_device(args.device))
    manifest = load_manifest(args.split)
    cases = manifest.cases_for(args.subset)
    boxes = collect(segmenter, DataRoots.from_paths(args.data), cases, args.box_margin, not args.no_progress)
    table = score(boxes, segmenter.postprocessing, confidences)
    report = {"subset": args.subset, "split": {"path": str(args.split), "sha256": manifest.sha256},
              "weights": {"path": str(args.weights), "sha256": segmenter.card.sha256},
              "box_margin": args.box_margin, "placement_seed": PLACEMENT_SEED,
              "postprocessing": segmenter.postprocessing.to_dict(), "scores": table}
    write_text_atomically(args.output, json.dumps(report, indent=2) + "\n")
    print("| min confidence | dataset | lesion Dice | lesion boxes empty | beside: given a lesion | normal: given a lesion |")
    print("|---|---|---|---|---|---|")
    for confidence, rows in table.items():
        for dataset, entry in rows.items():
            print(f"| {confidence} | {dataset} | {entry['lesion_dice_mean']:.3f} | {entry['lesion_boxes_empty']}/"
                  f"{entry['lesion_boxes']} | {entry['beside_given_a_lesion']}/{entry['beside_boxes']} | "
                  f"{entry['normal_given_a_lesion']}/{entry['normal_boxes']} |")
    return 0
