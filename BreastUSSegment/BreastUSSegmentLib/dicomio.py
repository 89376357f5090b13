"""Reading DICOM ultrasound images (single- and multi-frame) with pydicom 3.

Decisions, so that every caller gets the same pixels:

* A file is DICOM when it has the ``DICM`` marker at byte 128; a file without
  the marker (no preamble) is accepted when pydicom parses it into a dataset
  holding image elements (Rows, Columns, SOP Class UID or Pixel Data).
* MONOCHROME1 is inverted so that bright means high, like MONOCHROME2.
  The inversion uses the stored bit depth, so the dtype is kept.
* The modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence) of a
  grayscale image is applied only when it changes values; a rescale gives
  float32 pixels. Identity rescales (slope 1, intercept 0) are ignored.
* YBR_FULL and YBR_FULL_422 become RGB (pydicom's colour conversion), PALETTE
  COLOR becomes RGB (RGBA with an alpha table) through its lookup table. RGB,
  YBR_ICT and YBR_RCT (decoded to RGB by the JPEG 2000 decoders) are colour.
* Pixel spacing, first found wins: PixelSpacing (also in the shared functional
  groups of enhanced files), ImagerPixelSpacing, then the ultrasound region
  calibration (SequenceOfUltrasoundRegions, regions in centimetres only,
  converted to mm; the region containing the image centre is preferred, else
  the first calibrated one). Otherwise the spacing is unknown, ``(1.0, 1.0)``.
* A Deflated Explicit VR file is inflated once in a stream, without keeping
  the result, before pydicom reads it: one that inflates to more than
  :data:`MAX_INFLATED_BYTES` is refused (a small file can hold a huge element).
"""

from __future__ import annotations

import logging
import math
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian)

from .imagetypes import MAX_INPUT_PIXELS, UNKNOWN_SPACING, ImageReadError, LoadedImage, check_size, error_line

GRAY_INTERPRETATIONS = ("MONOCHROME1", "MONOCHROME2")
COLOR_INTERPRETATIONS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
IMAGE_KEYWORDS = ("SOPClassUID", "Rows", "Columns") + PIXEL_KEYWORDS
CENTIMETRE_UNITS = 3  # PhysicalUnitsX/YDirection code for cm
# pydicom logs each failing decoder's traceback here before raising; the raised error says the same in one line.
DECODER_LOGGER = logging.getLogger("pydicom.pixels.decoders.base")
# The most a deflated dataset may inflate to: the pixel data of the largest accepted input (MAX_INPUT_PIXELS
# pixels of up to 8 bytes) plus 64 MiB for the other elements. pydicom holds the whole inflated dataset in memory.
MAX_INFLATED_BYTES = 8 * MAX_INPUT_PIXELS + (64 << 20)
INFLATE_CHUNK = 1 << 20


def has_dicom_magic(path: str | Path) -> bool:
    """True when the file has the DICOM ``DICM`` marker after its 128-byte preamble."""
    with open(path, "rb") as stream:
        header = stream.read(132)
    return len(header) == 132 and header[128:] == b"DICM"


def looks_like_dicom(path: str | Path) -> bool:
    """True for a file with the DICM marker or a preamble-less file that parses as a DICOM image."""
    if has_dicom_magic(path) or inflated_size_problem(path):
        return True
    try:
        dataset = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        return _has_image_elements(dataset)
    except Exception:  # any parser failure simply means "not DICOM"
        return False


