"""Load the Slicer module file ``BreastUSSegment/BreastUSSegment.py`` as a Python module for the tests."""

import importlib.util
import sys
from pathlib import Path

MODULE_PATH = Path(__file__).resolve().parents[1] / "BreastUSSegment" / "BreastUSSegment.py"
SAMPLES_DIR = MODULE_PATH.parent / "Resources" / "Samples"  # the module's sample frames
# Like Slicer, the module's folder is on sys.path, so that its package BreastUSSegmentScene (beside it, not
# installed with the core) imports, in the tests too.
if str(MODULE_PATH.parent) not in sys.path:
    sys.path.insert(0, str(MODULE_PATH.parent))
# Code that loads the module in a fresh interpreter (``python -c``), as ``load_module`` does.
LOAD_MODULE_CODE = (
    "import importlib.util, sys\n"
    f"sys.path.insert(0, {str(MODULE_PATH.parent)!r})\n"
    f"spec = importlib.util.spec_from_file_location('BreastUSSegment', {str(MODULE_PATH)!r})\n"
    "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
)


def load_module():
    """Import the module file (registered as ``BreastUSSegment`` in ``sys.modules``) and return it."""
    spec = importlib.util.spec_from_file_location("BreastUSSegment", MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["BreastUSSegment"] = module
    spec.loader.exec_module(module)
    return module
