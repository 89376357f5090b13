"""The network backends side by side in one process: every backend and precision that is installed, timed
round-robin (so a busy machine slows each alike), plus a profile of what the pipeline does after the network.

Rows: the forward pass at batch 1 (the runner alone), a 500x500 PNG file to processed mask and attention maps,
and a cine clip of 500x500 frames; medians. The largest logit difference to torch-fp32 on the benchmark
frame is reported beside them.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from BreastUSSegmentLib.imageio import read_image
from BreastUSSegmentLib.inference import (
    LesionSegmenter, Probabilities, _mean_of_gates, _OutputFrames, _resized, sigmoid,
)
from BreastUSSegmentLib.modelcard import read_model_card
from BreastUSSegmentLib.postprocessing import postprocess_frames
from BreastUSSegmentLib.preprocessing import to_grayscale_frames, to_network_input
from BreastUSSegmentLib.runtime import BackendChoice, choose_backend, cpu_has_native_bf16, runtime_available
from BreastUSSegmentLib.visualize import overlay_figure
from bench_pipeline_worker import benchmark_frame, cine_clip
from bench_settings import Settings
from bench_timing import time_interleaved

CHOICES = (BackendChoice("torch", "fp32"), BackendChoice("torch", "bf16"), BackendChoice("onnxruntime", "fp32"),
           BackendChoice("openvino", "fp32"), BackendChoice("openvino", "bf16"))


def cpu_flags() -> str:
    """The CPU's bf16 and AMX flags as Linux reports them ("unknown" elsewhere)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    wanted = ("avx512_bf16", "amx_bf16", "amx_tile", "amx_int8", "avx512f")
    return ", ".join(flag for flag in wanted if flag in flags) or "none of avx512f, avx512_bf16, amx"


def measure_backends(weights: Path, settings: Settings, threads: int) -> dict:
    """Time every installed backend and precision, interleaved; profile the steps after the network."""
    segmenters, skipped = {}, {}
    native_bf16 = cpu_has_native_bf16()
    has_graph = bool(read_model_card(weights).onnx)
    for choice in CHOICES:
        if choice.backend != "torch" and not has_graph:
            skipped[choice.key] = "the model card lists no ONNX graph"
        elif not runtime_available(choice.backend):
            skipped[choice.key] = f"{choice.backend} not installed"
        elif choice.precision == "bf16" and not native_bf16:
            skipped[choice.key] = "no native bf16 on this CPU"
        else:
            segmenters[choice.key] = LesionSegmenter.from_weights(
                weights, "cpu", backend=choice.backend, precision=choice.precision, threads=threads)
    if "torch-fp32" in segmenters:
        import torch

        torch.set_num_threads(threads)
    any_segmenter = next(iter(segmenters.values()))
    size = any_segmenter.input_size
    frame, source = benchmark_frame()
    clip = cine_clip(frame, settings.cine_frames)
    batch = to_network_input(to_grayscale_frames(frame), size)
    logits = {key: segmenter.runner.run(batch).logits for key, segmenter in segmenters.items()}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "frame.png"
        Image.fromarray(frame).save(path)

        def png(segmenter):
            loaded = read_image(path)
            return segmenter.segment(loaded.pixels, color=loaded.color)

        forward = time_interleaved({key: (lambda s=s: s.runner.run(batch)) for key, s in segmenters.items()},
                                   settings.latency_runs, settings.warmup)
        frames = time_interleaved({key: (lambda s=s: png(s)) for key, s in segmenters.items()},
                                  settings.png_runs, 1)
    clips = time_interleaved({key: (lambda s=s: s.segment(clip)) for key, s in segmenters.items()},
                             settings.cine_runs, 0)
    reference = logits.get("torch-fp32")
    rows = {}
    for key in segmenters:
        rows[key] = {
            "forward_ms": 1000 * forward[key].median, "png_ms": 1000 * frames[key].median,
            "clip_s": clips[key].median, "clip_frames": int(clip.shape[0]),
            "max_logit_difference": None if reference is None else float(np.abs(logits[key] - reference).max()),
        }
    auto = choose_backend("auto", device="cpu", card=any_segmenter.card).key
    auto_fp32 = choose_backend("auto", "fp32", device="cpu", card=any_segmenter.card).key
    return {"rows": rows, "skipped": skipped, "auto": auto, "auto_fp32": auto_fp32, "source": source,
            "cpu_flags": cpu_flags(),
            "native_bf16": native_bf16, "runs": {"forward": settings.latency_runs, "png": settings.png_runs,
                                                 "clip": settings.cine_runs},
            "profile": profile_steps(segmenters[auto] if auto in segmenters else any_segmenter, frame,
                                     settings.png_runs)}


