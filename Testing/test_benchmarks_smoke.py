"""The benchmark script in quick mode: a row per model with positive numbers, ours as the 1.00 reference.

Runs the real script (its workers in subprocesses) once for the module. MONAI
is optional: without it the MONAI rows must say so and only our rows are checked.
"""

import importlib.util
from pathlib import Path

import pytest

BENCHMARK_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("breastus_benchmark", BENCHMARK_DIR / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # also puts benchmarks/ on sys.path for the bench_* helpers
    return module


benchmark = load_benchmark()
from bench_models import MODELS, monai_available  # noqa: E402
from bench_report import network_table, targets_table  # noqa: E402
from bench_settings import QUICK  # noqa: E402
from bench_timing import time_calls, time_interleaved  # noqa: E402


def table_after(report: str, heading: str) -> list[dict]:
    """Rows of the first Markdown table after ``heading``, as dicts keyed by the header cells."""
    lines = report.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(heading))
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, _separator, *rows = table
    return [dict(zip(header, row)) for row in rows]


def number(cell: str) -> float:
    """The leading number of a cell such as ``7,866,118`` or ``618 ms``."""
    return float(cell.split()[0].replace(",", ""))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    output = tmp_path_factory.mktemp("benchmarks") / "results.md"
    # Passive OpenMP threads keep the quick run fast when other processes share the cores.
    assert benchmark.main(["--quick", "--passive-omp", "--output", str(output)]) == 0
    return output.read_text()


def test_network_table_has_a_positive_row_per_model_and_ours_is_the_reference(report):
    rows = {row["Model"]: row for row in table_after(report, "## Networks on the CPU")}
    assert [spec.label for spec in MODELS] == list(rows)
    for spec in MODELS:
        row = rows[spec.label]
        if spec.needs_monai and not monai_available():
            assert row["Parameters"] == "monai not installed"
            continue
        for column, cell in row.items():
            if column != "Model":
                assert number(cell) > 0, f"{spec.label}: {column} = {cell!r}"
    ours = rows[MODELS[0].label]
    assert ours["Latency ratio"] == "1.00" and ours["Throughput ratio"] == "1.00"
    assert number(ours["Parameters"]) > 1_000_000  # the default deeper network, not a toy


def test_end_to_end_rows_are_measured(report):
    rows = table_after(report, "## Our pipeline end to end")
    tasks = {row["Task"].split(" (")[0].split(":")[0]: row for row in rows}
    for task in ("PNG file 500x500 to processed mask + attention maps", "Cine clip 3x500x500 uint8 in memory"):
        assert number(tasks[task]["Median"]) > 0 and number(tasks[task]["Peak RSS (MiB)"]) > 0
    slicer = tasks["Slicer Logic"]
    assert slicer["Median"].startswith("not available") or number(slicer["Median"]) > 0


def test_gpu_section_is_skipped_with_a_reason_or_measured(report):
    section = report.split("## Networks on the GPU")[1].split("## ")[0]
    assert "Skipped: no CUDA GPU" in section or "| fp32 |" in section


def test_report_header_names_threads_and_weights(report):
    assert f"torch.set_num_threads({benchmark.os.cpu_count()})" in report
    assert "OMP_WAIT_POLICY=PASSIVE" in report
    assert "Weights for the end-to-end rows:" in report and "Quick mode" in report


def test_weights_and_cpu_bf16_options_measure_the_given_model_in_bf16(tmp_path):
    import torch

    from BreastUSSegmentLib.model import AttentionUNet, ModelConfig
    from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
    from BreastUSSegmentLib.weights import save_model

    torch.manual_seed(0)
    small = AttentionUNet(ModelConfig(base_channels=4, depth=3))
    weights = tmp_path / "small.safetensors"
    save_model(small, weights, postprocessing=UNTUNED_POSTPROCESSING)
    output = tmp_path / "results.md"
    arguments = ["--quick", "--passive-omp", "--models", "ours", "--no-pipeline", "--cpu-bf16"]
    assert benchmark.main([*arguments, "--weights", str(weights), "--output", str(output)]) == 0
    report = output.read_text()
    ours = table_after(report, "## Networks on the CPU")[0]
    assert number(ours["Parameters"]) == sum(parameter.numel() for parameter in small.parameters())
    assert "CPU timings of the network rows: bfloat16 autocast (--cpu-bf16; native bf16 on this CPU:" in report
    assert f"{weights} (--weights)" in report


