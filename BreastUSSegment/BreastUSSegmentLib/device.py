"""Choosing the torch device that inference and training run on (PyTorch is imported when one is chosen)."""

from __future__ import annotations

# Every front end (command lines, the Slicer panel) offers these names, and only these.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def select_device(preference: str = "auto"):
    """Return the device for ``preference``, one of ``DEVICE_CHOICES``: ``auto`` picks CUDA, then Apple MPS, then CPU.

    Asking for an accelerator that is not available raises ``RuntimeError``
    rather than silently using the CPU.
    """
    import torch

    choice = (preference or "auto").strip().lower()
    if choice not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {preference!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no CUDA GPU is available to PyTorch")
    if choice == "mps" and not mps_available():
        raise RuntimeError("Apple MPS was requested but is not available to PyTorch")
    return torch.device(choice)


def mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (oneDNN's own check: AVX512-BF16 or AMX on x86).

    Inference and training then run in bf16 on the CPU; elsewhere bf16 would be emulated and slower.
    """
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
