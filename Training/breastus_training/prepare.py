"""``breastus-train prepare``: index the datasets, group duplicates and write one split manifest.

Steps, for every ``--data`` folder (its dataset is recognised by its layout,
see :mod:`.datasets`):

1. list the images with their masks and classes (the dataset's adapter); a case
   without a mask, with a mask of another size, with an unreadable file, or a
   benign/malignant image whose mask is all black is excluded (with the reason);
2. find exact duplicates (same decoded pixels) and near duplicates (16x16
   thumbnails, each scaled to zero mean and unit variance, closer than
   ``NEAR_DUPLICATE_THRESHOLD`` in root-mean-square distance) and join them
   into groups;
3. split train/val/test (70/10/20 by default) stratified by class with a fixed
   seed, assigning whole groups, so no group straddles two splits. Each dataset
   is split on its own with the same seed, so adding a dataset leaves the split
   of the others unchanged;
4. write the manifest JSON (stable: sorted, relative paths) and print a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from BreastUSSegmentLib.fileio import write_text_atomically

from .busi import MANIFEST_VERSION, SPLITS, DatasetError, cases_sha256, read_case_image, read_mask
from .datasets import ADAPTERS, SourceCase, detect_adapter, natural_key

DEFAULT_RATIOS = {"train": 0.7, "val": 0.1, "test": 0.2}
THUMBNAIL_SIZE = 16
# RMS distance between normalised 16x16 thumbnails. On BUSI, pairs closer than
# this are the same frame (cropped or rescaled) or the same lesion scanned
# again; the closest unrelated pairs seen were at about 0.34.
NEAR_DUPLICATE_THRESHOLD = 0.3


@dataclass
class IndexedImage:
    """A usable image found while indexing, with its duplicate fingerprints."""

    case: SourceCase
    pixel_sha256: str
    thumbnail: np.ndarray

    @property
    def label(self) -> str:
        return self.case.label


def pixel_sha256(pixels: np.ndarray) -> str:
    """sha256 of the decoded pixels (an RGB image with equal channels hashes as gray)."""
    if pixels.ndim == 3 and np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2]):
        pixels = pixels[..., 0]
    pixels = np.ascontiguousarray(pixels)
    header = f"{pixels.dtype.str}{pixels.shape}".encode()
    return hashlib.sha256(header + pixels.tobytes()).hexdigest()


def thumbnail(pixels: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """A ``size*size`` vector: gray image box-averaged to size x size, zero mean, unit variance."""
    gray = pixels.astype(np.float32)
    if gray.ndim == 3:
        gray = gray[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    small = np.asarray(Image.fromarray(gray).resize((size, size), Image.BOX), dtype=np.float64).ravel()
    small -= small.mean()
    spread = small.std()
    return small / spread if spread > 0 else small


def index_dataset(root: Path, adapter=None) -> tuple[list[IndexedImage], list[dict]]:
    """Every usable image of the dataset in ``root`` with its fingerprints; and the excluded entries."""
    adapter = adapter or detect_adapter(root)
    listing = adapter.list_cases(root)
    images: list[IndexedImage] = []
    excluded = list(listing.excluded)
    for case in listing.cases:
        entry, reason = _index_image(root, case)
        if entry is None:
            excluded.append({"image": case.image, "reason": reason})
        else:
            images.append(entry)
    return images, excluded


def _index_image(root: Path, case: SourceCase) -> tuple[IndexedImage | None, str]:
    """Check one image and its masks; return the entry, or None and the reason for excluding it."""
    try:
        pixels = read_case_image(root / case.image)
    except DatasetError as error:
        return None, str(error)
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)):
        return None, f"not a single frame (pixel array of shape {pixels.shape})"
    height, width = pixels.shape[:2]
    lesion = False
    for mask_name in case.masks:
        try:
            mask = read_mask(root / mask_name)
        except DatasetError as error:
            return None, str(error)
        if mask.shape != (height, width):
            return None, f"mask '{mask_name}' is {mask.shape[1]}x{mask.shape[0]} pixels, the image is {width}x{height}"
        lesion = lesion or bool(mask.any())
    if case.label != "normal" and not lesion:
        return None, f"a {case.label} image whose mask is all black (no lesion outlined)"
    return IndexedImage(case, pixel_sha256(pixels), thumbnail(pixels)), ""


def duplicate_groups(images: list[IndexedImage], threshold: float = NEAR_DUPLICATE_THRESHOLD) -> list[int]:
    """Group index of every image: exact or near duplicates (transitively) share a group.

    Groups are numbered in the order of their first member in ``images``.
    """
    parent = list(range(len(images)))

    def find(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    def union(first: int, second: int) -> None:
        first, second = find(first), find(second)
        if first != second:
            parent[max(first, second)] = min(first, second)

    first_with_hash: dict[str, int] = {}
    for index, image in enumerate(images):
        union(index, first_with_hash.setdefault(image.pixel_sha256, index))
    if len(images) > 1:
        vectors = np.stack([image.thumbnail for image in images])
        squared = (vectors**2).sum(axis=1)
        distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * vectors @ vectors.T, 0) / vectors.shape[1])
        for first, second in zip(*np.nonzero(np.triu(distances < threshold, k=1))):
            union(int(first), int(second))
    numbers: dict[int, int] = {}
    return [numbers.setdefault(find(index), len(numbers)) for index in range(len(images))]


def assign_splits(labels: list[str], groups: list[int], ratios: dict[str, float], seed: int) -> list[str]:
    """Split name per image: whole groups, stratified by class, reproducible for a seed.

    Each group counts for the class most of its members have. Per class, groups
    are shuffled with the seed, then taken largest first and each is given to
    the split furthest below its target share of that class.
    """
    members: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    class_total = {label: labels.count(label) for label in set(labels)}
    counts = {(label, split): 0 for label in class_total for split in SPLITS}
    split_of_group: dict[int, str] = {}
    rng = random.Random(seed)
    for label in sorted(class_total):
        owned = [group for group, indices in members.items() if _main_label(labels, indices) == label]
        rng.shuffle(owned)
        owned.sort(key=lambda group: -len(members[group]))  # stable: equal sizes keep the shuffled order
        for group in owned:
            deficits = [ratios[split] * class_total[label] - counts[(label, split)] for split in SPLITS]
            split = SPLITS[int(np.argmax(deficits))]
            split_of_group[group] = split
            for index in members[group]:
                counts[(labels[index], split)] += 1
    return [split_of_group[group] for group in groups]


def _main_label(labels: list[str], indices: list[int]) -> str:
    """The most frequent class among a group's members (alphabetical on ties)."""
    names = [labels[index] for index in indices]
    return min(set(names), key=lambda label: (-names.count(label), label))


