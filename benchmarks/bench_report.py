"""Turns the workers' measurements into the Markdown report."""

from __future__ import annotations

from bench_models import MODELS, OURS
from bench_settings import FRAME_SIZE

DASH = "–"
SINGLE_FRAME_TARGET_MS = 250.0
CINE_TARGET_S = 15.0
CINE_TARGET_FRAMES = 100
SPEEDUP_TARGET = 3.0
SPEEDUP_REFERENCE = "monai-attention-unet-64"


def _row(cells) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(row) for row in rows)]


def _mib(value) -> str:
    return DASH if value is None else f"{value:.0f}"


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return DASH
    return f"{value / reference:.2f}"


def _problem(result: dict) -> str | None:
    """Why a model or task has no numbers (not installed, failed, unavailable), or None."""
    return result.get("unavailable") or result.get("error")


def network_table(results: dict[str, dict], settings) -> list[str]:
    """The CPU table: one row per model, ratios relative to ours."""
    batch = settings.cpu_batch
    header = [
        "Model", "Parameters", "GFLOPs/frame", "Weights (MiB)", "Latency b1 median (ms)", "Latency b1 p90 (ms)",
        "Latency ratio", f"Throughput b{batch} (frames/s)", "Throughput ratio", "RSS after imports (MiB)",
        "Peak RSS b1 (MiB)", f"Peak RSS b{batch} (MiB)",
    ]
    ours = results.get(OURS, {})
    ours_ok = _problem(ours) is None and "cpu" in ours
    ours_latency = ours["cpu"]["latency"]["median_s"] if ours_ok else None
    ours_fps = ours["cpu"]["throughput_fps"] if ours_ok else None
    rows = []
    for spec in MODELS:
        result = results.get(spec.key)
        if result is None:
            continue
        problem = _problem(result)
        if problem:
            rows.append([spec.label, problem, *[DASH] * (len(header) - 2)])
            continue
        cpu = result["cpu"]
        latency = cpu["latency"]
        # The ratios divide by the values shown; for ours they are 1.00 by construction.
        rows.append([
            spec.label,
            f"{result['parameters']:,}",
            f"{result['flops'] / 1e9:.2f}",
            f"{result['weights_bytes'] / 2**20:.1f}",
            f"{latency['median_s'] * 1e3:.1f}",
            f"{latency['p90_s'] * 1e3:.1f}",
            _ratio(latency["median_s"], ours_latency),
            f"{cpu['throughput_fps']:.1f}",
            _ratio(cpu["throughput_fps"], ours_fps),
            _mib(result["base_rss_mib"]),
            _mib(cpu["peak_rss_batch1_mib"]),
            _mib(cpu["peak_rss_batch_mib"]),
        ])
    return _table(header, rows)


def gpu_section(results: dict[str, dict], settings) -> list[str]:
    """The GPU table in fp32 and autocast, or one line saying why it was skipped."""
    measured = {key: r["gpu"] for key, r in results.items() if _problem(r) is None and "precisions" in r.get("gpu", {})}
    if not measured:
        reasons = {r["gpu"]["skipped"] for r in results.values() if "skipped" in r.get("gpu", {})}
        return [f"Skipped: {'; '.join(sorted(reasons)) or 'no model was measured'}."]
    ours = measured.get(OURS, {}).get("precisions", {})
    header = [
        "Model", "GPU", "Precision", "Latency b1 median (ms)", "Latency b1 p90 (ms)", "Latency ratio",
        f"Throughput b{settings.gpu_batch} (frames/s)", "Throughput ratio", "Peak GPU memory (MiB)",
    ]
    rows = []
    for spec in MODELS:
        if spec.key not in measured:
            continue
        gpu = measured[spec.key]
        for precision, values in gpu["precisions"].items():
            reference = ours.get(precision)
            rows.append([
                spec.label, gpu["device_name"], precision,
                f"{values['latency']['median_s'] * 1e3:.2f}",
                f"{values['latency']['p90_s'] * 1e3:.2f}",
                _ratio(values["latency"]["median_s"], reference["latency"]["median_s"] if reference else None),
                f"{values['throughput_fps']:.1f}",
                _ratio(values["throughput_fps"], reference["throughput_fps"] if reference else None),
                _mib(values["peak_gpu_mib"]),
            ])
    return _table(header, rows)


