"""Frames in, results out: segmenting clips of any length and live streams in bounded memory.

:func:`segment_stream` takes a clip array or any iterable of frames and yields one
:class:`FrameResult` per frame, segmenting ``chunk_frames`` frames at a time, so
memory holds one chunk of outputs whatever the clip's length. :class:`FrameStepper`
is the per-frame step of a live stream (the newest frame in, its result out).
Both apply the :mod:`.temporal` rule across frames. Results equal those of
:meth:`~.inference.LesionSegmenter.segment` on the whole clip (frames are
independent; a chunk is a whole number of the segmenter's batches, so every frame
goes through the network in the same batch as it would there).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Optional, Sequence

import numpy as np

from .imagetypes import size_problem
from .preprocessing import InvalidImageError
from .temporal import TemporalFilter, TemporalRule

CHUNK_FRAMES = 16  # frames segmented at once; about 30 MB of outputs per chunk of 500 x 500 frames


@dataclass
class FrameResult:
    """One frame's outputs on its own ``(H, W)`` grid."""

    index: int  # the frame's place in its clip or stream
    probability: np.ndarray  # float32 in [0, 1]
    raw_mask: np.ndarray  # bool, probability >= threshold
    processed_mask: np.ndarray  # bool, after post-processing and the temporal rule
    combined_attention: np.ndarray  # float32 in [0, 1], mean of the attention gates
    lesion_probability: Optional[float] = None  # the lesion head's; models with one, no boxes
    box_labels: Optional[np.ndarray] = None  # uint16, with box prompts only
    boxes: Optional[list] = None  # this frame's BoxOutcomes (frame numbers of the clip), with box prompts only
    why_empty: Optional[object] = None  # the WhyEmpty of the frame's chunk when all its frames came out empty


def check_frame_size(rows: int, columns: int) -> None:
    """Refuse a frame above the pixel limit (the limit applies to one frame, not to a clip)."""
    problem = size_problem(1, rows, columns)
    if problem:
        raise InvalidImageError(f"the frame is too large: {problem} (crop or downsample it)")


class FrameStepper:
    """Segments consecutive frames with one segmenter, its settings and the temporal rule's memory.

    ``segment_options`` are keyword arguments of :meth:`~.inference.LesionSegmenter.segment`
    (``box``, ``test_time_flip``, ``postprocessing``...), the same for every frame.
    """

    def __init__(self, segmenter, temporal: Optional[TemporalRule] = None, batch_size: int = 8, **segment_options):
        self.segmenter = segmenter
        self.temporal = TemporalFilter(temporal)
        self.batch_size = int(batch_size)
        self.segment_options = segment_options
        self.next_index = 0

    def reset(self) -> None:
        """Start a new clip or stream: frame numbers from 0, the temporal rule's memory empty."""
        self.temporal.reset()
        self.next_index = 0

    def step(self, frame: np.ndarray) -> FrameResult:
        """Segment one frame ``(H, W)`` or ``(H, W, C)``: the per-frame step of a live stream."""
        return self.chunk(np.asarray(frame)[np.newaxis])[0]

    def chunk(self, frames: np.ndarray, frame_boxes: Optional[Sequence] = None) -> list[FrameResult]:
        """Segment a ``(F, H, W)`` grey or ``(F, H, W, C)`` colour stack of the next frames;
        ``frame_boxes`` one entry per frame, if any."""
        first = self.next_index
        rows, columns = frames.shape[1:3]
        check_frame_size(rows, columns)
        options = dict(self.segment_options)
        if frame_boxes is not None:
            options["frame_boxes"] = list(frame_boxes)
        result = self.segmenter.segment(frames, color=frames.ndim == 4, batch_size=self.batch_size, **options)
        self.next_index += result.frame_count
        outcomes = {}
        for outcome in result.boxes or []:
            outcomes.setdefault(outcome.frame, []).append(_renumbered(outcome, first))
        return [
            FrameResult(
                index=first + offset,
                probability=result.probability[offset],
                raw_mask=result.raw_mask[offset],
                processed_mask=self.temporal(result.processed_mask[offset]),
                combined_attention=result.combined_attention[offset],
                lesion_probability=None if result.lesion_probability is None else float(result.lesion_probability[offset]),
                box_labels=None if result.box_labels is None else result.box_labels[offset],
                boxes=None if result.boxes is None else outcomes.get(offset, []),
                why_empty=result.why_empty,
            )
            for offset in range(result.frame_count)
        ]


