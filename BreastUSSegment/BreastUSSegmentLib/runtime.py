"""Network runners: the one step of inference that differs between PyTorch, OpenVINO and ONNX Runtime.

A runner takes the preprocessed ``(n, 1, h, w)`` float32 batch (numpy) and gives the
network's raw outputs as float32 numpy arrays (:class:`RawOutput`); batching, boxes,
post-processing and attention maps are shared (:mod:`.inference`). PyTorch is imported
only by the ``torch`` runner, so OpenVINO or ONNX Runtime alone can segment.

``backend="auto"`` (:func:`choose_backend`) takes a CUDA or MPS GPU through PyTorch when
one is there; else OpenVINO (bf16 where the CPU computes it natively); else ONNX Runtime;
else PyTorch on the CPU. A backend and precision that the model card records as failing
agreement with PyTorch float32 is not chosen by ``auto``.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import BUNDLED_ONNX_SHA256, BUNDLED_WEIGHTS
from .fileio import sha256_of_file
from .modelcard import ModelCard, WeightsError

logger = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "torch", "openvino", "onnxruntime")
PRECISION_CHOICES = ("auto", "fp32", "bf16")
# Frames per network call on the CPU: larger batches do more work per frame on a small CPU (their
# activations no longer fit in the caches); measured with benchmarks/benchmark.py. Frames are independent.
CPU_FRAMES_PER_FORWARD = 4
# The installable package of each runtime.
RUNTIME_PACKAGES = {"torch": "torch", "openvino": "openvino", "onnxruntime": "onnxruntime"}
# PyTorch is optional (pyproject's extra "torch", which repeats this; a test checks they agree): the ONNX graph
# runtimes need none. This is the version the torch backend and the training need.
TORCH_REQUIREMENT = "torch>=2.5"


class RawOutput(NamedTuple):
    """One batch through the network, the numpy counterpart of ``model.NetworkOutput``, float32: ``(n, 1, h, w)``
    logits, each gate's ``(n, 1, h_i, w_i)`` attention coefficients (coarsest first) and the lesion head's ``(n,)``
    logits (None without a head)."""

    logits: np.ndarray
    attention: list
    lesion_logit: np.ndarray | None


@dataclass(frozen=True)
class BackendChoice:
    """A backend and the precision it computes in (``fp32`` or ``bf16``)."""

    backend: str
    precision: str

    @property
    def key(self) -> str:
        """The name used in model cards and reports: ``openvino-bf16``."""
        return f"{self.backend}-{self.precision}"


def runtime_available(backend: str) -> bool:
    """Whether the runtime of ``backend`` is installed (found without importing it; a finder's error counts as not)."""
    try:
        return importlib.util.find_spec(RUNTIME_PACKAGES[backend]) is not None
    except (ImportError, ValueError):
        return False


def missing_runtime_message(backend: str) -> str:
    return (f"the {backend} backend needs the Python package '{RUNTIME_PACKAGES[backend]}', which is not installed "
            f"(pip install {RUNTIME_PACKAGES[backend]})")


def check_choice(name: str, value: str, choices: tuple) -> str:
    value = (value or "auto").strip().lower()
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


def verified_onnx_path(weights_path: str | Path, card: ModelCard) -> Path:
    """The model's ONNX graph beside its weights, after checking its sha256 against the model card."""
    if not card.onnx:
        raise WeightsError(f"the model card of {weights_path} lists no ONNX graph; export one "
                           "('breastus-train onnx --weights ...') or use the torch backend")
    path = Path(weights_path).with_name(card.onnx["file"])
    if not path.is_file():
        raise WeightsError(f"ONNX graph not found: {path} (listed in the model card of {weights_path})")
    actual = sha256_of_file(path)
    if Path(weights_path).resolve() == BUNDLED_WEIGHTS.resolve() and actual != BUNDLED_ONNX_SHA256:
        raise WeightsError(f"the bundled model's graph {path} has sha256 {actual}, not the {BUNDLED_ONNX_SHA256} this "
                           "version of the code ships with: it was modified or damaged; re-install the extension")
    if actual != str(card.onnx["sha256"]).strip().lower():
        raise WeightsError(f"checksum mismatch for {path}: the model card expects sha256 {card.onnx['sha256']}, "
                           f"the file has {actual}. The file is corrupt or was modified; re-install or re-export it.")
    return path


def failed_agreement(card: ModelCard | None) -> set:
    """The ``backend-precision`` keys the card records as failing agreement with PyTorch float32."""
    agreement = ((card.onnx or {}).get("agreement") or {}) if card is not None else {}
    return {key for key, values in agreement.items() if not values.get("passed", True)}


def torch_accelerator() -> str | None:
    """``cuda`` or ``mps`` when PyTorch is installed and sees that GPU; None otherwise (PyTorch not imported
    when it is not installed)."""
    if not runtime_available("torch"):
        return None
    from .device import select_device

    device = select_device("auto")
    return None if device.type == "cpu" else device.type


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX on x86), read without PyTorch:
    OpenVINO's CPU capabilities when installed, else the CPU flags Linux reports."""
    if runtime_available("openvino"):
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_backend(backend: str = "auto", precision: str = "auto", device: str = "auto",
                   card: ModelCard | None = None) -> BackendChoice:
    """The backend and precision to run: ``backend`` as asked (``auto``: see the module's docstring).

    ``device`` is PyTorch's (``DEVICE_CHOICES``): asking for ``cuda`` or ``mps`` means PyTorch; OpenVINO and
    ONNX Runtime run on the CPU. Raises RuntimeError naming the package when the runtime is missing.
    """
    backend = check_choice("backend", backend, BACKEND_CHOICES)
    precision = check_choice("precision", precision, PRECISION_CHOICES)
    device = (device or "auto").strip().lower()
    if backend in ("openvino", "onnxruntime") and device not in ("auto", "cpu"):
        raise ValueError(f"the {backend} backend runs on the CPU; device {device!r} needs the torch backend")
    if backend == "onnxruntime" and precision == "bf16":
        raise ValueError("the onnxruntime backend computes in fp32 only; use openvino or torch for bf16")
    if backend != "auto":
        if not runtime_available(backend):
            raise RuntimeError(missing_runtime_message(backend))
        return BackendChoice(backend, resolve_precision(backend, precision, device))
    failed = failed_agreement(card)
    has_graph = card is None or bool(card.onnx)
    candidates = []
    if device in ("cuda", "mps") or (device == "auto" and torch_accelerator()):
        candidates.append("torch")
    if device in ("auto", "cpu") and has_graph:
        candidates += [name for name in ("openvino", "onnxruntime") if precision != "bf16" or name != "onnxruntime"]
    candidates.append("torch")
    for name in candidates:
        if not runtime_available(name):
            continue
        choice = BackendChoice(name, resolve_precision(name, precision, device))
        if choice.key in failed and precision == "auto" and choice.precision == "bf16":
            choice = BackendChoice(name, "fp32")  # the same runtime in float32, if that agrees
        if choice.key not in failed:
            return choice
        logger.info("backend %s not chosen: the model card records it failing agreement with torch-fp32", choice.key)
    raise RuntimeError("no inference runtime is installed: install onnxruntime or openvino (CPU), or torch; "
                       f"{missing_runtime_message('onnxruntime')}")


