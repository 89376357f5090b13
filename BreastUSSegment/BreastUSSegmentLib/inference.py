"""The inference pipeline: numpy frames in, probability, masks and attention maps out.

Used alike by the Slicer module, the command line and the evaluation code, so
that every path preprocesses and post-processes in exactly the same way.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .device import select_device
from .model import AttentionUNet
from .postprocessing import PostprocessOptions, postprocess_frames
from .preprocessing import prepare_frames, resize_frames
from .weights import ModelCard, WeightsError, load_model

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]

# Frames per forward pass on the CPU. Larger batches do more work per frame on a
# small CPU (their activations no longer fit in the caches); measured with
# benchmarks/benchmark.py. Results do not depend on it: frames are independent.
CPU_FRAMES_PER_FORWARD = 4


@dataclass
class SegmentationResult:
    """Pipeline outputs on the input's own pixel grid; every array is ``(F, H, W)``."""

    probability: np.ndarray  # float32 in [0, 1]
    raw_mask: np.ndarray  # bool, probability >= threshold
    processed_mask: np.ndarray  # bool, after post-processing
    attention_maps: list[np.ndarray]  # float32 in [0, 1], one per gate, coarsest level first
    combined_attention: np.ndarray  # float32 in [0, 1], mean of the gates

    @property
    def frame_count(self) -> int:
        return self.probability.shape[0]