def profile_steps(segmenter: LesionSegmenter, frame: np.ndarray, runs: int) -> dict:
    """Median milliseconds of each step of one PNG frame's pipeline, as :meth:`LesionSegmenter.segment` runs them,
    and of the command line's figure."""
    options = segmenter.postprocessing
    steps = {name: [] for name in ("read the PNG file", "preprocess (grey, scale, resize)", "network", "sigmoid",
                                   "resize the probability to the frame", "attention map (mean of the gates)",
                                   "post-processing", "overlay figure (command line only)")}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "frame.png"
        Image.fromarray(frame).save(path)
        for _ in range(runs + 1):
            clock = [time.perf_counter()]

            def lap():
                clock.append(time.perf_counter())

            loaded = read_image(path)
            lap()
            batch = to_network_input(to_grayscale_frames(loaded.pixels), segmenter.input_size)
            lap()
            raw = segmenter.runner.run(batch)
            lap()
            output = Probabilities(sigmoid(raw.logits), raw.attention, None)
            lap()
            outputs = _OutputFrames(1, frame.shape[:2])
            np.clip(_resized(output.probability, outputs.size), 0.0, 1.0, out=outputs.probability)
            lap()
            np.clip(_mean_of_gates(output.attention, outputs.size), 0.0, 1.0, out=outputs.attention)
            lap()
            mask = postprocess_frames(outputs.probability, options, None)
            lap()
            overlay_figure(frame, mask[0], outputs.attention[0])
            lap()
            for name, start, stop in zip(steps, clock, clock[1:]):
                steps[name].append(1000 * (stop - start))
    return {name: float(np.median(values[1:])) for name, values in steps.items()}


def backends_section(result: dict) -> str:
    """The Markdown section of the backend rows and the profile."""
    if "error" in result:
        return f"## Backends\n\nnot measured: {result['error']}\n"
    rows = result["rows"]
    lines = [
        "## Backends (one process, interleaved round-robin)",
        "",
        f"CPU flags: {result['cpu_flags']}; native bf16: {'yes' if result['native_bf16'] else 'no'}; "
        f"backend=\"auto\" picks **{result['auto']}** here. Frame: {result['source']}. Medians of "
        f"{result['runs']['forward']} forward passes, {result['runs']['png']} PNG frames, {result['runs']['clip']} clips.",
        "",
        "| backend | forward, batch 1 | PNG frame to mask and attention | clip | max logit difference to torch-fp32 |",
        "|---|---|---|---|---|",
    ]
    for key, row in rows.items():
        difference = "n/a" if row["max_logit_difference"] is None else f"{row['max_logit_difference']:.3f}"
        lines.append(f"| {key} | {row['forward_ms']:.1f} ms | {row['png_ms']:.1f} ms | "
                     f"{row['clip_s']:.2f} s ({row['clip_frames']} frames) | {difference} |")
    for key, reason in result["skipped"].items():
        lines.append(f"| {key} | {reason} | | | |")
    lines += ["", f"Steps of one frame with {result['auto']} (medians):", "", "| step | time |", "|---|---|"]
    lines += [f"| {name} | {value:.1f} ms |" for name, value in result["profile"].items()]
    lines += ["", "Targets of the backends issue, read off these rows:", ""] + [f"- {line}" for line in targets(result)]
    return "\n".join(lines) + "\n"


# The speed targets of the backends issue: on a CPU with AMX, the default path's forward pass at least this many
# times faster than PyTorch bf16, a 500x500 PNG frame within this many ms, a 100-frame clip within this many s.
AMX_FORWARD_SPEEDUP, AMX_FRAME_MS, AMX_CLIP_S_PER_100_FRAMES = 3.0, 20.0, 2.0


def targets(result: dict) -> list:
    """One line per speed target: met or missed with the numbers, or why it does not apply here."""
    rows, auto = result["rows"], result["auto"]

    def verdict(met: bool) -> str:
        return "met" if met else "missed"

    lines = []
    if "amx_bf16" not in result["cpu_flags"]:
        lines.append("AMX targets (forward, frame, clip): not applicable, this CPU has no AMX")
    elif auto not in rows or "torch-bf16" not in rows:
        lines.append(f"AMX targets: not measured ({auto} or torch-bf16 missing from the rows)")
    else:
        row, speedup = rows[auto], rows["torch-bf16"]["forward_ms"] / rows[auto]["forward_ms"]
        clip_limit = AMX_CLIP_S_PER_100_FRAMES * row["clip_frames"] / 100
        lines += [
            f"forward of {auto} {speedup:.1f}x faster than torch-bf16 (at least {AMX_FORWARD_SPEEDUP:g}x): "
            f"{verdict(speedup >= AMX_FORWARD_SPEEDUP)}",
            f"PNG frame {row['png_ms']:.1f} ms (at most {AMX_FRAME_MS:g} ms): {verdict(row['png_ms'] <= AMX_FRAME_MS)}",
            f"clip {row['clip_s']:.2f} s for {row['clip_frames']} frames (at most {clip_limit:g} s): "
            f"{verdict(row['clip_s'] <= clip_limit)}",
        ]
    fp32 = result["auto_fp32"]
    if fp32 == "torch-fp32" or fp32 not in rows or "torch-fp32" not in rows:
        lines.append(f"forced fp32 ({fp32}) at least as fast as torch-fp32: not measured")
    else:
        faster = [name for name in ("forward_ms", "png_ms", "clip_s")
                  if rows[fp32][name] <= rows["torch-fp32"][name]]
        lines.append(f"forced fp32 ({fp32}) at least as fast as torch-fp32 on forward, frame and clip: "
                     f"{verdict(len(faster) == 3)} ({len(faster)} of 3 rows)")
    return lines
