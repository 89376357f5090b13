"""Write a model's ONNX graph beside its weights and measure each backend's agreement with PyTorch float32.

``breastus-train onnx --weights W`` exports the network of ``W`` (its model card
unchanged but for the new ``onnx`` block) as ``W.onnx``: batch axis dynamic, every
output named (``logits``, ``attention_<i>`` per gate, coarsest first, ``lesion_logit``
where the model has a head). Storage ``float16`` keeps the weights of the graph in
half precision (a Cast to float32 in front of each), which halves the file; the
graph computes in float32.

With ``--data`` and ``--split`` every installed backend and precision segments the
val images of the split and its processed masks are compared with PyTorch float32
(Dice per image; two empty masks agree) along with the combined attention maps
(Pearson correlation); the numbers go into the card's ``onnx.agreement``, and a
backend with a mean Dice below ``AGREEMENT_DICE`` is marked failed (``backend="auto"``
does not choose it). A float16 graph whose fp32 runtimes fail is written in float32.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from BreastUSSegmentLib import BUNDLED_ONNX_SHA256, BUNDLED_WEIGHTS
from BreastUSSegmentLib.fileio import sha256_of_file, write_atomically, write_text_atomically
from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.metrics import dice_score
from BreastUSSegmentLib.modelcard import card_path_for, read_model_card
from BreastUSSegmentLib.runtime import BackendChoice, onnx_output_names, open_runner, runtime_available
from BreastUSSegmentLib.weights import load_model

from .busi import load_case, load_manifest
from .datasets import DataRoots

OPSET = 18
GRAPH_DTYPES = ("float32", "float16")
# The mean processed-mask Dice to PyTorch float32 over the val images that a backend and precision (here) and
# half-precision stored weights (export.py, issue 15) must reach.
AGREEMENT_DICE = 0.99
AGREEMENT_SUBSET = "val"
# Every backend and precision measured against torch-fp32 (those whose runtime is installed).
CANDIDATES = (BackendChoice("torch", "bf16"), BackendChoice("onnxruntime", "fp32"),
              BackendChoice("openvino", "fp32"), BackendChoice("openvino", "bf16"))


class _FlatOutputs(nn.Module):
    """The network with its outputs as one flat tuple, in the order of ``onnx_output_names``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        output = self.model(image)
        return (output.logits, *output.attention) + (() if output.lesion_logit is None else (output.lesion_logit,))


def export_graph(model: nn.Module, input_size, path: str | os.PathLike, storage_dtype: str = "float32") -> None:
    """Write ``model``'s ONNX graph (opset ``OPSET``, dynamic batch) to ``path`` atomically."""
    import onnx

    if storage_dtype not in GRAPH_DTYPES:
        raise ValueError(f"graph storage must be one of {', '.join(GRAPH_DTYPES)}, got {storage_dtype!r}")
    config = model.config
    names = onnx_output_names(config.depth, config.lesion_head)
    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / "graph.onnx"
        with warnings.catch_warnings():  # the tracer's notes on shape checks, constant at a fixed input size
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _FlatOutputs(model.float().eval()), torch.zeros(1, config.in_channels, *input_size), str(plain),
                input_names=["image"], output_names=names, opset_version=OPSET, dynamo=False,
                dynamic_axes={name: {0: "batch"} for name in ["image", *names]},
            )
        graph = onnx.load(str(plain))
    if storage_dtype == "float16":
        graph = half_precision_weights(graph)
    onnx.checker.check_model(graph)
    write_atomically(Path(path), lambda temporary: onnx.save(graph, str(temporary)))


def half_precision_weights(graph):
    """The graph with every float32 weight stored as float16 and cast back to float32 where it is used."""
    import onnx
    from onnx import helper, numpy_helper

    kept, casts = [], []
    for tensor in graph.graph.initializer:
        if tensor.data_type != onnx.TensorProto.FLOAT:
            kept.append(tensor)
            continue
        values = numpy_helper.to_array(tensor)
        half = values.astype(np.float16)
        if not np.isfinite(half[np.isfinite(values)]).all():
            raise ValueError(f"weight {tensor.name} has values beyond float16; store the graph in float32")
        kept.append(numpy_helper.from_array(half, tensor.name + "_fp16"))
        casts.append(helper.make_node("Cast", [tensor.name + "_fp16"], [tensor.name], to=onnx.TensorProto.FLOAT))
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(kept)
    nodes = casts + list(graph.graph.node)
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    return graph


