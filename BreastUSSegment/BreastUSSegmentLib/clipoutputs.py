"""The command line's mask and probability files of one input, filled frame by frame as the results of a clip arrive.

A clip's mask and probability written as NRRD are streamed to temporary files a
chunk at a time (:class:`~.clipio.NrrdClipWriter`); a single frame, and clips
written in other formats, are gathered in memory and written whole at the end, so
those clips must stay under the clip limit (:data:`~.imagetypes.MAX_INPUT_PIXELS`).
Either way :meth:`ClipOutputs.writers` gives functions for
:func:`.fileio.write_together`, so the files are renamed with the input's other
outputs, all or none; leaving the ``with`` block removes what was not renamed.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .clipio import Clip, NrrdClipWriter
from .imageio import image_writer
from .imagetypes import ImageGeometry, size_problem
from .preprocessing import InvalidImageError

IMAGE_KINDS = {"mask": np.uint8, "probability": np.float32}  # a PNG mask is written 0/255 from bool


class ClipOutputs:
    """The mask and probability of ``paths`` (kind -> path) of ``clip``, written in format ``suffix`` with
    ``spacing`` ``(row_mm, column_mm)`` or, when given, the input's ``geometry``, and header ``metadata``.
    The figure and other outputs are the caller's. Use it in a ``with`` block."""

    def __init__(self, paths: dict, clip: Clip, suffix: str, spacing: tuple,
                 geometry: Optional[ImageGeometry] = None, *, metadata: Optional[dict] = None):
        self.paths = paths
        self.clip = clip
        self.spacing = spacing
        self.geometry = geometry
        self.metadata = metadata
        self.streamed: dict[str, NrrdClipWriter] = {}
        self.gathered: dict[str, np.ndarray] = {}
        count, shape = clip.frame_count, clip.frame_shape
        try:
            for kind, dtype in IMAGE_KINDS.items():
                if kind not in paths:
                    continue
                if suffix == ".png" and kind == "mask":
                    dtype = bool
                if suffix == ".nrrd" and count > 1:
                    self.streamed[kind] = NrrdClipWriter(paths[kind], count, shape, dtype, spacing,
                                                         geometry=geometry, metadata=metadata)
                    continue
                problem = size_problem(count, *shape)
                if problem:
                    raise InvalidImageError(f"the clip is too long to write as {suffix} ({problem}); use --format nrrd")
                self.gathered[kind] = np.empty((count, *shape), dtype=dtype)
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> "ClipOutputs":
        return self

    def __exit__(self, *_error) -> None:
        self.abort()

    def add(self, result, mask: np.ndarray) -> None:
        """Take one frame's :class:`~.stream.FrameResult`, with ``mask`` the mask to write (processed or raw)."""
        values = {"mask": mask, "probability": result.probability}
        for kind, writer in self.streamed.items():
            writer.write(values[kind][np.newaxis])
        for kind, array in self.gathered.items():
            array[result.index] = values[kind]

    def writers(self) -> dict:
        """Kind -> function writing that output to the temporary file name it is given (for
        :func:`.fileio.write_together`); the gathered arrays are checked here."""
        writers: dict[str, Callable[[str], None]] = {kind: writer.finish for kind, writer in self.streamed.items()}
        squeeze = (lambda array: array[0]) if self.clip.frame_count == 1 else (lambda array: array)
        for kind, array in self.gathered.items():
            writers[kind] = image_writer(self.paths[kind], squeeze(array), self.spacing, geometry=self.geometry,
                                         metadata=self.metadata)
        return writers

    def abort(self) -> None:
        """Drop the streamed files not yet handed over (those :meth:`~.clipio.NrrdClipWriter.finish` moved stay)."""
        for writer in self.streamed.values():
            writer.abort()
