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
from .preprocessing import prepare_input, resize_frames
from .weights import load_model

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


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
        input_size: tuple[int, int] = (256, 256),
        postprocessing: PostprocessOptions | None = None,
        device: str | torch.device = "auto",
    ):
        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.model = model.to(self.device).eval()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.postprocessing = postprocessing or PostprocessOptions()
        multiple = model.config.size_multiple
        if self.input_size[0] % multiple or self.input_size[1] % multiple:
            raise ValueError(f"input size {self.input_size} must be a multiple of {multiple} for this model")

    @classmethod
    def from_weights(cls, weights_path: str | os.PathLike, device: str | torch.device = "auto") -> "LesionSegmenter":
        """Build a segmenter from a verified ``.safetensors`` file and its model card."""
        model, card = load_model(weights_path, device="cpu")
        return cls(model, tuple(card.input_size), card.postprocess_options, device)

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
            return self._forward(batch.to(self.device), test_time_flip)
        except torch.OutOfMemoryError:
            if self.device.type == "cpu":
                raise
            logger.warning("GPU ran out of memory; continuing on the CPU (slower).")
            torch.cuda.empty_cache()
            self.device = torch.device("cpu")
            self.model.to(self.device)
            return self._forward(batch, test_time_flip)

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

        ``progress(done, total)`` is called after every batch of frames.
        """
        options = postprocessing or self.postprocessing
        network_input = prepare_input(image, self.input_size, color=color)
        frame_count, original_size = network_input.shape[0], _original_size(image, color)

        probabilities, attention_levels = [], None
        for start in range(0, frame_count, max(1, batch_size)):
            batch = network_input[start : start + batch_size]
            probability, attention = self._predict_batch(batch, test_time_flip)
            probabilities.append(resize_frames(probability.float().cpu(), original_size))
            resized = [resize_frames(level.float().cpu(), original_size) for level in attention]
            if attention_levels is None:
                attention_levels = [[] for _ in resized]
            for store, level in zip(attention_levels, resized):
                store.append(level)
            if progress is not None:
                progress(min(start + batch_size, frame_count), frame_count)

        probability = _to_numpy(probabilities)
        attention_maps = [_to_numpy(level) for level in attention_levels]
        combined = np.mean(attention_maps, axis=0).astype(np.float32)
        raw_mask = probability >= options.threshold
        return SegmentationResult(
            probability=probability,
            raw_mask=raw_mask,
            processed_mask=postprocess_frames(probability, options),
            attention_maps=attention_maps,
            combined_attention=combined,
        )


def _original_size(image: np.ndarray, color: bool | None) -> tuple[int, int]:
    """Height and width of the input frames, using the same layout rules as preprocessing."""
    shape = np.shape(image)
    is_color = len(shape) == 4 or (len(shape) == 3 and (color if color is not None else shape[-1] in (3, 4)))
    return (shape[-3], shape[-2]) if is_color else (shape[-2], shape[-1])


def _to_numpy(batches: list[torch.Tensor]) -> np.ndarray:
    """Concatenate ``(n, 1, H, W)`` batches into a ``(F, H, W)`` float32 array clipped to [0, 1]."""
    return torch.cat(batches).squeeze(1).clamp_(0.0, 1.0).numpy().astype(np.float32, copy=False)
