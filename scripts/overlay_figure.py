"""Draw the README's figure of the attention overlay: the module's colour table (transparent low end) against an
opaque-low heat table like PET-Heat, on a bundled sample frame, with the legend the module shows.

    .venv/bin/python scripts/overlay_figure.py

writes Resources/Screenshots/attention_overlay.png. Not a Slicer screenshot (slicer-core cannot open views): the
slice view's layers are composited with numpy as Slicer does for a foreground volume: the attention map through
the colour table over its display window, pixels whose colour has alpha 0 left out, the rest blended at the
overlay's opacity; the Lesion segment as its outline.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap, Normalize  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "BreastUSSegment"))

from BreastUSSegmentLib import BUNDLED_WEIGHTS  # noqa: E402
from BreastUSSegmentLib.inference import LesionSegmenter  # noqa: E402
from BreastUSSegmentLib.visualize import attention_display_range, mask_outline  # noqa: E402
from BreastUSSegmentScene.common import DEFAULT_ATTENTION_OPACITY  # noqa: E402
from BreastUSSegmentScene.results import attentionColors  # noqa: E402

SAMPLE = ROOT / "BreastUSSegment" / "Resources" / "Samples" / "breastus_sample_benign.png"
OUTPUT = ROOT / "Resources" / "Screenshots" / "attention_overlay.png"
LEGEND_TITLE = "Attention: where the network looked\n(clear: low, red to yellow: high)"  # as results.attentionLegend


def opaque_heat(count=256):
    """Black -> red -> yellow -> white, opaque everywhere (what PET-Heat's low end does to the frame)."""
    value = np.linspace(0.0, 1.0, count)
    return np.stack([np.clip(3 * value, 0, 1), np.clip(3 * value - 1, 0, 1), np.clip(3 * value - 2, 0, 1),
                     np.ones(count)], axis=1)


def composite(gray, attention, window, colors, opacity, lesion):
    """The slice view's layers: background grey, foreground colours where their alpha is not 0, lesion outline."""
    low, high = window
    index = np.clip(np.round((attention - low) / (high - low) * (len(colors) - 1)), 0, len(colors) - 1).astype(int)
    foreground = colors[index]
    shown = (foreground[..., 3] > 0)[..., np.newaxis] * opacity
    background = np.repeat(gray[..., np.newaxis] / 255.0, 3, axis=-1)
    image = background * (1 - shown) + foreground[..., :3] * shown
    image[mask_outline(lesion)] = (144 / 255, 238 / 255, 144 / 255)
    return image


def main():
    gray = np.array(Image.open(SAMPLE).convert("L"))
    result = LesionSegmenter.from_weights(BUNDLED_WEIGHTS, device="cpu").segment(gray)
    attention, lesion = result.combined_attention[0], result.processed_mask[0]
    window = attention_display_range(result.combined_attention)
    figure, axes = plt.subplots(1, 3, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1, 1, 0.05]})
    for axis, colors, title in ((axes[0], opaque_heat(), "before: opaque low end darkens the frame"),
                                (axes[1], attentionColors(), "now: low attention transparent")):
        axis.imshow(composite(gray, attention, window, colors, DEFAULT_ATTENTION_OPACITY, lesion))
        axis.set_title(title, fontsize=10)
        axis.axis("off")
    colorbar = figure.colorbar(plt.cm.ScalarMappable(Normalize(*window), ListedColormap(attentionColors())),
                               cax=axes[2], ticks=np.linspace(*window, 3), format="%.2f")
    colorbar.set_label(LEGEND_TITLE, fontsize=9)
    figure.suptitle("breastus_sample_benign, bundled model, overlay opacity 0.4 (numpy composite of the slice "
                    "view's layers, not a Slicer screenshot)", fontsize=9)
    figure.tight_layout()
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUTPUT, dpi=100)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
