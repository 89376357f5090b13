"""Core of SlicerBreastUS: model, pre/post-processing, inference and image I/O.

Nothing in this package imports Slicer or Qt, so the Slicer module, the command
line, the Training package and the tests share one implementation.
"""

from pathlib import Path

__version__ = "0.1.0"

MODULE_DIR = Path(__file__).resolve().parent.parent
RESOURCES_DIR = MODULE_DIR / "Resources"
BUNDLED_WEIGHTS = RESOURCES_DIR / "Models" / "breastus_attention_unet.safetensors"
SAMPLES_DIR = RESOURCES_DIR / "Samples"
