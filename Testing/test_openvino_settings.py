"""benchmarks/openvino_settings.py on a tiny run: one row per setting, each timed, and in fp32 every setting
gives the runner's outputs frame by frame (a mis-ordered or mis-batched clip would not).

The script runs in its own process: its compiled models take most of a gigabyte, which would otherwise stay
in the test process."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino", reason="openvino is not installed")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "openvino_settings.py"


def test_every_setting_is_timed_and_gives_the_runners_outputs(tmp_path):
    report_path = tmp_path / "report.md"
    arguments = ["--precision", "fp32", "--runs", "1", "--clip-frames", "3", "--clip-runs", "1",
                 "--output", str(report_path)]
    done = subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [line.strip("|").split("|") for line in report_path.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| setting")]
    names = [cells[0].strip() for cells in rows]
    assert names == [
        "runner (dynamic batch, LATENCY), batch 1", "static batch shape, LATENCY, batch 1",
        "runner (dynamic batch, LATENCY), batch 3", "static batch shape, LATENCY, batch 3",
        "clip: runner, batches of 4", "clip: static batch shape, batches of 4",
        "clip: THROUGHPUT hint, 2 streams, 1 frame per request",
    ]
    for cells in rows:
        assert float(cells[1].split()[0]) > 0
        assert float(cells[2]) < 1e-3, cells