def build_manifest(roots, seed: int = 0, ratios: dict[str, float] | None = None,
                   threshold: float = NEAR_DUPLICATE_THRESHOLD) -> dict:
    """Index every folder of ``roots`` (one path or a list) and return the manifest (see the module docstring)."""
    ratios = dict(ratios or DEFAULT_RATIOS)
    if set(ratios) != set(SPLITS) or abs(sum(ratios.values()) - 1.0) > 1e-6 or min(ratios.values()) < 0:
        raise ValueError(f"ratios must give train, val and test shares summing to 1, got {ratios}")
    roots = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(root) for root in roots]
    adapters = [detect_adapter(root) for root in roots]
    names = [adapter.name for adapter in adapters]
    if len(set(names)) != len(names):
        raise DatasetError(f"each dataset may be given once; got {', '.join(names)}")
    cases, excluded, datasets = [], [], {}
    for root, adapter in sorted(zip(roots, adapters), key=lambda pair: ADAPTERS.index(pair[1])):
        dataset_cases, dataset_excluded = _dataset_cases(root, adapter, seed, ratios, threshold, first_group=len(
            {case["group"] for case in cases}))
        cases.extend(dataset_cases)
        excluded.extend({"dataset": adapter.name, **entry} for entry in dataset_excluded)
        datasets[adapter.name] = {"citation": adapter.citation, "licence": adapter.licence}
    grouped: dict[int, list[str]] = {}
    for case in cases:
        grouped.setdefault(case["group"], []).append(case["id"])
    return {
        "version": MANIFEST_VERSION,
        "datasets": datasets,
        "seed": seed,
        "ratios": ratios,
        "duplicate_detection": {"exact": "sha256 of decoded pixels", "thumbnail_size": THUMBNAIL_SIZE,
                                "near_duplicate_rms_threshold": threshold, "scope": "within each dataset"},
        "cases": cases,
        "excluded": excluded,
        "duplicate_groups": [members for _, members in sorted(grouped.items()) if len(members) > 1],
        "cases_sha256": cases_sha256(cases),
    }


