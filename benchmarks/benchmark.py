"""Speed, memory and size of our Attention U-Net side by side with MONAI's reference U-Nets.

Usage::

    .venv/bin/python benchmarks/benchmark.py [--quick] [--output benchmarks/results.md] [--weights W] [--cpu-bf16]
    .venv/bin/python benchmarks/benchmark.py --only-backends   # the backend rows and the profile alone

Each model and each end-to-end task is measured in a fresh subprocess (this
script re-run with ``--worker``), so peak memory readings do not mix. The
report is printed as Markdown and optionally written to a file. See
benchmarks/README.md for what every column means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

BENCHMARK_DIR = Path(__file__).resolve().parent
if str(BENCHMARK_DIR) not in sys.path:  # the bench_* helpers live beside this script
    sys.path.insert(0, str(BENCHMARK_DIR))

import torch  # noqa: E402

from bench_models import MODEL_KEYS, monai_available, spec_for  # noqa: E402
from bench_pipeline_worker import PIPELINE_TASKS  # noqa: E402
from bench_backends import backends_section  # noqa: E402
from bench_report import build_report  # noqa: E402
from bench_settings import settings_for  # noqa: E402

RESULT_PREFIX = "BENCHMARK-RESULT "
WORKER_TIMEOUT_S = 3600


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run each with tiny batches (a smoke test, not a measurement)")
    parser.add_argument("--output", type=Path, help="also write the Markdown report to this file")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads (default: os.cpu_count())")
    parser.add_argument("--models", nargs="+", choices=MODEL_KEYS, default=list(MODEL_KEYS), help="networks to measure")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the end-to-end rows")
    parser.add_argument("--no-backends", action="store_true", help="skip the rows per backend and precision")
    parser.add_argument("--only-backends", action="store_true",
                        help="only the rows per backend and precision (torch, onnxruntime, openvino) and the profile")
    parser.add_argument("--channels-last", action="store_true", help="run every network in channels-last memory format")
    parser.add_argument("--passive-omp", action="store_true",
                        help="set OMP_WAIT_POLICY=PASSIVE in the workers (idle OpenMP threads sleep instead of spinning)")
    parser.add_argument("--weights", type=Path,
                        help="weights file for 'ours' and the end-to-end rows (default: the bundled model)")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="time the CPU forward passes under bfloat16 autocast, as inference runs on CPUs with native bf16")
    # Internal: one measurement in this process, printed as JSON.
    parser.add_argument("--worker", choices=("model", "speed", "pipeline", "backends"), help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=MODEL_KEYS, help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=PIPELINE_TASKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.weights is not None and not args.weights.is_file():
        parser.error(f"--weights: no such file: {args.weights}")
    if args.worker == "model" and not args.model:
        parser.error("--worker model needs --model")
    if args.worker in ("pipeline", "backends") and not args.weights:
        parser.error(f"--worker {args.worker} needs --weights")
    if args.worker == "pipeline" and not args.task:
        parser.error("--worker pipeline needs --task and --weights")
    return args


def run_worker(args: argparse.Namespace) -> int:
    """Measure one model or pipeline task here and print the result as one JSON line."""
    settings = settings_for(args.quick)
    if args.worker == "model":
        from bench_model_worker import measure_model

        result = measure_model(args.model, settings, args.threads, args.channels_last, args.weights)
    elif args.worker == "speed":
        from bench_model_worker import measure_cpu_speed

        result = measure_cpu_speed(args.models, settings, args.threads, args.channels_last, args.weights, args.cpu_bf16)
    elif args.worker == "backends":
        from bench_backends import measure_backends

        result = measure_backends(args.weights, settings, args.threads)
    else:
        from bench_pipeline_worker import measure_pipeline

        result = measure_pipeline(args.task, args.weights, settings, args.threads)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def spawn(worker_args: list[str], common: list[str], environment: dict[str, str]) -> dict:
    """Run this script as a worker in a fresh Python process and return its JSON result."""
    command = [sys.executable, str(Path(__file__).resolve()), *worker_args, *common]
    print(f"running {' '.join(worker_args)} ...", file=sys.stderr, flush=True)
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, env=environment)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {WORKER_TIMEOUT_S} s"}
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    last_lines = [line for line in completed.stderr.strip().splitlines() if line.strip()][-1:]
    return {"error": f"worker failed (exit {completed.returncode}): {' '.join(last_lines) or 'no output'}"}


def cpu_name() -> str:
    """The CPU model as the OS names it."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    """The 1-minute load average, to show how busy the machine was (not on every OS)."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "unknown"


