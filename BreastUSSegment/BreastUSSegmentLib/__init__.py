"""Core of SlicerBreastUS: model, pre/post-processing, inference and image I/O.

Nothing in this package imports Slicer or Qt, so the Slicer module, the command
line, the Training package and the tests share one implementation.
"""

from pathlib import Path

__version__ = "0.1.0"

# The trained model ships inside the package (package data), so every installation has it.
BUNDLED_WEIGHTS = Path(__file__).resolve().parent / "bundled" / "breastus_attention_unet.safetensors"
# Its sha256, pinned in the code: unlike the model card's, a replaced file cannot bring a matching one along.
# `breastus-train export` to the bundled path prints the new value to put here.
BUNDLED_SHA256 = "791ce0018624d49e957f87ade5a3288f19a8c887798b811f8d7ae39c66e3557c"
# Its ONNX graph's (runtime.py), pinned alike; `breastus-train onnx` on the bundled model prints the new value.
BUNDLED_ONNX_SHA256 = "46bcce2c69ea560b7416247fb99fdf37da0bb5c4dd823f7fc785b9d74a4a1f2a"
# The package's dependencies, one requirement a line: pyproject.toml and the Slicer module read them here.
DEPENDENCIES_FILE = Path(__file__).resolve().parent / "dependencies.txt"
COMMAND_LINE_DEPENDENCIES_FILE = Path(__file__).resolve().parent / "cli-dependencies.txt"


def dependencies(command_line: bool = True) -> list[str]:
    """The core's requirements (``name`` or ``name>=version``): the library's (``DEPENDENCIES_FILE``) and, with
    ``command_line``, those only ``breastus-segment`` needs (``COMMAND_LINE_DEPENDENCIES_FILE``)."""
    files = [DEPENDENCIES_FILE] + ([COMMAND_LINE_DEPENDENCIES_FILE] if command_line else [])
    lines = (line.split("#")[0].strip() for path in files for line in path.read_text().splitlines())
    return [line for line in lines if line]
