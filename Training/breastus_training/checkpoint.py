"""Training checkpoints: atomic writes, ``weights_only`` loading and random-generator states.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(path, weights_only=True)`` (no pickled code is executed).
The numpy and Python random states are therefore stored as a tensor and lists.

Integrity: ``save_checkpoint`` adds ``checksum``, the sha256 of everything else in
it (torch does not check its own files, so damaged tensor data would load), and
``load_checkpoint`` refuses a checkpoint whose contents do not match it, that lacks
a required entry or that holds NaN or infinite values.
"""

from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import torch

from BreastUSSegmentLib.fileio import leftover_temporaries, write_atomically


class ResumeError(ValueError):
    """An existing run cannot be resumed with the requested settings."""


CHECKSUM_KEY = "checksum"


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` and its checksum with ``torch.save``, atomically (see the core's ``write_atomically``).

    A run is the only writer of its checkpoints, so temporaries left by a run killed during a save are removed.
    """
    for leftover in leftover_temporaries(path):
        leftover.unlink(missing_ok=True)
    stored = {**state, CHECKSUM_KEY: state_checksum(state)}
    write_atomically(path, lambda temporary: torch.save(stored, temporary))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", required: tuple = ()) -> dict:
    """Load a checkpoint safely (``weights_only=True``) and check it: the ``required`` keys, the checksum
    (checkpoints written before it had none) and finite tensors. ResumeError naming the file otherwise."""
    def refuse(reason: str):
        return ResumeError(f"cannot load checkpoint {path}: {reason}")

    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise refuse("the file is empty (0 bytes)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise refuse(str(error) or type(error).__name__) from error
    if not isinstance(state, dict):
        raise refuse(f"it holds a {type(state).__name__}, not a checkpoint")
    missing = [key for key in required if key not in state]
    if missing:
        raise refuse(f"missing {', '.join(missing)}")
    stored = state.pop(CHECKSUM_KEY, None)
    if stored is not None and stored != state_checksum(state):
        raise refuse("its contents do not match the checksum written with it (the file is damaged); restore a "
                     "copy, or delete it to start the run again")
    not_finite = [name for name, tensor in tensors_of(state) if tensor.is_floating_point()
                  and not bool(torch.isfinite(tensor).all())]
    if not_finite:
        raise refuse(f"{len(not_finite)} tensor(s) hold NaN or infinite values (first: {not_finite[0]})")
    return state


def tensors_of(value, name: str = ""):
    """``(dotted name, tensor)`` for every tensor in nested dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from tensors_of(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from tensors_of(item, f"{name}.{index}" if name else str(index))


def state_checksum(value) -> str:
    """sha256 of a checkpoint's contents: every tensor's dtype, shape and bytes, and every other value, in order."""
    digest = hashlib.sha256()

    def add(item) -> None:
        if isinstance(item, torch.Tensor):
            flat = item.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"T{item.dtype}{tuple(item.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        elif isinstance(item, dict):
            digest.update(f"D{len(item)}".encode())
            for key in sorted(item, key=repr):
                add(key)
                add(item[key])
        elif isinstance(item, (list, tuple)):
            digest.update(f"L{len(item)}".encode())
            for element in item:
                add(element)
        else:
            digest.update(f"V{type(item).__name__}:{item!r};".encode())

    add(value)
    return digest.hexdigest()


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