def resolve_precision(backend: str, precision: str, device: str = "auto") -> str:
    """``auto``: bf16 on a CPU that computes it natively (torch, openvino), fp32 otherwise and on a GPU."""
    if precision != "auto":
        return precision
    if backend == "onnxruntime":
        return "fp32"
    if backend == "torch":
        if device in ("cuda", "mps") or (device == "auto" and torch_accelerator()):
            return "fp32"
        from .device import cpu_has_native_bf16 as torch_cpu_bf16

        return "bf16" if torch_cpu_bf16() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


class OnnxRuntimeRunner:
    """The ONNX graph through ONNX Runtime's CPU provider, in float32."""

    backend = "onnxruntime"
    precision = "fp32"
    device = "cpu"

    def __init__(self, onnx_path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.input_name = self.session.get_inputs()[0].name

    def frames_per_call(self, batch_size: int) -> int:
        return min(batch_size, CPU_FRAMES_PER_FORWARD)

    def run(self, batch: np.ndarray) -> RawOutput:
        values = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return raw_output(dict(zip(self.output_names, values)))


def compile_openvino(onnx_path: str | Path, precision: str = "fp32", threads: int | None = None,
                     hint: str = "LATENCY", batch: int | None = None):
    """The ONNX graph compiled by OpenVINO for the CPU: ``precision`` bf16 sets its inference-precision hint,
    ``hint`` its performance hint (THROUGHPUT also asks for two streams), ``batch`` fixes the batch axis (None
    keeps it dynamic, as the runner does)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(onnx_path))
    if batch is not None:
        model.reshape({model.inputs[0]: [batch, *model.inputs[0].get_partial_shape()[1:].to_shape()]})
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "PERFORMANCE_HINT": hint}
    if hint == "THROUGHPUT":
        config["NUM_STREAMS"] = 2
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return core.compile_model(model, "CPU", config)


def openvino_output(compiled, request) -> RawOutput:
    """A finished OpenVINO request's outputs, copied out of its tensors."""
    return raw_output({output.get_any_name(): np.array(request.get_tensor(output).data, dtype=np.float32)
                       for output in compiled.outputs})


class OpenVINORunner:
    """The ONNX graph through OpenVINO on the CPU; ``precision`` bf16 sets its inference-precision hint.
    ``batch`` fixes the batch axis (None, the default, keeps it dynamic; see benchmarks/openvino_settings.py)."""

    backend = "openvino"
    device = "cpu"

    def __init__(self, onnx_path: str | Path, precision: str = "fp32", threads: int | None = None,
                 batch: int | None = None):
        self.precision = precision
        self.compiled = compile_openvino(onnx_path, precision, threads, batch=batch)
        self.request = self.compiled.create_infer_request()

    def frames_per_call(self, batch_size: int) -> int:
        return min(batch_size, CPU_FRAMES_PER_FORWARD)

    def run(self, batch: np.ndarray) -> RawOutput:
        # start and wait rather than infer(), which would copy the outputs once more
        self.request.start_async({0: np.ascontiguousarray(batch, dtype=np.float32)})
        self.request.wait()
        return openvino_output(self.compiled, self.request)


def raw_output(values: dict) -> RawOutput:
    """A :class:`RawOutput` from a graph's outputs by name (``logits``, ``attention_<i>``, ``lesion_logit``)."""
    levels = sorted((name for name in values if name.startswith("attention_")), key=lambda name: int(name[10:]))
    return RawOutput(
        np.asarray(values["logits"], dtype=np.float32),
        [np.asarray(values[name], dtype=np.float32) for name in levels],
        np.asarray(values["lesion_logit"], dtype=np.float32) if "lesion_logit" in values else None,
    )


def onnx_output_names(depth: int, lesion_head: bool) -> list:
    """The graph's output names, in order: logits, one attention map per gate (coarsest first), lesion logit."""
    return ["logits"] + [f"attention_{level}" for level in range(depth)] + (["lesion_logit"] if lesion_head else [])


def open_runner(choice: BackendChoice, onnx_path: str | Path | None = None, threads: int | None = None):
    """An OpenVINO or ONNX Runtime runner of the graph at ``onnx_path`` (the torch runner is built from a model)."""
    if choice.backend == "openvino":
        return OpenVINORunner(onnx_path, choice.precision, threads)
    if choice.backend == "onnxruntime":
        return OnnxRuntimeRunner(onnx_path, threads)
    raise ValueError(f"open_runner builds the graph runners; {choice.backend} runs a PyTorch model (TorchRunner)")


class TorchRunner:
    """A PyTorch model (an :class:`~.model.AttentionUNet` or an ensemble) on ``device``.

    On the CPU the weights are channels-last (faster convolutions; their values do not change) and
    ``precision`` bf16 computes under bfloat16 autocast. On a GPU it computes in float32; a CUDA
    out-of-memory error moves the model to the CPU with a warning and retries.
    """

    backend = "torch"

    def __init__(self, model, device="auto", precision: str = "auto"):
        import torch

        from .device import select_device

        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.requested_precision = check_choice("precision", precision, PRECISION_CHOICES)
        self.model = model.to(self.device).eval()
        self._adapt_to_device()

    def _adapt_to_device(self) -> None:
        import torch

        on_cpu = self.device.type == "cpu"
        self.precision = resolve_precision("torch", self.requested_precision, "cpu") if on_cpu else "fp32"
        if on_cpu:
            self.model.to(memory_format=torch.channels_last)

    @property
    def cpu_bf16(self) -> bool:
        """Whether the network computes under bfloat16 autocast on the CPU."""
        return self.device.type == "cpu" and self.precision == "bf16"

    def frames_per_call(self, batch_size: int) -> int:
        return min(batch_size, CPU_FRAMES_PER_FORWARD) if self.device.type == "cpu" else batch_size

    def run(self, batch: np.ndarray) -> RawOutput:
        import torch

        try:
            return self._run(batch)
        except torch.OutOfMemoryError:
            if self.device.type == "cpu":
                raise
            logger.warning("GPU ran out of memory; continuing on the CPU (slower).")
            torch.cuda.empty_cache()
            self.device = torch.device("cpu")
            self.model.to(self.device)
            self._adapt_to_device()
            return self._run(batch)

    def _run(self, batch: np.ndarray) -> RawOutput:
        import torch

        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16):
            tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            if self.device.type == "cpu":
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            output = self.model(tensor)  # a model.NetworkOutput

        def to_numpy(value):
            return np.ascontiguousarray(value.float().cpu().numpy())

        return RawOutput(to_numpy(output.logits), [to_numpy(level) for level in output.attention],
                         None if output.lesion_logit is None else to_numpy(output.lesion_logit))
