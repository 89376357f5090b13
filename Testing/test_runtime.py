"""The network runners (PyTorch, ONNX Runtime, OpenVINO), the ONNX graph in the model card, the choice of backend,
and inference without PyTorch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from BreastUSSegmentLib import runtime
from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.model import AttentionUNet, ModelConfig
from BreastUSSegmentLib.modelcard import WeightsError, card_path_for, read_model_card
from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.preprocessing import resize_frames
from BreastUSSegmentLib.runtime import BackendChoice, choose_backend
from BreastUSSegmentLib.weights import save_model

ROOT = Path(__file__).resolve().parents[1]


GRAPH_BACKENDS = ("onnxruntime", "openvino")


def skip_without(backend: str) -> None:
    """Skip, naming the runtime, where ``backend``'s package is not installed."""
    if not runtime.runtime_available(backend):
        pytest.skip(f"{runtime.RUNTIME_PACKAGES[backend]} is not installed")


@pytest.mark.parametrize("source, target", [((300, 500), (256, 256)), ((40, 30), (64, 64)), ((100, 20), (64, 64)),
                                            ((7, 9), (7, 20))])
def test_numpy_resize_computes_what_torch_interpolate_does(source, target):
    frames = np.random.default_rng(0).random((2, 1, *source), dtype=np.float32)
    shrinking = source[0] > target[0] or source[1] > target[1]
    expected = F.interpolate(torch.from_numpy(frames), size=target, mode="bilinear", align_corners=False,
                             antialias=shrinking).numpy()
    np.testing.assert_allclose(resize_frames(frames, target), expected, atol=2e-6)
    nearest = F.interpolate(torch.from_numpy(frames), size=target, mode="nearest").numpy()
    np.testing.assert_array_equal(resize_frames(frames, target, mode="nearest"), nearest)
    assert isinstance(resize_frames(torch.from_numpy(frames), target), torch.Tensor)  # training code's tensors


def with_graph(path: Path, lesion_head: bool = False, storage_dtype: str = "float32") -> Path:
    """A tiny untrained model saved at ``path`` with its ONNX graph listed in its card."""
    from breastus_training.onnx_graph import attach_graph

    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(base_channels=4, depth=2, dropout=0.0, lesion_head=lesion_head))
    with torch.no_grad():  # nonzero batch-norm statistics, so their folding into the graph is exercised
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    options = UNTUNED_POSTPROCESSING.with_overrides(min_lesion_probability=0.0) if lesion_head else UNTUNED_POSTPROCESSING
    save_model(model, path, input_size=(64, 64), postprocessing=options)
    attach_graph(path, storage_dtype)
    return path


@pytest.fixture(scope="module")
def graph_weights(tmp_path_factory):
    pytest.importorskip("onnx", reason="onnx is not installed (needed to export the graph)")
    return with_graph(tmp_path_factory.mktemp("graph") / "tiny.safetensors", lesion_head=True)


def test_the_card_lists_the_graph_with_its_sha256_and_every_output(graph_weights):
    card = read_model_card(graph_weights)
    assert card.onnx["file"] == "tiny.onnx" and card.onnx["storage_dtype"] == "float32"
    assert card.onnx["outputs"] == ["logits", "attention_0", "attention_1", "lesion_logit"]
    assert runtime.verified_onnx_path(graph_weights, card) == graph_weights.with_suffix(".onnx")


@pytest.mark.parametrize("choice", [BackendChoice("onnxruntime", "fp32"), BackendChoice("openvino", "fp32")],
                         ids=lambda choice: choice.key)
