"""The improved (deeper) Attention U-Net of Guo (2025) for breast ultrasound lesions.

The network follows the description in "An Improved U-Net Model for Ultrasound
Image Segmentation of Breast Cancer":

* encoder levels of two 3x3 convolutions with ReLU (optionally batch norm),
  dropout, He-normal initialisation and 2x2 max-pooling, one level deeper than
  the original U-Net by default;
* a bottleneck at the lowest resolution;
* a decoder that upsamples (bilinear up-sampling followed by a 3x3
  convolution), re-weights the matching skip connection with an additive
  attention gate (Oktay et al., 2018), concatenates and applies two 3x3
  convolutions;
* a 1x1 convolution to one output channel. The network returns logits; apply
  ``torch.sigmoid`` for probabilities (training uses ``BCEWithLogitsLoss``,
  which is the paper's sigmoid + BCE computed in a numerically stable way).

Beyond the paper, ``ModelConfig(lesion_head=True)`` adds an image-level
"lesion present" logit: the bottleneck features are pooled over the frame
(mean and maximum per channel) and a linear layer maps them to one number.
Post-processing can then empty the mask of a frame the network judges
lesion-free as a whole (``PostprocessOptions.min_lesion_probability``).

``ModelConfig(members=N)`` describes an ensemble: N networks of the same
architecture, trained apart, run side by side on every frame
(:class:`AttentionUNetEnsemble`); their probabilities, attention maps and
lesion probabilities are averaged. :func:`build_model` builds either kind from
a model card's configuration.

Models trained before the up-sampling change used a stride-2 transposed
convolution (``upsample="transposed"``): its 2x2 kernel imprints a
checkerboard on the gating signal and so a lattice on every attention map.
Their model cards carry no ``upsample`` key and still load as they were.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .modelcard import ModelConfig


class NetworkOutput(NamedTuple):
    """What every network here returns (plain tensors, so it traces and exports as it is).

    ``logits``: ``(N, 1, H, W)``, ``torch.sigmoid`` gives the probability;
    ``attention``: every gate's coefficients, coarsest level first, each ``(N, 1, h, w)``
    at its level's resolution (the gates compute them anyway, so they always come);
    ``lesion_logit``: the image-level lesion logits ``(N,)``, None for a model without a lesion head.
    """

    logits: torch.Tensor
    attention: Tuple[torch.Tensor, ...]
    lesion_logit: Optional[torch.Tensor]


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by (batch norm and) ReLU, then dropout."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, batch_norm: bool):
        layers: list[nn.Module] = []
        for block_in in (in_channels, out_channels):
            layers.append(nn.Conv2d(block_in, out_channels, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class AttentionGate(nn.Module):
    """Additive attention gate of Oktay et al. (2018).

    The gating signal ``g`` (coarser decoder features) and the skip features
    ``x`` are projected to ``inter_channels`` by 1x1 convolutions, added,
    passed through ReLU, projected to one channel and squashed by a sigmoid.
    The coefficients, resampled to the skip resolution, multiply ``x``.
    """

    def __init__(self, gate_channels: int, skip_channels: int, inter_channels: int):
        super().__init__()
        self.gate_proj = nn.Conv2d(gate_channels, inter_channels, 1, bias=True)
        self.skip_proj = nn.Conv2d(skip_channels, inter_channels, 1, bias=False)
        self.psi = nn.Conv2d(inter_channels, 1, 1, bias=True)

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate_features = self.gate_proj(gate)
        if gate_features.shape[-2:] != skip.shape[-2:]:
            gate_features = F.interpolate(gate_features, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        coefficients = torch.sigmoid(self.psi(F.relu(self.skip_proj(skip) + gate_features)))
        return skip * coefficients, coefficients


class UpConv(nn.Sequential):
    """2x bilinear up-sampling, then a 3x3 convolution (with batch norm) and ReLU.

    Every output pixel is made the same way, so unlike a stride-2 transposed
    convolution it leaves no 2x2 checkerboard in the features it passes on.
    """

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool):
        layers: list[nn.Module] = [
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm),
        ]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def make_upsample(mode: str, in_channels: int, out_channels: int, batch_norm: bool) -> nn.Module:
    """The decoder's 2x up-sampling for ``ModelConfig.upsample``."""
    if mode == "transposed":
        return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
    return UpConv(in_channels, out_channels, batch_norm)


