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
    (frames are independent: the result is the same), reporting :data:`SEGMENTING` progress in frames."""
    total = int(frames.shape[0])
    parts, starts = [], []
    for start in range(0, total, FRAMES_PER_PART):
        stop = min(start + FRAMES_PER_PART, total)

        def partProgress(done, partTotal, start=start, stop=stop):  # the core counts batches of frames or boxes
            progress.report(SEGMENTING, start + (stop - start) * done // max(partTotal, 1), total)

        boxes = {} if frame_boxes is None else {"frame_boxes": frame_boxes[start:stop]}
        parts.append(segmenter.segment(frames[start:stop], progress=partProgress, **boxes, **arguments))
        starts.append(start)
        progress.report(SEGMENTING, stop, total)
    return parts[0] if len(parts) == 1 else joinResults(parts, starts)


def joinResults(parts, starts):
    """One ``SegmentationResult`` of the core from those of consecutive parts of a clip (``starts``: each part's
    first frame): per-frame arrays stacked, box outcomes renumbered to the clip's frames."""
    values = {}
    for field in fields(parts[0]):
        pieces = [getattr(part, field.name) for part in parts]
        if all(piece is None for piece in pieces):
            values[field.name] = None
        elif field.name == "boxes":
            values[field.name] = [replace(outcome, frame=outcome.frame + start)
                                  for piece, start in zip(pieces, starts) for outcome in piece]
        elif field.name == "attention_maps":  # one list of per-gate maps per part
            values[field.name] = [np.concatenate(gate) for gate in zip(*pieces)]
        elif field.name == "why_empty":  # given for a part whose masks are all empty
            values[field.name] = _joinWhyEmpty(pieces)
        elif all(isinstance(piece, np.ndarray) for piece in pieces):
            values[field.name] = np.concatenate(pieces)
        else:
            raise TypeError(f"cannot join the core's result field {field.name!r} of parts of a clip")
    if values.get("why_empty") is not None and values["processed_mask"].any():
        values["why_empty"] = None  # the clip has a lesion: nothing to explain
    return type(parts[0])(**values)


def _joinWhyEmpty(pieces):
    """The clip's ``WhyEmpty`` when every part's masks are empty (else None, see above): the strongest hidden
    region of any part; the lesion head's strongest probability only if it emptied every part."""
    if any(piece is None for piece in pieces):
        return None
    hidden = [piece.hidden_confidence for piece in pieces if piece.hidden_confidence is not None]
    rejected = [piece.rejected_lesion_probability for piece in pieces]
    return replace(pieces[0], hidden_confidence=max(hidden) if hidden else None,
                   rejected_lesion_probability=None if None in rejected else max(rejected))
