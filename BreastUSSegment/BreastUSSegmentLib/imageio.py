"""Reading and writing ultrasound images as numpy arrays, with their pixel spacing.

Supported for reading:

* PNG, JPEG, BMP, TIFF (Pillow). 8-bit gray stays uint8, 16-bit gray stays
  uint16, 32-bit integer and float gray stay int32/float32. A 1-bit image is
  read as uint8 with values 0 and 255. A palette image becomes RGB (RGBA when the
  palette has transparency), gray + alpha drops the alpha, RGBA keeps it, CMYK
  and other colour modes become RGB. A multi-page TIFF reads as a stack of
  frames. The EXIF orientation of a photo is applied. These formats carry no
  trustworthy physical spacing, so spacing is ``(1.0, 1.0)`` / ``"unknown"``.
* NRRD, NIfTI, MetaImage (SimpleITK). A 2-D image, or a 3-D image with one
  slice, is one frame; a 3-D image with several slices is a cine clip of frames.
  A 3- or 4-component vector pixel is colour. Spacing comes from the header.
  The array is returned in storage order: the header's direction is not applied;
  ``LoadedImage.geometry`` keeps spacing, origin and direction for the outputs.
* DICOM, detected by content (see :mod:`.dicomio`).

Arrays are ``(H, W)``, ``(H, W, C)``, ``(F, H, W)`` or ``(F, H, W, C)`` in the
stored dtype; ``LoadedImage.color`` tells whether the last axis is colour.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import dicomio
from .fileio import split_extension, write_atomically
from .imagetypes import (MAX_INPUT_PIXELS, UNKNOWN_SPACING, ImageGeometry, ImageReadError, LoadedImage, check_size,
                         check_spacing, error_line)

PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SIMPLEITK_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom")
WRITE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".png")


class ImageWriteError(ValueError):
    """An array cannot be written to the requested file."""


def file_suffix(path: str | os.PathLike) -> str:
    """Lower-case suffix, with ``.nii.gz`` kept whole."""
    return split_extension(Path(path).name)[1].lower()


def read_image(path: str | os.PathLike) -> LoadedImage:
    """Read any supported image file; raise :class:`ImageReadError` naming the file on failure.

    Images of more than :data:`~.imagetypes.MAX_INPUT_PIXELS` pixels (all frames) are refused.
    """
    path = Path(path)
    try:
        os.stat(path)
    except OSError as error:
        raise ImageReadError(path, missing_file_problem(path, error)) from None
    if path.is_dir():
        raise ImageReadError(path, "it is a directory, not an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "the file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise ImageReadError(path, "the file cannot be opened for reading (permission denied)")

    suffix = file_suffix(path)
    if dicomio.has_dicom_magic(path) or suffix in DICOM_SUFFIXES:
        image = dicomio.read_dicom(path)
    elif suffix in PILLOW_SUFFIXES:
        image = _read_with_pillow(path)
    elif suffix in SIMPLEITK_SUFFIXES:
        image = _read_with_simpleitk(path)
    elif suffix == "":
        image = _read_without_suffix(path)
    else:
        supported = ", ".join(PILLOW_SUFFIXES + SIMPLEITK_SUFFIXES + DICOM_SUFFIXES)
        problem = f"unknown file type '{suffix}' (supported: {supported}; DICOM is recognised by content)"
        raise ImageReadError(path, problem)
    check_pixels(image.pixels, path)
    check_size(path, image.frame_count, *image.frame_shape)
    return image


def missing_file_problem(path: Path, error: OSError) -> str:
    """Why ``path`` cannot be found, from the error of ``os.stat``: missing, a broken link, a link loop..."""
    if error.errno == errno.ELOOP:
        return "too many levels of symbolic links (a link loop)"
    if error.errno == errno.ENOENT:
        return f"the symbolic link points to {os.readlink(path)}, which does not exist" if path.is_symlink() \
            else "the file does not exist"
    return error.strerror or error_line(error)


def check_pixels(pixels: np.ndarray, path: Path) -> None:
    """Refuse empty images, unusable pixel types and NaN or infinite values."""
    if pixels.size == 0 or 0 in pixels.shape:
        raise ImageReadError(path, f"the image has no pixels (shape {pixels.shape})")
    if not (np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating)):
        raise ImageReadError(path, f"unsupported pixel type {pixels.dtype}")
    if np.issubdtype(pixels.dtype, np.floating) and not np.isfinite(pixels).all():
        raise ImageReadError(path, "the image contains NaN or infinite values")


def _read_without_suffix(path: Path) -> LoadedImage:
    """A file without suffix: DICOM (possibly without preamble) first, then any Pillow image."""
    if dicomio.looks_like_dicom(path):
        return dicomio.read_dicom(path)
    try:
        return _read_with_pillow(path)
    except ImageReadError:
        problem = "the file has no suffix and is neither DICOM nor a PNG/JPEG/BMP/TIFF image"
        raise ImageReadError(path, problem) from None


# ---------------------------------------------------------------- Pillow


def _read_with_pillow(path: Path) -> LoadedImage:
    from PIL import Image, ImageOps, ImageSequence

    try:
        with warnings.catch_warnings():  # the size is checked below, with a clearer message than Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            check_size(path, getattr(image, "n_frames", 1), image.height, image.width)
            if getattr(image, "n_frames", 1) == 1:
                frames = [_pillow_frame_to_array(ImageOps.exif_transpose(image), path)]
            else:
                frames = [_pillow_frame_to_array(frame, path) for frame in ImageSequence.Iterator(image)]
    except Image.DecompressionBombError:
        problem = f"the image is too large: more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels; the limit is {MAX_INPUT_PIXELS:,}"
        raise ImageReadError(path, problem + " (crop or downsample it)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        if isinstance(exc, ImageReadError):
            raise
        raise ImageReadError(path, f"not a readable image ({error_line(exc)})") from None

    first = frames[0]
    for number, frame in enumerate(frames[1:], start=2):
        if frame.shape != first.shape or frame.dtype != first.dtype:
            raise ImageReadError(
                path,
                f"page {number} has shape {frame.shape} and type {frame.dtype}, "
                f"unlike page 1 ({first.shape}, {first.dtype}); all pages of a clip must match",
            )
    pixels = first if len(frames) == 1 else np.stack(frames)
    return LoadedImage(pixels, UNKNOWN_SPACING, "unknown", first.ndim == 3, path)


def _pillow_frame_to_array(image, path: Path) -> np.ndarray:
    """One Pillow frame as a numpy array, following the mode rules in the module docstring."""
    mode = image.mode
    if mode == "1":
        return np.array(image.convert("L"), dtype=np.uint8)
    if mode in ("L", "RGB", "RGBA", "F"):
        return np.array(image)
    if mode == "I":
        return np.array(image, dtype=np.int32)
    if mode.startswith("I;16"):
        return np.array(image).astype(np.uint16)
    if mode in ("LA", "La"):
        return np.array(image.convert("L"))
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        return np.array(image.convert("RGBA" if has_alpha else "RGB"))
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"):
        return np.array(image.convert("RGB"))
    raise ImageReadError(path, f"unsupported Pillow image mode '{mode}'")


# ---------------------------------------------------------------- SimpleITK


def _read_with_simpleitk(path: Path) -> LoadedImage:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    try:
        with simpleitk_name(path) as name:
            reader.SetFileName(name)
            reader.ReadImageInformation()
            size = reader.GetSize()  # (columns, rows[, frames])
            check_size(path, int(np.prod(size[2:])), size[1] if len(size) > 1 else 1, size[0])
            image = reader.Execute()
    except (RuntimeError, OSError) as exc:
        raise ImageReadError(path, f"not a readable image ({error_line(exc)})") from None

    dimension = image.GetDimension()
    components = image.GetNumberOfComponentsPerPixel()
    if dimension not in (2, 3):
        raise ImageReadError(path, f"{dimension}-D images are not supported; expected a 2-D frame or a 3-D clip")
    if components not in (1, 3, 4):
        raise ImageReadError(
            path, f"vector pixels with {components} components are not an image (expected 1, 3 or 4 components)"
        )
    try:
        pixels = sitk.GetArrayFromImage(image)
    except RuntimeError as exc:
        raise ImageReadError(path, f"unsupported pixel type ({error_line(exc)})") from None
    color = components in (3, 4)
    if dimension == 3 and pixels.shape[0] == 1:
        pixels = pixels[0]
    spacing_x, spacing_y = image.GetSpacing()[:2]
    geometry = ImageGeometry(tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))
    return LoadedImage(pixels, (float(spacing_y), float(spacing_x)), "header", color, path, geometry)


@contextmanager
def simpleitk_name(path: str | os.PathLike):
    """A file name for ``path`` that SimpleITK takes: the path itself, or, when it is not valid UTF-8 (possible on
    Linux, where SimpleITK aborts the process on such a name), a symbolic link with a plain name to it."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        yield text
        return
    folder = tempfile.mkdtemp(prefix="breastus-")
    try:
        suffix = file_suffix(path)
        link = os.path.join(folder, "image" + (suffix if suffix.isascii() else ""))
        os.symlink(os.path.abspath(text), link)
        yield link
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- writing


