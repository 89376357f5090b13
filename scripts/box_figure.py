"""Draw the README's figure: the automatic result next to the box-prompt result on BUSI test cases.

    .venv/bin/python scripts/box_figure.py --data ../shared/data/BUSI --split Training/splits/busi_split.json

writes Resources/Screenshots/box_prompt.png. Each row: the ground truth, the automatic lesion, and the
lesion inside the box ``breastus-train evaluate --box-margin 0.15`` simulates (the ground truth's bounding
box grown by 15 % on each side).
"""

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "BreastUSSegment"))
sys.path.insert(0, str(ROOT / "Training"))

from BreastUSSegmentLib import BUNDLED_WEIGHTS  # noqa: E402
from BreastUSSegmentLib.inference import LesionSegmenter  # noqa: E402
from BreastUSSegmentLib.metrics import dice_score  # noqa: E402
from BreastUSSegmentLib.visualize import mask_outline  # noqa: E402
from breastus_training.busi import load_case, load_manifest  # noqa: E402
from breastus_training.evaluate import BoxPrompt  # noqa: E402

OUTPUT = ROOT / "Resources" / "Screenshots" / "box_prompt.png"
# From the BUSI test report at --box-margin 0.15 with model v2 (Training/reports/v2_s0_box_blend_test):
# automatic empty, automatic on the wrong region, and the image the box made worse by the most.
CASES = ("benign (394)", "malignant (189)", "malignant (67)")


def overlay(ax, image, mask, colour, title):
    ax.imshow(image, cmap="gray")
    outline = np.zeros((*mask.shape, 4))
    outline[mask_outline(mask, thickness=3)] = colour
    ax.imshow(outline)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="BUSI folder")
    parser.add_argument("--split", type=Path, required=True, help="split file")
    parser.add_argument("--cases", nargs="+", default=CASES, help="case ids")
    args = parser.parse_args()
    by_id = {case.id: case for case in load_manifest(args.split).cases}
    segmenter = LesionSegmenter.from_weights(BUNDLED_WEIGHTS, device="cpu")
    figure, axes = plt.subplots(len(args.cases), 3, figsize=(9, 2.6 * len(args.cases)), dpi=110)
    for row, name in zip(axes, args.cases):
        image, truth = load_case(args.data, by_id[name])
        box = BoxPrompt(0.15).box_for(name, truth)
        automatic = segmenter.segment(image).processed_mask[0]
        boxed = segmenter.segment(image, box=box.as_tuple()).processed_mask[0]
        grey = image if image.ndim == 2 else image[..., 0]
        overlay(row[0], grey, truth, (1, 1, 0, 1), f"{name}: ground truth")
        overlay(row[1], grey, automatic, (0, 1, 0, 1), f"automatic (Dice {dice_score(automatic, truth):.2f})")
        overlay(row[2], grey, boxed, (0, 1, 0, 1), f"in the box (Dice {dice_score(boxed, truth):.2f})")
        row[2].add_patch(Rectangle((box.x0 - 0.5, box.y0 - 0.5), box.width, box.height, fill=False,
                                   edgecolor="deepskyblue", linewidth=1.5, linestyle="--"))
    figure.tight_layout()
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUTPUT)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
