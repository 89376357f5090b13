"""Command line: segment breast lesions in ultrasound frames or clips.

Example::

    breastus-segment BreastUSSegment/Resources/Samples/*.png --output output/

For every input ``NAME.ext`` it writes ``NAME_mask.<format>`` (processed
mask, 0/1), ``NAME_probability.<format>`` (float probabilities; scaled to
0-255 for PNG) and ``NAME_overlay.png`` (outline and attention heatmap of the
first frame). Existing files are never overwritten unless ``--overwrite``.

With ``--box X0,Y0,X1,Y1`` (repeatable, one input only) or ``--boxes FILE.csv``
(columns file, x0, y0, x1, y1; one row per box) the lesions are segmented
inside the given boxes, in pixels of the image (x to the right, y down, x1/y1
exclusive); on a clip a box applies to every frame.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from . import BUNDLED_WEIGHTS, __version__
from .boxes import BoxError, parse_box, read_box_table
from .device import DEVICE_CHOICES
from .imageio import ImageReadError, ImageWriteError, read_image, write_image
from .measure import measure_lesion
from .postprocessing import strongest_hidden_confidence
from .preprocessing import InvalidImageError
from .visualize import overlay_figure
from .weights import WeightsError

FORMATS = {"nrrd": ".nrrd", "nifti": ".nii.gz", "png": ".png"}


def box_argument(text: str):
    """``--box X0,Y0,X1,Y1`` as a box; a bad one is a usage error."""
    try:
        return parse_box(text)
    except BoxError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="breastus-segment", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", type=Path,
                        help="image files: PNG/JPG/BMP/TIFF, DICOM, NRRD, NIfTI, MHA (default with --boxes: the table's files)")
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
    parser.add_argument("--box", action="append", type=box_argument, metavar="X0,Y0,X1,Y1",
                        help="segment inside this box (pixels; x1, y1 exclusive); repeat for several lesions; one input only")
    parser.add_argument("--boxes", type=Path, metavar="FILE.csv",
                        help="boxes for many images: a CSV file with columns file, x0, y0, x1, y1, one row per box")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def output_paths(image_path: Path, output_dir: Path, suffix: str) -> dict[str, Path]:
    stem = image_path.name.split(".")[0] or image_path.name
    return {
        "mask": output_dir / f"{stem}_mask{suffix}",
        "probability": output_dir / f"{stem}_probability{suffix}",
        "figure": output_dir / f"{stem}_overlay.png",
    }


def boxes_per_input(parser: argparse.ArgumentParser, args) -> dict[Path, list] | None:
    """The boxes of each input from ``--box`` or ``--boxes`` (None: automatic); fills ``args.inputs`` from the table."""
    if args.box and args.boxes:
        parser.error("give --box or --boxes, not both")
    if args.box:
        if len(args.inputs) != 1:
            parser.error(f"--box applies to a single input ({len(args.inputs)} given); use --boxes FILE.csv for several")
        return {args.inputs[0]: args.box}
    if args.boxes:
        try:
            table = read_box_table(args.boxes)
        except BoxError as error:
            parser.error(str(error))
        if not args.inputs:
            args.inputs = list(table)
        return {path: table.get(path.resolve(), []) for path in args.inputs}
    if not args.inputs:
        parser.error("give at least one image file")
    return None


def empty_box_note(result) -> str:
    """The summary's note on boxes in which the network saw no lesion ("" when there are none)."""
    empty = sorted({outcome.index + 1 for outcome in result.empty_boxes})
    if not empty:
        return ""
    return f"; no lesion seen in box {', '.join(str(index) for index in empty)}"


def segment_file(segmenter, image_path: Path, paths: dict[str, Path], args, boxes: list | None = None) -> str:
    """Segment one file (inside ``boxes`` when given) with the segmenter's post-processing, write its outputs
    and return a one-line summary."""
    options = segmenter.postprocessing
    image = read_image(image_path)
    if boxes is not None and not boxes:
        raise BoxError(f"{image_path}: no box for it in {args.boxes}")
    try:
        result = segmenter.segment(
            image.pixels, box=boxes or None, color=image.color, test_time_flip=args.test_time_flip,
            batch_size=args.batch_size,
        )
    except BoxError as error:
        raise BoxError(f"{image_path}: {error}") from None
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
    if result.boxes is not None and frames_with_lesion == 0:
        return f"{image_path.name}: no lesion found" + empty_box_note(result)
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
        + ("" if unit == "mm" else " (pixel spacing unknown)") + empty_box_note(result)
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    boxes = boxes_per_input(parser, args)
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
            tqdm.write(segment_file(segmenter, image_path, paths, args, None if boxes is None else boxes[image_path]))
        except (ImageReadError, ImageWriteError, InvalidImageError, BoxError) as error:
            tqdm.write(f"error: {error}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
