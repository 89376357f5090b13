"""The inference pipeline: numpy frames in, probability, masks and attention maps out.

Used alike by the Slicer module, the command line and the evaluation code, so
that every path preprocesses and post-processes in exactly the same way. The
network itself runs through a runner of :mod:`.runtime` (PyTorch, OpenVINO or ONNX
Runtime); everything else is numpy, so PyTorch is needed only by its runner.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from .boxes import (
    CONTEXT_MARGIN, FRAME_WEIGHT, Box, boxes_for_frames, check_frame_weight, grow_box,
)
from .modelcard import ModelCard, ModelConfig, WeightsError, read_model_card
from .options import PostprocessOptions, check_lesion_head
from .postprocessing import WhyEmpty, postprocess_box, postprocess_frames_explained
from .preprocessing import prepare_frames, resized_sum, to_grayscale_frames, to_network_input
from .runtime import TorchRunner, choose_backend, open_runner, verified_onnx_path

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class BoxOutcome:
    """What one box prompt gave: ``found`` is False when no region in it passes the box rule (``postprocess_box``)."""

    frame: int
    index: int  # the box's place in its frame's list
    box: Box  # as used: clipped to the frame
    peak_probability: float  # highest probability inside the box
    found: bool


@dataclass
class SegmentationResult:
    """Pipeline outputs on the input's own pixel grid; every array is ``(F, H, W)``.

    With box prompts, ``box_labels`` numbers each frame's lesions by box (1 for its
    first box, 0 elsewhere), ``boxes`` says what each box gave, and the probability
    and attention maps are zero outside the boxes' crop windows (inside a window the
    probability is the crop's blended with the whole frame's; where windows overlap,
    the maximum of the crops' maps).

    The attention map is the mean of the gates' coefficients, each resized to the frame. The gates one by
    one are not kept (at the frame's size they would cost a clip several times its own memory); the
    runner gives them on the network's grid (``segmenter.runner.run(batch).attention``).
    """

    probability: np.ndarray  # float32 in [0, 1]
    raw_mask: np.ndarray  # bool, probability >= threshold (inside the boxes, with box prompts)
    processed_mask: np.ndarray  # bool, after post-processing
    combined_attention: np.ndarray  # float32 in [0, 1], mean of the gates
    box_labels: np.ndarray | None = None  # uint16, with box prompts only
    boxes: list[BoxOutcome] | None = None  # with box prompts only
    lesion_probability: np.ndarray | None = None  # (F,) float32, the lesion head's; models with one, no boxes
    why_empty: WhyEmpty | None = None  # without boxes, when every processed mask is empty: what post-processing hid

    @property
    def empty_boxes(self) -> list[BoxOutcome]:
        """The boxes in which the network saw no lesion (none without box prompts)."""
        return [outcome for outcome in self.boxes or [] if not outcome.found]

    @property
    def frame_count(self) -> int:
        return self.probability.shape[0]


class Probabilities(NamedTuple):
    """One batch through the network, as float32 numpy probabilities: ``(n, 1, h, w)`` map, one map per gate,
    and the lesion head's ``(n,)``."""

    probability: np.ndarray
    attention: list
    lesion_probability: np.ndarray | None  # None for a model without a lesion head


def sigmoid(values: np.ndarray) -> np.ndarray:
    """The logistic function in float32, without overflow for large logits."""
    return (0.5 + 0.5 * np.tanh(0.5 * np.asarray(values, dtype=np.float32))).astype(np.float32, copy=False)


class LesionSegmenter:
    """Runs an :class:`~.model.AttentionUNet` (or an ensemble of them) on frames of any size, dtype and colour
    layout: through PyTorch when given the model, or through a graph runner of :mod:`.runtime`
    (``runner`` with the model's ``config``; see :meth:`from_weights`)."""

    def __init__(
        self,
        model=None,
        input_size: tuple[int, int] = (256, 256),
        postprocessing: PostprocessOptions | None = None,
        device="auto",
        *,
        precision: str = "auto",
        runner=None,
        config: ModelConfig | None = None,
    ):
        if (model is None) == (runner is None):
            raise ValueError("give either a PyTorch model or a runner (with its model's config)")
        if postprocessing is None:
            raise ValueError("postprocessing options are required (a model card's)")
        self.runner = TorchRunner(model, device, precision) if runner is None else runner
        self.config = model.config if runner is None else config
        if self.config is None:
            raise ValueError("a runner needs the model's config (ModelConfig)")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        check_lesion_head(postprocessing, self.config.lesion_head)
        self.postprocessing = postprocessing
        self.requested_precision = precision  # as asked ("auto" too); ``precision`` is what runs
        self.card: ModelCard | None = None  # the model card, when built by from_weights
        self.weights_path: str | None = None  # the weights file, when built by from_weights
        multiple = self.config.size_multiple
        if self.input_size[0] % multiple or self.input_size[1] % multiple:
            raise ValueError(f"input size {self.input_size} must be a multiple of {multiple} for this model")

    @classmethod
    def from_weights(
        cls, weights_path: str | os.PathLike, device="auto", *, backend: str = "auto", precision: str = "auto",
        threads: int | None = None, **overrides
    ) -> "LesionSegmenter":
        """Build a segmenter from a model card and its verified weights (torch) or ONNX graph (openvino,
        onnxruntime); ``backend`` and ``precision`` as :func:`.runtime.choose_backend` reads them.

        Post-processing is the card's, with the settings given in ``overrides``
        (``PostprocessOptions`` field names) changed; an override of None keeps the card's value.
        """
        if not os.path.isfile(weights_path):
            raise WeightsError(f"model weights not found: {weights_path}")
        card = read_model_card(weights_path)
        choice = choose_backend(backend, precision, device if isinstance(device, str) else device.type, card)
        options = card.postprocess_options.with_overrides(**overrides)
        try:
            if choice.backend == "torch":
                from .weights import load_model

                model, card = load_model(weights_path, device="cpu")
                segmenter = cls(model, tuple(card.input_size), options, device, precision=choice.precision)
            else:
                runner = open_runner(choice, verified_onnx_path(weights_path, card), threads)
                segmenter = cls(None, tuple(card.input_size), options, runner=runner, config=card.model_config)
        except ValueError as error:
            raise ValueError(f"{weights_path}: {error}") from None
        segmenter.requested_precision = precision
        segmenter.card = card
        segmenter.weights_path = str(weights_path)
        return segmenter

    @property
    def model(self):
        """The PyTorch network (torch backend only)."""
        return self.runner.model

    @property
    def device(self):
        """Where the network runs: a torch device for the torch backend, ``"cpu"`` for the graph runtimes."""
        return self.runner.device

    @property
    def cpu_bf16(self) -> bool:
        """Whether the network computes in bfloat16 on the CPU; settable with the torch backend."""
        return self.runner.precision == "bf16"

    @cpu_bf16.setter
    def cpu_bf16(self, value: bool) -> None:
        if self.runner.backend != "torch":
            raise AttributeError(f"the {self.runner.backend} runtime's precision is fixed when it opens the graph; "
                                 "pass precision= to from_weights")
        self.runner.precision = "bf16" if value else "fp32"

    @property
    def provenance(self) -> dict:
        """What ran the network, for the outputs' provenance: backend, precision and device."""
        device = self.runner.device
        return {"backend": self.runner.backend, "precision": self.runner.precision,
                "device": device if isinstance(device, str) else device.type}

    @property
    def precision(self) -> str:
        """What the network computes in: "bf16" or "fp32"."""
        return self.runner.precision

    @property
    def has_lesion_head(self) -> bool:
        """Whether the model gives an image-level lesion probability (``ModelConfig.lesion_head``)."""
        return self.config.lesion_head

    def _pass(self, batch: np.ndarray) -> Probabilities:
        """One pass of the network through the runner; probabilities in float32."""
        raw = self.runner.run(batch)
        return Probabilities(sigmoid(raw.logits), list(raw.attention),
                             sigmoid(raw.lesion_logit) if self.has_lesion_head else None)

    def _forward(self, batch: np.ndarray, test_time_flip: bool) -> Probabilities:
        """The batch's outputs; with ``test_time_flip`` averaged with those of the mirrored batch."""
        output = self._pass(batch)
        if not test_time_flip:
            return output
        mirrored = self._pass(np.ascontiguousarray(batch[..., ::-1]))
        return Probabilities(
            0.5 * (output.probability + mirrored.probability[..., ::-1]),
            [0.5 * (a + b[..., ::-1]) for a, b in zip(output.attention, mirrored.attention)],
            None if output.lesion_probability is None else 0.5 * (output.lesion_probability + mirrored.lesion_probability),
        )

    def _check_finite(self, output: Probabilities) -> None:
        """Raise :class:`WeightsError` naming the model when the network output holds NaN or infinite values."""
        values = [output.probability, *output.attention]
        if output.lesion_probability is not None:
            values.append(output.lesion_probability)
        if all(bool(np.isfinite(value).all()) for value in values):
            return
        model = f"the model {self.weights_path}" if self.weights_path else "the model"
        raise WeightsError(
            f"the network output is NaN or infinite: {model} is broken (its weights hold NaN or infinite values, "
            "or overflow); re-install or re-export it"
        )

    def _run(self, total: int, network_input, test_time_flip: bool, batch_size: int, progress, store) -> None:
        """Forward ``total`` items batch by batch and hand each :class:`Probabilities` to ``store(first, last, output)``.

        ``network_input(first, last)`` gives the ``(n, 1, h, w)`` float32 array of items
        ``first:last``; ``progress(done, total)`` is called after every batch.
        """
        step = max(1, batch_size)
        for start in range(0, total, step):
            stop = min(start + step, total)
            chunk = self.runner.frames_per_call(step)
            for first in range(start, stop, chunk):
                last = min(first + chunk, stop)
                output = self._forward(network_input(first, last), test_time_flip)
                self._check_finite(output)
                store(first, last, output)
            if progress is not None:
                progress(stop, total)

    def segment(
        self,
        image: np.ndarray,
        *,
        box=None,
        frame_boxes=None,
        context_margin: float = CONTEXT_MARGIN,
        frame_weight: float = FRAME_WEIGHT,
        color: bool | None = None,
        test_time_flip: bool | None = None,
        postprocessing: PostprocessOptions | None = None,
        batch_size: int = 8,
        progress: ProgressCallback | None = None,
    ) -> SegmentationResult:
        """Segment a frame ``(H, W)``/``(H, W, C)`` or a cine stack ``(F, H, W)``/``(F, H, W, C)``.

        Without a box the whole frame is searched. ``box`` is ``(x0, y0, x1, y1)``
        in pixels of the frame (x1, y1 exclusive; see :mod:`.boxes`) or a list of
        such boxes, the same on every frame; ``frame_boxes`` gives one entry (a box,
        a list of boxes or None) per frame instead. Each box is grown by
        ``context_margin`` of its size on each side, that crop segmented at the
        network's input size and the lesion kept inside the box; outside all boxes
        the mask is empty. The crop's probability is blended with the whole frame's
        (``frame_weight`` of the latter); with a weight above 0 the frames holding a
        box are first segmented whole, with 0 the crop is used alone.
        ``progress(done, total)`` is called after every batch of frames (with box
        prompts: of the frames segmented whole, then of the boxes). A network output
        that is not finite raises :class:`~.modelcard.WeightsError`. ``test_time_flip``
        None is the post-processing options' own (a model card's choice).
        """
        options = postprocessing or self.postprocessing
        if postprocessing is not None:  # refused before the network runs, naming the model
            try:
                check_lesion_head(options, self.has_lesion_head)
            except ValueError as error:
                raise ValueError(f"{self.weights_path or 'the model'}: {error}") from None
        test_time_flip = options.test_time_flip if test_time_flip is None else bool(test_time_flip)
        if box is not None or frame_boxes is not None:
            return self._segment_boxes(
                image, box, frame_boxes, context_margin, check_frame_weight(frame_weight), color, test_time_flip,
                options, batch_size, progress,
            )
        network_input, original_size = prepare_frames(image, self.input_size, color=color)
        outputs = _OutputFrames(network_input.shape[0], original_size, lesion_head=self.has_lesion_head)
        self._run(network_input.shape[0], lambda first, last: network_input[first:last],
                  test_time_flip, batch_size, progress, outputs.store)
        raw_mask = outputs.probability >= options.threshold
        processed_mask, why_empty = postprocess_frames_explained(outputs.probability, options, outputs.lesion_probability)
        return SegmentationResult(
            probability=outputs.probability,
            raw_mask=raw_mask,
            processed_mask=processed_mask,
            combined_attention=outputs.attention,
            lesion_probability=outputs.lesion_probability,
            why_empty=None if processed_mask.any() else why_empty,
        )

    def _segment_boxes(
        self, image, box, frame_boxes, context_margin, frame_weight, color, test_time_flip, options, batch_size,
        progress,
    ) -> SegmentationResult:
        """:meth:`segment` with box prompts: one crop per box, pasted back onto the frame grid."""
        frames = to_grayscale_frames(image, color=color)
        size = (int(frames.shape[-2]), int(frames.shape[-1]))
        per_frame = boxes_for_frames(box, frame_boxes, frames.shape[0], size)
        crops = [
            _Crop(frame, index, item, grow_box(item, context_margin, size))
            for frame, boxes in enumerate(per_frame)
            for index, item in enumerate(boxes)
        ]
        whole_frames = sorted({crop.frame for crop in crops}) if frame_weight > 0 else []
        total = len(whole_frames) + len(crops)
        frame_windows = self._frame_probability_in_windows(
            frames, crops, whole_frames, test_time_flip, batch_size, progress, total
        )

        def network_input(first: int, last: int) -> np.ndarray:
            return np.concatenate([to_network_input(frames[crop.frame][crop.window.slices][np.newaxis],
                                                    self.input_size) for crop in crops[first:last]])

        outputs = _OutputFrames(frames.shape[0], size, fill=0.0)
        labels = np.zeros((frames.shape[0], *size), dtype=np.uint16)
        outcomes = []

        def store(first, last, output: Probabilities) -> None:
            for offset, crop in enumerate(crops[first:last]):
                in_box = outputs.paste(
                    crop, output.probability[offset:offset + 1], [a[offset:offset + 1] for a in output.attention],
                    frame_windows[first + offset], frame_weight,
                )
                mask = postprocess_box(in_box, options)
                target = labels[crop.frame][crop.box.slices]
                target[mask & (target == 0)] = crop.index + 1  # where boxes overlap, the earlier box keeps the pixel
                peak = float(in_box.max())
                outcomes.append(BoxOutcome(crop.frame, crop.index, crop.box, peak, bool(mask.any())))

        if crops:
            self._run(len(crops), network_input, test_time_flip, batch_size,
                      _progress_of_part(progress, len(whole_frames), total), store)
        raw_mask = np.zeros_like(labels, dtype=bool)
        for crop in crops:
            raw_mask[crop.frame][crop.box.slices] = outputs.probability[crop.frame][crop.box.slices] >= options.threshold
        for outcome in outcomes:
            if not outcome.found:
                logger.info("frame %d, box %d: no lesion (peak probability %.3f; no region reached mean probability "
                            "%.2f)", outcome.frame, outcome.index, outcome.peak_probability, options.min_mean_probability)
        return SegmentationResult(
            probability=outputs.probability,
            raw_mask=raw_mask,
            processed_mask=labels > 0,
            combined_attention=outputs.attention,
            box_labels=labels,
            boxes=outcomes,
        )

    def _frame_probability_in_windows(
        self, frames, crops, whole_frames, test_time_flip, batch_size, progress, total
    ) -> list:
        """Per crop, the whole frame's probability inside its window (None for each when ``whole_frames`` is empty).

        ``frames`` are the grey ``(F, H, W)`` frames; only ``whole_frames`` are segmented,
        batch by batch, and only the windows are kept, so a long clip is not held twice.
        """
        windows = [None] * len(crops)
        if not whole_frames:
            return windows
        size = (int(frames.shape[-2]), int(frames.shape[-1]))
        crops_of = {frame: [] for frame in whole_frames}
        for position, crop in enumerate(crops):
            crops_of[crop.frame].append(position)

        def network_input(first: int, last: int) -> np.ndarray:
            return to_network_input(frames[whole_frames[first:last]], self.input_size)

        def store(first, last, output: Probabilities) -> None:
            resized = np.clip(_resized(output.probability, size), 0.0, 1.0)
            for row, frame in enumerate(whole_frames[first:last]):
                for position in crops_of[frame]:
                    windows[position] = resized[row][crops[position].window.slices].copy()

        self._run(len(whole_frames), network_input, test_time_flip, batch_size,
                  _progress_of_part(progress, 0, total), store)
        return windows


def _progress_of_part(progress: ProgressCallback | None, done_before: int, total: int) -> ProgressCallback | None:
    """``progress`` for one of several passes: its ``done`` is counted after ``done_before`` items, out of ``total``."""
    if progress is None:
        return None
    return lambda done, _part_total: progress(done_before + done, total)


@dataclass(frozen=True)
class _Crop:
    """One box prompt: its frame, its place in that frame's list, the box and the crop window around it."""

    frame: int
    index: int
    box: Box
    window: Box


class _OutputFrames:
    """The pipeline's float outputs, filled batch by batch on the input's own grid: the probability and the
    attention map (the mean of the gates).

    Each batch is resized straight into preallocated arrays, so a long cine clip
    is never held twice (no list of batches to concatenate, no gate kept at the frame's size).
    """

    def __init__(self, frame_count: int, size: tuple[int, int], fill: float | None = None, lesion_head: bool = False):
        self.size = size
        self.fill = fill  # None: every pixel gets written; a number: the value of pixels no crop covers
        self.probability = self._new_map(frame_count)
        self.attention = self._new_map(frame_count)
        self.lesion_probability = np.zeros(frame_count, dtype=np.float32) if lesion_head else None

    def _new_map(self, frame_count: int) -> np.ndarray:
        if self.fill is None:
            return np.empty((frame_count, *self.size), dtype=np.float32)
        return np.full((frame_count, *self.size), self.fill, dtype=np.float32)

    def store(self, first: int, last: int, output: Probabilities) -> None:
        """Resize the ``(n, 1, h, w)`` network outputs to the input grid, clip to [0, 1] and keep them."""
        np.clip(_resized(output.probability, self.size), 0.0, 1.0, out=self.probability[first:last])
        np.clip(_mean_of_gates(output.attention, self.size), 0.0, 1.0, out=self.attention[first:last])
        if self.lesion_probability is not None:
            self.lesion_probability[first:last] = output.lesion_probability

    def paste(
        self, crop: "_Crop", probability: np.ndarray, attention: list,
        frame_probability: np.ndarray | None = None, frame_weight: float = 0.0,
    ) -> np.ndarray:
        """Resize one crop's ``(1, 1, h, w)`` outputs to its window and paste them (the maximum where windows overlap).

        With ``frame_probability`` (the whole frame's probability in the window), the
        crop's probability is first blended with it, ``frame_weight`` of the frame's.
        Returns the crop's (blended) probability inside its box.
        """
        window = crop.window
        size = (window.height, window.width)
        crop_probability = np.clip(_resized(probability, size)[0], 0.0, 1.0)
        if frame_probability is not None:
            crop_probability = frame_weight * frame_probability + (1.0 - frame_weight) * crop_probability
        crop_attention = np.clip(_mean_of_gates(attention, size)[0], 0.0, 1.0)
        for target, values in ((self.probability, crop_probability), (self.attention, crop_attention)):
            region = target[crop.frame][window.slices]
            np.maximum(region, values, out=region)
        return crop_probability[crop.box.inside(window).slices]


def _resized(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(n, 1, h, w)`` network maps resized to ``size``: ``(n, H, W)``."""
    return resized_sum([maps[:, 0]], size)


def _mean_of_gates(attention: list, size: tuple[int, int]) -> np.ndarray:
    """The mean of the gates' ``(n, 1, h_i, w_i)`` coefficients, each resized to ``size``: ``(n, H, W)``."""
    mean = resized_sum([gate[:, 0] for gate in attention], size)
    mean /= np.float32(len(attention))
    return mean