def test_a_graph_runner_gives_every_output_of_the_torch_model_at_any_batch(graph_weights, choice):
    if not runtime.runtime_available(choice.backend):
        pytest.skip(f"{choice.backend} is not installed")
    card = read_model_card(graph_weights)
    graph_runner = runtime.open_runner(choice, runtime.verified_onnx_path(graph_weights, card))
    torch_runner = LesionSegmenter.from_weights(graph_weights, "cpu", backend="torch", precision="fp32").runner
    batch = np.random.default_rng(1).random((3, 1, 64, 64), dtype=np.float32)  # exported at batch 1
    expected, result = torch_runner.run(batch), graph_runner.run(batch)
    np.testing.assert_allclose(result.logits, expected.logits, atol=1e-4)
    assert [level.shape for level in result.attention] == [(3, 1, 32, 32), (3, 1, 64, 64)]
    for level, reference in zip(result.attention, expected.attention):
        np.testing.assert_allclose(level, reference, atol=1e-4)
    np.testing.assert_allclose(result.lesion_logit, expected.lesion_logit, atol=1e-4)


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_segmenting_through_a_graph_runtime_gives_the_masks_of_torch(graph_weights, backend):
    skip_without(backend)
    frames = np.random.default_rng(2).integers(0, 255, (2, 90, 70)).astype(np.uint8)
    frames[:, 30:60, 20:50] = 250
    reference = LesionSegmenter.from_weights(graph_weights, "cpu", backend="torch", precision="fp32")
    graph = LesionSegmenter.from_weights(graph_weights, "cpu", backend=backend, precision="fp32")
    assert graph.provenance == {"backend": backend, "precision": "fp32", "device": "cpu"}
    for kwargs in ({}, {"box": (15, 25, 55, 65)}):
        expected, result = reference.segment(frames, **kwargs), graph.segment(frames, **kwargs)
        np.testing.assert_allclose(result.probability, expected.probability, atol=1e-4)
        np.testing.assert_allclose(result.combined_attention, expected.combined_attention, atol=1e-4)
        assert (result.processed_mask != expected.processed_mask).mean() < 1e-3


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_a_float16_graph_stores_half_the_bytes_and_computes_close_to_float32(tmp_path, backend):
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (needed to export the graph)")
    skip_without(backend)
    full = with_graph(tmp_path / "full.safetensors")
    half = with_graph(tmp_path / "half.safetensors", storage_dtype="float16")
    assert read_model_card(half).onnx["storage_dtype"] == "float16"
    def weight_bytes(path):
        return sum(len(tensor.raw_data) for tensor in onnx.load(str(path.with_suffix(".onnx"))).graph.initializer)

    assert weight_bytes(half) < 0.55 * weight_bytes(full)
    frame = np.random.default_rng(3).random((80, 80))
    expected = LesionSegmenter.from_weights(full, backend=backend, precision="fp32").segment(frame).probability
    result = LesionSegmenter.from_weights(half, backend=backend, precision="fp32").segment(frame).probability
    np.testing.assert_allclose(result, expected, atol=5e-3)


def test_a_modified_graph_is_refused_naming_the_file(graph_weights, tmp_path):
    backend = next((name for name in GRAPH_BACKENDS if runtime.runtime_available(name)), None)
    if backend is None:
        pytest.skip("neither onnxruntime nor openvino is installed")
    copy = tmp_path / "copy.safetensors"
    for source in (graph_weights, card_path_for(graph_weights), graph_weights.with_suffix(".onnx")):
        (tmp_path / source.name.replace("tiny", "copy")).write_bytes(source.read_bytes())
    card = json.loads(card_path_for(copy).read_text())
    card["onnx"]["file"] = "copy.onnx"
    card_path_for(copy).write_text(json.dumps(card))
    graph = copy.with_suffix(".onnx")
    graph.write_bytes(graph.read_bytes()[:-1] + b"\0")
    with pytest.raises(WeightsError, match="checksum mismatch") as error:
        LesionSegmenter.from_weights(copy, backend=backend)
    assert str(graph) in str(error.value)
    graph.unlink()
    with pytest.raises(WeightsError, match="ONNX graph not found"):
        LesionSegmenter.from_weights(copy, backend=backend)


def test_a_model_without_a_graph_runs_on_torch_and_refuses_a_graph_backend(tiny_weights):
    assert choose_backend("auto", card=read_model_card(tiny_weights)).backend in ("torch",) or runtime.torch_accelerator()
    backend = next((name for name in GRAPH_BACKENDS if runtime.runtime_available(name)), None)
    if backend is None:
        pytest.skip("neither onnxruntime nor openvino is installed")
    with pytest.raises(WeightsError, match="lists no ONNX graph"):
        LesionSegmenter.from_weights(tiny_weights, backend=backend)


