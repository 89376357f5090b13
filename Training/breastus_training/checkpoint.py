"""Training checkpoints: atomic writes, ``weights_only`` loading and random-generator states.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(path, weights_only=True)`` (no pickled code is executed).
The numpy and Python random states are therefore stored as a tensor and lists.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from BreastUSSegmentLib.fileio import leftover_temporaries, write_atomically


class ResumeError(ValueError):
    """An existing run cannot be resumed with the requested settings."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` with ``torch.save``, atomically (see the core's ``write_atomically``).

    A run is the only writer of its checkpoints, so temporaries left by a run killed during a save are removed.
    """
    for leftover in leftover_temporaries(path):
        leftover.unlink(missing_ok=True)
    write_atomically(path, lambda temporary: torch.save(state, temporary))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise ResumeError(f"cannot load checkpoint {path}: {error}") from error


def capture_rng_state() -> dict:
    """The torch (CPU and CUDA), numpy and Python random states, as weights_only-safe values."""
    numpy_state = np.random.get_state()
    python_version, python_internal, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [state for state in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {
            "algorithm": str(numpy_state[0]),
            "keys": torch.from_numpy(np.asarray(numpy_state[1], dtype=np.int64)),
            "position": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": {"version": int(python_version), "internal": [int(value) for value in python_internal],
                   "gauss_next": python_gauss},
    }


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state((
        numpy_state["algorithm"],
        numpy_state["keys"].numpy().astype(np.uint32),
        numpy_state["position"],
        numpy_state["has_gauss"],
        numpy_state["cached_gaussian"],
    ))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))
