"""Command line: segment breast lesions in ultrasound frames or clips.

Example::

    breastus-segment BreastUSSegment/Resources/Samples/*.png --output output/

For every input ``NAME.ext`` it writes ``NAME_mask.<format>`` (processed
mask, 0/1), ``NAME_probability.<format>`` (float probabilities; scaled to
0-255 for PNG) and ``NAME_overlay.png`` (outline and attention heatmap of the
first frame). Existing files are never overwritten unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from . import BUNDLED_WEIGHTS, __version__
from .device import DEVICE_CHOICES
from .imageio import ImageReadError, ImageWriteError, read_image, write_image
from .measure import measure_lesion
from .postprocessing import strongest_hidden_confidence
from .preprocessing import InvalidImageError
from .visualize import overlay_figure
from .weights import WeightsError

FORMATS = {"nrrd": ".nrrd", "nifti": ".nii.gz", "png": ".png"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="breastus-segment", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="image files: PNG/JPG/BMP/TIFF, DICOM, NRRD, NIfTI, MHA")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--weights", type=Path, default=BUNDLED_WEIGHTS, help="model .safetensors (model card beside it)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="nrrd", help="file format of mask and probability")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="where the network runs (default: auto)")
    parser.add_argument("--threshold", type=float, help="probability threshold (default: the model card's)")
    parser.add_argument("--min-confidence", type=float, metavar="P",
                        help="drop found regions whose mean probability is below P, 0 keeps all (default: the model card's)")
    parser.add_argument("--no-postprocess", action="store_true", help="write the raw thresholded mask")
    parser.add_argument("--test-time-flip", action="store_true", help="average with a horizontally flipped pass")
    parser.add_argument("--no-figure", action="store_true", help="do not write the overlay PNG")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--batch-size", type=int, default=8, help="frames per forward pass for clips")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def output_paths(image_path: Path, output_dir: Path, suffix: str) -> dict[str, Path]:
    stem = image_path.name.split(".")[0] or image_path.name
    return {
        "mask": output_dir / f"{stem}_mask{suffix}",
        "probability": output_dir / f"{stem}_probability{suffix}",
        "figure": output_dir / f"{stem}_overlay.png",
    }


def segment_file(segmenter, image_path: Path, paths: dict[str, Path], args) -> str:
    """Segment one file with the segmenter's post-processing, write its outputs and return a one-line summary."""
    options = segmenter.postprocessing
    image = read_image(image_path)
    result = segmenter.segment(
        image.pixels, color=image.color, test_time_flip=args.test_time_flip, batch_size=args.batch_size
    )
    mask = result.raw_mask if args.no_postprocess else result.processed_mask
    if args.format == "png" and result.frame_count > 1:
        raise InvalidImageError(f"{image_path}: a clip of {result.frame_count} frames cannot be written as PNG; use --format nrrd")
    squeeze = (lambda array: array[0]) if result.frame_count == 1 else (lambda array: array)
    # Labelmaps hold 0/1; a PNG mask is written 0/255 (bool) so it can be viewed.
    mask_pixels = mask if args.format == "png" else mask.astype(np.uint8)
    write_image(paths["mask"], squeeze(mask_pixels), spacing=image.spacing)
    write_image(paths["probability"], squeeze(result.probability), spacing=image.spacing)
    if "figure" in paths:
        first_frame = image.pixels[0] if image.frame_count > 1 else image.pixels
        overlay_figure(first_frame, mask[0], result.combined_attention[0]).save(paths["figure"])
    frames_with_lesion = int(mask.any(axis=(1, 2)).sum())
    if frames_with_lesion == 0:
        hidden = None if args.no_postprocess else strongest_hidden_confidence(result.probability, options)
        return f"{image_path.name}: no lesion found" + (
            "" if hidden is None else
            f" (the strongest candidate region, mean probability {hidden:.2f}, is below --min-confidence "
            f"{options.min_mean_probability:.2f})"
        )
    size = measure_lesion(mask[0], image.spacing)
    unit = "mm" if image.spacing_source != "unknown" else "px"
    return (
        f"{image_path.name}: lesion in {frames_with_lesion}/{result.frame_count} frame(s); first frame: "
        f"area {size.area_mm2:.1f} {unit}², largest diameter {size.largest_diameter_mm:.1f} {unit}"
        + ("" if unit == "mm" else " (pixel spacing unknown)")
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from tqdm import tqdm

    from .inference import LesionSegmenter

    try:
        segmenter = LesionSegmenter.from_weights(
            args.weights, device=args.device, threshold=args.threshold, min_mean_probability=args.min_confidence
        )
    except (WeightsError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    args.output.mkdir(parents=True, exist_ok=True)
    failures = 0
    for image_path in tqdm(args.inputs, desc="Segmenting", unit="file", disable=len(args.inputs) < 2):
        paths = output_paths(image_path, args.output, FORMATS[args.format])
        if args.no_figure:
            paths.pop("figure")
        existing = [str(path) for path in paths.values() if path.exists()]
        if existing and not args.overwrite:
            tqdm.write(f"error: {image_path}: would overwrite {', '.join(existing)} (use --overwrite)", file=sys.stderr)
            failures += 1
            continue
        try:
            tqdm.write(segment_file(segmenter, image_path, paths, args))
        except (ImageReadError, ImageWriteError, InvalidImageError) as error:
            tqdm.write(f"error: {error}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
