"""The Python packages the module needs inside Slicer, and whether the installed versions meet them."""

import re
from typing import Optional

from BreastUSSegmentLib import dependencies


def _requirementName(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0)


def torchVersionRequirement() -> str:
    """The core's PyTorch version requirement, e.g. ``>=2.5``, for the PyTorch extension's installer."""
    [torch] = [requirement for requirement in dependencies() if _requirementName(requirement) == "torch"]
    return torch[len("torch"):].strip()


def moduleRequirements() -> list:
    """The core library's requirements but PyTorch (its extension installs it); not the command line's."""
    return [requirement for requirement in dependencies(command_line=False) if _requirementName(requirement) != "torch"]


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
