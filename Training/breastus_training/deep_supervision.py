"""Deep supervision: training-only mask predictions from the coarser decoder levels.

Each decoder level but the last gets its own 1x1 convolution to one channel;
its logits, up-sampled bilinearly to the input size, are trained against the
same mask as the network's output. The total loss is

    loss(output) + weight * sum_k 2**-k * loss(level k)

where level 1 is the decoder level just above the output and each coarser
level counts half as much as the one above it. The auxiliary convolutions are
not part of :class:`AttentionUNet`: the exported weights, the model card and
inference stay exactly as without deep supervision.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from BreastUSSegmentLib.model import AttentionUNet


class SupervisedOutput(NamedTuple):
    """The network's :class:`~BreastUSSegmentLib.model.NetworkOutput` fields, same names and order, plus
    ``auxiliary``: the coarser levels' logits, finest first, each at the input size."""

    logits: torch.Tensor
    attention: Tuple[torch.Tensor, ...]
    lesion_logit: Optional[torch.Tensor]
    auxiliary: Tuple[torch.Tensor, ...]


class DeeplySupervisedUNet(nn.Module):
    """An :class:`AttentionUNet` and the 1x1 convolutions that read its coarser decoder levels.

    ``forward`` returns a :class:`SupervisedOutput`: the network's own outputs and
    the auxiliary logits.
    The decoder levels' outputs are read with forward hooks, so the network's own
    ``forward`` runs unchanged.
    """

    def __init__(self, model: AttentionUNet):
        super().__init__()
        self.model = model
        channels = model.config.channels
        # decoders run coarsest first; decoder i outputs channels[depth - 1 - i]; the last one feeds model.head
        levels = list(range(model.config.depth - 1))
        self.auxiliary_heads = nn.ModuleList(nn.Conv2d(channels[model.config.depth - 1 - i], 1, 1) for i in levels)
        self._features: dict[int, torch.Tensor] | None = None  # a dict only while this forward runs
        for index in levels:
            model.decoders[index].register_forward_hook(self._keeper(index))

    def _keeper(self, index: int):
        def keep(_module, _inputs, output):
            if self._features is not None:  # the plain model's own calls (validation, export) keep nothing
                self._features[index] = output[0]  # DecoderLevel returns (features, attention coefficients)
        return keep

    def forward(self, images: torch.Tensor) -> SupervisedOutput:
        self._features = {}
        try:
            output = self.model(images)
            features = self._features
        finally:
            self._features = None
        size = images.shape[-2:]
        auxiliary = [F.interpolate(head(features[index]), size=size, mode="bilinear", align_corners=False)
                     for index, head in enumerate(self.auxiliary_heads)]
        auxiliary.reverse()  # finest first
        return SupervisedOutput(*output, auxiliary=tuple(auxiliary))


def deep_supervision_loss(loss_fn: nn.Module, auxiliary: tuple[torch.Tensor, ...], masks: torch.Tensor,
                          weight: float) -> torch.Tensor:
    """``weight * sum_k 2**-k * loss_fn(level k)`` over the auxiliary logits, finest (k = 1) first, in fp32."""
    return weight * sum(0.5 ** k * loss_fn(level.float(), masks) for k, level in enumerate(auxiliary, start=1))
