"""Reading and writing cine clips a chunk of frames at a time, so a clip of any length fits in memory.

Chunked: NRRD with its data in the header file (``raw`` or ``gzip`` encoding, one
scalar per pixel), read by :func:`open_clip` and written by :class:`NrrdClipWriter`.
Every other format (NIfTI, MetaImage, DICOM, TIFF stacks, NRRD in other forms) is
read whole by :func:`~.imageio.read_image`, so its clips stay under the clip limit
(:data:`~.imagetypes.MAX_INPUT_PIXELS`); for chunked NRRD only the frame limit applies.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .fileio import new_temporary, split_extension, write_atomically
from .imageio import check_pixels, plain_geometry, read_image, simpleitk_name
from .imagetypes import ImageGeometry, ImageReadError, check_spacing, error_line, size_problem

NRRD_TYPES = {
    "uchar": np.uint8, "unsigned char": np.uint8, "uint8": np.uint8, "uint8_t": np.uint8,
    "signed char": np.int8, "int8": np.int8, "int8_t": np.int8,
    "short": np.int16, "int16": np.int16, "int16_t": np.int16, "signed short": np.int16,
    "ushort": np.uint16, "unsigned short": np.uint16, "uint16": np.uint16, "uint16_t": np.uint16,
    "int": np.int32, "int32": np.int32, "int32_t": np.int32, "signed int": np.int32,
    "uint": np.uint32, "unsigned int": np.uint32, "uint32": np.uint32, "uint32_t": np.uint32,
    "float": np.float32, "double": np.float64,
}
NRRD_TYPE_NAMES = {np.dtype(np.uint8): "unsigned char", np.dtype(np.int8): "signed char",
                   np.dtype(np.uint16): "unsigned short", np.dtype(np.int16): "short",
                   np.dtype(np.uint32): "unsigned int", np.dtype(np.int32): "int",
                   np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
READ_BLOCK = 1 << 20  # bytes read from a compressed stream at a time
HEADER_LINE_LIMIT = 1 << 16  # bytes; a longer header line means the file is not read in chunks


@dataclass
class Clip:
    """A clip's geometry, and its frames a chunk at a time (:meth:`chunks`)."""

    path: Path
    frame_count: int
    frame_shape: tuple[int, int]
    spacing: tuple[float, float]  # (row_mm, column_mm)
    spacing_source: str
    color: bool
    single_frame: bool  # the file holds one frame (2-D), not a clip
    geometry: Optional[ImageGeometry] = None  # NRRD, NIfTI, MetaImage: the header's spacing, origin and direction
    _pixels: Optional[np.ndarray] = None  # the whole array, when read whole
    _nrrd: Optional["_NrrdData"] = None  # where the frames are, when read in chunks

    @property
    def chunked(self) -> bool:
        """Whether the frames are read from the file a chunk at a time (else the file was read whole)."""
        return self._nrrd is not None

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """``(n, H, W[, C])`` stacks of at most ``size`` frames, first to last."""
        if self._nrrd is None:
            pixels = self._pixels if not self.single_frame else self._pixels[np.newaxis]
            for start in range(0, self.frame_count, size):
                yield pixels[start:start + size]
            return
        yield from self._nrrd.chunks(size, self.path)


def open_clip(path: str | os.PathLike) -> Clip:
    """Open an image or clip; NRRD with attached raw or gzip data is read in chunks, anything else whole."""
    path = Path(path)
    data = _nrrd_data(path)
    geometry = None if data is None else _header_geometry(path, (*data.frame_shape[::-1], data.frame_count))
    if geometry is None:  # not a chunked NRRD, or one SimpleITK cannot read: read_image reads it or says why not
        image = read_image(path)
        single = image.frame_count == 1 and image.pixels.ndim == (3 if image.color else 2)
        return Clip(path, image.frame_count, image.frame_shape, image.spacing, image.spacing_source, image.color,
                    single, image.geometry, _pixels=image.pixels)
    problem = size_problem(1, *data.frame_shape)
    if problem:
        raise ImageReadError(path, f"the frame is too large: {problem} (crop or downsample it)")
    spacing = (float(geometry.spacing[1]), float(geometry.spacing[0]))
    return Clip(path, data.frame_count, data.frame_shape, spacing, "header", False, False, geometry, _nrrd=data)


