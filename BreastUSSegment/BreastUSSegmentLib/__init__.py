"""Core of SlicerBreastUS: model, pre/post-processing, inference and image I/O.

Nothing in this package imports Slicer or Qt, so the Slicer module, the command
line, the Training package and the tests share one implementation.
"""

from pathlib import Path

__version__ = "0.1.0"

# The trained model ships inside the package (package data), so every installation has it.
BUNDLED_WEIGHTS = Path(__file__).resolve().parent / "bundled" / "breastus_attention_unet.safetensors"
