"""Cases and the split manifest: reading images and masks of every dataset.

A manifest (written by ``breastus-train prepare``) lists every usable case with
its dataset, class, image and mask paths relative to that dataset's folder, its
duplicate group and its split. Everything that trains or evaluates reads the
cases through :func:`load_manifest` and :func:`load_case`; images are decoded
by the core's ``read_image``, exactly as the extension reads a user's file.
Version 1 manifests (BUSI only, no ``dataset`` field) still load.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from typing import Optional

import numpy as np
from PIL import Image

from BreastUSSegmentLib.imageio import ImageReadError, read_image

from .datasets import DataRoots, DatasetError

LESION_CLASSES = ("benign", "malignant")
NORMAL_CLASS = "normal"
SPLITS = ("train", "val", "test")
MANIFEST_VERSION = 2
READABLE_MANIFEST_VERSIONS = (1, 2)
LEGACY_DATASET = "BUSI"  # version 1 manifests cover BUSI only


@dataclass(frozen=True)
class Case:
    """One image of the dataset with its lesion mask files."""

    id: str
    label: str
    image: str  # path relative to the dataset root
    masks: tuple[str, ...]  # paths relative to the dataset root; the lesion is their union
    group: int  # duplicate group; a group never straddles splits
    split: str
    dataset: str = LEGACY_DATASET
    pixel_size_mm: Optional[float] = None  # as published by the dataset, when it gives one

    def to_dict(self) -> dict:
        values = asdict(self)
        values["masks"] = list(self.masks)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "Case":
        pixel_size = values.get("pixel_size_mm")
        return cls(
            id=str(values["id"]),
            label=str(values["label"]),
            image=str(values["image"]),
            masks=tuple(str(mask) for mask in values["masks"]),
            group=int(values["group"]),
            split=str(values["split"]),
            dataset=str(values.get("dataset", LEGACY_DATASET)),
            pixel_size_mm=None if pixel_size is None else float(pixel_size),
        )


@dataclass(frozen=True)
class Manifest:
    """A loaded split manifest."""

    path: Path
    seed: int
    ratios: dict
    cases: tuple[Case, ...]
    excluded: tuple[dict, ...]
    duplicate_groups: tuple[tuple[str, ...], ...]
    sha256: str  # hash of the canonical JSON of the cases, identifies the split

    def cases_for(self, split: str) -> list[Case]:
        """The cases of one split ("train", "val" or "test"), in manifest order."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return [case for case in self.cases if case.split == split]

    @property
    def datasets(self) -> list[str]:
        """The datasets the manifest covers, in order of first appearance."""
        return list(dict.fromkeys(case.dataset for case in self.cases))


def cases_sha256(cases: list[dict]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of the case list."""
    text = json.dumps(cases, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read a split manifest and check its version and case hash."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"split manifest not found: {path} (create it with 'breastus-train prepare')")
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read split manifest {path}: {error}") from error
    if values.get("version") not in READABLE_MANIFEST_VERSIONS:
        raise DatasetError(f"split manifest {path} has version {values.get('version')}; this code reads "
                           f"versions {', '.join(map(str, READABLE_MANIFEST_VERSIONS))}")
    try:
        cases = tuple(Case.from_dict(case) for case in values["cases"])
    except (KeyError, TypeError, ValueError) as error:
        raise DatasetError(f"split manifest {path} has an invalid case entry: {error}") from error
    digest = cases_sha256(values["cases"])
    if digest != values.get("cases_sha256"):
        raise DatasetError(
            f"split manifest {path}: the cases do not match the recorded cases_sha256 "
            f"({values.get('cases_sha256')} recorded, {digest} computed); the file was edited by hand"
        )
    unknown = sorted({case.split for case in cases} - set(SPLITS))
    if unknown:
        raise DatasetError(f"split manifest {path} uses unknown splits {unknown}")
    return Manifest(
        path=path,
        seed=int(values.get("seed", 0)),
        ratios=dict(values.get("ratios", {})),
        cases=cases,
        excluded=tuple(values.get("excluded", [])),
        duplicate_groups=tuple(tuple(group) for group in values.get("duplicate_groups", [])),
        sha256=digest,
    )


def read_case_image(path: str | os.PathLike) -> np.ndarray:
    """A dataset image decoded by the core's ``read_image`` (as the extension reads it), as a numpy array."""
    try:
        return read_image(path).pixels
    except ImageReadError as error:
        raise DatasetError(str(error)) from error


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask PNG (1-bit, L, RGB, RGBA or palette) as bool: any nonzero colour is lesion.

    The alpha channel of an RGBA mask is ignored (it is opaque everywhere).
    """
    try:
        with Image.open(path) as image:
            if image.mode == "1":
                return np.asarray(image, dtype=bool)
            if image.mode in ("L", "I;16", "I", "F"):
                return np.asarray(image) != 0
            if image.mode == "LA":
                return np.asarray(image.getchannel("L")) != 0
            return np.asarray(image.convert("RGB")).any(axis=-1)
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read mask {path}: {error}") from error


def read_mask_union(paths: list[str | os.PathLike], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Union of several mask files; every mask must have ``shape`` (the image's) when given."""
    if not paths:
        raise DatasetError("no mask file given")
    union = None
    for path in paths:
        mask = read_mask(path)
        expected = shape if shape is not None else (union.shape if union is not None else mask.shape)
        if mask.shape != tuple(expected):
            raise DatasetError(
                f"mask {path} is {mask.shape[1]}x{mask.shape[0]} pixels but its image is {expected[1]}x{expected[0]}"
            )
        union = mask if union is None else (union | mask)
    return union


def load_case(data, case: Case) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image, mask)``: the image as ``read_image`` gives it and the bool union mask ``(H, W)``.

    ``data`` is a :class:`DataRoots` (or the list of ``--data`` folders), or the one folder ``case`` lives in.
    """
    root = Path(data) if isinstance(data, (str, os.PathLike)) else DataRoots.from_paths(data).root_for(case.dataset)
    image_path = root / case.image
    if not image_path.is_file():
        raise DatasetError(f"image of case {case.id!r} not found: {image_path} (is --data the {case.dataset} folder?)")
    image = read_case_image(image_path)
    mask = read_mask_union([root / mask for mask in case.masks], shape=image.shape[:2])
    return image, mask