def test_auto_order_and_agreement(monkeypatch, graph_weights):
    card = read_model_card(graph_weights)
    installed = {"torch", "openvino", "onnxruntime"}
    monkeypatch.setattr(runtime, "runtime_available", lambda name: name in installed)
    monkeypatch.setattr(runtime, "torch_accelerator", lambda: None)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert choose_backend("auto", card=card) == BackendChoice("openvino", "bf16")
    card.onnx["agreement"] = {"openvino-bf16": {"passed": False}}
    assert choose_backend("auto", card=card) == BackendChoice("openvino", "fp32")  # bf16 failed, fp32 did not
    card.onnx["agreement"]["openvino-fp32"] = {"passed": False}
    assert choose_backend("auto", card=card) == BackendChoice("onnxruntime", "fp32")
    installed.discard("onnxruntime")
    assert choose_backend("auto", card=card).backend == "torch"
    assert choose_backend("auto", device="cuda", card=card).backend == "torch"
    monkeypatch.setattr(runtime, "torch_accelerator", lambda: "cuda")
    assert choose_backend("auto", card=card) == BackendChoice("torch", "fp32")  # a GPU first
    installed.clear()
    with pytest.raises(RuntimeError, match="no inference runtime is installed"):
        choose_backend("auto", card=card)
    with pytest.raises(RuntimeError, match="needs the Python package 'onnxruntime'"):
        choose_backend("onnxruntime", card=card)
    with pytest.raises(ValueError, match="runs on the CPU"):
        choose_backend("openvino", device="cuda", card=card)


BLOCK_TORCH = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, NoTorch())
"""


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_the_core_segments_through_a_graph_runtime_where_torch_cannot_be_imported(graph_weights, backend):
    skip_without(backend)
    script = BLOCK_TORCH + f"""
import numpy as np
from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.runtime import choose_backend, runtime_available
from BreastUSSegmentLib.modelcard import read_model_card
assert not runtime_available("torch")
assert choose_backend("auto", card=read_model_card({str(graph_weights)!r})).backend != "torch"
segmenter = LesionSegmenter.from_weights({str(graph_weights)!r}, backend={backend!r})
frame = np.zeros((70, 90), np.uint8); frame[20:50, 30:60] = 200
result = segmenter.segment(frame, test_time_flip=True)
boxed = segmenter.segment(frame, box=(25, 15, 65, 55))
assert "torch" not in sys.modules
print(segmenter.provenance["backend"], result.processed_mask.shape, result.combined_attention.shape, boxed.box_labels.shape)
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT / "BreastUSSegment")})
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == f"{backend} (1, 70, 90) (1, 70, 90) (1, 70, 90)"


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_the_command_line_takes_a_backend_and_names_it(graph_weights, tmp_path, backend):
    skip_without(backend)
    from BreastUSSegmentLib.cli import main
    from BreastUSSegmentLib.imageio import write_image

    image = tmp_path / "frame.png"
    write_image(image, (np.random.default_rng(4).random((60, 60)) * 255).astype(np.uint8))
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stderr(out):
        status = main([str(image), "-o", str(tmp_path / "out"), "--weights", str(graph_weights),
                       "--backend", backend, "--precision", "fp32", "--no-figure"])
    assert status == 0
    assert f"network: {backend} fp32 on cpu" in out.getvalue()
    record = json.loads((tmp_path / "out" / "frame_measurements.json").read_text())
    assert record["provenance"]["backend"] == backend


