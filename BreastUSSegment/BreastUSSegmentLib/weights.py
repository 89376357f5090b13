"""Saving and loading model weights with their JSON model card.

Format (version 1): ``<name>.safetensors`` holds the state dict (tensors only,
never pickled code) and ``<name>.json`` beside it is the model card:
architecture, input size, normalisation, threshold, post-processing, training
provenance, metrics, the storage dtype and the sha256 of the weights file.
Loading verifies that checksum and refuses a file that does not match. The checksum in the card guards
against damage, not against tampering (whoever edits the file can edit the card); the bundled model's
checksum is also pinned in the code (``BUNDLED_SHA256``).

Storage dtype: ``float32`` (the default, and every card written before the
field existed) stores every tensor in float32. ``float16`` or ``bfloat16``
stores the floating-point tensors in that half precision (integer tensors such
as BatchNorm's ``num_batches_tracked`` keep their own dtype), which halves the
file; loading converts them back to float32, so the network always computes in
float32.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import BUNDLED_SHA256, BUNDLED_WEIGHTS
from .fileio import sha256_of_file, write_atomically, write_text_atomically  # noqa: F401 (sha256_of_file: used here and re-exported)
from .model import build_model
from .modelcard import STORAGE_DTYPES, ModelCard, WeightsError, card_path_for, check_storage_dtype, read_model_card
from .options import PostprocessOptions


def stored_state(model: nn.Module, storage_dtype: str = "float32") -> dict:
    """The tensors ``save_model`` writes for ``model``: on the CPU, contiguous, in ``storage_dtype``.

    float32 storage converts every tensor to float32 (as format version 1 always did); half-precision
    storage converts the floating-point tensors only. ValueError if a value does not fit the dtype.
    """
    dtype = getattr(torch, check_storage_dtype(storage_dtype))
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu")
        stored = value.to(dtype) if dtype == torch.float32 or value.is_floating_point() else value
        if stored.is_floating_point() and bool(torch.isfinite(value).all()) and not bool(torch.isfinite(stored).all()):
            raise ValueError(f"tensor {key} has values beyond the range of {storage_dtype}; store it in float32")
        state[key] = stored.contiguous()
    return state


def computed_state(state: dict) -> dict:
    """Tensors read from a weights file, ready for the network: half-precision ones converted to float32."""
    return {key: value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
            for key, value in state.items()}


def stored_copy(model: nn.Module, storage_dtype: str) -> nn.Module:
    """A new model with the weights that saving ``model`` in ``storage_dtype`` and loading it back gives."""
    copy = build_model(model.config)
    copy.load_state_dict(computed_state(stored_state(model, storage_dtype)), strict=True)
    return copy.eval()


def save_model(
    model: nn.Module,
    weights_path: str | os.PathLike,
    *,
    input_size: tuple[int, int] = (256, 256),
    postprocessing: PostprocessOptions,
    training: dict | None = None,
    metrics: dict | None = None,
    name: str | None = None,
    storage_dtype: str = "float32",
) -> ModelCard:
    """Write ``weights_path`` (.safetensors) and its model card; return the card.

    ``postprocessing`` is required: a card always carries the model's complete post-processing.
    ``storage_dtype`` (one of ``STORAGE_DTYPES``) is how the floating-point tensors are written.
    """
    weights_path = Path(weights_path)
    if weights_path.suffix != ".safetensors":
        raise ValueError(f"weights must be saved as .safetensors, got {weights_path.name}")
    state = stored_state(model, storage_dtype)
    write_atomically(weights_path, lambda temporary: save_file(state, temporary, metadata={"format": "pt"}))
    card = ModelCard(
        model=model.config.to_dict(),
        input_size=[int(input_size[0]), int(input_size[1])],
        sha256=sha256_of_file(weights_path),
        weights_file=weights_path.name,
        postprocessing=postprocessing.to_dict(),
        training=dict(training or {}),
        metrics=dict(metrics or {}),
        storage_dtype=storage_dtype,
    )
    if name:
        card.name = name
    write_text_atomically(card_path_for(weights_path), card.to_json())
    return card


def load_model(weights_path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Load weights after verifying their sha256 against the model card (and, for the bundled model, against the
    checksum pinned in the code); refuse NaN or infinite values. Returns the model in eval mode."""
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise WeightsError(f"model weights not found: {weights_path}")
    if weights_path.suffix != ".safetensors":
        raise WeightsError(f"only .safetensors weights are loaded (no pickled files), got {weights_path.name}")
    card = read_model_card(weights_path)
    actual = sha256_of_file(weights_path)
    if weights_path.resolve() == BUNDLED_WEIGHTS.resolve() and actual != BUNDLED_SHA256:
        raise WeightsError(
            f"the bundled model {weights_path} has sha256 {actual}, not the {BUNDLED_SHA256} this version of the "
            "code ships with: it was modified or damaged; re-install the extension or package"
        )
    if actual != str(card.sha256).strip().lower():  # a hex digest is the same number in either case
        raise WeightsError(
            f"checksum mismatch for {weights_path}: the model card expects sha256 {card.sha256}, "
            f"the file has {actual}. The file is corrupt or was modified; re-install or re-export it."
        )
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"cannot read weights {weights_path}: {error}") from error
    model = build_model(card.model_config)
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise WeightsError(f"weights {weights_path} do not match the architecture in its model card: {mismatch}")
    foreign = sorted({str(value.dtype).replace("torch.", "") for value in state.values() if value.is_floating_point()}
                     - {card.storage_dtype})
    if foreign:
        raise WeightsError(f"weights {weights_path} hold {', '.join(foreign)} tensors, but its model card says "
                           f"they are stored in {card.storage_dtype}")
    not_finite = [key for key, value in state.items() if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if not_finite:
        raise WeightsError(f"weights {weights_path} hold NaN or infinite values in {len(not_finite)} tensor(s) "
                           f"(first: {not_finite[0]}); the model is broken, re-export it")
    model.load_state_dict(computed_state(state), strict=True)
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
