"""The model card: the JSON file beside a model's weights, read without PyTorch.

``<name>.json`` describes ``<name>.safetensors``: architecture, input size,
normalisation, post-processing, training provenance, metrics and the sha256 of
the weights file, and optionally the ONNX graph of the network with its sha256
(for the OpenVINO and ONNX Runtime backends, :mod:`.runtime`) (see :mod:`.weights`,
which saves and loads the weights). This
module imports neither PyTorch nor safetensors, so the Slicer panel can show a
model's settings before PyTorch is installed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .options import PostprocessOptions

FORMAT_VERSION = 1
STORAGE_DTYPES = ("float32", "float16", "bfloat16")  # names of torch dtypes, as written in the card
# How frames are scaled before the network (the card records it; preprocessing applies it).
NORMALIZATION_NAME = "luma-bt601 + per-frame min-max to [0,1]"
UPSAMPLE_MODES = ("bilinear", "transposed")
MAX_MEMBERS = 8  # networks in one ensemble file; each one is a full forward pass per frame


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters of the Attention U-Net (:mod:`.model`); stored in every model card."""

    in_channels: int = 1
    base_channels: int = 16
    depth: int = 5  # number of 2x2 poolings; the original U-Net has 4
    dropout: float = 0.1
    batch_norm: bool = True
    upsample: str = "bilinear"  # "bilinear" (+ 3x3 conv) or "transposed" (stride-2 2x2 kernel, older models)
    lesion_head: bool = False  # an image-level "lesion present" output from the bottleneck (see model.py)
    members: int = 1  # networks of this architecture averaged as one model (an ensemble; see model.py)

    def __post_init__(self) -> None:
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.base_channels < 1:
            raise ValueError(f"base_channels must be >= 1, got {self.base_channels}")
        if not 1 <= self.depth <= 8:
            raise ValueError(f"depth must be between 1 and 8, got {self.depth}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 1 <= self.members <= MAX_MEMBERS:
            raise ValueError(f"members must be between 1 and {MAX_MEMBERS}, got {self.members}")
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {self.upsample!r}")

    @property
    def channels(self) -> tuple[int, ...]:
        """Feature channels per level, from the first encoder level to the bottleneck."""
        return tuple(self.base_channels * 2**level for level in range(self.depth + 1))

    @property
    def size_multiple(self) -> int:
        """Input height and width must be a multiple of this."""
        return 2**self.depth

    def to_dict(self) -> dict:
        """The card's architecture block; ``members`` only for an ensemble, so single-model cards stay readable
        by versions from before ensembles."""
        values = asdict(self)
        if self.members == 1:
            del values["members"]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model configuration keys: {sorted(unknown)}")
        # Cards written before the up-sampling became a choice describe transposed-convolution models.
        return cls(**{"upsample": "transposed", **values})


class WeightsError(RuntimeError):
    """Weights or model card missing, corrupt, tampered with or incompatible."""


@dataclass
class ModelCard:
    """Everything needed to rebuild and run a saved model, plus its provenance."""

    model: dict
    input_size: list[int]
    sha256: str
    weights_file: str
    postprocessing: dict  # every setting of PostprocessOptions: the card is their only source
    name: str = "BreastUS Attention U-Net"
    format_version: int = FORMAT_VERSION
    normalization: str = NORMALIZATION_NAME
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    storage_dtype: str = "float32"  # how the floating-point tensors are stored in the file (STORAGE_DTYPES)
    # The ONNX graph beside the weights: file, sha256, storage_dtype, opset and per backend-precision the
    # agreement with PyTorch float32 ("passed" False: backend="auto" does not choose it); None without one.
    onnx: dict | None = None

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model)

    @property
    def postprocess_options(self) -> PostprocessOptions:
        return PostprocessOptions.from_dict(self.postprocessing)

    def to_json(self) -> str:
        values = asdict(self)
        if values["onnx"] is None:  # cards without a graph stay as they were
            del values["onnx"]
        return json.dumps(values, indent=2, sort_keys=True) + "\n"


def check_storage_dtype(storage_dtype: str) -> str:
    """``storage_dtype`` if it is one of ``STORAGE_DTYPES``; ValueError naming the choices otherwise."""
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype must be one of {', '.join(STORAGE_DTYPES)}, got {storage_dtype!r}")
    return storage_dtype


def check_input_size(input_size, config: ModelConfig) -> None:
    """ValueError unless ``input_size`` is two whole numbers >= 1, each a multiple of the model's size multiple."""
    if not (isinstance(input_size, (list, tuple)) and len(input_size) == 2
            and all(isinstance(side, int) and not isinstance(side, bool) and side >= 1 for side in input_size)):
        raise ValueError(f"input_size must be two whole numbers >= 1 (height, width), got {input_size!r}")
    if any(side % config.size_multiple for side in input_size):
        raise ValueError(f"input_size {list(input_size)} must be a multiple of {config.size_multiple} "
                         f"(2 to the power of depth {config.depth})")


def card_path_for(weights_path: str | os.PathLike) -> Path:
    """The model card lives beside the weights: ``model.safetensors`` -> ``model.json``."""
    return Path(weights_path).with_suffix(".json")


def read_model_card(weights_path: str | os.PathLike) -> ModelCard:
    """Read and validate the model card beside ``weights_path``."""
    card_path = card_path_for(weights_path)
    if not card_path.is_file():
        raise WeightsError(f"model card not found: {card_path} (expected beside the weights file)")
    try:
        values = json.loads(card_path.read_text())
        card = ModelCard(**{"postprocessing": {}, **values})  # a missing block is reported by its settings
        check_input_size(card.input_size, card.model_config)  # also validates the architecture block
        card.postprocess_options
        check_storage_dtype(card.storage_dtype)
        if card.onnx is not None and not (isinstance(card.onnx, dict) and {"file", "sha256"} <= set(card.onnx)):
            raise ValueError("its onnx block must name the graph's file and sha256")
        if card.normalization != NORMALIZATION_NAME:
            raise ValueError(f"normalization {card.normalization!r} is not implemented; this code scales frames "
                             f"by {NORMALIZATION_NAME!r}")
    except (ValueError, TypeError) as error:
        raise WeightsError(f"model card {card_path} is not valid: {error}") from error
    if card.format_version != FORMAT_VERSION:
        raise WeightsError(f"model card {card_path} has format version {card.format_version}; this code reads {FORMAT_VERSION}")
    return card
