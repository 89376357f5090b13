"""The networks compared: ours and the reference U-Nets of MONAI (optional dependency)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from BreastUSSegmentLib import BUNDLED_WEIGHTS
from BreastUSSegmentLib.model import AttentionUNet, ModelConfig
from BreastUSSegmentLib.weights import load_model

OURS = "ours"


@dataclass(frozen=True)
class ModelSpec:
    key: str  # command-line name
    label: str  # row title in the table
    needs_monai: bool


MODELS = (
    ModelSpec(OURS, "Ours: deeper Attention U-Net", False),
    ModelSpec("monai-attention-unet-32", "MONAI AttentionUnet (32..512)", True),
    ModelSpec("monai-attention-unet-64", "MONAI AttentionUnet (64..1024)", True),
    ModelSpec("monai-basic-unet", "MONAI BasicUNet (plain U-Net)", True),
)
MODEL_KEYS = tuple(spec.key for spec in MODELS)


def spec_for(key: str) -> ModelSpec:
    for spec in MODELS:
        if spec.key == key:
            return spec
    raise ValueError(f"unknown model {key!r}; choose one of {', '.join(MODEL_KEYS)}")


def monai_available() -> bool:
    return importlib.util.find_spec("monai") is not None


def benchmark_model(key: str, weights: Path | None = None) -> tuple[nn.Module, str]:
    """The network for ``key`` in eval mode, and a note on where its architecture came from.

    Ours loads ``weights`` if given, else the bundled weights, else is the default ``ModelConfig``.
    """
    if key == OURS:
        path = weights if weights is not None else BUNDLED_WEIGHTS
        if path.is_file():
            model, card = load_model(path)
            return model, f"{path.name}'s card: {card.model_config.to_dict()}"
        config = ModelConfig()
        return AttentionUNet(config).eval(), f"default ModelConfig: {config.to_dict()}"

    from monai.networks.nets import AttentionUnet, BasicUNet

    if key == "monai-attention-unet-32":
        channels = (32, 64, 128, 256, 512)
    elif key == "monai-attention-unet-64":
        channels = (64, 128, 256, 512, 1024)
    elif key == "monai-basic-unet":
        return BasicUNet(spatial_dims=2, in_channels=1, out_channels=1).eval(), "BasicUNet defaults"
    else:
        raise ValueError(f"unknown model {key!r}; choose one of {', '.join(MODEL_KEYS)}")
    model = AttentionUnet(spatial_dims=2, in_channels=1, out_channels=1, channels=channels, strides=(2, 2, 2, 2))
    return model.eval(), f"channels={channels}, strides=(2, 2, 2, 2)"
