"""How long the Slicer module's Logic runs between two progress reports on a long clip (the panel processes
events at each report, so the longest gap is the longest the application cannot respond).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/slicer_progress_gaps.py [--frames 300] [--size 360 400]

Segments a synthetic clip loaded as a Sequence (as Slicer's DICOM import loads one) with the bundled model on
the CPU, on slicer-core's MRML, and prints per stage the number of reports and the longest gap in seconds.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "BreastUSSegment"))
sys.path.insert(0, str(ROOT / "Testing"))

import slicer  # noqa: E402
from slicer_module import load_module  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=int, nargs=2, default=(360, 400), metavar=("ROWS", "COLUMNS"))
    args = parser.parse_args()
    module = load_module()
    scene = slicer.vtkMRMLScene()
    scene.RegisterNodeClass(slicer.vtkMRMLSequenceBrowserNode())
    rows, columns = args.size
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "clip")
    frame = slicer.vtkMRMLScalarVolumeNode()
    rng = np.random.default_rng(0)
    for index in range(args.frames):
        image = rng.integers(20, 60, (1, rows, columns)).astype(np.uint8)
        top, left = rows // 3, (columns // 4 + index) % (columns // 2)
        image[0, top:top + rows // 4, left:left + columns // 5] += 150
        slicer.util.updateVolumeFromArray(frame, image)
        sequence.SetDataNodeAtValue(frame, str(index))
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "browser")
    browser.AddSynchronizedSequenceNode(sequence)
    logic = slicer.vtkSlicerSequencesLogic()
    logic.SetMRMLScene(scene)
    logic.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(sequence)

    gaps, last, ends = {}, [time.perf_counter()], []

    def report(done, total, stage):
        now = time.perf_counter()
        count, longest = gaps.get(stage, (0, 0.0))
        gaps[stage] = (count + 1, max(longest, now - last[0]))
        ends.append((now - last[0], stage, done))
        last[0] = now

    start = time.perf_counter()
    module.BreastUSSegmentLogic().segment(proxy, options=module.SegmentationOptions(device="cpu"),
                                          progressCallback=report)
    print(f"{args.frames} frames of {rows}x{columns}: {time.perf_counter() - start:.1f} s in all")
    for stage, (count, longest) in gaps.items():
        print(f"  {stage:<10} {count:4d} reports, longest gap {longest:.2f} s")
    print(f"  after the last report: {time.perf_counter() - last[0]:.2f} s")
    print("  longest gaps (ending at report stage, done):",
          ", ".join(f"{gap:.2f} s ({stage} {done})" for gap, stage, done in sorted(ends, reverse=True)[:4]))


if __name__ == "__main__":
    main()
