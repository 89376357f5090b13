"""The command line's mask and probability files of one input, filled frame by frame as the results of a clip arrive.

A clip's mask and probability written as NRRD are streamed to disk a chunk at a
time (:class:`~.clipio.NrrdClipWriter`); a single frame, and clips written in other
formats, are gathered in memory and written whole at the end, so those clips must
stay under the clip limit (:data:`~.imagetypes.MAX_INPUT_PIXELS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .clipio import Clip, NrrdClipWriter
from .imageio import write_image
from .imagetypes import size_problem
from .preprocessing import InvalidImageError

IMAGE_KINDS = {"mask": np.uint8, "probability": np.float32}  # a PNG mask is written 0/255 from bool


class ClipOutputs:
    """The mask and probability of ``paths`` (kind -> path) of ``clip``, written in format ``suffix`` with ``spacing``
    and header ``metadata``. The figure and other outputs are the caller's."""

    def __init__(self, paths: dict, clip: Clip, suffix: str, spacing: tuple, *, exclusive: bool,
                 metadata: Optional[dict] = None):
        self.clip = clip
        self.spacing = spacing
        self.exclusive = exclusive
        self.metadata = metadata
        self.streamed = {}
        self.gathered = {}
        count, shape = clip.frame_count, clip.frame_shape
        for kind, dtype in IMAGE_KINDS.items():
            if kind not in paths:
                continue
            if suffix == ".png" and kind == "mask":
                dtype = bool
            if suffix == ".nrrd" and count > 1:
                self.streamed[kind] = NrrdClipWriter(paths[kind], count, shape, dtype, spacing, exclusive=exclusive,
                                                      metadata=metadata)
                continue
            problem = size_problem(count, *shape)
            if problem:
                self.abort()
                raise InvalidImageError(f"the clip is too long to write as {suffix} ({problem}); use --format nrrd")
            self.gathered[kind] = np.empty((count, *shape), dtype=dtype)

    def add(self, result, mask: np.ndarray) -> None:
        """Take one frame's :class:`~.stream.FrameResult`, with ``mask`` the mask to write (processed or raw)."""
        values = {"mask": mask, "probability": result.probability}
        for kind, writer in self.streamed.items():
            writer.write(values[kind][np.newaxis])
        for kind, array in self.gathered.items():
            array[result.index] = values[kind]

    def writers(self) -> dict:
        """Kind -> function writing that output to the path it is given (for :func:`.cli.write_all`)."""
        writers: dict[str, Callable[[Path], object]] = {}
        for kind, writer in self.streamed.items():
            writers[kind] = lambda path, writer=writer: writer.close()
        squeeze = (lambda array: array[0]) if self.clip.frame_count == 1 else (lambda array: array)
        for kind, array in self.gathered.items():
            writers[kind] = lambda path, array=array: write_image(path, squeeze(array), spacing=self.spacing,
                                                                  exclusive=self.exclusive, metadata=self.metadata)
        return writers

    def abort(self) -> None:
        """Drop the streamed files not finished (those already closed stay)."""
        for writer in self.streamed.values():
            writer.abort()
