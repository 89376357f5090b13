"""One core result (``BreastUSSegmentLib.inference.SegmentationResult``) into the scene: for a volume, a Sequence's
proxy volume or box prompts; and one live frame's result (``BreastUSSegmentLib.stream.FrameResult``).

The writers only write: the caller makes the output segmentation, checks the nodes are still in the scene and
removes what a failed write added (``nodes.nodesRemovedOnFailure``).
"""

from dataclasses import dataclass
from typing import Any, List, Optional

import numpy as np

from .progress import RunProgress
from .results import writeResultVolumes
from .segments import showSegments, writeBoxSegment, writeLesionSegment
from .sequences import shownItem, writeSegmentationSequence, writeVolumeSequence


@dataclass
class WrittenResult:
    """The nodes a result went into, and the masks written into each segment (one per frame of the volume)."""

    segmentIds: List[str]  # the Lesion segment, or one segment per ROI
    masks: List[np.ndarray]  # the ``(K, J, I)`` masks written into each segment
    attentionVolumeNode: Any
    probabilityVolumeNode: Any = None
    sequenceNode: Any = None  # a Sequence's segmentation Sequence (one item per frame)


def writeVolumeResult(segmentationNode, referenceVolumeNode, result, probability: bool = False) -> WrittenResult:
    """The Lesion segment, the attention volume and (with ``probability``) the probability volume of ``result``
    on the frames of ``referenceVolumeNode``."""
    segmentId = writeLesionSegment(segmentationNode, result.processed_mask, referenceVolumeNode)
    return _finishVolume(segmentationNode, referenceVolumeNode, result, probability, [segmentId], [result.processed_mask])


def writeBoxResult(segmentationNode, referenceVolumeNode, roiNodes, prompts, result,
                   probability: bool = False) -> WrittenResult:
    """One segment per ROI ("Lesion 1", "Lesion 2", ...; ``prompts`` says which boxes came from which ROI),
    and the result volumes as :func:`writeVolumeResult` writes them."""
    masks = [prompts.roiMasks(result.box_labels, number) for number in range(len(roiNodes))]
    segmentIds = [writeBoxSegment(segmentationNode, roi, number + 1, roiMasks, referenceVolumeNode)
                  for number, (roi, roiMasks) in enumerate(zip(roiNodes, masks))]
    return _finishVolume(segmentationNode, referenceVolumeNode, result, probability, segmentIds, masks)


def _finishVolume(segmentationNode, referenceVolumeNode, result, probability, segmentIds, masks) -> WrittenResult:
    # A 3D surface for a single frame only: a clip's would be rebuilt on every run and frame.
    showSegments(segmentationNode, surface=result.frame_count == 1)
    attentionVolume, probabilityVolume = writeResultVolumes(segmentationNode, result, referenceVolumeNode, probability)
    return WrittenResult(segmentIds, masks, attentionVolume, probabilityVolume)


def writeLiveFrame(segmentationNode, referenceVolumeNode, result) -> None:
    """One live frame's result (``stream.FrameResult``) into the Lesion segment and the attention volume, in place:
    the nodes are made on the first frame only, and no 3D surface is built (it would be rebuilt on every frame)."""
    writeLesionSegment(segmentationNode, result.processed_mask[np.newaxis], referenceVolumeNode)
    showSegments(segmentationNode, surface=False)
    writeResultVolumes(segmentationNode, result, referenceVolumeNode, probability=False)


def writeSequenceResult(segmentationNode, browser, sequence, proxyVolumeNode, result,
                        probability: bool = False, progress: Optional[RunProgress] = None) -> WrittenResult:
    """Each frame's Lesion into the item of the same index value of a segmentation Sequence synchronized in
    ``browser`` with ``segmentationNode`` as its proxy (edits of the shown frame are saved into its item); the
    attention (and probability) maps as volume Sequences of the browser. The proxy nodes show the frame the
    browser shows now; they get no 3D surface (it would be rebuilt on every frame change). ``progress`` hears
    of each item written."""
    progress = progress or RunProgress()
    shown = shownItem(browser, sequence)
    segmentationSequence = writeSegmentationSequence(browser, sequence, segmentationNode, result.processed_mask,
                                                     progress)
    segmentId = writeLesionSegment(segmentationNode, result.processed_mask[shown][np.newaxis], proxyVolumeNode)
    showSegments(segmentationNode, surface=False)
    attentionVolume, probabilityVolume = writeResultVolumes(
        segmentationNode, result, proxyVolumeNode, probability, frame=shown)
    writeVolumeSequence(browser, sequence, attentionVolume, result.combined_attention, progress)
    if probabilityVolume is not None:
        writeVolumeSequence(browser, sequence, probabilityVolume, result.probability, progress)
    return WrittenResult([segmentId], [result.processed_mask], attentionVolume, probabilityVolume, segmentationSequence)