def _header_geometry(path: Path, size: tuple) -> Optional[ImageGeometry]:
    """The geometry of a one-component image of ``size`` (columns, rows, frames) as SimpleITK reads it from the
    header alone (as :func:`~.imageio.read_image` would); None when SimpleITK cannot read it or it is another image."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    try:
        with simpleitk_name(path) as name:
            reader.SetFileName(name)
            reader.ReadImageInformation()
    except (RuntimeError, OSError):
        return None
    if reader.GetNumberOfComponents() != 1 or tuple(reader.GetSize()) != tuple(size):
        return None
    return ImageGeometry(tuple(reader.GetSpacing()), tuple(reader.GetOrigin()), tuple(reader.GetDirection()))


@dataclass
class _NrrdData:
    """Where a 3-D scalar NRRD's frames lie in its file."""

    offset: int  # first byte of the data
    encoding: str  # "raw" or "gzip"
    dtype: np.dtype
    frame_count: int
    frame_shape: tuple[int, int]

    def chunks(self, size: int, path: Path) -> Iterator[np.ndarray]:
        frame_bytes = self.dtype.itemsize * self.frame_shape[0] * self.frame_shape[1]
        with open(path, "rb") as handle:
            handle.seek(self.offset)
            stream = gzip.GzipFile(fileobj=handle, mode="rb") if self.encoding == "gzip" else handle
            for start in range(0, self.frame_count, size):
                count = min(size, self.frame_count - start)
                try:
                    data = _read_exactly(stream, count * frame_bytes)
                except (EOFError, OSError, zlib.error) as error:  # a gzip stream cut short or damaged
                    raise ImageReadError(path, f"the compressed data after frame {start} of {self.frame_count} "
                                               f"cannot be read ({error_line(error)})") from None
                if len(data) < count * frame_bytes:
                    raise ImageReadError(path, f"the data ends at frame {start + len(data) // frame_bytes} "
                                               f"of {self.frame_count} (the file is truncated)")
                chunk = np.frombuffer(data, dtype=self.dtype).reshape(count, *self.frame_shape)
                check_pixels(chunk, path)
                yield chunk


def _read_exactly(stream, count: int) -> bytes:
    pieces, left = [], count
    while left > 0:
        piece = stream.read(min(left, READ_BLOCK * 64))
        if not piece:
            break
        pieces.append(piece)
        left -= len(piece)
    return b"".join(pieces)


def _nrrd_data(path: Path) -> Optional[_NrrdData]:
    """The frames' place in a 3-D scalar NRRD with attached raw/gzip data; None for anything else."""
    if split_extension(path.name)[1].lower() != ".nrrd" or not path.is_file() or not os.access(path, os.R_OK):
        return None
    fields, offset = _nrrd_header(path)
    if fields is None:
        return None
    try:
        sizes = [int(value) for value in fields["sizes"].split()]
        dtype = np.dtype(NRRD_TYPES[fields["type"].lower()]).newbyteorder(
            ">" if fields.get("endian", "little") == "big" else "<")
    except (KeyError, ValueError):
        return None
    if (fields.get("dimension") != "3" or len(sizes) != 3 or min(sizes) < 1
            or fields.get("encoding", "").lower() not in ("raw", "gzip", "gz") or "data file" in fields
            or "datafile" in fields or fields.get("byte skip", "0") != "0" or fields.get("line skip", "0") != "0"):
        return None
    columns, rows, frames = sizes
    encoding = "raw" if fields["encoding"].lower() == "raw" else "gzip"
    return _NrrdData(offset, encoding, dtype, frames, (rows, columns))


def _nrrd_header(path: Path) -> tuple[Optional[dict], int]:
    """The header fields (lower-case names) and the data's offset; None when the file is not NRRD."""
    fields, offset = {}, 0
    with open(path, "rb") as handle:
        magic = handle.readline(HEADER_LINE_LIMIT)
        if not magic.startswith(b"NRRD000"):
            return None, 0
        offset = len(magic)
        while True:
            line = handle.readline(HEADER_LINE_LIMIT)
            offset += len(line)
            if not line.endswith(b"\n") or len(fields) > 200:  # the end of the file, or no header line
                return None, 0
            text = line.decode("latin-1").rstrip("\r\n")
            if text == "":
                return fields, offset
            if text.startswith("#"):
                continue
            name, separator, value = text.partition(": ")
            if separator and ":=" not in name:  # "key:=value" lines are free-form key/value pairs
                fields[name.strip().lower()] = value.strip()


