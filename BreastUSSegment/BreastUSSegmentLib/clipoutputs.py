"""The command line's output files of one input, filled frame by frame as the results of a clip arrive.

A clip's mask and probability written as NRRD are streamed to disk a chunk at a
time (:class:`~.clipio.NrrdClipWriter`); a single frame, and clips written in other
formats, are gathered in memory and written whole at the end, so those clips must
stay under the clip limit (:data:`~.imagetypes.MAX_INPUT_PIXELS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .clipio import Clip, NrrdClipWriter
from .fileio import write_atomically
from .imageio import write_image
from .imagetypes import size_problem
from .preprocessing import InvalidImageError
from .visualize import overlay_figure

IMAGE_KINDS = {"mask": np.uint8, "probability": np.float32}  # a PNG mask is written 0/255 from bool


class ClipOutputs:
    """The outputs ``paths`` (kind -> path: mask, probability, figure) of ``clip``, written in format ``suffix``."""

    def __init__(self, paths: dict, clip: Clip, suffix: str, *, exclusive: bool):
        self.clip = clip
        self.exclusive = exclusive
        self.figure_wanted = "figure" in paths
        self.first = None  # (mask, attention) of the first frame, for the figure
        self.streamed = {}
        self.gathered = {}
        count, shape = clip.frame_count, clip.frame_shape
        for kind, dtype in IMAGE_KINDS.items():
            if kind not in paths:
                continue
            if suffix == ".png" and kind == "mask":
                dtype = bool
            if suffix == ".nrrd" and count > 1:
                self.streamed[kind] = NrrdClipWriter(paths[kind], count, shape, dtype, clip.spacing, exclusive=exclusive)
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
        if self.first is None:
            self.first = (mask, result.combined_attention)

    def writers(self) -> dict:
        """Kind -> function writing that output to the path it is given (for :func:`.cli.write_all`)."""
        writers: dict[str, Callable[[Path], object]] = {}
        for kind, writer in self.streamed.items():
            writers[kind] = lambda path, writer=writer: writer.close()
        squeeze = (lambda array: array[0]) if self.clip.frame_count == 1 else (lambda array: array)
        for kind, array in self.gathered.items():
            writers[kind] = lambda path, array=array: write_image(path, squeeze(array), spacing=self.clip.spacing,
                                                                  exclusive=self.exclusive)
        if self.figure_wanted:
            first_frame = next(self.clip.chunks(1))[0]
            figure = overlay_figure(first_frame, *self.first)
            writers["figure"] = lambda path: write_atomically(
                path, lambda temporary: figure.save(temporary, format="PNG"), exclusive=self.exclusive)
        return writers

    def abort(self) -> None:
        """Drop the streamed files not finished (those already closed stay)."""
        for writer in self.streamed.values():
            writer.abort()