def pipeline_table(pipeline: dict[str, dict], settings) -> list[str]:
    """End-to-end rows for our pipeline on the CPU."""
    header = ["Task", "Median", "p90", "Runs", "Per frame (ms)", "Peak RSS (MiB)", "Input"]
    size = f"{FRAME_SIZE[0]}x{FRAME_SIZE[1]}"
    rows = []
    png = pipeline.get("png", {})
    if _problem(png) is None and png:
        rows.append(["Load weights (`LesionSegmenter.from_weights`, sha256 check)", f"{png['load_seconds'] * 1e3:.0f} ms",
                     DASH, 1, DASH, DASH, "safetensors + model card"])
    tasks = [
        ("png", f"PNG file {size} to processed mask + attention maps (`read_image` + `segment`)", 1),
        ("cine", f"Cine clip {settings.cine_frames}x{size} uint8 in memory (`segment`)", settings.cine_frames),
        ("slicer", f"Slicer Logic: {size} frame volume node to segmentation node (`BreastUSSegmentLogic.segment`)", 1),
    ]
    for key, title, frames in tasks:
        result = pipeline.get(key)
        if result is None:
            continue
        problem = _problem(result)
        if problem:
            rows.append([title, f"not available: {problem}", *[DASH] * (len(header) - 2)])
            continue
        timing = result["timing"]
        unit, scale = ("s", 1.0) if key == "cine" else ("ms", 1e3)
        rows.append([
            title,
            f"{timing['median_s'] * scale:.{2 if unit == 's' else 0}f} {unit}",
            f"{timing['p90_s'] * scale:.{2 if unit == 's' else 0}f} {unit}",
            timing["runs"],
            f"{timing['median_s'] * 1e3 / frames:.0f}",
            _mib(result["peak_rss_mib"]),
            result["source"],
        ])
    return _table(header, rows)


def targets_table(results: dict[str, dict], pipeline: dict[str, dict], settings) -> list[str]:
    """The issue's speed targets and whether this run met them."""
    rows = []
    png = pipeline.get("png", {})
    if png and _problem(png) is None:
        value = png["timing"]["median_s"] * 1e3
        rows.append([f"End-to-end single frame <= {SINGLE_FRAME_TARGET_MS:.0f} ms (median)", f"{value:.0f} ms",
                     _yes_no(value <= SINGLE_FRAME_TARGET_MS)])
    cine = pipeline.get("cine", {})
    if cine and _problem(cine) is None:
        value = cine["timing"]["median_s"]
        if cine["frames"] == CINE_TARGET_FRAMES:
            rows.append([f"{CINE_TARGET_FRAMES}-frame cine <= {CINE_TARGET_S:.0f} s", f"{value:.2f} s", _yes_no(value <= CINE_TARGET_S)])
        else:
            rows.append([f"{CINE_TARGET_FRAMES}-frame cine <= {CINE_TARGET_S:.0f} s", f"only {cine['frames']} frames in this run", DASH])
    ours, reference = results.get(OURS, {}), results.get(SPEEDUP_REFERENCE, {})
    if ours and reference and _problem(ours) is None and _problem(reference) is None:
        ratio = reference["cpu"]["latency"]["median_s"] / ours["cpu"]["latency"]["median_s"]
        rows.append([f"Ours >= {SPEEDUP_TARGET:.0f}x faster than MONAI AttentionUnet (64..1024), CPU batch 1",
                     f"{ratio:.2f}x", _yes_no(ratio >= SPEEDUP_TARGET)])
    return _table(["Target", "Measured", "Met"], rows) if rows else ["No target could be checked in this run."]


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def build_report(environment: dict, results: dict[str, dict], pipeline: dict[str, dict], settings) -> str:
    """The whole Markdown report."""
    lines = ["# SlicerBreastUS benchmarks", ""]
    lines += [f"- {name}: {value}" for name, value in environment.items()]
    if settings.quick:
        lines.append("- **Quick mode**: one run each and tiny batches; these numbers only show that the script works.")
    lines += ["", f"## Networks on the CPU (input 1x{settings.input_size[0]}x{settings.input_size[1]})", ""]
    lines += network_table(results, settings)
    lines += ["", "Timings: all networks in one process, timed round-robin. Memory, size and FLOPs: each network in "
              "its own process. Latency ratio: model median / ours (above 1 means slower than ours). "
              "Throughput ratio: model frames/s / ours (below 1 means slower than ours).", ""]
    lines += [f"## Networks on the GPU (fp32 and autocast, batch 1 and {settings.gpu_batch})", ""]
    lines += gpu_section(results, settings)
    lines += ["", "## Our pipeline end to end (CPU)", ""]
    lines += pipeline_table(pipeline, settings)
    lines += ["", "## Targets", ""]
    lines += targets_table(results, pipeline, settings)
    notes = [f"- {r['model']}: {r['source']}" for r in results.values() if "source" in r]
    if notes:
        lines += ["", "## Architectures", "", *notes]
    return "\n".join(lines) + "\n"