def environment(args: argparse.Namespace, weights_note: str, load_before: str) -> dict:
    """What the numbers were measured on."""
    monai_version = "not installed"
    from BreastUSSegmentLib.device import cpu_has_native_bf16

    if monai_available():
        import monai

        monai_version = monai.__version__
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "Date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "Machine": f"{platform.system()} {platform.machine()}, CPU {cpu_name()}, os.cpu_count() = {os.cpu_count()}",
        "GPU": gpu,
        "Software": f"Python {platform.python_version()}, torch {torch.__version__}, monai {monai_version}, "
                    f"onnxruntime {package_version('onnxruntime')}, openvino {package_version('openvino')}",
        "CPU threads": f"torch.set_num_threads({args.threads}) in every worker; OMP_WAIT_POLICY="
                       f"{'PASSIVE (--passive-omp)' if args.passive_omp else os.environ.get('OMP_WAIT_POLICY', 'unset')}",
        "Load average (1 min) at start / end": f"{load_before} / {load_average()} (above the CPU count means a busy machine)",
        "Memory format of the networks": "channels-last" if args.channels_last else "contiguous (NCHW, PyTorch default)",
        "CPU timings of the network rows": (f"bfloat16 autocast (--cpu-bf16; native bf16 on this CPU: "
                                            f"{'yes' if cpu_has_native_bf16() else 'no, emulated'})"
                                            if args.cpu_bf16 else "float32") + "; memory columns in float32",
        "Weights for the end-to-end rows": weights_note,
    }


def pipeline_weights(folder: Path, chosen: Path | None) -> tuple[Path, str]:
    """``chosen``, else the bundled weights if installed, else untrained weights saved in ``folder``."""
    from BreastUSSegmentLib import BUNDLED_WEIGHTS
    from BreastUSSegmentLib.model import AttentionUNet, ModelConfig
    from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
    from BreastUSSegmentLib.weights import save_model

    if chosen is not None:
        return chosen, f"{chosen} (--weights)"
    if BUNDLED_WEIGHTS.is_file():
        return BUNDLED_WEIGHTS, f"bundled {BUNDLED_WEIGHTS.name}"
    torch.manual_seed(0)
    path = folder / "untrained.safetensors"
    save_model(AttentionUNet(ModelConfig()), path, postprocessing=UNTUNED_POSTPROCESSING)
    return path, "untrained default model saved with save_model (bundled weights absent; speed does not depend on weight values)"


def worker_environment(passive_omp: bool) -> dict[str, str]:
    """The workers' environment; OpenMP must be configured before torch loads, hence here."""
    env = dict(os.environ)
    if passive_omp:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def run_benchmarks(args: argparse.Namespace) -> str:
    """Every measurement, each in its own subprocess; returns the Markdown report."""
    settings = settings_for(args.quick)
    load_before = load_average()
    env = worker_environment(args.passive_omp)
    common = ["--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    model_common = common + (["--channels-last"] if args.channels_last else [])
    model_common += (["--weights", str(args.weights)] if args.weights else []) + (["--cpu-bf16"] if args.cpu_bf16 else [])
    if args.only_backends:
        return only_backends(args, common, env, load_before)
    results = {}
    for key in args.models:
        if spec_for(key).needs_monai and not monai_available():
            results[key] = {"model": key, "unavailable": "monai not installed"}
            continue
        results[key] = spawn(["--worker", "model", "--model", key], model_common, env)
    measured = [key for key, result in results.items() if "unavailable" not in result and "error" not in result]
    if measured:
        speed = spawn(["--worker", "speed", "--models", *measured], model_common, env)
        for key in measured:
            if "error" in speed:
                results[key] = {"model": key, "error": f"CPU timing {speed['error']}"}
            else:
                results[key]["cpu"] = {**speed["models"][key], **results[key].pop("memory")}

    pipeline = {}
    with tempfile.TemporaryDirectory(prefix="breastus-bench-") as folder:
        weights, weights_note = pipeline_weights(Path(folder), args.weights)
        if not args.no_pipeline:
            for task in PIPELINE_TASKS:
                pipeline[task] = spawn(["--worker", "pipeline", "--task", task, "--weights", str(weights)], common, env)
        backends = None if args.no_backends else spawn(["--worker", "backends", "--weights", str(weights)], common, env)
    report = build_report(environment(args, weights_note, load_before), results, pipeline, settings)
    return report if backends is None else report + "\n" + backends_section(backends)


def only_backends(args, common, env, load_before) -> str:
    """The report of ``--only-backends``: the environment, then the backend rows and the profile."""
    with tempfile.TemporaryDirectory(prefix="breastus-bench-") as folder:
        weights, weights_note = pipeline_weights(Path(folder), args.weights)
        backends = spawn(["--worker", "backends", "--weights", str(weights)], common, env)
    lines = ["# Backends benchmark", ""] + [f"- {key}: {value}" for key, value in
                                           environment(args, weights_note, load_before).items()]
    return "\n".join(lines) + "\n\n" + backends_section(backends)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    report = run_benchmarks(args)
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
        print(f"report written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
