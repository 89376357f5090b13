"""A run's progress through its stages, reported to the caller's callback (which may raise to cancel), and the
core run on a clip a few frames at a time, so that progress and Cancel are served during its post-processing too.

The callback is ``callback(done, total, stage)`` with ``stage`` one of :data:`STAGES`; the panel processes
events in it, so a clip of hundreds of frames keeps the application responsive. No Qt here.
"""

from dataclasses import fields, replace
from typing import Callable, Iterable, Optional

import numpy as np

SEGMENTING = "segmenting"  # the network and post-processing, frame by frame
WRITING = "writing"  # the results into the scene (a Sequence: item by item)
MEASURING = "measuring"  # area and diameter, frame by frame
STAGES = (SEGMENTING, WRITING, MEASURING)
# Frames the core segments in one call: the network's batch, post-processed before the next part starts.
FRAMES_PER_PART = 8

ProgressCallback = Callable[[int, int, str], None]


class RunProgress:
    """Reports ``(done, total, stage)`` to a callback (or to nobody when it is None)."""

    def __init__(self, callback: Optional[ProgressCallback] = None) -> None:
        self.callback = callback

    def report(self, stage: str, done: int, total: int) -> None:
        if self.callback is not None:
            self.callback(done, total, stage)

    def each(self, stage: str, items: Iterable) -> Iterable:
        """The items, reporting after each one is handled."""
        items = list(items)
        for done, item in enumerate(items, 1):
            yield item
            self.report(stage, done, len(items))


def segmentInParts(segmenter, frames, progress: RunProgress, frame_boxes=None, **arguments):
    """The core's ``segmenter.segment(frames, ...)`` result, computed :data:`FRAMES_PER_PART` frames at a time
    (frames are independent: the result is the same), reporting :data:`SEGMENTING` progress in frames. Each
    part is copied into the clip's result as soon as it is made, so no long join follows the last report."""
    total = int(frames.shape[0])
    clip = None
    for start in range(0, total, FRAMES_PER_PART):
        stop = min(start + FRAMES_PER_PART, total)

        def partProgress(done, partTotal, start=start, stop=stop):  # the core counts batches of frames or boxes
            progress.report(SEGMENTING, start + (stop - start) * done // max(partTotal, 1), total)

        boxes = {} if frame_boxes is None else {"frame_boxes": frame_boxes[start:stop]}
        part = segmenter.segment(frames[start:stop], progress=partProgress, **boxes, **arguments)
        if stop - start == total:
            return part
        clip = clip or ClipResult(part, total)
        clip.add(part, start)
        progress.report(SEGMENTING, stop, total)
    return clip.result()


class ClipResult:
    """A core ``SegmentationResult`` of a clip assembled from those of its consecutive parts: per-frame arrays
    filled in place, box outcomes renumbered to the clip's frames, what post-processing hid joined."""

    def __init__(self, first, total: int) -> None:
        self._type = type(first)
        self._arrays, self._lists = {}, {}
        for field in fields(first):
            value = getattr(first, field.name)
            if isinstance(value, np.ndarray):
                self._arrays[field.name] = np.empty((total,) + value.shape[1:], value.dtype)
            elif field.name in ("boxes", "why_empty") or value is None:
                self._lists[field.name] = []
            else:
                raise TypeError(f"cannot join the core's result field {field.name!r} of parts of a clip")

    def add(self, part, start: int) -> None:
        stop = start + part.processed_mask.shape[0]
        for name, array in self._arrays.items():
            array[start:stop] = getattr(part, name)
        for name, pieces in self._lists.items():
            value = getattr(part, name)
            if name == "boxes" and value is not None:
                value = [replace(outcome, frame=outcome.frame + start) for outcome in value]
            pieces.append(value)

    def result(self):
        values = dict(self._arrays)
        for name, pieces in self._lists.items():
            if all(piece is None for piece in pieces):
                values[name] = None
            elif name == "boxes":
                values[name] = [outcome for piece in pieces for outcome in piece]
            else:  # why_empty
                values[name] = None if values["processed_mask"].any() else _joinWhyEmpty(pieces)
        return self._type(**values)


def _joinWhyEmpty(pieces):
    """The clip's ``WhyEmpty`` when every part's masks are empty: the strongest hidden region of any part; the
    lesion head's strongest probability only if it emptied every part."""
    if any(piece is None for piece in pieces):
        return None
    hidden = [piece.hidden_confidence for piece in pieces if piece.hidden_confidence is not None]
    rejected = [piece.rejected_lesion_probability for piece in pieces]
    return replace(pieces[0], hidden_confidence=max(hidden) if hidden else None,
                   rejected_lesion_probability=None if None in rejected else max(rejected))
