"""What every image reader returns and raises, shared by :mod:`.imageio` and :mod:`.dicomio` (numpy only)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

UNKNOWN_SPACING = (1.0, 1.0)
# Frames x rows x columns one input may hold, in the Slicer module and on the command line alike
# (colour samples are not counted). The pipeline holds about a dozen float32 copies of the input
# (frames, probability, one map per attention gate, output volumes), so this keeps a run within
# a few GB of memory. Image files are checked before their pixels are decoded where the format allows.
MAX_INPUT_PIXELS = 50_000_000


class ImageReadError(ValueError):
    """A file cannot be read as an image; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"Cannot read image '{path}': {problem}")


@dataclass(frozen=True)
class ImageGeometry:
    """Where an image file's pixels lie in space, in SimpleITK's terms (x first): the spacing, the origin and
    the direction cosines (row by row) of a 2-D or 3-D image."""

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def dimension(self) -> int:
        return len(self.spacing)


@dataclass
class LoadedImage:
    """Pixels of an image file as stored, with the physical size of a pixel."""

    pixels: np.ndarray  # (H, W) | (H, W, C) | (F, H, W) | (F, H, W, C)
    spacing: tuple[float, float]  # (row_mm, column_mm); (1.0, 1.0) when unknown
    spacing_source: str  # "PixelSpacing", "ImagerPixelSpacing", "SequenceOfUltrasoundRegions", "header", "unknown"
    color: bool  # the last axis holds RGB(A) samples
    path: Path
    geometry: Optional[ImageGeometry] = None  # NRRD, NIfTI, MetaImage: the header's full geometry

    @property
    def frame_count(self) -> int:
        """Number of frames (1 for a single image)."""
        is_stack = self.pixels.ndim == 4 or (self.pixels.ndim == 3 and not self.color)
        return int(self.pixels.shape[0]) if is_stack else 1

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Height and width of one frame."""
        shape = self.pixels.shape[:-1] if self.color else self.pixels.shape
        return int(shape[-2]), int(shape[-1])


def size_problem(frames: int, rows: int, columns: int, limit: int | None = None) -> str:
    """Why an input of ``frames`` x ``rows`` x ``columns`` pixels is too large to segment; "" when it is not.

    ``limit`` defaults to :data:`MAX_INPUT_PIXELS`.
    """
    limit = MAX_INPUT_PIXELS if limit is None else limit
    pixels = int(frames) * int(rows) * int(columns)
    if pixels <= limit:
        return ""
    return f"{frames} frame(s) of {rows} x {columns} pixels is {pixels:,} pixels; the limit is {limit:,}"


def check_size(path: str | os.PathLike, frames: int, rows: int, columns: int) -> None:
    """Raise :class:`ImageReadError` naming ``path`` when the image exceeds :data:`MAX_INPUT_PIXELS`."""
    problem = size_problem(frames, rows, columns)
    if problem:
        raise ImageReadError(path, f"the image is too large: {problem} (crop or downsample it)")


def check_spacing(spacing) -> tuple[float, float]:
    """``spacing`` as ``(row_mm, column_mm)`` floats; ``ValueError`` unless it is two positive finite numbers."""
    try:
        row_mm, column_mm = (float(value) for value in spacing)
    except (TypeError, ValueError) as error:
        raise ValueError(f"spacing must be two numbers (row_mm, column_mm), got {spacing!r}") from error
    if not all(math.isfinite(value) and value > 0 for value in (row_mm, column_mm)):
        raise ValueError(f"spacing must be two positive finite numbers (row_mm, column_mm), got {spacing!r}")
    return row_mm, column_mm


def error_line(error: BaseException) -> str:
    """A library's error message folded onto one line, for the user's message."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__


def parse_spacing(text: str) -> tuple[float, float]:
    """A pixel spacing from ``"MM"`` (square pixels) or ``"ROW_MM,COL_MM"``; ``ValueError`` naming the text otherwise."""
    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) not in (1, 2):
        raise ValueError(f"spacing {text!r} must be MM or ROW_MM,COL_MM")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise ValueError(f"spacing {text!r} must be MM or ROW_MM,COL_MM (numbers in mm)") from None
    try:
        return check_spacing(values * 2 if len(values) == 1 else values)
    except ValueError:
        raise ValueError(f"spacing {text!r} must be positive finite numbers of mm") from None
