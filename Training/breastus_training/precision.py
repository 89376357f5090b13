"""Which floating-point precision training runs its forward pass in (``--precision``)."""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from BreastUSSegmentLib.device import cpu_has_native_bf16

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision ``requested`` means on ``device``: "fp32", "bf16" or "fp16"; an impossible request is an error."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA GPU; on the CPU use bf16 (or fp32)")
    return requested


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` ("fp32": none)."""
    dtype: Optional[torch.dtype] = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