def _renumbered(outcome, first: int):
    return replace(outcome, frame=outcome.frame + first)


def chunk_size(chunk_frames: int, batch_size: int) -> int:
    """``chunk_frames`` rounded up to a whole number of batches (so results match a whole-clip run)."""
    batch_size = max(1, int(batch_size))
    return max(1, -(-int(chunk_frames) // batch_size)) * batch_size


def segment_stream(
    segmenter,
    frames,
    *,
    color: Optional[bool] = None,
    temporal: Optional[TemporalRule] = None,
    chunk_frames: int = CHUNK_FRAMES,
    frame_boxes: Optional[Sequence] = None,
    batch_size: int = 8,
    **segment_options,
) -> Iterator[FrameResult]:
    """Yield one :class:`FrameResult` per frame of ``frames``, segmenting a chunk of frames at a time.

    ``frames`` is a clip array ``(F, H, W[, C])`` (a single frame ``(H, W[, C])`` is a clip of one)
    or an iterable of frames. ``frame_boxes`` gives one entry (a box, a list of boxes or None) per
    frame; other keyword arguments are :meth:`~.inference.LesionSegmenter.segment`'s.
    """
    stepper = FrameStepper(segmenter, temporal, batch_size=batch_size, **segment_options)
    size = chunk_size(chunk_frames, batch_size)
    for start, chunk in _chunks(frames, size, color):
        boxes = None if frame_boxes is None else frame_boxes[start:start + len(chunk)]
        yield from stepper.chunk(chunk, boxes)


def _chunks(frames, size: int, color: Optional[bool]) -> Iterator[tuple[int, np.ndarray]]:
    """``(first frame, stack)`` pieces of at most ``size`` frames of a clip array or an iterable of frames."""
    if isinstance(frames, np.ndarray):
        clip = frames if is_clip(frames, color) else frames[np.newaxis]
        for start in range(0, clip.shape[0], size):
            yield start, clip[start:start + size]
        return
    pending: list = []
    start = 0
    for frame in frames:
        pending.append(np.asarray(frame))  # (H, W) grey or (H, W, C) colour
        if len(pending) == size:
            yield start, np.stack(pending)
            start += size
            pending = []
    if pending:
        yield start, np.stack(pending)


def is_clip(pixels: np.ndarray, color: Optional[bool]) -> bool:
    """Whether ``pixels`` is a stack of frames rather than one frame (the rule of the readers and the pipeline)."""
    if pixels.ndim == 4:
        return True
    if pixels.ndim == 3:
        return not (pixels.shape[-1] in (3, 4) if color is None else color)
    return False


class ClipSummary:
    """What a clip gave, gathered frame by frame (for the one-line summary of the command line)."""

    def __init__(self, options, mask_of=lambda result: result.processed_mask):
        self.options = options  # the post-processing options; None when post-processing is off
        self.mask_of = mask_of  # which mask counts: processed (default) or raw
        self.frame_count = 0
        self.frames_with_lesion = 0
        self.boxes: Optional[list] = None  # every frame's BoxOutcomes, with box prompts
        self._chunk_reasons: dict = {}  # id -> the WhyEmpty of each chunk whose frames all came out empty
        self._frames_explained = 0  # frames of those chunks

    def add(self, result: FrameResult) -> None:
        self.frame_count += 1
        self.frames_with_lesion += bool(self.mask_of(result).any())
        if result.boxes is not None:
            if self.boxes is None:
                self.boxes = []
            self.boxes.extend(result.boxes)
        if result.why_empty is not None:
            self._chunk_reasons[id(result.why_empty)] = result.why_empty
            self._frames_explained += 1

    @property
    def why_empty(self):
        """What post-processing hid when no frame has a lesion (:class:`~.postprocessing.WhyEmpty`); else None."""
        from .postprocessing import WhyEmpty

        reasons = list(self._chunk_reasons.values())
        if self.frames_with_lesion or self.options is None or self.boxes is not None or not reasons:
            return None
        hidden = [reason.hidden_confidence for reason in reasons if reason.hidden_confidence is not None]
        rejected = [reason.rejected_lesion_probability for reason in reasons]
        return WhyEmpty(max(hidden) if hidden else None,
                        None if None in rejected or self._frames_explained < self.frame_count else max(rejected))
