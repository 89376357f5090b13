"""Where a segmentation came from, kept on its node as attributes: the core's provenance (software, model file and
sha256, every setting, device and precision; ``BreastUSSegmentLib.sidecar.provenance``), one attribute per value.

Each attribute is named by its key path in the command line's sidecar JSON under :data:`PROVENANCE_ATTRIBUTE_PREFIX`
(e.g. ``BreastUSSegment.provenance.model.sha256``), so Slicer's node information lists them one per line.
"""

import json
from typing import Optional

from .common import PROVENANCE_ATTRIBUTE_PREFIX


def runProvenance(segmenter, postprocessing, inputVolumeNode, boxAllFrames: Optional[bool] = None) -> dict:
    """The provenance of one run of ``segmenter`` with ``postprocessing`` on ``inputVolumeNode``; with box prompts
    (``boxAllFrames``: whether each box covered every frame) the box settings too."""
    from BreastUSSegmentLib.boxes import CONTEXT_MARGIN, FRAME_WEIGHT
    from BreastUSSegmentLib.sidecar import segmenter_provenance

    settings = {}
    if boxAllFrames is not None:  # the module leaves the core's box settings at their defaults
        settings = {"box_all_frames": boxAllFrames, "box_context_margin": CONTEXT_MARGIN,
                    "box_frame_weight": FRAME_WEIGHT}
    record = segmenter_provenance(segmenter, {**postprocessing.to_dict(), **settings})
    record["input"] = {"volume": inputVolumeNode.GetName()}
    return record


def flatten(record: dict, prefix: str = "") -> dict:
    """``record``'s values by their key path ("model.sha256"), as text (JSON for numbers, booleans and None)."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


def writeProvenance(node, record: dict) -> None:
    """Replace the provenance attributes of ``node`` with those of ``record`` (none of an earlier run remain)."""
    wasModifying = node.StartModify()
    try:
        for name in node.GetAttributeNames() or ():
            if name.startswith(PROVENANCE_ATTRIBUTE_PREFIX):
                node.RemoveAttribute(name)
        for key, value in flatten(record).items():
            node.SetAttribute(PROVENANCE_ATTRIBUTE_PREFIX + key, value)
    finally:
        node.EndModify(wasModifying)


def writeSequenceProvenance(sequenceNode, record: dict) -> None:
    """:func:`writeProvenance` on a segmentation Sequence and each of its items: browsing copies an item, with its
    attributes, into the proxy segmentation, which so keeps the record on every frame."""
    writeProvenance(sequenceNode, record)
    for item in range(sequenceNode.GetNumberOfDataNodes()):
        writeProvenance(sequenceNode.GetNthDataNode(item), record)


def readProvenance(node) -> dict:
    """The provenance attributes of ``node``, by key path ("model.sha256" -> its text)."""
    return {name[len(PROVENANCE_ATTRIBUTE_PREFIX):]: node.GetAttribute(name)
            for name in node.GetAttributeNames() or () if name.startswith(PROVENANCE_ATTRIBUTE_PREFIX)}
