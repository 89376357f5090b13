"""Box prompts: a user's rough box around a lesion, checked, clipped and grown into a crop window.

A box is ``(x0, y0, x1, y1)`` in pixels of the frame: x counts columns to the
right, y counts rows down, and ``x1``/``y1`` are exclusive, so the box covers
``frame[y0:y1, x0:x1]``. Fractional coordinates are rounded outwards.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

# The crop the network sees is the box grown by this fraction of its width (height) on each side;
# chosen on BUSI val (Training/EXPERIMENTS.md, "Box prompt").
CONTEXT_MARGIN = 0.5
# Inside a box the probability is this weight times the whole frame's plus the rest times the crop's, so the
# network's view of the lesion at the frame's scale tempers the enlarged crop (Training/EXPERIMENTS.md, "Box prompt").
FRAME_WEIGHT = 0.25
# The components kept in a box are those touching its centre region: the box shrunk to this fraction.
CENTRE_FRACTION = 0.5
# A box whose highest probability is below this holds no lesion the network can see.
NO_LESION_PROBABILITY = 0.05


class BoxError(ValueError):
    """A box that cannot be used: wrong number of values, empty, inverted or outside the frame."""


@dataclass(frozen=True)
class Box:
    """A box in integer pixel coordinates, ``x1``/``y1`` exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, columns)`` to index a frame with."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def inside(self, outer: "Box") -> "Box":
        """This box in the coordinates of ``outer``'s top-left corner."""
        return Box(self.x0 - outer.x0, self.y0 - outer.y0, self.x1 - outer.x0, self.y1 - outer.y0)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)


BoxLike = Union[Box, Sequence[float]]


def _describe(values) -> str:
    return "(" + ", ".join(f"{value:g}" for value in values) + ")"


def as_box(values: BoxLike) -> Box:
    """A :class:`Box` from four numbers; raises :class:`BoxError` for an empty or inverted box."""
    if isinstance(values, Box):
        values = values.as_tuple()
    try:
        numbers = [float(value) for value in values]
    except (TypeError, ValueError):
        raise BoxError(f"a box is four numbers x0, y0, x1, y1; got {values!r}") from None
    if len(numbers) != 4:
        raise BoxError(f"a box is four numbers x0, y0, x1, y1; got {len(numbers)}: {values!r}")
    if not all(math.isfinite(number) for number in numbers):
        raise BoxError(f"box {values!r} has a value that is not a finite number")
    x0, y0, x1, y1 = numbers
    for low, high, axis in ((x0, x1, "x"), (y0, y1, "y")):
        if high < low:
            raise BoxError(f"box {_describe(numbers)} is inverted: {axis}1 ({high:g}) is less than {axis}0 ({low:g})")
        if high == low:
            raise BoxError(f"box {_describe(numbers)} is empty: {axis}1 equals {axis}0 ({axis}1 is exclusive)")
    return Box(math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))


def clip_box(box: Box, frame_size: tuple[int, int]) -> Box:
    """``box`` clipped to a frame of ``(height, width)``; raises :class:`BoxError` if nothing is left."""
    height, width = frame_size
    clipped = Box(max(box.x0, 0), max(box.y0, 0), min(box.x1, width), min(box.y1, height))
    if clipped.width <= 0 or clipped.height <= 0:
        raise BoxError(f"box {_describe(box.as_tuple())} lies outside the {width}x{height} frame")
    return clipped


def grow_box(box: Box, margin: float, frame_size: tuple[int, int]) -> Box:
    """``box`` grown by ``margin`` times its width (height) on each side, clipped to the frame."""
    if margin < 0:
        raise BoxError(f"the margin must be >= 0, got {margin}")
    dx, dy = int(round(margin * box.width)), int(round(margin * box.height))
    return clip_box(Box(box.x0 - dx, box.y0 - dy, box.x1 + dx, box.y1 + dy), frame_size)


def check_frame_weight(weight: float) -> float:
    """``weight`` as a float if it is a number in [0, 1]; raises :class:`BoxError` otherwise."""
    try:
        value = float(weight)
    except (TypeError, ValueError):
        raise BoxError(f"the frame weight must be a number in [0, 1], got {weight!r}") from None
    if not 0.0 <= value <= 1.0:
        raise BoxError(f"the frame weight must be in [0, 1], got {weight!r}")
    return value


def centre_region(box: Box) -> Box:
    """The middle of ``box`` (``CENTRE_FRACTION`` of its width and height), at least one pixel."""
    dx = int((1.0 - CENTRE_FRACTION) / 2 * box.width)
    dy = int((1.0 - CENTRE_FRACTION) / 2 * box.height)
    return Box(box.x0 + dx, box.y0 + dy, max(box.x1 - dx, box.x0 + dx + 1), max(box.y1 - dy, box.y0 + dy + 1))


def _is_one_box(value) -> bool:
    if isinstance(value, Box):
        return True
    if isinstance(value, np.ndarray):
        return value.ndim == 1
    return isinstance(value, (list, tuple)) and len(value) > 0 and not isinstance(value[0], (list, tuple, Box, np.ndarray))


def box_list(value) -> list[Box]:
    """One box or a sequence of boxes as a list of :class:`Box` (None or an empty list: no box)."""
    if value is None:
        return []
    if _is_one_box(value):
        return [as_box(value)]
    return [as_box(item) for item in value]