def write_image(
    path: str | os.PathLike, array: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0), *,
    geometry: Optional[ImageGeometry] = None, exclusive: bool = False, metadata: dict | None = None
) -> Path:
    """Write a frame ``(H, W)`` or a stack ``(F, H, W)`` atomically; the format follows the suffix.

    ``.nrrd``, ``.nii``, ``.nii.gz`` and ``.mha`` store the array with its
    spacing ``(row_mm, column_mm)`` (a stack as a 3-D volume with slice spacing
    1), or, when ``geometry`` is given (that of the input it was computed from),
    with that geometry: spacing, origin and direction. ``.png`` stores one frame
    without spacing: booleans as 0/255, floats in [0, 1] scaled to 0..255, uint8
    and uint16 as they are, other integers as 8-bit when they fit 0..255, else 16-bit.
    Missing parent folders are created. With ``exclusive`` an existing file is
    never replaced (``FileExistsError``, see :func:`.fileio.write_atomically`).
    ``metadata`` (text key -> text value) goes into the header of NRRD and MetaImage files
    (``key:=value`` fields in NRRD); NIfTI keeps only ``ITK_FileNotes``, as its 80-byte ``descrip``; PNG none.
    Returns the path written.
    """
    write = image_writer(path, array, spacing, geometry=geometry, metadata=metadata)
    try:
        return write_atomically(path, write, exclusive=exclusive)
    except FileExistsError:
        raise
    except OSError as exc:  # a full disk, a folder in the way
        raise ImageWriteError(f"Cannot write '{path}': {exc.strerror or error_line(exc)}") from None


