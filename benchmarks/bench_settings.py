"""How many runs, frames and batches each measurement uses, in full and in quick mode."""

from __future__ import annotations

from dataclasses import asdict, dataclass

FRAME_SIZE = (500, 500)  # one ultrasound frame for the end-to-end rows


@dataclass(frozen=True)
class Settings:
    quick: bool
    input_size: tuple[int, int]  # network input for the model table
    warmup: int  # untimed calls before timing
    latency_runs: int  # timed batch-1 forward passes
    cpu_batch: int  # batch for CPU throughput
    throughput_runs: int  # timed batches for throughput
    gpu_batch: int  # batch for GPU throughput
    gpu_runs: int  # timed GPU calls (latency and throughput)
    png_runs: int  # timed end-to-end single-frame runs
    cine_frames: int  # frames of the cine clip
    cine_runs: int  # timed runs of the whole clip
    slicer_runs: int  # timed Slicer Logic runs

    def to_dict(self) -> dict:
        return asdict(self)


FULL = Settings(
    quick=False, input_size=(256, 256), warmup=5, latency_runs=30, cpu_batch=16, throughput_runs=5, gpu_batch=64, gpu_runs=30,
    png_runs=20, cine_frames=100, cine_runs=3, slicer_runs=10,
)
QUICK = Settings(
    quick=True, input_size=(64, 64), warmup=1, latency_runs=1, cpu_batch=2, throughput_runs=1, gpu_batch=4, gpu_runs=1,
    png_runs=1, cine_frames=3, cine_runs=1, slicer_runs=1,
)


def settings_for(quick: bool) -> Settings:
    return QUICK if quick else FULL