def test_weights_and_cpu_bf16_reach_every_worker(tmp_path, monkeypatch):
    weights = tmp_path / "any.safetensors"
    weights.write_bytes(b"")  # only passed on: the workers are not run
    calls = []

    def record(worker_args, common, _environment):
        calls.append(worker_args + common)
        return {"memory": {}} if worker_args[1] == "model" else {"error": "not run"}

    monkeypatch.setattr(benchmark, "spawn", record)
    monkeypatch.setattr(benchmark, "build_report", lambda *parts: "")
    benchmark.run_benchmarks(benchmark.parse_args(["--quick", "--models", "ours", "--cpu-bf16",
                                                   "--weights", str(weights)]))
    kinds = {call[1]: call for call in calls}
    assert set(kinds) == {"model", "speed", "pipeline", "backends"}
    for kind in ("model", "speed"):
        assert kinds[kind][kinds[kind].index("--weights") + 1] == str(weights) and "--cpu-bf16" in kinds[kind]
    assert kinds["backends"][kinds["backends"].index("--weights") + 1] == str(weights)
    pipeline = [call for call in calls if call[1] == "pipeline"]
    assert pipeline and all(call[call.index("--weights") + 1] == str(weights) for call in pipeline)


def test_missing_weights_file_is_refused_by_name(tmp_path, capsys):
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(SystemExit):
        benchmark.main(["--weights", str(missing)])
    assert f"--weights: no such file: {missing}" in capsys.readouterr().err


def fake_cpu_result(latency_s: float, fps: float) -> dict:
    return {
        "parameters": 10, "flops": 2e9, "weights_bytes": 2**20, "base_rss_mib": 100.0,
        "cpu": {"latency": {"median_s": latency_s, "p90_s": latency_s, "runs": 1}, "throughput_fps": fps,
                "peak_rss_batch1_mib": 150.0, "peak_rss_batch_mib": 200.0},
    }


def test_ratios_divide_by_ours_and_missing_monai_is_reported():
    results = {
        "ours": fake_cpu_result(0.1, 40.0),
        "monai-attention-unet-32": {"unavailable": "monai not installed"},
        "monai-attention-unet-64": fake_cpu_result(0.35, 10.0),
    }
    lines = network_table(results, QUICK)
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]] for line in lines[2:]}
    assert rows["MONAI AttentionUnet (32..512)"][0] == "monai not installed"
    big = rows["MONAI AttentionUnet (64..1024)"]
    assert big[5] == "3.50" and big[7] == "0.25"  # latency ratio 0.35/0.1, throughput ratio 10/40
    targets = "\n".join(targets_table(results, {}, QUICK))
    assert "| 3.50x | yes |" in targets


def test_time_calls_warms_up_then_times_each_run():
    calls = []
    timing = time_calls(lambda: calls.append(1), runs=4, warmup=2)
    assert len(calls) == 6 and len(timing.samples) == 4
    assert timing.median >= 0 and timing.p90 >= timing.median
    with pytest.raises(ValueError, match="runs must be >= 1"):
        time_calls(lambda: None, runs=0, warmup=0)