def image_writer(
    path: str | os.PathLike, array: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0), *,
    geometry: Optional[ImageGeometry] = None, metadata: dict | None = None
) -> Callable[[str], None]:
    """A function writing ``array`` as :func:`write_image` would to the (temporary) file name it is given.

    Everything is checked here, so a bad array fails before any file is made; errors name ``path``.
    """
    path = Path(path)
    suffix = file_suffix(path)
    if suffix not in WRITE_SUFFIXES:
        allowed = ", ".join(WRITE_SUFFIXES)
        raise ImageWriteError(f"Cannot write '{path}': unknown suffix '{suffix}' (use one of {allowed})")
    array = np.asarray(array)
    if array.ndim not in (2, 3) or array.size == 0:
        raise ImageWriteError(
            f"Cannot write '{path}': expected a (H, W) frame or a (F, H, W) stack, got shape {array.shape}"
        )
    if array.dtype == bool:
        array = array.astype(np.uint8) * (255 if suffix == ".png" else 1)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageWriteError(f"Cannot write '{path}': unsupported array type {array.dtype}")
    try:
        row_mm, column_mm = check_spacing(spacing)
    except ValueError as error:
        raise ImageWriteError(f"Cannot write '{path}': {error}") from None
    if suffix == ".png":
        return _png_writer(path, array)
    return _simpleitk_writer(path, array, geometry or _plain_geometry(array.ndim, (row_mm, column_mm)), metadata)


def _png_writer(path: Path, array: np.ndarray):
    """A function writing ``array`` as PNG to the path it is given; ``path`` names the target in errors."""
    from PIL import Image

    if array.ndim == 3:
        if array.shape[0] != 1:
            raise ImageWriteError(f"Cannot write '{path}': a PNG holds one frame, got a stack of {array.shape[0]}")
        array = array[0]
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ImageWriteError(f"Cannot write '{path}': float values must lie in [0, 1] to be saved as PNG")
        array = np.round(array * 255).astype(np.uint8)
    elif array.dtype not in (np.uint8, np.uint16):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise ImageWriteError(f"Cannot write '{path}': integer values {low}..{high} do not fit a PNG (0..65535)")
        array = array.astype(np.uint8 if high <= 255 else np.uint16)
    image = Image.fromarray(np.ascontiguousarray(array))
    return lambda temporary: image.save(temporary, format="PNG")


def _plain_geometry(dimension: int, spacing: tuple[float, float]) -> ImageGeometry:
    """Pixel spacing ``(row_mm, column_mm)``, slice spacing 1, origin 0 and no rotation."""
    row_mm, column_mm = spacing
    if dimension == 2:
        return ImageGeometry((column_mm, row_mm), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    return ImageGeometry((column_mm, row_mm, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _simpleitk_writer(path: Path, array: np.ndarray, geometry: ImageGeometry, metadata: dict | None = None):
    """A function writing ``array`` with ``geometry`` and header ``metadata`` to the name it is given (the format
    follows its suffix).

    A frame with a 3-D geometry (an input of one slice) is written as a volume of one slice.
    """
    import SimpleITK as sitk

    if array.ndim == 2 and geometry.dimension == 3:
        array = array[np.newaxis]
    if array.ndim != geometry.dimension:
        raise ImageWriteError(f"Cannot write '{path}': a {array.ndim}-D array does not fit a {geometry.dimension}-D "
                              "geometry")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    for key, value in (metadata or {}).items():
        image.SetMetaData(str(key), str(value))

    def write(temporary: str) -> None:
        try:
            with simpleitk_name(temporary) as name:
                sitk.WriteImage(image, name, useCompression=True)
        except RuntimeError as exc:  # SimpleITK's errors
            raise ImageWriteError(f"Cannot write '{path}': {error_line(exc)}") from None

    return write