def test_the_slicer_logic_segments_and_shows_attention_where_torch_cannot_be_imported():
    """The module's Logic on a slicer-core scene, PyTorch blocked: the panel's backend (OpenVINO where installed)
    runs the bundled model's graph, shows attention and is recorded on the segmentation; nothing to install."""
    installed = [name for name in ("openvino", "onnxruntime") if runtime.runtime_available(name)]
    if not installed:
        pytest.skip("neither onnxruntime nor openvino is installed")
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    backend = installed[0]
    script = BLOCK_TORCH + f"""
sys.path.insert(0, {str(ROOT / "Testing")!r})
from slicer_module import load_module
module = load_module()
import numpy as np, slicer
from PIL import Image
from BreastUSSegmentLib import BUNDLED_WEIGHTS
from BreastUSSegmentScene.dependencies import runtimesToOffer
from BreastUSSegmentScene.provenance import readProvenance
frame = np.asarray(Image.open({str(ROOT / "BreastUSSegment/Resources/Samples/breastus_sample_benign.png")!r}).convert("L"))
scene = slicer.vtkMRMLScene()
volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "frame")
slicer.util.updateVolumeFromArray(volume, frame[np.newaxis])
logic = module.BreastUSSegmentLogic()
options = module.SegmentationOptions(weightsPath=str(BUNDLED_WEIGHTS), device="cpu", backend={backend!r},
                                     precision="fp32")
output = logic.segment(volume, options=options)
attention = slicer.util.arrayFromVolume(output.attentionVolumeNode)
assert "torch" not in sys.modules
record = readProvenance(output.segmentationNode)
print(record["backend"], record["precision"], output.pipelineResult.processed_mask.any(),
      attention.shape == (1, *frame.shape), float(attention.max()) > 0, runtimesToOffer("auto", "auto"))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "BreastUSSegment")}
    env.pop("OMP_NUM_THREADS", None)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.split() == [backend, "float32", "True", "True", "True", "[]"]


def test_without_any_runtime_the_module_loads_offers_openvino_and_says_what_is_missing():
    """No runtime importable (all three blocked): the module imports, the first Segment lesion would offer
    OpenVINO (then ONNX Runtime, then PyTorch), and segmenting fails with a message naming the packages."""
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    script = BLOCK_TORCH.replace('name == "torch" or name.startswith("torch.")',
                                 'name.split(".")[0] in ("torch", "openvino", "onnxruntime")') + f"""
sys.path.insert(0, {str(ROOT / "Testing")!r})
from slicer_module import load_module
module = load_module()
import numpy as np, slicer
from BreastUSSegmentLib import BUNDLED_WEIGHTS
from BreastUSSegmentScene.dependencies import runtimesToOffer
scene = slicer.vtkMRMLScene()
volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "frame")
slicer.util.updateVolumeFromArray(volume, np.zeros((1, 40, 50), np.uint8))
print(" ".join(runtimesToOffer("auto", "auto")), "|", " ".join(runtimesToOffer("auto", "cuda")))
try:
    module.BreastUSSegmentLogic().segment(volume, options=module.SegmentationOptions(weightsPath=str(BUNDLED_WEIGHTS)))
except module.BreastUSSegmentError as error:
    print(error)
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT / "BreastUSSegment")}, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    offered, error = completed.stdout.split("\n", 1)
    assert offered == "openvino onnxruntime torch | torch"
    assert "no inference runtime is installed" in error and "openvino" in error and "onnxruntime" in error


def test_the_bundled_graph_is_checked_against_the_sha256_pinned_in_the_code(monkeypatch):
    """A replaced bundled graph with a model card edited to match is still refused."""
    from BreastUSSegmentLib import BUNDLED_ONNX_SHA256, BUNDLED_WEIGHTS
    from BreastUSSegmentLib.fileio import sha256_of_file

    card = read_model_card(BUNDLED_WEIGHTS)
    graph = runtime.verified_onnx_path(BUNDLED_WEIGHTS, card)
    assert sha256_of_file(graph) == BUNDLED_ONNX_SHA256 == card.onnx["sha256"]
    monkeypatch.setattr(runtime, "BUNDLED_ONNX_SHA256", "0" * 64)
    with pytest.raises(WeightsError, match="ships with"):
        runtime.verified_onnx_path(BUNDLED_WEIGHTS, card)