def boxes_for_frames(
    box, frame_boxes: Optional[Sequence], frame_count: int, frame_size: tuple[int, int]
) -> list[list[Box]]:
    """The clipped boxes of every frame, from ``box`` (the same on every frame) or ``frame_boxes`` (one entry a frame)."""
    if box is not None and frame_boxes is not None:
        raise BoxError("give either box (the same on every frame) or frame_boxes (one entry per frame), not both")
    if frame_boxes is not None:
        if len(frame_boxes) != frame_count:
            raise BoxError(f"frame_boxes has {len(frame_boxes)} entries for {frame_count} frame(s)")
        per_frame = [box_list(entry) for entry in frame_boxes]
    else:
        boxes = box_list(box)
        if not boxes:
            raise BoxError("box is an empty list; give at least one box or None for the automatic mode")
        per_frame = [boxes] * frame_count
    return [[clip_box(item, frame_size) for item in boxes] for boxes in per_frame]


def parse_box(text: str) -> Box:
    """A box from ``"X0,Y0,X1,Y1"`` (the command line's form)."""
    parts = [part.strip() for part in text.split(",")]
    try:
        return as_box([float(part) for part in parts])
    except ValueError as error:
        message = str(error) if isinstance(error, BoxError) else f"not a number in {text!r}"
        raise BoxError(f"{text!r}: {message} (expected X0,Y0,X1,Y1)") from None


BOX_TABLE_COLUMNS = ("file", "x0", "y0", "x1", "y1")
SPACING_COLUMN = "spacing"  # optional: the image's pixel spacing in mm, "MM" or "ROW_MM,COL_MM"


def _table_rows(path: Path) -> list:
    """The rows of a box table (UTF-8 CSV) as dicts, checked for the required columns."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
        rows = list(reader)
    except OSError as error:
        raise BoxError(f"{path}: cannot read the box table ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise BoxError(f"{path}: the box table is not UTF-8 text (byte {error.start + 1} cannot be decoded); "
                       "save it as UTF-8 CSV") from None
    except csv.Error as error:
        raise BoxError(f"{path}: not a readable CSV file ({error})") from None
    missing = [name for name in BOX_TABLE_COLUMNS if name not in header]
    if missing:
        raise BoxError(f"{path}: the box table needs the columns {', '.join(BOX_TABLE_COLUMNS)}; missing {', '.join(missing)}")
    return rows


def _image_path(table: Path, row: dict, line: int) -> Path:
    name = (row["file"] or "").strip()
    if not name:
        raise BoxError(f"{table} line {line}: the file column is empty")
    image = Path(name)
    return (image if image.is_absolute() else table.parent / image).resolve()


def read_box_table(path: str | os.PathLike) -> dict[Path, Union[list[Box], BoxError]]:
    """Boxes per image from a CSV file (UTF-8) with columns file, x0, y0, x1, y1 (one row per box).

    A relative ``file`` is read from the CSV file's own folder; the keys are resolved paths, in file order.
    An image with an invalid row maps to the :class:`BoxError` of its first such row instead of its boxes, so
    that image alone fails. A table that cannot be read, lacks columns, has no rows or has a row without a
    file raises :class:`BoxError`.
    """
    path = Path(path)
    rows = _table_rows(path)
    if not rows:
        raise BoxError(f"{path}: the box table has no rows")
    table: dict[Path, Union[list[Box], BoxError]] = {}
    for line, row in enumerate(rows, start=2):
        key = _image_path(path, row, line)
        try:
            box = as_box([float(row[name]) for name in BOX_TABLE_COLUMNS[1:]])
        except (TypeError, ValueError) as error:
            message = str(error) if isinstance(error, BoxError) else "x0, y0, x1, y1 must be numbers"
            box = BoxError(f"{path} line {line}: {message}")
        boxes = table.setdefault(key, [])
        if isinstance(box, BoxError) and not isinstance(boxes, BoxError):
            table[key] = box
        elif isinstance(boxes, list):
            boxes.append(box)
    return table


def read_table_spacings(path: str | os.PathLike) -> dict[Path, Union[tuple[float, float], BoxError]]:
    """The pixel spacing of each image from the box table's optional ``spacing`` column (empty cells: none).

    The rows of one image must agree. Keys are resolved paths, like :func:`read_box_table`'s. An image with an
    invalid or disagreeing spacing maps to the :class:`BoxError` of its first such row, so that image alone fails.
    """
    from .imagetypes import parse_spacing

    path = Path(path)
    spacings: dict[Path, Union[tuple[float, float], BoxError]] = {}
    for line, row in enumerate(_table_rows(path), start=2):
        text = (row.get(SPACING_COLUMN) or "").strip()
        if not text:
            continue
        image = _image_path(path, row, line)
        if isinstance(spacings.get(image), BoxError):
            continue
        try:
            spacing = parse_spacing(text)
        except ValueError as error:
            spacings[image] = BoxError(f"{path} line {line}: {error}")
            continue
        if spacings.setdefault(image, spacing) != spacing:
            spacings[image] = BoxError(f"{path} line {line}: spacing {text!r} differs from an earlier row of "
                                       f"{row['file'].strip()}")
    return spacings
