"""End-to-end timings of our pipeline, one task per process: PNG file, cine clip, Slicer Logic.

Every task runs on the CPU with the weights file it is given (the bundled
weights, or untrained weights saved by ``benchmark.py``: speed does not depend
on the weight values).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from BreastUSSegmentLib.imageio import read_image
from BreastUSSegmentLib.inference import LesionSegmenter
from bench_settings import FRAME_SIZE, Settings
from bench_timing import peak_rss_mib, time_calls

PIPELINE_TASKS = ("png", "cine", "slicer")
MODULE_DIR = Path(__file__).resolve().parent.parent / "BreastUSSegment"
SAMPLES_DIR = MODULE_DIR / "Resources" / "Samples"


def sample_png() -> Path | None:
    """The first bundled sample frame, if the samples are installed."""
    if not SAMPLES_DIR.is_dir():
        return None
    frames = sorted(path for path in SAMPLES_DIR.glob("*.png") if not path.stem.endswith("_mask"))
    return frames[0] if frames else None


def synthetic_frame(size: tuple[int, int] = FRAME_SIZE, seed: int = 0) -> np.ndarray:
    """A uint8 ultrasound-like frame: speckle, depth attenuation and a dark oval "lesion"."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float32)
    tissue = 120.0 * (1.0 - 0.5 * rows / size[0])
    inside = ((rows - 0.45 * size[0]) / (0.15 * size[0])) ** 2 + ((cols - 0.5 * size[1]) / (0.22 * size[1])) ** 2 < 1.0
    tissue[inside] = 25.0
    speckle = rng.rayleigh(scale=0.8, size=size).astype(np.float32)
    return np.clip(tissue * speckle, 0, 255).astype(np.uint8)


def benchmark_frame() -> tuple[np.ndarray, str]:
    """A 500x500 uint8 frame: the first sample resized to that size, else a synthetic one."""
    sample = sample_png()
    if sample is not None:
        with Image.open(sample) as image:
            resized = image.convert("L").resize((FRAME_SIZE[1], FRAME_SIZE[0]), Image.BILINEAR)
            return np.asarray(resized), f"sample {sample.name} resized to {FRAME_SIZE[0]}x{FRAME_SIZE[1]}"
    return synthetic_frame(), f"synthetic {FRAME_SIZE[0]}x{FRAME_SIZE[1]} frame"


def cine_clip(frame: np.ndarray, count: int) -> np.ndarray:
    """``count`` uint8 frames: the frame drifting sideways with fresh speckle, like a probe sweep."""
    rng = np.random.default_rng(1)
    clip = np.empty((count, *frame.shape), dtype=np.uint8)
    for index in range(count):
        noise = rng.integers(-8, 9, size=frame.shape)
        clip[index] = np.clip(np.roll(frame, index % 25, axis=1).astype(np.int16) + noise, 0, 255)
    return clip


def run_png(weights: Path, settings: Settings) -> dict:
    """Weights loading once, then PNG file to processed mask and attention maps (median over runs)."""
    frame, source = benchmark_frame()
    start = time.perf_counter()
    segmenter = LesionSegmenter.from_weights(weights, device="cpu")
    load_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "frame.png"
        Image.fromarray(frame).save(path)
        outputs = {}

        def read_and_segment():
            outputs.clear()
            loaded = read_image(path)
            outputs["result"] = segmenter.segment(loaded.pixels, color=loaded.color)

        timing = time_calls(read_and_segment, settings.png_runs, warmup=1)
    result = outputs["result"]
    if result.processed_mask.shape != (1, *FRAME_SIZE) or result.combined_attention.shape != (1, *FRAME_SIZE):
        raise RuntimeError(f"unexpected pipeline output shapes {result.processed_mask.shape}, "
                           f"{result.combined_attention.shape}")
    return {
        "timing": timing.to_dict(),
        "load_seconds": load_seconds,
        "source": source,
        "mask_fraction": float(result.processed_mask.mean()),
    }


def run_cine(weights: Path, settings: Settings) -> dict:
    """A uint8 cine clip held in memory through ``LesionSegmenter.segment`` (median over runs)."""
    frame, source = benchmark_frame()
    clip = cine_clip(frame, settings.cine_frames)
    segmenter = LesionSegmenter.from_weights(weights, device="cpu")
    segmenter.segment(clip[:1])  # warm-up on one frame
    outputs = {}

    def segment_clip():
        outputs.clear()  # free the previous run's result first, so that peak memory counts one result
        outputs["result"] = segmenter.segment(clip)

    timing = time_calls(segment_clip, settings.cine_runs, warmup=0)
    result = outputs["result"]
    if result.processed_mask.shape != clip.shape:
        raise RuntimeError(f"cine output shape {result.processed_mask.shape} differs from the clip {clip.shape}")
    return {"timing": timing.to_dict(), "frames": int(clip.shape[0]), "source": f"{source}, drifting"}


def import_logic():
    """The Slicer module's Logic class, or the reason it cannot be imported."""
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    try:
        from BreastUSSegment import BreastUSSegmentLogic
    except Exception as error:  # the module may be missing or broken; report why
        return None, f"cannot import BreastUSSegment.BreastUSSegmentLogic: {type(error).__name__}: {error}"
    return BreastUSSegmentLogic, None


def run_slicer(weights: Path, settings: Settings) -> dict:
    """Frame volume node to segmentation node with the module's Logic on a slicer-core scene."""
    logic_class, reason = import_logic()
    if logic_class is None:
        return {"unavailable": reason}
    import slicer
    from BreastUSSegment import SegmentationOptions

    frame, source = benchmark_frame()
    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "benchmark frame")
    slicer.util.updateVolumeFromArray(volume, frame[np.newaxis])
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "benchmark lesion")
    logic = logic_class()
    options = SegmentationOptions(weightsPath=str(weights), device="cpu")

    def segment_node():
        logic.segment(volume, segmentation, options)

    segment_node()  # warm-up; also loads and caches the model
    timing = time_calls(segment_node, settings.slicer_runs, warmup=0)
    if segmentation.GetSegmentation().GetNumberOfSegments() < 1:
        raise RuntimeError("the Logic wrote no segment into the segmentation node")
    return {"timing": timing.to_dict(), "source": source}


def measure_pipeline(task: str, weights: Path, settings: Settings, threads: int) -> dict:
    torch.set_num_threads(threads)
    runners = {"png": run_png, "cine": run_cine, "slicer": run_slicer}
    if task not in runners:
        raise ValueError(f"unknown pipeline task {task!r}; choose one of {', '.join(PIPELINE_TASKS)}")
    result = runners[task](Path(weights), settings)
    result.update(task=task, threads=torch.get_num_threads(), peak_rss_mib=peak_rss_mib())
    return result
