"""The BUSI dataset: reading images and masks, and the split manifest.

A manifest (written by ``breastus-train prepare``) lists every usable case with
its class, image and mask paths relative to the dataset root, its duplicate
group and its split. Everything that trains or evaluates reads the cases
through :func:`load_manifest` and :func:`load_case`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("benign", "malignant", "normal")
LESION_CLASSES = ("benign", "malignant")
NORMAL_CLASS = "normal"
SPLITS = ("train", "val", "test")
MANIFEST_VERSION = 1


class DatasetError(ValueError):
    """A dataset file or manifest is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class Case:
    """One image of the dataset with its lesion mask files."""

    id: str
    label: str
    image: str  # path relative to the dataset root
    masks: tuple[str, ...]  # paths relative to the dataset root; the lesion is their union
    group: int  # duplicate group; a group never straddles splits
    split: str

    def to_dict(self) -> dict:
        values = asdict(self)
        values["masks"] = list(self.masks)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "Case":
        return cls(
            id=str(values["id"]),
            label=str(values["label"]),
            image=str(values["image"]),
            masks=tuple(str(mask) for mask in values["masks"]),
            group=int(values["group"]),
            split=str(values["split"]),
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
    if values.get("version") != MANIFEST_VERSION:
        raise DatasetError(f"split manifest {path} has version {values.get('version')}; this code reads {MANIFEST_VERSION}")
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


def read_png_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as Pillow decodes it: gray ``(H, W)`` or RGB ``(H, W, 3)`` (alpha and palettes dropped)."""
    try:
        with Image.open(path) as image:
            if image.mode in ("L", "I;16", "I", "F"):
                return np.asarray(image)
            if image.mode in ("1", "LA"):
                return np.asarray(image.convert("L"))
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error


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


def load_case(data_root: str | os.PathLike, case: Case) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image, mask)``: the image as Pillow reads it (gray uint8 or RGB) and the bool union mask ``(H, W)``."""
    root = Path(data_root)
    image_path = root / case.image
    if not image_path.is_file():
        raise DatasetError(f"image of case {case.id!r} not found: {image_path} (is --data the BUSI folder?)")
    image = read_png_image(image_path)
    mask = read_mask_union([root / mask for mask in case.masks], shape=image.shape[:2])
    return image, mask