def _dataset_cases(root: Path, adapter, seed: int, ratios: dict, threshold: float,
                   first_group: int) -> tuple[list[dict], list[dict]]:
    """The manifest entries of one dataset (groups numbered from ``first_group``) and its excluded entries."""
    images, excluded = index_dataset(root, adapter)
    if not images:
        raise DatasetError(f"no usable image with a mask found under {root}")
    images.sort(key=lambda image: (natural_key(image.case.label), natural_key(image.case.id)))
    ids = [image.case.id for image in images]
    if len(set(ids)) != len(ids):
        repeated = sorted({case_id for case_id in ids if ids.count(case_id) > 1})
        raise DatasetError(f"image names must be unique within {adapter.name}; repeated: {repeated}")
    groups = duplicate_groups(images, threshold)
    splits = assign_splits([image.label for image in images], groups, ratios, seed)
    cases = []
    for image, group, split in zip(images, groups, splits):
        entry = {"id": image.case.id, "label": image.case.label, "image": image.case.image,
                 "masks": list(image.case.masks), "group": first_group + group, "split": split,
                 "dataset": adapter.name}
        if image.case.pixel_size_mm is not None:
            entry["pixel_size_mm"] = image.case.pixel_size_mm
        cases.append(entry)
    return cases, sorted(excluded, key=lambda entry: natural_key(entry["image"]))


def manifest_text(manifest: dict) -> str:
    """The manifest as JSON with one case (or excluded entry, or group) per line, for readable diffs."""
    lines = ["{"]
    for position, (key, value) in enumerate(manifest.items()):
        comma = "," if position < len(manifest) - 1 else ""
        if isinstance(value, list) and value:
            items = [json.dumps(item, ensure_ascii=False) for item in value]
            lines.append(f"  {json.dumps(key)}: [")
            lines.extend(f"    {item}{',' if index < len(items) - 1 else ''}" for index, item in enumerate(items))
            lines.append(f"  ]{comma}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
    return "\n".join(lines + ["}"]) + "\n"


def write_manifest(manifest: dict, path: Path) -> None:
    if path.is_dir():
        raise DatasetError(f"--output {path} is a folder; give the manifest's file name, e.g. {path / 'split.json'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, manifest_text(manifest))


def summary_table(manifest: dict) -> str:
    """Counts per dataset, class and split as an aligned text table."""
    labels = sorted({case["label"] for case in manifest["cases"]})
    datasets = list(dict.fromkeys(case["dataset"] for case in manifest["cases"]))
    rows = [["dataset", "class", *SPLITS, "total"]]
    for dataset in [*datasets, "all"]:
        for label in [*labels, "all"]:
            counts = [sum(1 for case in manifest["cases"] if case["split"] == split and label in ("all", case["label"])
                          and dataset in ("all", case["dataset"])) for split in SPLITS]
            rows.append([dataset, label, *map(str, counts), str(sum(counts))])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(width) if column else cell.ljust(width) for column, (cell, width) in enumerate(zip(row, widths))) for row in rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, action="append",
                        help="a dataset folder (BUSI or BrEaST, recognised by its layout); repeat for several")
    parser.add_argument("--output", type=Path, required=True,
                        help="manifest to write, e.g. Training/splits/busi_breast_split.json")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument("--ratios", type=float, nargs=3, metavar=("TRAIN", "VAL", "TEST"), default=[0.7, 0.1, 0.2],
                        help="split shares (default 0.7 0.1 0.2)")
    parser.add_argument("--near-duplicate-threshold", type=float, default=NEAR_DUPLICATE_THRESHOLD,
                        help=f"RMS distance of normalised 16x16 thumbnails below which two images are grouped (default {NEAR_DUPLICATE_THRESHOLD})")


def run(args: argparse.Namespace) -> int:
    if args.output.is_dir():
        raise DatasetError(f"--output {args.output} is a folder; give the manifest's file name, "
                           f"e.g. {args.output / 'split.json'}")
    manifest = build_manifest(args.data, seed=args.seed, ratios=dict(zip(SPLITS, args.ratios)),
                              threshold=args.near_duplicate_threshold)
    write_manifest(manifest, args.output)
    groups = manifest["duplicate_groups"]
    folders = ", ".join(map(str, args.data))
    print(f"indexed {folders}: {len(manifest['cases'])} cases, {len(manifest['excluded'])} excluded")
    for entry in manifest["excluded"]:
        print(f"  excluded {entry['dataset']} {entry['image']}: {entry['reason']}")
    print(f"duplicate groups: {len(groups)} ({sum(len(group) for group in groups)} images)")
    print(summary_table(manifest))
    print(f"wrote {args.output} (cases_sha256 {manifest['cases_sha256'][:16]}...)")
    return 0
