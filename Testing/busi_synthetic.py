"""A small fake BUSI dataset, written in BUSI's published layout, for tests.

``write_synthetic_busi(root)`` writes gray ultrasound-like frames (speckle over a
smooth random background, a dark elliptical lesion) as
``<root>/<label>/<label> (<n>).png`` with masks ``<label> (<n>)_mask.png`` and
returns a :class:`SyntheticBUSI` naming every special case it planted, so that
tests can check that the indexing finds exactly those:

* ``multi_mask``: an image with two masks (``_mask.png`` and ``_mask_1.png``)
  whose union differs from each of them;
* ``rgb_image``: an image stored as RGB (coloured marks on it);
* ``rgba_mask`` / ``rgb_mask`` / ``one_bit_mask``: masks stored as RGBA, RGB
  and 1-bit PNG (every other mask is 8-bit ``L`` with values 0/255);
* ``size_mismatch``: a mask whose size differs from its image (to be excluded);
* ``missing_mask``: an image without any mask (to be excluded);
* ``exact_duplicate``: one image copied byte for byte into another class;
* ``near_duplicate``: one frame saved again with slight noise (same mask).

Normal images get all-black masks.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_COUNTS = {"benign": 12, "malignant": 6, "normal": 4}
SIZE = (64, 80)  # (height, width) of most frames


@dataclass
class SyntheticBUSI:
    """What ``write_synthetic_busi`` wrote; ids are BUSI-style names such as ``"benign (2)"``."""

    root: Path
    labels: dict[str, str]  # every image id written -> its class folder
    multi_mask: str
    rgb_image: str
    rgba_mask: str
    rgb_mask: str
    one_bit_mask: str
    size_mismatch: str
    missing_mask: str
    exact_duplicate: tuple[str, str]
    near_duplicate: tuple[str, str]
    excluded: list[str] = field(default_factory=list)

    @property
    def valid_ids(self) -> list[str]:
        """Ids of the images a correct indexer keeps (all but the excluded ones)."""
        return sorted(set(self.labels) - set(self.excluded))

    def valid_counts(self) -> dict[str, int]:
        """Number of kept images per class."""
        counts = {label: 0 for label in sorted(set(self.labels.values()))}
        for case_id in self.valid_ids:
            counts[self.labels[case_id]] += 1
        return counts

    def image_path(self, case_id: str) -> Path:
        return self.root / self.labels[case_id] / f"{case_id}.png"


def _ultrasound_frame(rng: np.random.Generator, size: tuple[int, int], lesion: np.ndarray | None) -> np.ndarray:
    """A uint8 frame: smooth random background, multiplicative speckle, dark lesion."""
    height, width = size
    coarse = rng.uniform(40, 200, size=(4, 5)).astype(np.float32)
    background = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.float32)
    depth_fade = np.linspace(1.0, 0.6, height, dtype=np.float32)[:, None]  # deeper tissue is darker
    frame = background * depth_fade
    if lesion is not None:
        frame = np.where(lesion, frame * 0.25 + 5, frame)
    speckle = rng.rayleigh(scale=0.8, size=size).astype(np.float32)
    return np.clip(frame * speckle, 0, 255).astype(np.uint8)


def _ellipse(rng: np.random.Generator, size: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """A random filled ellipse fully inside the frame."""
    height, width = size
    radius_y = rng.uniform(0.12, 0.25) * height * scale
    radius_x = rng.uniform(0.12, 0.25) * width * scale
    center_y = rng.uniform(radius_y + 2, height - radius_y - 2)
    center_x = rng.uniform(radius_x + 2, width - radius_x - 2)
    rows, cols = np.mgrid[0:height, 0:width]
    return ((rows - center_y) / radius_y) ** 2 + ((cols - center_x) / radius_x) ** 2 <= 1.0


def _save_mask(path: Path, mask: np.ndarray, mode: str = "L") -> None:
    """Save a boolean mask as a PNG in ``mode`` ("1", "L", "RGB" or "RGBA"), lesion = white."""
    values = np.where(mask, 255, 0).astype(np.uint8)
    if mode == "1":
        Image.fromarray(mask.astype(bool)).convert("1").save(path)
    elif mode == "L":
        Image.fromarray(values).save(path)
    elif mode == "RGB":
        Image.fromarray(np.stack([values] * 3, axis=-1)).save(path)
    elif mode == "RGBA":
        alpha = np.full_like(values, 255)
        Image.fromarray(np.stack([values, values, values, alpha], axis=-1)).save(path)
    else:
        raise ValueError(f"unknown mask mode {mode}")


def write_synthetic_busi(root, counts: dict[str, int] | None = None, seed: int = 0) -> SyntheticBUSI:
    """Write a fake BUSI tree under ``root`` and return what was planted.

    ``counts`` gives the number of images per class (default 12 benign,
    6 malignant, 4 normal); at least 12 benign and 6 malignant are needed for
    all the special cases. The same ``seed`` always writes the same pixels.
    """
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    if counts.get("benign", 0) < 12 or counts.get("malignant", 0) < 6 or counts.get("normal", 0) < 1:
        raise ValueError(f"need at least 12 benign, 6 malignant and 1 normal image, got {counts}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    info = SyntheticBUSI(
        root=root,
        labels={},
        multi_mask="benign (2)",
        rgb_image="benign (3)",
        rgba_mask="malignant (2)",
        rgb_mask="benign (4)",
        one_bit_mask="benign (5)",
        size_mismatch="malignant (3)",
        missing_mask=f"benign ({counts['benign']})",
        exact_duplicate=("benign (11)", f"malignant ({counts['malignant']})"),
        near_duplicate=("benign (9)", "benign (10)"),
    )
    info.excluded = [info.size_mismatch, info.missing_mask]
    mask_modes = {info.rgba_mask: "RGBA", info.rgb_mask: "RGB", info.one_bit_mask: "1"}

    for label in sorted(counts):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(1, counts[label] + 1):
            case_id = f"{label} ({number})"
            info.labels[case_id] = label
            if case_id in (info.exact_duplicate[1], info.near_duplicate[1]):
                continue  # written from their originals below
            size = (72, 88) if number == 7 else SIZE  # one frame of another size
            lesion = None if label == "normal" else _ellipse(rng, size)
            second = None
            while case_id == info.multi_mask and (second is None or not (second & ~lesion).any()):
                second = _ellipse(rng, size, scale=0.6)  # must add pixels to the first mask
            union = lesion if second is None else (lesion | second)
            frame = _ultrasound_frame(rng, size, union)
            image_path = folder / f"{case_id}.png"
            if case_id == info.rgb_image:
                rgb = np.stack([frame] * 3, axis=-1)
                rgb[4:8, 4:20] = (255, 255, 0)  # a yellow caliper mark, as on some BUSI frames
                Image.fromarray(rgb).save(image_path)
            else:
                Image.fromarray(frame).save(image_path)
            if case_id == info.missing_mask:
                continue
            mask = lesion if lesion is not None else np.zeros(size, dtype=bool)
            if case_id == info.size_mismatch:
                mask = mask[:-4]
            _save_mask(folder / f"{case_id}_mask.png", mask, mask_modes.get(case_id, "L"))
            if second is not None:
                _save_mask(folder / f"{case_id}_mask_1.png", second, "1")

    # Exact duplicate across classes: same file, byte for byte (as benign (433) = malignant (145)).
    original, copy = info.exact_duplicate
    shutil.copyfile(info.image_path(original), info.image_path(copy))
    shutil.copyfile(root / info.labels[original] / f"{original}_mask.png", root / info.labels[copy] / f"{copy}_mask.png")

    # Near duplicate: the same frame scanned again, with slight noise.
    original, copy = info.near_duplicate
    frame = np.asarray(Image.open(info.image_path(original)), dtype=np.int16)
    noisy = np.clip(frame + rng.integers(-6, 7, size=frame.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(info.image_path(copy))
    shutil.copyfile(root / info.labels[original] / f"{original}_mask.png", root / info.labels[copy] / f"{copy}_mask.png")
    return info


def write_synthetic_split(root) -> tuple[Path, Path]:
    """Write a fake BUSI tree as ``<root>/BUSI`` and the split ``prepare`` makes of it as ``<root>/split.json``.

    Returns ``(dataset folder, split file)``.
    """
    from breastus_training import cli  # the Training package, on the path in the tests that train

    data, split = Path(root) / "BUSI", Path(root) / "split.json"
    write_synthetic_busi(data)
    if cli.main(["prepare", "--data", str(data), "--output", str(split)]) != 0:
        raise RuntimeError(f"prepare failed on the synthetic dataset {data}")
    return data, split