class LesionSegmenter:
    """Runs an :class:`AttentionUNet` on frames of any size, dtype and colour layout."""

    def __init__(
        self,
        model: AttentionUNet,
        input_size: tuple[int, int],
        postprocessing: PostprocessOptions,
        device: str | torch.device = "auto",
    ):
        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.model = model.to(self.device).eval()
        self._set_memory_format()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.postprocessing = postprocessing
        self.card: ModelCard | None = None  # the model card, when built by from_weights
        self.weights_path: str | None = None  # the weights file, when built by from_weights
        multiple = model.config.size_multiple
        if self.input_size[0] % multiple or self.input_size[1] % multiple:
            raise ValueError(f"input size {self.input_size} must be a multiple of {multiple} for this model")

    @classmethod
    def from_weights(
        cls, weights_path: str | os.PathLike, device: str | torch.device = "auto", **overrides
    ) -> "LesionSegmenter":
        """Build a segmenter from a verified ``.safetensors`` file and its model card.

        Post-processing is the card's, with the settings given in ``overrides``
        (``PostprocessOptions`` field names) changed; an override of None keeps the card's value.
        """
        model, card = load_model(weights_path, device="cpu")
        segmenter = cls(model, tuple(card.input_size), card.postprocess_options.with_overrides(**overrides), device)
        segmenter.card = card
        segmenter.weights_path = str(weights_path)
        return segmenter

    def _set_memory_format(self) -> None:
        """Use channels-last weights on the CPU, where its convolutions are faster.

        The values of the weights do not change, only their layout in memory.
        """
        if self.device.type == "cpu":
            self.model.to(memory_format=torch.channels_last)

    def _frames_per_forward(self, batch_size: int) -> int:
        """Frames per forward pass: on the CPU at most ``CPU_FRAMES_PER_FORWARD`` (see its comment)."""
        return min(batch_size, CPU_FRAMES_PER_FORWARD) if self.device.type == "cpu" else batch_size

    def _forward(self, batch: torch.Tensor, test_time_flip: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits, attention = self.model(batch, return_attention=True)
        probability = torch.sigmoid(logits)
        if test_time_flip:
            flipped_logits, flipped_attention = self.model(batch.flip(-1), return_attention=True)
            probability = 0.5 * (probability + torch.sigmoid(flipped_logits).flip(-1))
            attention = [0.5 * (a + b.flip(-1)) for a, b in zip(attention, flipped_attention)]
        return probability, attention

    def _predict_batch(self, batch: torch.Tensor, test_time_flip: bool):
        """Forward one batch; on CUDA out-of-memory move to the CPU with a warning and retry."""
        try:
            return self._forward(self._to_device(batch), test_time_flip)
        except torch.OutOfMemoryError:
            if self.device.type == "cpu":
                raise
            logger.warning("GPU ran out of memory; continuing on the CPU (slower).")
            torch.cuda.empty_cache()
            self.device = torch.device("cpu")
            self.model.to(self.device)
            self._set_memory_format()
            return self._forward(self._to_device(batch), test_time_flip)

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """The batch on the model's device, channels-last on the CPU like the weights."""
        batch = batch.to(self.device)
        if self.device.type == "cpu":
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def _check_finite(self, probability: torch.Tensor, attention: list[torch.Tensor]) -> None:
        """Raise :class:`WeightsError` naming the model when the network output holds NaN or infinite values."""
        if all(bool(torch.isfinite(values).all()) for values in (probability, *attention)):
            return
        model = f"the model {self.weights_path}" if self.weights_path else "the model"
        raise WeightsError(
            f"the network output is NaN or infinite: {model} is broken (its weights hold NaN or infinite values, "
            "or overflow); re-install or re-export it"
        )

    @torch.inference_mode()
    def segment(
        self,
        image: np.ndarray,
        *,
        color: bool | None = None,
        test_time_flip: bool = False,
        postprocessing: PostprocessOptions | None = None,
        batch_size: int = 8,
        progress: ProgressCallback | None = None,
    ) -> SegmentationResult:
        """Segment a frame ``(H, W)``/``(H, W, C)`` or a cine stack ``(F, H, W)``/``(F, H, W, C)``.

        ``progress(done, total)`` is called after every batch of frames. A network
        output that is not finite raises :class:`~.weights.WeightsError`.
        """
        options = postprocessing or self.postprocessing
        network_input, original_size = prepare_frames(image, self.input_size, color=color)
        frame_count = network_input.shape[0]
        outputs = _OutputFrames(frame_count, original_size)

        step = max(1, batch_size)
        for start in range(0, frame_count, step):
            stop = min(start + step, frame_count)
            chunk = self._frames_per_forward(step)
            for first in range(start, stop, chunk):
                last = min(first + chunk, stop)
                probability, attention = self._predict_batch(network_input[first:last], test_time_flip)
                self._check_finite(probability, attention)
                outputs.store(first, last, probability, attention)
            if progress is not None:
                progress(stop, frame_count)

        raw_mask = outputs.probability >= options.threshold
        return SegmentationResult(
            probability=outputs.probability,
            raw_mask=raw_mask,
            processed_mask=postprocess_frames(outputs.probability, options),
            attention_maps=outputs.attention_maps,
            combined_attention=outputs.combined_attention(),
        )


class _OutputFrames:
    """The pipeline's float outputs, filled batch by batch on the input's own grid.

    Each batch is resized straight into preallocated arrays, so a long cine clip
    is never held twice (no list of batches to concatenate, no stack of all
    attention levels to average).
    """

    def __init__(self, frame_count: int, size: tuple[int, int]):
        self.size = size
        self.probability = np.empty((frame_count, *size), dtype=np.float32)
        self.attention_maps: list[np.ndarray] = []

    def store(self, first: int, last: int, probability: torch.Tensor, attention: list[torch.Tensor]) -> None:
        """Resize ``(n, 1, h, w)`` network outputs to the input grid, clip to [0, 1] and keep them."""
        if not self.attention_maps:
            self.attention_maps = [np.empty_like(self.probability) for _ in attention]
        for target, source in zip([self.probability, *self.attention_maps], [probability, *attention]):
            rows = torch.from_numpy(target[first:last])
            rows.copy_(resize_frames(source.float().cpu(), self.size).squeeze(1))
            rows.clamp_(0.0, 1.0)

    def combined_attention(self) -> np.ndarray:
        """Mean of the attention levels, summed level by level in float32."""
        combined = self.attention_maps[0].copy()
        for level in self.attention_maps[1:]:
            combined += level
        combined /= np.float32(len(self.attention_maps))
        return combined
