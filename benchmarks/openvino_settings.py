"""OpenVINO compile settings for the bundled graph, side by side: the runner's own against the alternatives.

Usage::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/openvino_settings.py [--precision auto|fp32|bf16]
        [--threads 2] [--runs 15] [--clip-frames 100] [--output report.md]

The core's runner compiles the ONNX graph once with a dynamic batch axis and the LATENCY hint. This script
times, round-robin in one process, that runner against the same graph compiled with a static batch shape
(one compiled model per batch size), and a clip through the THROUGHPUT hint (two streams, one frame per
request, requests queued asynchronously). Rows: the network alone at batch 1 and at the runner's CPU
batch, and the clip's network passes; the largest output difference to the runner is beside each. It
answers whether a setting is worth adopting on the CPU at hand: the answer may differ with AMX.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

BENCHMARK_DIR = Path(__file__).resolve().parent
if str(BENCHMARK_DIR) not in sys.path:
    sys.path.insert(0, str(BENCHMARK_DIR))

from BreastUSSegmentLib import BUNDLED_WEIGHTS  # noqa: E402
from BreastUSSegmentLib.modelcard import read_model_card  # noqa: E402
from BreastUSSegmentLib.preprocessing import to_network_input  # noqa: E402
from BreastUSSegmentLib.runtime import (  # noqa: E402
    CPU_FRAMES_PER_FORWARD, OpenVINORunner, compile_openvino, openvino_output, resolve_precision, verified_onnx_path,
)
from bench_backends import cpu_flags  # noqa: E402
from bench_pipeline_worker import benchmark_frame, cine_clip  # noqa: E402
from bench_timing import time_interleaved  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="OpenVINO's inference precision; auto: bf16 where the CPU computes it natively")
    parser.add_argument("--threads", type=int, default=2, help="OpenVINO's inference threads (default 2)")
    parser.add_argument("--runs", type=int, default=15, help="timed rounds of the single passes (default 15)")
    parser.add_argument("--clip-frames", type=int, default=100, help="frames of the clip (default 100)")
    parser.add_argument("--clip-runs", type=int, default=3, help="timed rounds of the clip (default 3)")
    parser.add_argument("--output", type=Path, help="also write the report to this Markdown file")
    return parser.parse_args(argv)


class StaticRunner:
    """The graph with its batch axis fixed: one runner per batch size met."""

    def __init__(self, onnx_path: Path, precision: str, threads: int):
        self.arguments = (onnx_path, precision, threads)
        self.runners = {}

    def run(self, batch: np.ndarray):
        if batch.shape[0] not in self.runners:
            self.runners[batch.shape[0]] = OpenVINORunner(*self.arguments, batch=batch.shape[0])
        return self.runners[batch.shape[0]].run(batch)


def throughput_clip(compiled, clip: np.ndarray) -> list:
    """Every frame of ``clip`` through an asynchronous queue of two requests; outputs in frame order."""
    import openvino as ov

    queue = ov.AsyncInferQueue(compiled, 2)
    results = [None] * clip.shape[0]
    queue.set_callback(lambda request, index: results.__setitem__(index, openvino_output(compiled, request)))
    for index in range(clip.shape[0]):
        queue.start_async({0: clip[index:index + 1]}, index)
    queue.wait_all()
    return results


def in_batches(runner, clip: np.ndarray, batch: int) -> list:
    return [runner.run(clip[start:start + batch]) for start in range(0, clip.shape[0], batch)]


def largest_difference(first: list, second: list) -> float:
    """The largest absolute difference between two runs' raw outputs (logits and every gate), frame by frame
    whatever the batches were."""

    def stacked(outputs):
        return [np.concatenate(parts) for parts in zip(*([output.logits, *output.attention] for output in outputs))]

    return max(float(np.abs(x - y).max()) for x, y in zip(stacked(first), stacked(second)))


def measure(args) -> str:
    started = datetime.now(timezone.utc)
    card = read_model_card(BUNDLED_WEIGHTS)
    onnx_path = verified_onnx_path(BUNDLED_WEIGHTS, card)
    precision = resolve_precision("openvino", args.precision)
    size = tuple(card.input_size)
    frame, source = benchmark_frame()
    one = to_network_input(frame[None].astype(np.float32), size)
    clip = to_network_input(cine_clip(frame, args.clip_frames).astype(np.float32), size)
    batch = CPU_FRAMES_PER_FORWARD
    several = clip[:batch]

    runner = OpenVINORunner(onnx_path, precision, args.threads)
    static = StaticRunner(onnx_path, precision, args.threads)
    throughput = compile_openvino(onnx_path, precision, args.threads, "THROUGHPUT", batch=1)
    passes = {}  # row name -> (call, the runner's row it is compared with)
    for frames in (one, several):
        own = f"runner (dynamic batch, LATENCY), batch {frames.shape[0]}"
        passes[own] = (lambda frames=frames: [runner.run(frames)], own)
        passes[f"static batch shape, LATENCY, batch {frames.shape[0]}"] = (
            lambda frames=frames: [static.run(frames)], own)
    own = f"clip: runner, batches of {batch}"
    clips = {
        own: (lambda: in_batches(runner, clip, batch), own),
        f"clip: static batch shape, batches of {batch}": (lambda: in_batches(static, clip, batch), own),
        "clip: THROUGHPUT hint, 2 streams, 1 frame per request": (lambda: throughput_clip(throughput, clip), own),
    }
    outputs = {name: call() for name, (call, _) in {**passes, **clips}.items()}  # also compiles every shape
    pass_times = time_interleaved({name: call for name, (call, _) in passes.items()}, args.runs, 1)
    clip_times = time_interleaved({name: call for name, (call, _) in clips.items()}, args.clip_runs, 0)

    lines = [
        "# OpenVINO compile settings",
        "",
        f"- Date (UTC): {started:%Y-%m-%d %H:%M} (start)",
        f"- CPU flags: {cpu_flags()}; precision: {precision}; {args.threads} inference threads",
        f"- Input: {source}; medians of {args.runs} passes and {args.clip_runs} clips of {args.clip_frames} frames",
        "",
        "| setting | network time | largest output difference to the runner |",
        "|---|---|---|",
    ]
    for rows, times, unit in ((passes, pass_times, "ms"), (clips, clip_times, "s")):
        for name, (_, own) in rows.items():
            value = times[name].median * (1000 if unit == "ms" else 1)
            difference = largest_difference(outputs[own], outputs[name])
            lines.append(f"| {name} | {value:.{1 if unit == 'ms' else 2}f} {unit} | {difference:.2g} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    report = measure(args)
    print(report, end="")
    if args.output:
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
