"""The Python packages the module needs inside Slicer (the core's and one network runtime), and whether the
installed versions meet them."""

import re
from typing import Optional

from BreastUSSegmentLib import dependencies


def torchVersionRequirement() -> str:
    """The core's PyTorch version requirement, e.g. ``>=2.5``, for the PyTorch extension's installer."""
    from BreastUSSegmentLib.runtime import TORCH_REQUIREMENT

    return TORCH_REQUIREMENT[len("torch"):].strip()


def moduleRequirements() -> list:
    """The core library's requirements (no network runtime: see :func:`runtimesToOffer`); not the command line's."""
    return dependencies(command_line=False)


# Installed size of each runtime in MB (du of its site-packages folders, CPU builds; issue 35), for the question.
RUNTIME_SIZES_MB = {"openvino": 180, "onnxruntime": 78, "torch": 754}


def importableRuntimes() -> set:
    """The network runtimes (the core's backend names) this Python can import."""
    from BreastUSSegmentLib.runtime import RUNTIME_PACKAGES, runtime_available

    return {name for name in RUNTIME_PACKAGES if runtime_available(name)}


def runtimesToOffer(backend: str = "auto", device: str = "auto", importable: Optional[set] = None,
                    graph: bool = True) -> list:
    """The runtimes to offer installing, best first, for running the network with ``backend`` on ``device`` (the
    core's names); empty when a runtime that can do it is importable already (``importable``: by default this
    Python's).

    A GPU (``cuda``, ``mps``), ``backend="torch"`` or a model without an ONNX graph (``graph`` False: its card
    lists none) needs PyTorch; a named graph runtime needs itself; ``auto`` on the CPU is served by any of them,
    so the small ones come first: OpenVINO, then ONNX Runtime (for a Python that OpenVINO has no wheel for), then
    PyTorch.
    """
    importable = importableRuntimes() if importable is None else set(importable)
    if backend == "torch" or device in ("cuda", "mps") or (backend == "auto" and not graph):
        usable = ["torch"]
    elif backend in ("openvino", "onnxruntime"):
        usable = [backend]
    else:
        usable = ["openvino", "onnxruntime", "torch"]
    return [] if importable & set(usable) else usable


def _distributionKey(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installedVersions() -> dict:
    """``{distribution name: version}`` of this Python's installed distributions (names lower case, ``-``)."""
    from importlib.metadata import distributions

    return {_distributionKey(distribution.metadata["Name"]): distribution.version
            for distribution in distributions() if distribution.metadata["Name"]}


def unmetRequirements(requirements, installed: Optional[dict] = None) -> list:
    """The ``requirements`` (pip strings) that no installed distribution satisfies, missing or too old.

    ``installed``: ``{distribution name: version}``, by default this Python's (``importlib.metadata``); versions
    are compared with ``packaging``, which Slicer bundles.
    """
    from packaging.requirements import Requirement

    versions = installedVersions() if installed is None else {_distributionKey(name): version
                                                              for name, version in installed.items()}
    unmet = []
    for text in requirements:
        requirement = Requirement(text)
        version = versions.get(_distributionKey(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            unmet.append(text)
    return unmet
