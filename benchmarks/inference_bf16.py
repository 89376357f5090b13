"""Is bf16 inference worth it on this CPU? Speed and mask agreement against fp32, on a split's images.

    python benchmarks/inference_bf16.py --weights MODEL.safetensors --data ../shared/data/BUSI \
        --data ../shared/data/BrEaST --split Training/splits/busi_breast_split.json --subset val

Every image is segmented by the same ``LesionSegmenter`` twice, once in fp32 and once in bf16 (its
``cpu_bf16`` switch, which inference sets on CPUs that compute in bf16 natively), in alternating order, with
the model card's test-time flip unless ``--test-time-flip``/``--no-test-time-flip`` says otherwise; the processed masks are compared
by Dice (two empty masks agree: 1.0). Prints the median time per image of each, the speed-up, and the
agreement (mean and minimum Dice, images below 0.99). The rule of Training v2: bf16 becomes the CPU
default only if it is faster and the mean agreement is at least 0.99.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.metrics import dice_score
from breastus_training.busi import load_case, load_manifest
from breastus_training.datasets import DataRoots

AGREEMENT = 0.99


def timed(segmenter: LesionSegmenter, image: np.ndarray, bf16: bool):
    """The processed mask of ``image`` and the seconds it took."""
    segmenter.cpu_bf16 = bf16
    started = time.perf_counter()
    result = segmenter.segment(image)
    return result.processed_mask[0], time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--subset", default="val", choices=("train", "val"))
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--test-time-flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average with a horizontally flipped pass (default: the model card's)")
    args = parser.parse_args(argv)
    segmenter = LesionSegmenter.from_weights(args.weights, device="cpu", backend="torch",
                                             test_time_flip=args.test_time_flip)
    roots = DataRoots.from_paths(args.data)
    cases = load_manifest(args.split).cases_for(args.subset)[: args.limit]
    seconds = {"fp32": [], "bf16": []}
    agreement = []
    for index, case in enumerate(cases):
        image, _ = load_case(roots, case)
        order = (False, True) if index % 2 == 0 else (True, False)
        masks = {}
        for bf16 in order:
            masks[bf16], spent = timed(segmenter, image, bf16)
            seconds["bf16" if bf16 else "fp32"].append(spent)
        agreement.append(dice_score(masks[True], masks[False]))
    fp32, bf16 = statistics.median(seconds["fp32"]), statistics.median(seconds["bf16"])
    below = sum(value < AGREEMENT for value in agreement)
    flip = "with" if segmenter.postprocessing.test_time_flip else "without"
    print(f"{len(cases)} {args.subset} images, weights {args.weights}, {flip} test-time flip")
    print(f"fp32: {1000 * fp32:.1f} ms median per image; bf16: {1000 * bf16:.1f} ms")
    print(f"processed-mask Dice bf16 vs fp32: mean {np.mean(agreement):.4f}, min {min(agreement):.4f}, "
          f"{below} images below {AGREEMENT}")
    print(f"bf16/fp32 inference speed-up: {fp32 / bf16:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
