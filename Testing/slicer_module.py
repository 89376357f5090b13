"""Load the Slicer module file ``BreastUSSegment/BreastUSSegment.py`` as a Python module for the tests."""

import importlib.util
import sys
from pathlib import Path

MODULE_PATH = Path(__file__).resolve().parents[1] / "BreastUSSegment" / "BreastUSSegment.py"
SAMPLES_DIR = MODULE_PATH.parent / "Resources" / "Samples"  # the module's sample frames


def load_module():
    """Import the module file (registered as ``BreastUSSegment`` in ``sys.modules``) and return it."""
    spec = importlib.util.spec_from_file_location("BreastUSSegment", MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["BreastUSSegment"] = module
    spec.loader.exec_module(module)
    return module
