"""Measurements of the networks, each kind run by ``benchmark.py`` in a fresh subprocess.

* :func:`measure_model`: one network per process (so that the peak resident
  memory of one model is not inflated by another): size, FLOPs, CPU memory and
  GPU speed.
* :func:`measure_cpu_speed`: every network in one process, timed round-robin
  so that a busy machine slows them alike and their ratios stay meaningful.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from bench_models import benchmark_model
from bench_settings import Settings
from bench_timing import peak_rss_mib, time_calls, time_interleaved


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def forward_flops(model: torch.nn.Module, batch: torch.Tensor) -> int:
    """FLOPs of one forward pass as counted by ``torch.utils.flop_counter`` (convolutions and matmuls)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(batch)
    return int(counter.get_total_flops())


def weights_bytes(model: torch.nn.Module) -> int:
    """Size of the float32 state dict saved as safetensors."""
    state = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "weights.safetensors"
        save_file(state, str(path))
        return path.stat().st_size


def _input(batch: int, size: tuple[int, int], channels_last: bool, device: str = "cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch)
    tensor = torch.rand(batch, 1, *size, generator=generator).to(device)
    return tensor.contiguous(memory_format=torch.channels_last) if channels_last else tensor


def measure_cpu_memory(model: torch.nn.Module, settings: Settings, channels_last: bool) -> dict:
    """Peak resident memory after batch-1 forward passes, then after a batch forward pass."""
    size = settings.input_size
    single, batch = _input(1, size, channels_last), _input(settings.cpu_batch, size, channels_last)
    with torch.inference_mode():
        for _ in range(2):
            model(single)
        peak_single = peak_rss_mib()
        model(batch)
        peak_batch = peak_rss_mib()
    return {"peak_rss_batch1_mib": peak_single, "peak_rss_batch_mib": peak_batch}


def measure_cpu_speed(keys: list[str], settings: Settings, threads: int, channels_last: bool,
                      weights: Path | None = None, bf16: bool = False) -> dict:
    """Batch-1 latency and batch throughput of every network, timed round-robin in this process.

    With ``bf16`` every forward pass runs under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
    """
    torch.set_num_threads(threads)
    models = {}
    for key in keys:
        model, _source = benchmark_model(key, weights)
        models[key] = model.to(memory_format=torch.channels_last) if channels_last else model
    size = settings.input_size
    single, batch = _input(1, size, channels_last), _input(settings.cpu_batch, size, channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        latency = time_interleaved(
            {key: (lambda m=model: m(single)) for key, model in models.items()}, settings.latency_runs, settings.warmup
        )
        throughput = time_interleaved(
            {key: (lambda m=model: m(batch)) for key, model in models.items()}, settings.throughput_runs, warmup=1
        )
    return {
        "threads": torch.get_num_threads(),
        "bf16": bf16,
        "models": {
            key: {
                "latency": latency[key].to_dict(),
                "throughput_fps": settings.cpu_batch * len(throughput[key].samples) / sum(throughput[key].samples),
                "throughput_batch": settings.cpu_batch,
            }
            for key in keys
        },
    }


def gpu_unavailable_reason() -> str | None:
    """Why the GPU columns are skipped, or None when a CUDA GPU can be used."""
    if not torch.cuda.is_available():
        return "no CUDA GPU available to PyTorch (torch.cuda.is_available() is False)"
    return None


def measure_gpu(model: torch.nn.Module, settings: Settings, channels_last: bool) -> dict:
    """Batch-1 latency and batch throughput on CUDA in fp32 and with autocast (bf16, else fp16)."""
    device = torch.device("cuda")
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    size = settings.input_size
    single, batch = _input(1, size, channels_last, "cuda"), _input(settings.gpu_batch, size, channels_last, "cuda")
    half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    results = {"device_name": torch.cuda.get_device_name(device), "batch": settings.gpu_batch, "precisions": {}}
    for name, dtype in (("fp32", None), (str(half).replace("torch.", ""), half)):
        torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode(), torch.autocast("cuda", dtype=half, enabled=dtype is not None):
            latency = time_calls(lambda: model(single), settings.gpu_runs, settings.warmup, torch.cuda.synchronize)
            throughput = time_calls(lambda: model(batch), settings.gpu_runs, settings.warmup, torch.cuda.synchronize)
        results["precisions"][name] = {
            "latency": latency.to_dict(),
            "throughput_fps": settings.gpu_batch * len(throughput.samples) / sum(throughput.samples),
            "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20,
        }
    return results


def measure_model(key: str, settings: Settings, threads: int, channels_last: bool, weights: Path | None = None) -> dict:
    """Size, FLOPs, CPU memory and GPU speed of one model; memory readings come before anything else allocates."""
    torch.set_num_threads(threads)
    base_rss = peak_rss_mib()
    model, source = benchmark_model(key, weights)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    result = {"model": key, "source": source, "threads": torch.get_num_threads(), "base_rss_mib": base_rss}
    result["parameters"] = count_parameters(model)
    result["memory"] = measure_cpu_memory(model, settings, channels_last)
    result["flops"] = forward_flops(model, _input(1, settings.input_size, channels_last))
    result["weights_bytes"] = weights_bytes(model)
    reason = gpu_unavailable_reason()
    result["gpu"] = {"skipped": reason} if reason else measure_gpu(model, settings, channels_last)
    return result
