"""Training data: cases preloaded once, already preprocessed exactly as at inference.

Every image goes through the core's ``prepare_input`` (the inference
preprocessing) to the network input size; its mask is resized the same way
(bilinear on 0/1 floats) and thresholded at 0.5. An augmentation that crops
(``scanner``) also gets each case at twice that size (``sources``), so a
zoomed crop is cut from sharper pixels. Augmentation then runs on
these tensors, with a random generator seeded from (seed, epoch, index) so that
an epoch is identical whatever the number of workers or processes, and after a
resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from BreastUSSegmentLib.preprocessing import prepare_input, resize_frames

from .busi import Case, load_case

Augment = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class PreparedCases:
    """Images ``(N, 1, h, w)`` float32 in [0, 1] and masks ``(N, 1, h, w)`` float32 in {0, 1}."""

    ids: list[str]
    images: torch.Tensor
    masks: torch.Tensor
    datasets: Optional[list[str]] = None  # the dataset of each case
    source_images: Optional[torch.Tensor] = None  # (N, 1, 2h, 2w) float16, for crops; see the module docstring
    source_masks: Optional[torch.Tensor] = None  # (N, 1, 2h, 2w) bool

    def __len__(self) -> int:
        return len(self.ids)


def prepare_mask(mask, input_size: tuple[int, int]) -> torch.Tensor:
    """A bool ``(H, W)`` mask resized to ``input_size`` as a ``(1, h, w)`` float tensor of 0/1."""
    values = torch.from_numpy(np.array(mask, dtype=np.float32))[None, None]
    return (resize_frames(values, tuple(input_size)) >= 0.5).float()[0]


def preload_cases(data_root, cases: list[Case], input_size: tuple[int, int],
                  progress: bool = True, description: str = "loading", with_sources: bool = False) -> PreparedCases:
    """Read and preprocess every case once; returns them stacked in memory.

    ``data_root`` is what ``load_case`` takes (a folder, a list of folders or a ``DataRoots``).
    With ``with_sources`` each case is also kept at twice ``input_size`` (see the module docstring).
    """
    images, masks, source_images, source_masks = [], [], [], []
    source_size = (2 * input_size[0], 2 * input_size[1])
    for case in tqdm(cases, desc=description, unit="case", disable=not progress, leave=False):
        image, mask = load_case(data_root, case)
        images.append(prepare_input(image, input_size)[0])
        masks.append(prepare_mask(mask, input_size))
        if with_sources:
            source_images.append(prepare_input(image, source_size)[0].half())
            source_masks.append(prepare_mask(mask, source_size).bool())
    if not cases:
        height, width = input_size
        return PreparedCases([], torch.zeros(0, 1, height, width), torch.zeros(0, 1, height, width), [])
    return PreparedCases([case.id for case in cases], torch.stack(images), torch.stack(masks),
                         [case.dataset for case in cases],
                         torch.stack(source_images) if with_sources else None,
                         torch.stack(source_masks) if with_sources else None)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the augmentation of sample ``index`` in ``epoch``; independent of batching and workers."""
    return ((seed * 1_000_003 + epoch) * 1_000_033 + index) % (2**63 - 1)


class SegmentationDataset(Dataset):
    """Preloaded cases with optional on-the-fly augmentation; call ``set_epoch`` before each epoch."""

    def __init__(self, cases: PreparedCases, augment: Augment | None = None, seed: int = 0):
        self.cases = cases
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.cases.images[index], self.cases.masks[index]
        if self.augment is not None:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
            if self.cases.source_images is None:
                image, mask = self.augment(image, mask, generator)
            else:
                source = (self.cases.source_images[index].float(), self.cases.source_masks[index].float())
                image, mask = self.augment(image, mask, generator, source=source)
        return image, mask
