"""Small measuring helpers shared by the benchmark workers: wall-clock timing and peak memory."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

try:
    import resource
except ImportError:  # Windows has no getrusage
    resource = None


@dataclass
class Timing:
    """Wall-clock durations of repeated calls, in seconds."""

    samples: list[float]

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def p90(self) -> float:
        return float(np.percentile(self.samples, 90))

    def to_dict(self) -> dict:
        return {"median_s": self.median, "p90_s": self.p90, "runs": len(self.samples)}


def time_calls(call: Callable[[], object], runs: int, warmup: int, synchronize: Callable[[], None] | None = None) -> Timing:
    """Run ``call`` ``warmup`` times untimed, then ``runs`` times timed one by one.

    ``synchronize`` (e.g. ``torch.cuda.synchronize``) is called before each clock
    reading so that asynchronous GPU work is counted.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    sync = synchronize or (lambda: None)
    for _ in range(warmup):
        call()
    sync()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        sync()
        samples.append(time.perf_counter() - start)
    return Timing(samples)


def peak_rss_mib() -> float | None:
    """Peak resident memory of this process so far, in MiB (None where the OS does not tell).

    On Linux this is VmHWM, which starts afresh when the worker's program starts; ru_maxrss (elsewhere) keeps
    the peak of the process that started the worker as well.
    """
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        pass
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def time_interleaved(calls: dict[str, Callable[[], object]], runs: int, warmup: int) -> dict[str, Timing]:
    """Time several calls round-robin so that a busy machine slows each of them alike.

    Every round times each call once; the order rotates from round to round so
    that no call always runs right after the same other one.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    keys = list(calls)
    for _ in range(warmup):
        for key in keys:
            calls[key]()
    samples = {key: [] for key in keys}
    for round_index in range(runs):
        shift = round_index % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            calls[key]()
            samples[key].append(time.perf_counter() - start)
    return {key: Timing(values) for key, values in samples.items()}