def read_dicom(path: str | Path) -> LoadedImage:
    """Read the pixels and spacing of a DICOM file; raise :class:`ImageReadError` naming it."""
    path = Path(path)
    magic = has_dicom_magic(path)
    problem = inflated_size_problem(path)
    if problem:
        raise ImageReadError(path, problem)
    try:
        dataset = pydicom.dcmread(path, force=True)
        recognised = magic or _has_image_elements(dataset)
    except Exception as exc:  # pydicom raises many types on damaged files
        raise ImageReadError(path, f"not a readable DICOM file ({error_line(exc)})") from None
    if not recognised:
        raise ImageReadError(path, "not a DICOM file (no DICM marker and no DICOM image elements)")
    if not any(keyword in dataset for keyword in PIXEL_KEYWORDS):
        raise ImageReadError(path, "the DICOM file has no pixel data")

    rows, columns = int(dataset.get("Rows") or 0), int(dataset.get("Columns") or 0)
    if rows == 0 or columns == 0:
        raise ImageReadError(path, f"the image has no pixels ({rows} rows x {columns} columns)")
    check_size(path, _frame_count(dataset), rows, columns)
    interpretation = str(dataset.get("PhotometricInterpretation", "")).strip().upper()
    if interpretation not in GRAY_INTERPRETATIONS + COLOR_INTERPRETATIONS:
        supported = ", ".join(GRAY_INTERPRETATIONS + COLOR_INTERPRETATIONS)
        name = interpretation or "missing"
        raise ImageReadError(path, f"photometric interpretation '{name}' is not supported (supported: {supported})")

    pixels = _decode(dataset, path)
    if interpretation in GRAY_INTERPRETATIONS:
        if interpretation == "MONOCHROME1":
            pixels = invert_monochrome1(pixels, dataset)
        pixels = _apply_modality_lut(pixels, dataset)
        color = False
    else:
        if interpretation == "PALETTE COLOR":
            pixels = _apply_palette(pixels, dataset, path)
        if pixels.shape[-1] not in (3, 4):
            raise ImageReadError(path, f"colour image decoded to an unexpected shape {pixels.shape}")
        color = True
    spacing, source = dicom_spacing(dataset, (rows, columns))
    return LoadedImage(pixels, spacing, source, color, path)


def inflated_size_problem(path: str | Path) -> str:
    """Why a Deflated Explicit VR file is not read (it inflates to more than ``MAX_INFLATED_BYTES``); "" for any
    other file. The data is inflated chunk by chunk and counted, never held whole."""
    try:
        with open(path, "rb") as stream:
            pydicom.filereader.read_preamble(stream, True)
            meta = pydicom.filereader._read_file_meta_info(stream)
            if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
                return ""
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            inflated = 0
            while not inflater.eof:
                data = inflater.unconsumed_tail or stream.read(INFLATE_CHUNK)
                if not data:
                    break
                inflated += len(inflater.decompress(data, INFLATE_CHUNK))
                if inflated > MAX_INFLATED_BYTES:
                    return (f"the deflated DICOM data inflates to more than {MAX_INFLATED_BYTES:,} bytes, the limit "
                            "(a deflate bomb, or a dataset far larger than any image it may hold)")
    except Exception:  # not a DICOM file with file meta, or broken data: the reader itself reports it
        return ""
    return ""


