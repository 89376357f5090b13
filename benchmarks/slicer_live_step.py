"""Time per frame of the Slicer module's live step: the newest frame read from the volume node, segmented with the
bundled model and written into the Lesion segment and the attention volume in place.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/slicer_live_step.py [--frames 100] [--size 480 640] [--temporal 2/2]

Runs on slicer-core's MRML on the CPU. Each frame is delivered as OpenIGTLinkIF delivers an IMAGE message (new
image data set on the volume node) and segmented at once; the first ``--warmup`` frames are not counted. Prints
the median and 95th percentile of the whole step and of its core part (the network and post-processing), in ms,
and the load average before and after.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "BreastUSSegment"))
sys.path.insert(0, str(ROOT / "Testing"))

import slicer  # noqa: E402
import vtk  # noqa: E402
import vtk.util.numpy_support  # noqa: E402
from slicer_module import load_module  # noqa: E402


def send(volumeNode, image):
    """New image data on the node, as vtkMRMLIGTLConnectorNode sets it for each IMAGE message."""
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(image.shape[1], image.shape[0], 1)
    imageData.GetPointData().SetScalars(vtk.util.numpy_support.numpy_to_vtk(image.ravel(), deep=True))
    wasModifying = volumeNode.StartModify()
    volumeNode.SetAndObserveImageData(imageData)
    volumeNode.Modified()
    volumeNode.EndModify(wasModifying)


def sweep(index, rows, columns, rng):
    """A speckled frame with a dark oval that drifts across it."""
    image = rng.integers(60, 140, (rows, columns)).astype(np.uint8)
    y, x = np.ogrid[:rows, :columns]
    centre = (rows // 2, (columns // 4 + 4 * index) % columns)
    image[((y - centre[0]) / (rows / 8)) ** 2 + ((x - centre[1]) / (columns / 10)) ** 2 < 1] //= 4
    return image


def percentiles(seconds):
    values = 1000 * np.asarray(seconds)
    return f"median {np.median(values):.1f} ms, p95 {np.percentile(values, 95):.1f} ms"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100, help="frames counted (default 100)")
    parser.add_argument("--warmup", type=int, default=5, help="frames before them, not counted (default 5)")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("ROWS", "COLUMNS"))
    parser.add_argument("--temporal", default="off", help="the temporal rule K/N, or off (default)")
    args = parser.parse_args()

    from BreastUSSegmentLib.temporal import TemporalRule

    module = load_module()
    scene = slicer.vtkMRMLScene()
    rows, columns = args.size
    rng = np.random.default_rng(0)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Image_Reference")
    send(volume, sweep(0, rows, columns, rng))
    loadBefore = os.getloadavg()
    session = module.BreastUSSegmentLogic().startLive(
        volume, options=module.SegmentationOptions(device="cpu"), temporal=TemporalRule.parse(args.temporal))
    core = []
    stepCore = session.stepper.step

    def timedCore(frame):
        started = time.perf_counter()
        result = stepCore(frame)
        core.append(time.perf_counter() - started)
        return result

    session.stepper.step = timedCore
    steps = []
    nodeCount = scene.GetNumberOfNodes()
    for index in range(1, args.warmup + args.frames + 1):
        send(volume, sweep(index, rows, columns, rng))
        steps.append(session.lastStep.seconds)
    session.stop()
    assert scene.GetNumberOfNodes() == nodeCount, "the live step added nodes"
    counted = slice(args.warmup, None)
    runner = session.stepper.segmenter.runner
    print(f"live step, bundled model, CPU, {runner.backend} {runner.precision}, {rows}x{columns} frames, "
          f"temporal {args.temporal}, {args.frames} frames after {args.warmup} warm-up, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"  whole step (read, segment, write): {percentiles(steps[counted])}")
    print(f"  core part (network, post-processing): {percentiles(core[counted])}")
    print(f"  scene part (read and write): {percentiles(np.subtract(steps, core)[counted])}")
    print(f"  load average before {loadBefore[0]:.2f}, after {os.getloadavg()[0]:.2f} "
          f"({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
