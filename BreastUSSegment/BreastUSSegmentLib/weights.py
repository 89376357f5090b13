"""Saving and loading model weights with their JSON model card.

Format (version 1): ``<name>.safetensors`` holds the state dict (float32
tensors only, never pickled code) and ``<name>.json`` beside it is the model
card: architecture, input size, normalisation, threshold, post-processing,
training provenance, metrics and the sha256 of the weights file. Loading
verifies that checksum and refuses a file that does not match.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .fileio import write_atomically, write_text_atomically
from .model import AttentionUNet
from .modelcard import FORMAT_VERSION, ModelCard, WeightsError, card_path_for, read_model_card  # noqa: F401
from .postprocessing import PostprocessOptions


def sha256_of_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(
    model: AttentionUNet,
    weights_path: str | os.PathLike,
    *,
    input_size: tuple[int, int] = (256, 256),
    postprocessing: PostprocessOptions,
    training: dict | None = None,
    metrics: dict | None = None,
    name: str | None = None,
) -> ModelCard:
    """Write ``weights_path`` (.safetensors) and its model card; return the card.

    ``postprocessing`` is required: a card always carries the model's complete post-processing.
    """
    weights_path = Path(weights_path)
    if weights_path.suffix != ".safetensors":
        raise ValueError(f"weights must be saved as .safetensors, got {weights_path.name}")
    state = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in model.state_dict().items()}
    write_atomically(weights_path, lambda temporary: save_file(state, temporary, metadata={"format": "pt"}))
    card = ModelCard(
        model=model.config.to_dict(),
        input_size=[int(input_size[0]), int(input_size[1])],
        sha256=sha256_of_file(weights_path),
        weights_file=weights_path.name,
        postprocessing=postprocessing.to_dict(),
        training=dict(training or {}),
        metrics=dict(metrics or {}),
    )
    if name:
        card.name = name
    write_text_atomically(card_path_for(weights_path), card.to_json())
    return card


def load_model(weights_path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[AttentionUNet, ModelCard]:
    """Load weights after verifying their sha256 against the model card; returns the model in eval mode."""
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise WeightsError(f"model weights not found: {weights_path}")
    if weights_path.suffix != ".safetensors":
        raise WeightsError(f"only .safetensors weights are loaded (no pickled files), got {weights_path.name}")
    card = read_model_card(weights_path)
    actual = sha256_of_file(weights_path)
    if actual != str(card.sha256).strip().lower():  # a hex digest is the same number in either case
        raise WeightsError(
            f"checksum mismatch for {weights_path}: the model card expects sha256 {card.sha256}, "
            f"the file has {actual}. The file is corrupt or was modified; re-install or re-export it."
        )
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"cannot read weights {weights_path}: {error}") from error
    model = AttentionUNet(card.model_config)
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise WeightsError(f"weights {weights_path} do not match the architecture in its model card: {mismatch}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), card


def state_dict_mismatch(expected: dict, found: dict) -> str:
    """One line saying how the tensors ``found`` in a file differ from those a model ``expected``; "" if they fit."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    reshaped = [key for key in expected if key in found and tuple(found[key].shape) != tuple(expected[key].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    if reshaped:
        key = reshaped[0]
        parts.append(f"{len(reshaped)} of another shape (first: {key}, file {tuple(found[key].shape)}, "
                     f"card {tuple(expected[key].shape)})")
    return "; ".join(parts)
