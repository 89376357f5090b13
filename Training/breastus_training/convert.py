"""``breastus-train convert``: BrEaST-Lesions_USG as published by The Cancer Imaging Archive -> the folder
layout ``prepare`` reads (and that the committed split manifest refers to).

The published download is one folder of PNG files, ``caseNNN.png`` with its tumour masks
``caseNNN_tumor.png`` (several tumours: ``caseNNN_tumor1.png``, ``caseNNN_tumor2.png``, ...) and masks of
other findings ``caseNNN_other*.png``, plus the clinical sheet (``.xlsx``, or a ``.csv`` export of it) with
one row per image (``Image_filename``, ``Classification``, ``Pixel_size`` in cm per pixel, ...).

Written to ``--output``:

* ``images/caseNNN.png``: the image composited over black (the published images are RGBA, transparent
  outside the scan sector), 8-bit gray where its three channels are equal, else RGB (coloured marks);
* ``masks/caseNNN_mask.png``: the union of the image's tumour masks (each composited over black; any
  nonzero pixel is lesion), 1-bit; an all-black mask for a ``normal`` image without tumour masks. The
  ``_other`` masks are not lesions and are not used;
* ``cases.csv``: the sheet's columns, row for row, plus ``lesion_pixels``.

An image of a lesion class without a tumour mask gets no mask (``prepare`` then lists it as excluded);
a sheet row without its image, and an image without a sheet row, are reported and left out.
BUSI needs no conversion: ``prepare`` reads its published folders as they are.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from BreastUSSegmentLib.fileio import write_atomically

from .datasets import DatasetError, natural_key
from .sheets import read_table

TUMOUR_MASK = re.compile(r"^(?P<stem>.+?)_tumor(?:_?\d+)?$", re.IGNORECASE)
OTHER_MASK = re.compile(r"^(?P<stem>.+?)_other(?:_?\d+)?$", re.IGNORECASE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, type=Path,
                        help="the published BrEaST-Lesions_USG folder (caseNNN.png, caseNNN_tumor.png, ...)")
    parser.add_argument("--sheet", required=True, type=Path,
                        help="its clinical sheet: the published .xlsx, or a .csv export of it")
    parser.add_argument("--output", required=True, type=Path,
                        help="new folder to write images/, masks/ and cases.csv into (must not exist or be empty)")


def run(args: argparse.Namespace) -> int:
    report = convert_breast(args.source, args.sheet, args.output)
    for line in report["skipped"]:
        print(f"skipped {line}")
    print(f"wrote {args.output}: {report['images']} images, {report['masks']} masks "
          f"({report['without_mask']} lesion images without a tumour mask), cases.csv")
    return 0


def composite_over_black(image: Image.Image) -> np.ndarray:
    """``(H, W, 3)`` uint8: the image's colour times its alpha (transparent pixels become black)."""
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    pixels = np.asarray(image)
    if pixels.shape[-1] == 3:
        return pixels.copy()
    colour, alpha = pixels[..., :3].astype(np.uint32), pixels[..., 3:].astype(np.uint32)
    return ((colour * alpha + 127) // 255).astype(np.uint8)


def read_published(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return composite_over_black(image)
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read {path}: {error}") from error


def as_stored_image(rgb: np.ndarray) -> Image.Image:
    """8-bit gray when the three channels are equal (no information lost), else RGB."""
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
        return Image.fromarray(np.ascontiguousarray(rgb[..., 0]), mode="L")
    return Image.fromarray(rgb, mode="RGB")


def list_published(source: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """The folder's images by file name, and each image stem's tumour masks (``_other`` masks dropped)."""
    if not source.is_dir():
        raise DatasetError(f"--source {source} is not a folder")
    images: dict[str, Path] = {}
    tumours: dict[str, list[Path]] = {}
    for path in sorted(source.iterdir(), key=lambda path: natural_key(path.name)):
        if not path.is_file() or path.suffix.lower() != ".png":
            continue
        tumour = TUMOUR_MASK.match(path.stem)
        if tumour:
            tumours.setdefault(tumour["stem"], []).append(path)
        elif not OTHER_MASK.match(path.stem):
            images[path.name] = path
    if not images:
        raise DatasetError(f"--source {source} holds no caseNNN.png image")
    return images, tumours


def convert_breast(source: Path, sheet: Path, output: Path) -> dict:
    """Write the converted dataset to ``output``; return counts and the skipped files with the reason."""
    source, output = Path(source), Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise DatasetError(f"--output {output} exists and is not an empty folder; nothing is overwritten")
    rows = read_table(sheet)
    if not rows or "Image_filename" not in rows[0] or "Classification" not in rows[0]:
        raise DatasetError(f"{sheet} needs the columns Image_filename and Classification "
                           f"(found {', '.join(rows[0]) if rows else 'no rows'})")
    images, tumours = list_published(source)
    (output / "images").mkdir(parents=True, exist_ok=True)
    (output / "masks").mkdir()
    report = {"images": 0, "masks": 0, "without_mask": 0, "skipped": []}
    kept_rows, listed = [], set()
    for row in rows:
        name = row["Image_filename"]
        name = name if name in images or Path(name).suffix else f"{name}.png"
        listed.add(name)
        if name not in images:
            report["skipped"].append(f"{sheet.name} row {name!r}: no image {source / name}")
            continue
        rgb = read_published(images[name])
        stem = Path(name).stem
        mask = np.zeros(rgb.shape[:2], bool)
        masks = tumours.get(stem, [])
        for path in masks:
            tumour = read_published(path)
            if tumour.shape[:2] != mask.shape:
                raise DatasetError(f"mask {path} is {tumour.shape[1]}x{tumour.shape[0]} pixels but its image is "
                                   f"{mask.shape[1]}x{mask.shape[0]}")
            mask |= tumour.any(axis=-1)
        as_stored_image(rgb).save(output / "images" / f"{stem}.png")
        report["images"] += 1
        if masks or row["Classification"].strip().lower() == "normal":
            Image.fromarray(mask).save(output / "masks" / f"{stem}_mask.png")  # bool -> 1-bit PNG
            report["masks"] += 1
        else:
            report["without_mask"] += 1
            report["skipped"].append(f"{name}: a {row['Classification']} image without a _tumor mask (no mask "
                                     f"written; prepare excludes it)")
        kept_rows.append({**row, "Image_filename": f"{stem}.png", "lesion_pixels": str(int(mask.sum()))})
    for name in sorted(set(images) - listed, key=natural_key):
        report["skipped"].append(f"{name}: not in {sheet.name}")
    stream = io.StringIO()
    columns = [name for name in rows[0] if name != "lesion_pixels"]  # recomputed from the masks
    writer = csv.DictWriter(stream, fieldnames=[*columns, "lesion_pixels"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept_rows)
    text = stream.getvalue()
    write_atomically(output / "cases.csv", lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))
    return report
