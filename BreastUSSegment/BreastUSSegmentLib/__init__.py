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
# The package's dependencies, one requirement a line: pyproject.toml reads both files, the Slicer module the
# library's only (the command line's progress bar is not installed into Slicer).
DEPENDENCIES_FILE = Path(__file__).resolve().parent / "dependencies.txt"
COMMAND_LINE_DEPENDENCIES_FILE = Path(__file__).resolve().parent / "cli-dependencies.txt"


def dependencies(command_line: bool = True) -> list[str]:
    """The core's requirements (``name`` or ``name>=version``): the library's (``DEPENDENCIES_FILE``) and, with
    ``command_line``, those only ``breastus-segment`` needs (``COMMAND_LINE_DEPENDENCIES_FILE``)."""
    files = [DEPENDENCIES_FILE] + ([COMMAND_LINE_DEPENDENCIES_FILE] if command_line else [])
    lines = (line.split("#")[0].strip() for path in files for line in path.read_text().splitlines())
    return [line for line in lines if line]
