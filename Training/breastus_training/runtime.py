"""How ``evaluate`` and ``sweep`` run the network, alike for both: the backend and the precision it computes in.

One place for these options: ``add_arguments`` adds the flags, ``segmenter_options`` turns them into
``LesionSegmenter`` arguments and ``record``/``describe`` say in a report what was used.
"""

from __future__ import annotations

import argparse

from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.runtime import BACKEND_CHOICES, PRECISION_CHOICES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="torch",
                        help="what runs the network: torch (default: the reference the README's tables and the "
                             "other backends' agreement are measured with), openvino, onnxruntime or auto (as "
                             "breastus-segment chooses)")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="what the network computes in: auto (bfloat16 on a CPU with native bf16, as the "
                             "extension runs it; float32 elsewhere), fp32 (the README's tables; the same numbers "
                             "on any CPU), or bf16 (CPU only); default auto")


def segmenter_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of ``LesionSegmenter.from_weights`` from the parsed flags."""
    return {"backend": args.backend, "precision": args.precision}


def record(segmenter: LesionSegmenter) -> dict:
    """What a report records of how the network ran."""
    return {"backend": segmenter.provenance["backend"], "precision": segmenter.precision,
            "precision_requested": segmenter.requested_precision, "cpu_bf16": segmenter.cpu_bf16}


def describe(options: dict) -> str:
    """One phrase for a report's Markdown; reports from before ``--precision`` recorded ``cpu_bf16`` only."""
    precision = options.get("precision") or ("bf16" if options.get("cpu_bf16") else "fp32")
    requested = options.get("precision_requested")
    backend = options.get("backend", "torch")
    return f"backend {backend}, network precision: {precision}" + (f" (requested {requested})" if requested else "")
