"""Measure the core's temporal rule on simulated sweeps of still frames (``breastus-train temporal``).

A sweep pans a window (``--window`` of the image's width, the full height) across
one image in ``--frames`` steps from its left edge to its right, adding fresh
Gaussian noise to every frame (``--noise`` grey levels), so a lesion enters and
leaves the view and the network sees a slightly different frame each time. Every
image of the subset gives one sweep; a normal image's sweep holds no lesion.

The network runs once per sweep; its processed masks are cached in ``--cache``
(one ``.npz`` per image), so that scoring the rules reruns nothing. Reported per
rule (off and every K/N up to ``--max-frames``): the share of lesion-free frames
(windows without lesion pixels, of lesion and of normal images) that show a
lesion, and the mean Dice on the frames whose window holds a lesion.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from BreastUSSegmentLib import BUNDLED_WEIGHTS
from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.metrics import dice_score
from BreastUSSegmentLib.preprocessing import to_grayscale_frames
from BreastUSSegmentLib.stream import segment_stream
from BreastUSSegmentLib.temporal import TemporalFilter, TemporalRule

from .busi import load_case, load_manifest
from .datasets import DataRoots


def sweep_frames(image: np.ndarray, window: float, frames: int, noise: float, seed: int) -> tuple[np.ndarray, list]:
    """The ``(T, H, w)`` float32 frames of one sweep and the column slice of each frame."""
    grey = to_grayscale_frames(image)[0]
    width = grey.shape[1]
    span = max(2, int(round(window * width)))
    starts = np.linspace(0, width - span, frames).round().astype(int)
    rng = np.random.default_rng(seed)
    columns = [slice(int(start), int(start) + span) for start in starts]
    stack = np.stack([grey[:, part] for part in columns]).astype(np.float32)
    stack += rng.normal(0.0, noise, size=stack.shape).astype(np.float32)
    return stack, columns


def cache_path(case, args) -> Path:
    return Path(args.cache) / (f"{case.dataset}_{case.id}".replace(" ", "_").replace("/", "_") + ".npz")


def network_masks(segmenter, case, roots, args) -> dict:
    """The sweep's processed masks and target masks (from the cache when there)."""
    path = cache_path(case, args)
    if path.is_file():
        cached = np.load(path)
        return {"masks": cached["masks"], "targets": cached["targets"]}
    image, target = load_case(roots, case)
    frames, columns = sweep_frames(image, args.window, args.frames, args.noise, args.seed)
    masks = np.stack([result.processed_mask for result in segment_stream(segmenter, frames)])
    targets = np.stack([target[:, part] for part in columns])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez_compressed(partial, masks=masks, targets=targets)
    partial.replace(path)  # several runs may fill one cache
    return {"masks": masks, "targets": targets}


def score(sweeps: list[dict], rule, skip_first: int = 0) -> dict:
    """False-lesion share on lesion-free frames and mean Dice on lesion frames, with ``rule`` (None: off);
    the first ``skip_first`` frames of each sweep are run through the rule but not scored."""
    false_frames = free = normal_false = normal_free = 0
    dices = []
    for sweep in sweeps:
        temporal = TemporalFilter(rule)
        for number, (mask, target) in enumerate(zip(sweep["masks"], sweep["targets"])):
            shown = temporal(mask)
            if number < skip_first:
                continue
            if target.any():
                dices.append(dice_score(shown, target))
            else:
                free += 1
                false_frames += bool(shown.any())
                if sweep["normal"]:
                    normal_free += 1
                    normal_false += bool(shown.any())
    return {
        "rule": "off" if rule is None else str(rule),
        "lesion_free_frames": free,
        "false_lesion_share": false_frames / max(free, 1),
        "normal_frames": normal_free,
        "normal_false_lesion_share": normal_false / max(normal_free, 1),
        "lesion_frames": len(dices),
        "lesion_dice_mean": float(np.mean(dices)) if dices else None,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", nargs="+", required=True, help="dataset folders (BUSI, BrEaST)")
    parser.add_argument("--split", required=True, help="split manifest")
    parser.add_argument("--subset", default="val", help="subset to sweep (default: val; choose the rule there)")
    parser.add_argument("--weights", default=str(BUNDLED_WEIGHTS), help="model .safetensors (default: the bundled one)")
    parser.add_argument("--cache", required=True, help="folder for the network's masks per sweep")
    parser.add_argument("--output", required=True, help="JSON file for the scores")
    parser.add_argument("--window", type=float, default=0.4, help="window width as a share of the image's (default 0.4)")
    parser.add_argument("--frames", type=int, default=30, help="frames per sweep (default 30)")
    parser.add_argument("--noise", type=float, default=4.0, help="Gaussian noise per frame, grey levels (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-frames", type=int, default=5, help="largest N of the K/N rules scored (default 5)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-first", type=int, default=0,
                        help="score each sweep from this frame on (the rule's start-up excluded; default 0)")
    parser.add_argument("--reverse", action="store_true", help="sweep the images last to first (a second run filling the cache)")
    parser.add_argument("--cached-only", action="store_true", help="score only the sweeps already in the cache")


def run(args: argparse.Namespace) -> int:
    roots = DataRoots.from_paths(args.data)
    cases = list(load_manifest(args.split).cases_for(args.subset))
    if args.reverse:
        cases.reverse()
    segmenter = LesionSegmenter.from_weights(args.weights, device=args.device)
    sweeps = []
    for number, case in enumerate(cases, start=1):
        if args.cached_only and not cache_path(case, args).is_file():
            continue
        sweep = network_masks(segmenter, case, roots, args)
        sweep["normal"] = case.label == "normal"
        sweeps.append(sweep)
        print(f"{number}/{len(cases)} {case.dataset} {case.id}", flush=True)
    rules = [None] + [TemporalRule(hits, frames) for frames in range(1, args.max_frames + 1)
                      for hits in range(1, frames + 1)]
    rows = [score(sweeps, rule, args.skip_first) for rule in rules]
    settings = {name: getattr(args, name) for name in ("subset", "window", "frames", "noise", "seed", "weights",
                                                       "skip_first")}
    Path(args.output).write_text(json.dumps({"settings": settings, "sweeps": len(sweeps), "rules": rows}, indent=2) + "\n")
    for row in rows:
        print(f"{row['rule']:>4}  false lesions {row['false_lesion_share']:.3f} of {row['lesion_free_frames']} "
              f"lesion-free frames (normal images {row['normal_false_lesion_share']:.3f} of {row['normal_frames']}); "
              f"Dice {row['lesion_dice_mean']:.3f} on {row['lesion_frames']} lesion frames")
    return 0