class DecoderLevel(nn.Module):
    """Upsample, gate the skip connection, concatenate and convolve."""

    def __init__(self, in_channels: int, skip_channels: int, dropout: float, batch_norm: bool,
                 upsample: str = "bilinear"):
        super().__init__()
        self.upsample = make_upsample(upsample, in_channels, skip_channels, batch_norm)
        self.gate = AttentionGate(skip_channels, skip_channels, max(skip_channels // 2, 1))
        self.conv = ConvBlock(2 * skip_channels, skip_channels, dropout, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        upsampled = self.upsample(x)
        gated_skip, coefficients = self.gate(skip, upsampled)
        return self.conv(torch.cat([gated_skip, upsampled], dim=1)), coefficients


class LesionPresenceHead(nn.Module):
    """Image-level "lesion present" logit from bottleneck features: mean and max pooling, then one linear layer."""

    def __init__(self, channels: int):
        super().__init__()
        self.linear = nn.Linear(2 * channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.linear(pooled)[:, 0]


class AttentionUNet(nn.Module):
    """Deeper Attention U-Net with one output channel (logits).

    ``forward(x)`` returns a :class:`NetworkOutput`: the logits, every gate's
    attention coefficients and (models built with ``lesion_head``) the image-level
    lesion logits.
    """

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        if self.config.members != 1:
            raise ValueError(f"an AttentionUNet is one network; build {self.config.members} members with build_model")
        channels = self.config.channels
        dropout, batch_norm = self.config.dropout, self.config.batch_norm

        self.encoders = nn.ModuleList()
        previous = self.config.in_channels
        for level_channels in channels[:-1]:
            self.encoders.append(ConvBlock(previous, level_channels, dropout, batch_norm))
            previous = level_channels
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(channels[-2], channels[-1], dropout, batch_norm)
        self.decoders = nn.ModuleList(
            DecoderLevel(channels[level + 1], channels[level], dropout, batch_norm, self.config.upsample)
            for level in reversed(range(self.config.depth))
        )
        self.head = nn.Conv2d(channels[0], 1, kernel_size=1)
        self.lesion_head = LesionPresenceHead(channels[-1]) if self.config.lesion_head else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal initialisation of every convolution, as in the paper."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> NetworkOutput:
        multiple = self.config.size_multiple
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected input of shape (N, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(f"input height and width must be multiples of {multiple}, got {tuple(x.shape[-2:])}")

        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        lesion_logit = None if self.lesion_head is None else self.lesion_head(x)

        attention = []
        for decoder, skip in zip(self.decoders, reversed(skips)):
            x, coefficients = decoder(x, skip)
            attention.append(coefficients)
        return NetworkOutput(self.head(x), tuple(attention), lesion_logit)


class AttentionUNetEnsemble(nn.Module):
    """``config.members`` Attention U-Nets of one architecture whose outputs are averaged.

    ``forward`` takes and returns what :class:`AttentionUNet`'s does (a :class:`NetworkOutput`). The members'
    probabilities are averaged and returned as logits (the logit of the mean
    probability, so that ``torch.sigmoid`` gives the mean back); each gate's
    attention map and the lesion probability are averaged alike.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.members < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {config.members}")
        self.config = config
        self.members = nn.ModuleList(AttentionUNet(replace(config, members=1)) for _ in range(config.members))

    def forward(self, x: torch.Tensor) -> NetworkOutput:
        runs = [member(x) for member in self.members]
        attention = tuple(torch.stack([run.attention[level].float() for run in runs]).mean(0)
                          for level in range(len(runs[0].attention)))
        lesion_logit = None if runs[0].lesion_logit is None else _logit_of_mean([run.lesion_logit for run in runs])
        return NetworkOutput(_logit_of_mean([run.logits for run in runs]), attention, lesion_logit)


def _logit_of_mean(logits: list[torch.Tensor]) -> torch.Tensor:
    """The logit of the members' mean probability, in float32, exactly and finite for any finite logits.

    logit(mean p) = log(sum p) - log(sum (1 - p)), with log p = logsigmoid(z) and log(1 - p) = logsigmoid(-z).
    """
    stacked = torch.stack([value.float() for value in logits])
    return torch.logsumexp(F.logsigmoid(stacked), 0) - torch.logsumexp(F.logsigmoid(-stacked), 0)


def build_model(config: ModelConfig | None = None) -> nn.Module:
    """The network a model card describes: an :class:`AttentionUNet`, or an ensemble of ``config.members`` of them."""
    config = config or ModelConfig()
    return AttentionUNet(config) if config.members == 1 else AttentionUNetEnsemble(config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