def _nrrd_text(value) -> str:
    """A header value on one line (NRRD key/value pairs end at the line's end)."""
    return str(value).replace("\\", "\\\\").replace("\n", "\\n")


class NrrdClipWriter:
    """Writes an ``(F, H, W)`` clip to a gzip NRRD a chunk of frames at a time, under a temporary name.

    The file has ``geometry`` (that of the input; by default ``spacing`` ``(row_mm, column_mm)``, slice
    spacing 1, origin 0 and no rotation) and ``metadata`` (text key -> text value) as ``key:=value`` header
    lines. Once all ``frame_count`` frames are written, :meth:`finish` moves the file to the temporary name
    :func:`.fileio.write_together` gives it (so it is renamed with the input's other outputs, all or none),
    or :meth:`close` gives it its own name. :meth:`abort` (also after an error) leaves nothing behind.
    """

    def __init__(self, path: str | os.PathLike, frame_count: int, frame_shape: tuple[int, int], dtype,
                 spacing: tuple[float, float] = (1.0, 1.0), *, geometry: Optional[ImageGeometry] = None,
                 metadata: Optional[dict] = None):
        self.path = Path(path)
        self.frame_count = int(frame_count)
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.dtype = np.dtype(dtype)
        self.written = 0
        geometry = geometry or plain_geometry(3, check_spacing(spacing))
        if geometry.dimension != 3:
            raise ValueError(f"{self.path}: a clip needs a 3-D geometry, got a {geometry.dimension}-D one")
        header = "\n".join([
            "NRRD0004",
            f"type: {NRRD_TYPE_NAMES[self.dtype]}",
            "dimension: 3",
            "space: left-posterior-superior",  # SimpleITK's (and so the geometry's) physical space
            f"sizes: {self.frame_shape[1]} {self.frame_shape[0]} {self.frame_count}",
            f"space directions: {_nrrd_directions(geometry)}",
            "kinds: domain domain domain",
            "endian: little",
            "encoding: gzip",
            f"space origin: {_nrrd_vector(geometry.origin)}",
        ] + [f"{key}:={_nrrd_text(value)}" for key, value in (metadata or {}).items()]) + "\n\n"
        self._file = None
        self._temporary = new_temporary(self.path)
        try:
            self._file = open(self._temporary, "wb")
            self._file.write(header.encode("ascii"))
        except BaseException:
            self.abort()
            raise
        self._compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: a gzip stream

    def write(self, frames: np.ndarray) -> None:
        """Append ``(n, H, W)`` frames."""
        frames = np.asarray(frames)
        if frames.shape[1:] != self.frame_shape or self.written + frames.shape[0] > self.frame_count:
            raise ValueError(f"{self.path}: frames of shape {frames.shape} do not continue a clip of "
                             f"{self.frame_count} x {self.frame_shape} after frame {self.written}")
        data = np.ascontiguousarray(frames, dtype=self.dtype.newbyteorder("<")).tobytes()
        self._file.write(self._compressor.compress(data))
        self.written += frames.shape[0]

    def finish(self, temporary: str) -> None:
        """Complete the file and move it to ``temporary`` (a writer function of :func:`.fileio.write_together`)."""
        try:
            if self.written != self.frame_count:
                raise ValueError(f"{self.path}: {self.written} of {self.frame_count} frames were written")
            self._file.write(self._compressor.flush())
            self._file.close()
            os.replace(self._temporary, temporary)
        finally:
            self.abort()

    def close(self, *, exclusive: bool = False) -> Path:
        """Complete the file and give it its name (never replacing a file with ``exclusive``); returns the path."""
        try:
            return write_atomically(self.path, self.finish, exclusive=exclusive)
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the file being written (nothing once :meth:`finish` has moved it)."""
        if self._file is not None and not self._file.closed:
            self._file.close()
        if os.path.lexists(self._temporary):
            os.remove(self._temporary)


def _nrrd_vector(values) -> str:
    return "(" + ",".join(repr(float(value)) for value in values) + ")"


def _nrrd_directions(geometry: ImageGeometry) -> str:
    """NRRD ``space directions``: per axis (x, y, frames), its direction cosines times its spacing."""
    matrix = np.asarray(geometry.direction, dtype=float).reshape(3, 3)  # row by row; column i is axis i
    return " ".join(_nrrd_vector(matrix[:, axis] * geometry.spacing[axis]) for axis in range(3))
