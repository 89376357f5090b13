"""Public datasets the model trains on: each is a folder plus a small adapter.

An adapter knows one published folder layout. It recognises the folder
(``detect``), lists its images with their lesion masks and class labels
(``list_cases``) and says how the dataset must be credited. Everything else
(reading pixels, checking masks, duplicate groups, splits) is the same for
every dataset and lives in ``prepare``. A third dataset is one more adapter
class added to ``ADAPTERS``.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from BreastUSSegmentLib.imageio import PILLOW_SUFFIXES

CLASSES = ("benign", "malignant", "normal")


class DatasetError(ValueError):
    """A dataset file or manifest is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class SourceCase:
    """One image as an adapter lists it: paths relative to the dataset folder."""

    id: str
    label: str  # one of CLASSES
    image: str
    masks: Tuple[str, ...]  # the lesion is their union; a normal image may list an all-black mask
    pixel_size_mm: Optional[float] = None  # published physical size of a pixel, when the dataset gives one


@dataclass
class Listing:
    """What an adapter found: usable cases, and files it had to leave out (with the reason)."""

    cases: List[SourceCase] = field(default_factory=list)
    excluded: List[dict] = field(default_factory=list)


def natural_key(text: str) -> tuple:
    """Sort key where digit runs compare as numbers: "benign (2)" < "benign (10)"."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text))


class BUSI:
    """Breast Ultrasound Images (Al-Dhabyani et al. 2020): ``benign/``, ``malignant/``, ``normal/`` folders,
    each ``name.png`` with masks ``name_mask.png``, ``name_mask_1.png``, ..."""

    name = "BUSI"
    layout = "the class folders benign/, malignant/, normal/"
    citation = ("Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. "
                "Data in Brief 28 (2020) 104863. doi:10.1016/j.dib.2019.104863")
    licence = "CC0 1.0"
    mask_pattern = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<index>\d+))?$", re.IGNORECASE)

    def detect(self, root: Path) -> bool:
        return any((root / label).is_dir() for label in CLASSES)

    def list_cases(self, root: Path) -> Listing:
        listing = Listing()
        for label in CLASSES:
            folder = root / label
            if not folder.is_dir():
                listing.excluded.append({"image": f"{label}/", "reason": f"folder {folder} does not exist"})
                continue
            files = sorted((path for path in folder.iterdir() if path.is_file()), key=lambda path: natural_key(path.name))
            masks_of: Dict[str, List[str]] = {}
            images = []
            for path in files:
                if path.suffix.lower() not in PILLOW_SUFFIXES:
                    listing.excluded.append({"image": f"{label}/{path.name}", "reason": "not an image file"})
                    continue
                match = self.mask_pattern.match(path.stem)
                if match:
                    masks_of.setdefault(match["stem"], []).append(path.name)
                else:
                    images.append(path)
            stems = {path.stem for path in images}
            for stem in sorted(set(masks_of) - stems, key=natural_key):
                listing.excluded.extend({"image": f"{label}/{name}", "reason": "mask without an image"}
                                        for name in masks_of[stem])
            for path in images:
                masks = masks_of.get(path.stem, [])
                if not masks:
                    listing.excluded.append({"image": f"{label}/{path.name}",
                                             "reason": f"no mask file (expected '{path.stem}_mask.png')"})
                    continue
                main = f"{path.stem}_mask"
                masks.sort(key=lambda name: (Path(name).stem != main, natural_key(name)))
                listing.cases.append(SourceCase(path.stem, label, f"{label}/{path.name}",
                                                tuple(f"{label}/{name}" for name in masks)))
        return listing


class BrEaST:
    """BrEaST-Lesions_USG (Pawlowska et al. 2024) as ``breastus-train convert`` writes it from the published
    download: ``images/caseNNN.png``, ``masks/caseNNN_mask.png`` and ``cases.csv`` with the class
    (``Classification``) and the pixel size (``Pixel_size``, cm per pixel)."""

    name = "BrEaST"
    layout = "cases.csv and images/"
    citation = ("Pawlowska A, Cwierz-Pienkowska A, Domalik A, Jagus D, Kasprzak P, Matkowski R, Fura L, Nowicki A, "
                "Zolek N. Curated benchmark dataset for ultrasound based breast lesion analysis. Scientific Data 11, "
                "148 (2024). doi:10.1038/s41597-024-02984-z; dataset: The Cancer Imaging Archive, "
                "doi:10.7937/9WKK-Q141")
    licence = "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"
    table = "cases.csv"
    cm_to_mm = 10.0

    def detect(self, root: Path) -> bool:
        return (root / self.table).is_file() and (root / "images").is_dir()

    def list_cases(self, root: Path) -> Listing:
        listing = Listing()
        try:
            with open(root / self.table, newline="", encoding="utf-8") as stream:
                rows = list(csv.DictReader(stream))
        except (OSError, csv.Error, UnicodeDecodeError) as error:
            raise DatasetError(f"cannot read {root / self.table}: {error}") from error
        for row in rows:
            try:
                name, label = row["Image_filename"].strip(), row["Classification"].strip().lower()
            except (KeyError, AttributeError):
                raise DatasetError(f"{root / self.table} needs the columns Image_filename and Classification") from None
            if label not in CLASSES:
                listing.excluded.append({"image": f"images/{name}", "reason": f"unknown class {label!r}"})
                continue
            mask = f"masks/{Path(name).stem}_mask.png"
            if not (root / mask).is_file():
                listing.excluded.append({"image": f"images/{name}", "reason": f"no mask file (expected '{mask}')"})
                continue
            listing.cases.append(SourceCase(Path(name).stem, label, f"images/{name}", (mask,),
                                            self._pixel_size_mm(row.get("Pixel_size"))))
        return listing

    def _pixel_size_mm(self, text: Optional[str]) -> Optional[float]:
        try:
            value = float(text) * self.cm_to_mm
        except (TypeError, ValueError):
            return None
        return value if value > 0 else None


ADAPTERS = (BUSI(), BrEaST())
ADAPTER_BY_NAME = {adapter.name: adapter for adapter in ADAPTERS}


def detect_adapter(root: Path):
    """The adapter whose layout ``root`` has; a clear error when none or several match."""
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    matches = [adapter for adapter in ADAPTERS if adapter.detect(root)]
    if not matches:
        if any(root.glob("*_tumor*.png")):
            raise DatasetError(f"{root} looks like BrEaST-Lesions_USG as published (caseNNN.png with "
                               f"caseNNN_tumor.png masks): convert it first with 'breastus-train convert --source "
                               f"{root} --sheet CLINICAL_SHEET.xlsx --output NEW_FOLDER' and pass NEW_FOLDER")
        layouts = " nor ".join(f"{adapter.layout} ({adapter.name})" for adapter in ADAPTERS)
        raise DatasetError(f"{root} is not a known dataset folder: it has none of {layouts}")
    if len(matches) > 1:
        raise DatasetError(f"{root} looks like several datasets at once ({', '.join(a.name for a in matches)})")
    return matches[0]


class DataRoots:
    """Where each dataset of a manifest lives on this machine (``--data`` folders, identified by layout)."""

    def __init__(self, roots: Dict[str, Path]):
        self.roots = dict(roots)

    @classmethod
    def from_paths(cls, paths) -> "DataRoots":
        """From one folder or a list of folders; each folder's dataset is recognised by its layout."""
        if isinstance(paths, DataRoots):
            return paths
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        roots: Dict[str, Path] = {}
        for path in map(Path, paths):
            name = detect_adapter(path).name
            if name in roots:
                raise DatasetError(f"--data {roots[name]} and --data {path} are both {name} folders")
            roots[name] = path
        return cls(roots)

    def root_for(self, dataset: str) -> Path:
        if dataset not in self.roots:
            given = ", ".join(f"{name} ({path})" for name, path in self.roots.items()) or "none"
            raise DatasetError(f"the split needs the {dataset} folder: pass it with --data (given: {given})")
        return self.roots[dataset]