def test_time_interleaved_rotates_the_order_and_times_every_call():
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    timings = time_interleaved(calls, runs=3, warmup=1)
    assert order == list("abc" "abc" "bca" "cab")  # one warm-up round, then rotating rounds
    assert {name: len(timing.samples) for name, timing in timings.items()} == {"a": 3, "b": 3, "c": 3}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_a_workers_peak_memory_leaves_out_the_parents():
    """A worker started by a process holding 300 MB reports its own peak, not the parent's."""
    import subprocess
    import sys

    import numpy as np

    held = np.ones(300 * 2**20, np.uint8)  # touched, so resident
    code = (f"import sys; sys.path.insert(0, {str(BENCHMARK_DIR)!r}); "
            "from bench_timing import peak_rss_mib; print(peak_rss_mib())")
    worker = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0 < worker < 200, worker
    assert held.sum() == held.size


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--threads", "0"])
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_train_throughput_tiny_run_prints_both_precisions_and_the_speed_up_last():
    import re
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(BENCHMARK_DIR / "train_throughput.py"), "--tiny"],
                            capture_output=True, text=True, timeout=300, check=True)
    lines = result.stdout.strip().splitlines()
    rates = {match[1]: float(match[2]) for line in lines if (match := re.match(r"(fp32|bf16): ([\d.]+) images/s", line))}
    assert set(rates) == {"fp32", "bf16"} and min(rates.values()) > 0
    speed_up = re.fullmatch(r"bf16/fp32 speed-up: (\d+\.\d\d)", lines[-1])
    assert speed_up and float(speed_up[1]) > 0


def test_backend_rows_name_the_cpu_and_time_every_installed_backend(report):
    from BreastUSSegmentLib.runtime import runtime_available

    section = report[report.index("## Backends"):]
    assert "CPU flags:" in section and "backend=\"auto\" picks" in section
    rows = {row["backend"]: row for row in table_after(report, "## Backends")}
    for key in ("torch-fp32", "onnxruntime-fp32", "openvino-fp32"):
        if runtime_available(key.split("-")[0]):
            assert number(rows[key]["forward, batch 1"]) > 0 and number(rows[key]["clip"]) > 0, key
        else:
            assert "not installed" in rows[key]["forward, batch 1"], key
    assert number(rows["torch-fp32"]["max logit difference to torch-fp32"]) == 0
    steps = {row["step"]: number(row["time"]) for row in table_after(section, "Steps of one frame")}
    assert {"read the PNG file", "network", "post-processing", "overlay figure (command line only)"} <= set(steps) and all(v >= 0 for v in steps.values())
    verdicts = section[section.index("Targets of the backends issue"):].splitlines()[2:]
    assert verdicts and all(line.startswith("- ") for line in verdicts if line)
    assert any("forced fp32" in line for line in verdicts)


def backend_rows(**rows):
    """A backends result with the given rows (forward ms, PNG ms, clip s) on a CPU with AMX."""
    return {"cpu_flags": "avx512_bf16, amx_bf16", "auto": "openvino-bf16", "auto_fp32": "openvino-fp32",
            "rows": {key: {"forward_ms": f, "png_ms": p, "clip_s": c, "clip_frames": 100}
                     for key, (f, p, c) in rows.items()}}


def test_the_backend_targets_are_judged_from_the_rows():
    from bench_backends import targets

    met = targets(backend_rows(**{"torch-bf16": (60.0, 80, 5.0), "openvino-bf16": (12.0, 19.5, 1.9),
                                  "torch-fp32": (99.0, 120, 9.9), "openvino-fp32": (50.0, 70, 6.6)}))
    assert [line.rsplit(": ", 1)[-1].split()[0] for line in met] == ["met"] * 4, met
    missed = targets(backend_rows(**{"torch-bf16": (61.5, 80.5, 5.29), "openvino-bf16": (16.7, 33.9, 2.73),
                                     "torch-fp32": (98.7, 116.8, 9.93), "openvino-fp32": (50.3, 117.0, 6.6)}))
    assert [line.rsplit(": ", 1)[-1].split()[0] for line in missed] == ["met", "missed", "missed", "missed"], missed
    assert "3.7x" in missed[0] and "(2 of 3 rows)" in missed[3]
    no_amx = targets({**backend_rows(**{"torch-fp32": (190.0, 200, 18.0), "openvino-fp32": (185.0, 190, 15.3)}),
                      "cpu_flags": "none of avx512f, avx512_bf16, amx", "auto": "openvino-fp32"})
    assert "not applicable" in no_amx[0] and no_amx[1].endswith("met (3 of 3 rows)")
