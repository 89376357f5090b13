"""Cine clips loaded as Sequences: the browsed Sequence of a proxy volume, and results written as Sequence items
synchronized in the same browser, so they play with the clip."""

from contextlib import nullcontext
from typing import List, Optional

import numpy as np

import slicer
from BreastUSSegmentLib.descriptors import describe_frames
from BreastUSSegmentLib.measure import LesionMeasurement, measure_lesion

from .inputs import volumeArray, volumeSpacing
from .nodes import copyGeometry, helperNodesRemoved, kji, nodesOfClass
from .progress import WRITING, RunProgress
from .segments import arrayFromSegment, lesionSegmentId, updateAlgorithmType, writeLesionSegment


def browsedSequence(volumeNode):
    """``(browser, sequence)`` when ``volumeNode`` is the proxy node of a Sequence Browser in its scene
    (how Slicer's DICOM import loads a multi-frame ultrasound clip), else None."""
    scene = volumeNode.GetScene() if volumeNode is not None else None
    if scene is None:
        return None
    for browser in nodesOfClass(scene, "vtkMRMLSequenceBrowserNode"):
        if browser.IsProxyNode(volumeNode.GetID()):
            sequence = browser.GetSequenceNode(volumeNode)
            if sequence is not None and sequence.GetNumberOfDataNodes() > 0:
                return browser, sequence
    return None


def shownItem(browser, sequence) -> int:
    """Item number of ``sequence`` that the browser shows now (the browser steps through its primary sequence)."""
    primary, selected = browser.GetMasterSequenceNode(), browser.GetSelectedItemNumber()
    if primary is None or selected < 0:
        return 0
    if primary is sequence:
        return selected
    return max(sequence.GetItemNumberFromIndexValue(primary.GetNthIndexValue(selected), False), 0)


def frameItems(sequence):
    """``(frame nodes, index values)`` of every item of ``sequence``."""
    items = range(sequence.GetNumberOfDataNodes())
    return [sequence.GetNthDataNode(item) for item in items], [sequence.GetNthIndexValue(item) for item in items]


def writeSegmentationSequence(browser, sequence, proxySegmentationNode, masks, progress: Optional[RunProgress] = None):
    """Write each frame's mask into the Lesion segment of its item of the proxy's segmentation Sequence.

    An existing item keeps its other segments; a new item starts as a copy of the proxy's segments. The Sequence's
    own scene gets no node but the items (the writes' helper nodes are removed). ``progress`` hears of each item.
    """
    progress = progress or RunProgress()
    segmentationSequence, new = _proxySequence(browser, sequence, proxySegmentationNode)
    template = slicer.vtkMRMLSegmentationNode()
    template.GetSegmentation().DeepCopy(proxySegmentationNode.GetSegmentation())
    for frameNode, indexValue, frameMask in progress.each(WRITING, zip(*frameItems(sequence), masks)):
        item = segmentationSequence.GetDataNodeAtValue(indexValue)
        if item is None:
            item = segmentationSequence.SetDataNodeAtValue(template, indexValue)
        with helperNodesRemoved(item.GetScene()):
            writeLesionSegment(item, frameMask[np.newaxis], frameNode)
    if new:  # edits of the shown frame (Segment Editor) are saved into its item
        _synchronize(browser, segmentationSequence, proxySegmentationNode, saveChanges=True)
    return segmentationSequence


def writeVolumeSequence(browser, sequence, proxyVolumeNode, arrays, progress: Optional[RunProgress] = None):
    """Write each frame's ``arrays[frame]`` as the item of the proxy volume's Sequence, on that frame's geometry
    (``progress`` hears of each item)."""
    progress = progress or RunProgress()
    volumeSequence, new = _proxySequence(browser, sequence, proxyVolumeNode)
    frameVolume = slicer.vtkMRMLScalarVolumeNode()
    for frameNode, indexValue, array in progress.each(WRITING, zip(*frameItems(sequence), arrays)):
        slicer.util.updateVolumeFromArray(frameVolume, np.asarray(array, dtype=np.float32).reshape(kji(frameNode)))
        copyGeometry(frameNode, frameVolume)
        volumeSequence.SetDataNodeAtValue(frameVolume, indexValue)
    if new:
        _synchronize(browser, volumeSequence, proxyVolumeNode, saveChanges=False)
    return volumeSequence


def lesionMasks(browser, sequence, proxySegmentationNode) -> list:
    """``(frame node, masks)`` per frame of ``sequence``: the Lesion of its item in the proxy's segmentation
    Sequence, and of the proxy itself for the frame shown now (which may hold edits not yet saved into the item)."""
    segmentationSequence = browser.GetSequenceNode(proxySegmentationNode)
    shown = shownItem(browser, sequence)
    frames = []
    for item, (frameNode, indexValue) in enumerate(zip(*frameItems(sequence))):
        node = proxySegmentationNode if item == shown else segmentationSequence.GetDataNodeAtValue(indexValue)
        segmentId = lesionSegmentId(node)
        if segmentId is None:  # no item for this frame, or its Lesion was deleted
            masks = np.zeros(kji(frameNode), dtype=np.uint8)
        else:
            with helperNodesRemoved(node.GetScene()) if node is not proxySegmentationNode else nullcontext():
                masks = arrayFromSegment(node, segmentId, frameNode)
            updateAlgorithmType(node, segmentId, masks)
        frames.append((frameNode, masks))
    return frames


def measureMasks(frameMasks) -> List[LesionMeasurement]:
    """One measurement per ``(frame node, masks)`` of :func:`lesionMasks` (frame 1 the first)."""
    return [measure_lesion(masks[0], volumeSpacing(frameNode), frame=item + 1)
            for item, (frameNode, masks) in enumerate(frameMasks)]


def describeMasks(frameMasks, maxPixels: int) -> List[list]:
    """Per ``(frame node, masks)`` of :func:`lesionMasks`, its lesions' research-use descriptors (in the order
    :func:`measureMasks` gives them), from the frame's own pixels."""
    described = []
    for frameNode, masks in frameMasks:
        pixels, color = volumeArray(frameNode, maxPixels)
        described.extend(describe_frames(pixels, masks, volumeSpacing(frameNode), color=color))
    return described


def _proxySequence(browser, indexSequence, proxyNode):
    """``(sequence, new)``: the browser's Sequence behind ``proxyNode``, or a new one indexed like ``indexSequence``."""
    if browser.IsProxyNode(proxyNode.GetID()) and browser.GetSequenceNode(proxyNode) is not None:
        return browser.GetSequenceNode(proxyNode), False
    scene = proxyNode.GetScene()
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", scene.GenerateUniqueName(f"{proxyNode.GetName()} sequence"))
    sequence.SetIndexName(indexSequence.GetIndexName())
    sequence.SetIndexUnit(indexSequence.GetIndexUnit())
    sequence.SetIndexType(indexSequence.GetIndexType())
    return sequence, True


def _synchronize(browser, sequence, proxyNode, saveChanges: bool) -> None:
    """Add ``sequence`` to the browser with ``proxyNode`` as its proxy (as the Sequences module's
    ``AddSynchronizedNode`` does), in one modification so no other proxy node is made for it meanwhile."""
    wasModifying = browser.StartModify()
    try:
        browser.AddSynchronizedSequenceNode(sequence)
        browser.AddProxyNode(proxyNode, sequence, False)
        browser.SetSaveChanges(sequence, saveChanges)
    finally:
        browser.EndModify(wasModifying)
