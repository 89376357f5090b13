"""Before/after timing of the inference pipeline: the working tree against an earlier git revision.

Usage::

    .venv/bin/python benchmarks/compare_revisions.py --baseline <git revision> [--runs 5] [--frames 100]
        [--weights W] [--backend auto|torch|openvino|onnxruntime] [--precision auto|fp32|bf16] [--replay-network]

The core package as it was at ``--baseline`` is imported under another name
beside the current one. Both read the same 500x500 PNG frame and segment it, and
segment the same cine clip, with the same weights and backend, alternating run by
run so that a busy machine slows both alike. The script also checks that both give
the same outputs, on the clip and on the frame with a box prompt. ``--replay-network`` runs the network once
per batch size and replays its output, so that the times are those of everything around the network
(reading, preprocessing, resizing, post-processing, attention map).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

BENCHMARK_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCHMARK_DIR.parent
PACKAGE = "BreastUSSegment/BreastUSSegmentLib"
BASELINE_NAME = "baseline_breastus_lib"
if str(BENCHMARK_DIR) not in sys.path:
    sys.path.insert(0, str(BENCHMARK_DIR))

from BreastUSSegmentLib import BUNDLED_WEIGHTS  # noqa: E402
from BreastUSSegmentLib.imageio import read_image  # noqa: E402
from BreastUSSegmentLib.inference import LesionSegmenter  # noqa: E402
from bench_pipeline_worker import benchmark_frame, cine_clip  # noqa: E402

BOX = (100, 80, 300, 260)  # a box prompt on the 500x500 benchmark frame, around its lesion (x0, y0, x1, y1)


def git(*args: str) -> str:
    completed = subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {completed.stderr.strip()}")
    return completed.stdout


def import_baseline(revision: str, folder: Path):
    """The core package's ``inference`` module as of ``revision``, imported as a separate package.

    Files that did not exist at ``revision`` are taken from the working tree.
    """
    target = folder / BASELINE_NAME
    shutil.copytree(REPO_DIR / PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__"))
    for name in git("ls-tree", "--name-only", revision, f"{PACKAGE}/").split():
        if name.endswith(".py"):
            (target / Path(name).name).write_text(git("show", f"{revision}:{name}"))
    sys.path.insert(0, str(folder))
    return importlib.import_module(f"{BASELINE_NAME}.inference")


class ReplayedNetwork:
    """A runner that runs the network once per batch size and then hands back that output."""

    def __init__(self, runner):
        self.runner = runner
        self.outputs = {}

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def run(self, batch):
        if batch.shape[0] not in self.outputs:
            self.outputs[batch.shape[0]] = self.runner.run(batch)
        return self.outputs[batch.shape[0]]


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare with (e.g. a commit id)")
    parser.add_argument("--runs", type=int, default=5, help="alternating runs per version (default 5)")
    parser.add_argument("--frames", type=int, default=100, help="cine clip length (default 100)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="network threads (default: all CPUs)")
    parser.add_argument("--weights", type=Path, default=BUNDLED_WEIGHTS, help="model weights (default: the bundled)")
    parser.add_argument("--backend", default="auto", help="network backend of both versions (default auto)")
    parser.add_argument("--precision", default="auto", help="network precision of both versions (default auto)")
    parser.add_argument("--replay-network", action="store_true",
                        help="run the network once per batch size and replay it: time what surrounds it")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.frames < 1:
        parser.error("--runs and --frames must be >= 1")

    with tempfile.TemporaryDirectory(prefix="breastus-compare-") as folder:
        baseline = import_baseline(args.baseline, Path(folder))
        build = {f"baseline {args.baseline}": baseline.LesionSegmenter, "working tree": LesionSegmenter}
        versions = {name: kind.from_weights(args.weights, "cpu", backend=args.backend, precision=args.precision,
                                            threads=args.threads) for name, kind in build.items()}
        if args.replay_network:
            for segmenter in versions.values():
                segmenter.runner = ReplayedNetwork(segmenter.runner)
        frame, source = benchmark_frame()
        png = Path(folder) / "frame.png"
        Image.fromarray(frame).save(png)
        clip = cine_clip(frame, args.frames)

        def segment_png(segmenter):
            loaded = read_image(png)
            return segmenter.segment(loaded.pixels, color=loaded.color)

        outputs = {name: segmenter.segment(clip) for name, segmenter in versions.items()}  # warm-up
        for segmenter in versions.values():
            segment_png(segmenter)  # warm-up of one frame (a batch of 1: with --replay-network, its only network run)
        boxed = {name: segmenter.segment(frame, box=BOX) for name, segmenter in versions.items()}
        frame_times = {name: [] for name in versions}
        clip_times = {name: [] for name in versions}
        for run in range(args.runs):
            order = list(versions) if run % 2 == 0 else list(reversed(versions))
            for name in order:
                frame_times[name].append(timed(lambda: segment_png(versions[name])))
                clip_times[name].append(timed(lambda: outputs.__setitem__(name, versions[name].segment(clip))))

    network = "replayed (times exclude it)" if args.replay_network else "run every time"
    print(f"backend: {versions['working tree'].runner.backend}-{versions['working tree'].precision}, "
          f"{args.threads} threads; network {network}; frame: {source}; clip: {args.frames} frames; runs: {args.runs}")
    for name in versions:
        print(f"{name:>24}: PNG frame median {np.median(frame_times[name]) * 1e3:7.1f} ms, "
              f"clip median {np.median(clip_times[name]):6.2f} s")
    first, second = (outputs[name] for name in versions)
    probability_diff = float(np.abs(first.probability - second.probability).max())
    attention_diff = float(np.abs(first.combined_attention - second.combined_attention).max())
    masks_equal = bool(np.array_equal(first.processed_mask, second.processed_mask))
    print(f"clip: largest probability difference {probability_diff:.2e}, attention {attention_diff:.2e}; "
          f"processed masks identical: {masks_equal}")
    first, second = (boxed[name] for name in versions)
    print(f"frame with the box {BOX}: largest probability difference "
          f"{float(np.abs(first.probability - second.probability).max()):.2e}; processed masks identical: "
          f"{bool(np.array_equal(first.processed_mask, second.processed_mask))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