def attach_graph(weights_path: str | os.PathLike, storage_dtype: str = "float16") -> dict:
    """Export the graph of the model at ``weights_path`` as ``<name>.onnx`` and list it in the model card."""
    weights_path = Path(weights_path)
    model, card = load_model(weights_path, device="cpu")
    graph_path = weights_path.with_suffix(".onnx")
    export_graph(model, tuple(card.input_size), graph_path, storage_dtype)
    card.onnx = {"file": graph_path.name, "sha256": sha256_of_file(graph_path), "storage_dtype": storage_dtype,
                 "opset": OPSET, "outputs": onnx_output_names(card.model_config.depth, card.model_config.lesion_head)}
    write_text_atomically(card_path_for(weights_path), card.to_json())
    return card.onnx


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two maps (1.0 when both are constant and equal)."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def measure_agreement(weights_path, data_roots, split_path, choices=CANDIDATES, progress: bool = True,
                      threads: int | None = None) -> dict:
    """Per ``backend-precision``: processed-mask Dice and attention correlation to torch-fp32 on the val images,
    overall and per dataset. Backends whose runtime is missing are left out."""
    from tqdm import tqdm

    roots, manifest = DataRoots.from_paths(data_roots), load_manifest(split_path)
    cases = manifest.cases_for(AGREEMENT_SUBSET)
    if not cases:
        raise ValueError(f"the split {split_path} has no {AGREEMENT_SUBSET} case")
    if threads:
        torch.set_num_threads(threads)
    reference = LesionSegmenter.from_weights(weights_path, "cpu", backend="torch", precision="fp32")
    segmenters = {}
    for choice in choices:
        if runtime_available(choice.backend):
            segmenters[choice.key] = LesionSegmenter.from_weights(
                weights_path, "cpu", backend=choice.backend, precision=choice.precision, threads=threads)
    scores = {key: [] for key in segmenters}
    for case in tqdm(cases, desc="backend agreement", unit="image", disable=not progress):
        image, _ = load_case(roots, case)
        expected = reference.segment(image)
        for key, segmenter in segmenters.items():
            result = segmenter.segment(image)
            scores[key].append((case.dataset, dice_score(expected.processed_mask[0], result.processed_mask[0]),
                                pearson(expected.combined_attention[0], result.combined_attention[0])))
    return {key: summarize(rows) for key, rows in scores.items()}


def summarize(rows: list) -> dict:
    def block(part):
        dice = np.array([row[1] for row in part])
        correlation = np.array([row[2] for row in part])
        return {"images": len(part), "dice_mean": float(dice.mean()), "dice_min": float(dice.min()),
                "attention_correlation_mean": float(correlation.mean()),
                "attention_correlation_min": float(correlation.min())}

    summary = block(rows)
    summary["passed"] = summary["dice_mean"] >= AGREEMENT_DICE
    summary["per_dataset"] = {name: block([row for row in rows if row[0] == name])
                              for name in sorted({row[0] for row in rows})}
    return summary


def agreement_table(agreement: dict) -> str:
    """The agreement as a Markdown table (one row per backend and dataset)."""
    lines = ["| backend | val images | processed-mask Dice mean (min) | attention correlation mean (min) |",
             "|---|---|---|---|"]
    for key, values in agreement.items():
        for name, part in [("all", values), *values["per_dataset"].items()]:
            lines.append(f"| {key} ({name}) | {part['images']} | {part['dice_mean']:.4f} ({part['dice_min']:.4f}) | "
                         f"{part['attention_correlation_mean']:.4f} ({part['attention_correlation_min']:.4f}) |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, required=True, help="a .safetensors model with its model card")
    parser.add_argument("--storage-dtype", choices=GRAPH_DTYPES, default="float16",
                        help="how the graph stores its weights (default float16; written in float32 instead if the "
                             "float32 runtimes then miss the agreement)")
    parser.add_argument("--data", type=Path, action="append", help="a dataset folder of the split; repeat for each")
    parser.add_argument("--split", type=Path, help="the split whose val images measure the agreement")
    parser.add_argument("--threads", type=int, help="CPU threads of every runtime (default: each runtime's own)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    if bool(args.data) != (args.split is not None):
        raise ValueError("--data and --split go together (the agreement check)")
    graph = attach_graph(args.weights, args.storage_dtype)
    print(f"wrote {args.weights.with_name(graph['file'])} (weights stored in {graph['storage_dtype']}), "
          f"sha256 {graph['sha256']}")
    if args.weights.resolve() == BUNDLED_WEIGHTS.resolve() and graph["sha256"] != BUNDLED_ONNX_SHA256:
        print(f"the bundled graph changed: set BUNDLED_ONNX_SHA256 = \"{graph['sha256']}\" in BreastUSSegmentLib/__init__.py")
    if not args.data:
        return 0
    agreement = measure_agreement(args.weights, args.data, args.split, progress=not args.no_progress,
                                      threads=args.threads)
    fp32_failed = [key for key, values in agreement.items() if key.endswith("fp32") and not values["passed"]]
    if fp32_failed and args.storage_dtype == "float16":
        print(f"float16 graph: {', '.join(fp32_failed)} below mean Dice {AGREEMENT_DICE}; writing it in float32")
        graph = attach_graph(args.weights, "float32")
        agreement = measure_agreement(args.weights, args.data, args.split, progress=not args.no_progress,
                                      threads=args.threads)
    card = read_model_card(args.weights)
    card.onnx = {**card.onnx, "agreement": agreement, "agreement_split_sha256": load_manifest(args.split).sha256}
    write_text_atomically(card_path_for(args.weights), card.to_json())
    print(agreement_table(agreement))
    return 0
