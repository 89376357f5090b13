"""Installing what the module needs inside Slicer, after asking the user: the core library's packages and a
runtime for the network (a small CPU runtime; PyTorch, through the PyTorch extension, only where it is needed).

The decisions are :mod:`.dependencies`' (tested without Slicer); this module only asks, installs and reports
through ``setStatus(text, error=False)``.
"""

import importlib
import importlib.util
import logging
import platform
from typing import Callable, Optional

import slicer

from . import models
from .common import BreastUSSegmentError, _
from .dependencies import (
    RUNTIME_SIZES_MB, importableRuntimes, installedVersions, moduleRequirements, runtimesToOffer,
    torchVersionRequirement, unmetRequirements,
)


def ensureDependencies(backend: str, device: str, weightsPath, setStatus: Callable[..., None]) -> bool:
    """Install, after asking the user, the core library's packages and, when none is installed that can run the
    chosen backend on the chosen device, a network runtime: a small CPU one, PyTorch only where it is needed."""
    missing = unmetRequirements(moduleRequirements())
    if missing:
        if not slicer.util.confirmOkCancelDisplay(
            _("This module needs the Python packages {packages} (missing or too old). Download and install "
              "them now?").format(
                packages=", ".join(missing)
            )
        ):
            setStatus(_("Missing Python packages: {packages}.").format(packages=", ".join(missing)), error=True)
            return False
        with slicer.util.WaitCursor():
            slicer.util.pip_install(missing)
    try:
        graph = bool(models.modelCard(weightsPath).onnx)
    except BreastUSSegmentError:
        graph = True  # followModelCard shows what is wrong with the card
    offered = runtimesToOffer(backend, device, graph=graph)
    for runtime in offered:
        if runtime == "torch":
            return ensurePyTorch(setStatus)
        installed = installRuntime(runtime, setStatus)
        if installed is not None:
            return installed
    if offered:  # the one runtime this backend names could not be installed
        setStatus(_("No runtime for the {backend} backend could be installed: choose another backend under "
                          "Advanced.").format(backend=backend), error=True)
        return False
    if runtimesToOffer(backend, device, importableRuntimes() - {"torch"}, graph):
        return ensurePyTorch(setStatus)  # only PyTorch can run this choice: check its version
    return True


def installRuntime(runtime: str, setStatus: Callable[..., None]) -> Optional[bool]:
    """Install the CPU runtime ``runtime`` (a core backend name) with pip after asking: True when installed,
    False when the user declines, None when pip failed (most often: no wheel for this Python; said in a
    dialog)."""
    names = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}
    if not slicer.util.confirmOkCancelDisplay(_(
        "Segmenting needs a runtime for the network and none is installed. Download and install {name} "
        "(about {size} MB installed; it runs the model on the CPU, no PyTorch needed)?").format(
            name=names[runtime], size=RUNTIME_SIZES_MB[runtime])):
        setStatus(_("No network runtime is installed: segmenting needs OpenVINO, ONNX Runtime or PyTorch."),
                        error=True)
        return False
    try:
        with slicer.util.WaitCursor():
            slicer.util.pip_install(runtime)
    except Exception as error:  # pip failed: most often no wheel for this Python or platform
        message = _("{name} could not be installed for Python {version}: {error}").format(
            name=names[runtime], version=platform.python_version(), error=error)
        logging.warning(message)
        slicer.util.warningDisplay(message)
        return None
    importlib.invalidate_caches()  # so that the core finds the new package
    return True


def ensurePyTorch(setStatus: Callable[..., None]) -> bool:
    """Install PyTorch through the PyTorch extension after asking (about its size), and check its version."""
    if importlib.util.find_spec("torch") is None:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            message = _("This choice of backend or device needs PyTorch. Install the 'PyTorch' extension from "
                        "the Extensions Manager, restart Slicer and click Segment lesion again (or choose the "
                        "OpenVINO or ONNX Runtime backend on the CPU under Advanced).")
            setStatus(message, error=True)
            slicer.util.errorDisplay(message)
            return False
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            torch = torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=torchVersionRequirement())
            if torch is None:
                setStatus(_("PyTorch (about {size} MB installed for the CPU) is required for this backend "
                                  "or device; installation was cancelled.").format(size=RUNTIME_SIZES_MB["torch"]),
                                error=True)
                return False
    torchRequirement = "torch" + torchVersionRequirement()
    versions = installedVersions()
    torchVersion = versions.get("torch")
    if torchVersion and unmetRequirements([torchRequirement], versions):
        raise BreastUSSegmentError(_(
            "PyTorch {version} is installed but this module needs {requirement}: update it in the PyTorch Utils "
            "module, restart Slicer and click Segment lesion again.").format(
                version=torchVersion, requirement=torchRequirement))
    return True
