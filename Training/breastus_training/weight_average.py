"""Stochastic weight averaging (SWA) for ``breastus-train train --swa-start EPOCH``.

From epoch ``EPOCH`` on, the weights after every epoch are averaged (Izmailov et
al., "Averaging Weights Leads to Wider Optima and Better Generalization", UAI
2018). BatchNorm running statistics of an average of weights are not the
average of the statistics, so at the end they are recomputed with one pass over
the (unaugmented) training images. ``train`` then validates the result like
every epoch and saves it as ``swa.safetensors`` with its model card. A constant
learning rate (``--scheduler none``) keeps the averaged epochs apart.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, update_bn

SWA_NAME = "swa.safetensors"


def averaged_epochs(average: AveragedModel) -> int:
    """How many epochs' weights are in the average."""
    return int(average.n_averaged)


def recompute_batch_norm(average: AveragedModel, images: torch.Tensor, batch_size: int, device: torch.device,
                         seed: int) -> None:
    """Replace the BatchNorm running statistics with those of ``images`` seen through the averaged weights."""
    torch.manual_seed(seed)  # dropout is active during the pass: make it repeatable
    batches = (images[start:start + batch_size] for start in range(0, len(images), batch_size))
    update_bn(batches, average, device=device)