def _frame_count(dataset: pydicom.Dataset) -> int:
    """Number of Frames, 1 when absent or unreadable (the decoder then reports the problem)."""
    try:
        return max(1, int(dataset.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _has_image_elements(dataset: pydicom.Dataset) -> bool:
    return any(keyword in dataset for keyword in IMAGE_KEYWORDS)


def _decode(dataset: pydicom.Dataset, path: Path) -> np.ndarray:
    """Decoded pixels (YBR converted to RGB); clear errors for missing decoders or broken data."""
    _ensure_transfer_syntax(dataset)
    syntax = UID(dataset.file_meta.TransferSyntaxUID)
    try:
        with _decoder_tracebacks_hidden():
            return pixel_array(dataset)
    except Exception as exc:  # decoders raise RuntimeError, ValueError, NotImplementedError...
        if syntax.is_compressed:
            problem = f"cannot decode pixel data compressed as '{syntax.name}' ({error_line(exc)})"
        else:
            problem = f"cannot decode the pixel data ({error_line(exc)})"
        raise ImageReadError(path, problem) from None


@contextmanager
def _decoder_tracebacks_hidden():
    """Drop the error records pydicom's decoders log (with a traceback) while the pixels are decoded."""
    DECODER_LOGGER.addFilter(_below_error)
    try:
        yield
    finally:
        DECODER_LOGGER.removeFilter(_below_error)


def _below_error(record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR


def _ensure_transfer_syntax(dataset: pydicom.Dataset) -> None:
    """Give a file without file meta information the transfer syntax it was parsed with."""
    if dataset.file_meta.get("TransferSyntaxUID"):
        return
    implicit, little = dataset.original_encoding
    if implicit:
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def invert_monochrome1(pixels: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    """Turn MONOCHROME1 (bright = low) into MONOCHROME2 (bright = high), keeping the dtype."""
    if np.issubdtype(pixels.dtype, np.floating):
        return (pixels.max() + pixels.min() - pixels).astype(pixels.dtype)
    if int(dataset.get("PixelRepresentation", 0)) == 1:
        return (-1 - pixels).astype(pixels.dtype)  # maps [min, max] of the signed range onto [max, min]
    bits = int(dataset.get("BitsStored") or pixels.dtype.itemsize * 8)
    top = 2**bits - 1
    return (top - np.clip(pixels, 0, top)).astype(pixels.dtype)


def _apply_modality_lut(pixels: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    """Apply the modality LUT or rescale, but only when it changes values."""
    slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
    has_lut = bool(dataset.get("ModalityLUTSequence"))
    if not has_lut and slope == 1.0 and intercept == 0.0:
        return pixels
    result = apply_modality_lut(pixels, dataset)
    return result.astype(np.float32) if np.issubdtype(result.dtype, np.floating) else result


def _apply_palette(pixels: np.ndarray, dataset: pydicom.Dataset, path: Path) -> np.ndarray:
    try:
        return apply_color_lut(pixels, dataset)
    except Exception as exc:  # missing or malformed lookup tables
        raise ImageReadError(path, f"cannot apply the PALETTE COLOR lookup table ({error_line(exc)})") from None


# ---------------------------------------------------------------- spacing


def dicom_spacing(dataset: pydicom.Dataset, frame_shape: tuple[int, int]) -> tuple[tuple[float, float], str]:
    """Pixel spacing ``(row_mm, column_mm)`` and the element it came from (see module docstring)."""
    spacing = _positive_pair(dataset.get("PixelSpacing"))
    if spacing:
        return spacing, "PixelSpacing"
    spacing = _functional_group_spacing(dataset)
    if spacing:
        return spacing, "PixelSpacing"
    spacing = _positive_pair(dataset.get("ImagerPixelSpacing"))
    if spacing:
        return spacing, "ImagerPixelSpacing"
    spacing = ultrasound_region_spacing(dataset, frame_shape)
    if spacing:
        return spacing, "SequenceOfUltrasoundRegions"
    return UNKNOWN_SPACING, "unknown"


def ultrasound_region_spacing(dataset: pydicom.Dataset, frame_shape: tuple[int, int]) -> tuple[float, float] | None:
    """Spacing in mm from the calibrated (cm) ultrasound regions, preferring the one holding the centre."""
    calibrated = []
    for region in dataset.get("SequenceOfUltrasoundRegions") or []:
        if region.get("PhysicalUnitsXDirection") != CENTIMETRE_UNITS:
            continue
        if region.get("PhysicalUnitsYDirection") != CENTIMETRE_UNITS:
            continue
        spacing = _positive_pair([_abs(region.get("PhysicalDeltaY")), _abs(region.get("PhysicalDeltaX"))])
        if spacing:
            calibrated.append((region, (spacing[0] * 10.0, spacing[1] * 10.0)))
    if not calibrated:
        return None
    centre_row, centre_column = (frame_shape[0] - 1) / 2.0, (frame_shape[1] - 1) / 2.0
    for region, spacing in calibrated:
        if _region_contains(region, centre_row, centre_column):
            return spacing
    return calibrated[0][1]


def _region_contains(region: pydicom.Dataset, row: float, column: float) -> bool:
    keywords = ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1")
    bounds = [region.get(keyword) for keyword in keywords]
    if any(value is None for value in bounds):
        return False
    min_x, min_y, max_x, max_y = (float(value) for value in bounds)
    return min_x <= column <= max_x and min_y <= row <= max_y


def _functional_group_spacing(dataset: pydicom.Dataset) -> tuple[float, float] | None:
    """PixelSpacing of an enhanced multi-frame file, from its shared functional groups."""
    try:
        measures = dataset.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    except (AttributeError, IndexError, KeyError):
        return None
    return _positive_pair(measures.get("PixelSpacing"))


def _positive_pair(value) -> tuple[float, float] | None:
    """Two finite positive numbers as floats, or None for anything else."""
    try:
        first, second = (float(item) for item in value)
    except (TypeError, ValueError):
        return None
    if all(math.isfinite(item) and item > 0 for item in (first, second)):
        return first, second
    return None


def _abs(value):
    return None if value is None else abs(float(value))
