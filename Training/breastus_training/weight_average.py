"""Stochastic weight averaging (SWA) for ``breastus-train train --swa-start EPOCH``.

From epoch ``EPOCH`` on, the weights after every epoch are averaged (Izmailov et
al., "Averaging Weights Leads to Wider Optima and Better Generalization", UAI
2018). BatchNorm running statistics of an average of weights are not the
average of the statistics, so at the end they are recomputed with one pass over
the (unaugmented) training images. The result is validated like every epoch and
saved as ``swa.safetensors`` with its model card. A constant learning rate
(``--scheduler none``) keeps the averaged epochs apart.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, update_bn

from BreastUSSegmentLib.weights import save_model

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


def save_average(average: AveragedModel, run_dir: Path, input_size: tuple[int, int], training: dict,
                 scores: dict, first_epoch: int, last_epoch: int) -> Path:
    """Write ``swa.safetensors`` and its card: which epochs were averaged and the validation scores."""
    weight_average = {"first_epoch": first_epoch, "last_epoch": last_epoch, "epochs": averaged_epochs(average),
                      "batch_norm": "recomputed on the train images"}
    metrics = {"val": {"dice": scores["val_dice"], "iou": scores["val_iou"], "loss": scores["val_loss"],
                       "epoch": last_epoch}}
    path = run_dir / SWA_NAME
    save_model(average.module, path, input_size=input_size,
               training={**training, "weight_average": weight_average, "val_iou": scores["val_iou"]},
               metrics=metrics)
    return path

