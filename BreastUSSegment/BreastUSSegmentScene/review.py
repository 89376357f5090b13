"""The panel's "Review and export": measuring the (possibly edited) Lesion segment again, the descriptors of the
frame shown, and the Lesion segment exported as a labelmap."""

import os
from typing import List

from BreastUSSegmentLib.measure import LesionMeasurement

from . import inputs, measurements, nodes, segments, sequences, status
from .common import LABELMAP_SUFFIXES, MEASUREMENT_TABLE_ROLE, BreastUSSegmentError, _
from .progress import RunProgress


def measureLesion(segmentationNode, referenceVolumeNode, maxInputPixels: int, segmentId=None) -> List[LesionMeasurement]:
    """Every lesion (connected region) of the lesion segment measured on its own, one entry per frame of the
    reference volume; written into the measurement table, one row per lesion per frame."""
    segmentId = lesionSegmentIdOf(
        segmentationNode, referenceVolumeNode, _("Select the input volume and the segmentation to measure."), segmentId)
    clip = sequences.browsedSequence(referenceVolumeNode)
    if clip is not None and clip[0].GetSequenceNode(segmentationNode) is not None:
        frameMasks = sequences.lesionMasks(*clip, segmentationNode)
        frames = sequences.measureMasks(frameMasks)
        measurements.lesionTable(segmentationNode, segmentId, frames, clip[1],
                          sequences.describeMasks(frameMasks, maxInputPixels))
        return frames
    masks = segments.arrayFromSegment(segmentationNode, segmentId, referenceVolumeNode)
    segments.updateAlgorithmType(segmentationNode, segmentId, masks)
    pixels, color = inputs.volumeArray(referenceVolumeNode, maxInputPixels)
    frames, described = measurements.measureFrames(masks, pixels, color, inputs.volumeSpacing(referenceVolumeNode),
                                                   RunProgress())
    measurements.lesionTable(segmentationNode, segmentId, frames, descriptors=described)
    return frames

def shownDescriptors(segmentationNode, referenceVolumeNode) -> str:
    """The research-use descriptor lines of the measurement table for the frame shown (a Sequence's current
    item; otherwise the frame of the largest lesion): see :func:`BreastUSSegmentScene.status.descriptorSummary`.
    Empty when the segmentation has no measurement table yet."""
    tableNode = segmentationNode.GetNodeReference(MEASUREMENT_TABLE_ROLE) if segmentationNode else None
    if tableNode is None:
        return ""
    rows = measurements.readTableRows(tableNode)
    frameCount = max((row["frame"] for row in rows), default=1)
    clip = sequences.browsedSequence(referenceVolumeNode) if referenceVolumeNode else None
    if clip is not None:
        frame = sequences.shownItem(*clip) + 1
    else:
        lesions = [row for row in rows if row["lesion"]]
        frame = max(lesions, key=lambda row: (row["area"], -row["frame"]))["frame"] if lesions else 1
    return status.descriptorSummary(rows, frame, frameCount)

def exportLabelmap(segmentationNode, referenceVolumeNode, path=None, overwrite: bool = False):
    """The Lesion segment as a labelmap volume node (lesion = 1) on the reference grid, written to ``path`` if given.

    ``path`` must end with .nrrd, .nii or .nii.gz; an existing file is only replaced with ``overwrite=True``.
    """
    segmentId = lesionSegmentIdOf(
        segmentationNode, referenceVolumeNode, _("Select the input volume and the segmentation to export."))
    if path is not None:
        path = str(path)
        if not path.lower().endswith(LABELMAP_SUFFIXES):
            raise BreastUSSegmentError(
                _("Cannot write {path}: use a .nrrd, .nii or .nii.gz file name.").format(path=path))
        if os.path.exists(path) and not overwrite:
            raise BreastUSSegmentError(_("{path} already exists; not overwriting it.").format(path=path))
    scene = segmentationNode.GetScene()
    name = scene.GenerateUniqueName(f"{referenceVolumeNode.GetName()} lesion label")
    with nodes.nodesRemovedOnFailure(scene):
        labelmap = segments.exportToLabelmapNode(segmentationNode, [segmentId], referenceVolumeNode, name)
        if path is not None:
            segments.writeLabelmapFile(labelmap, path)
    return labelmap

def lesionSegmentIdOf(segmentationNode, referenceVolumeNode, unselected: str, segmentId=None) -> str:
    """``segmentId`` or the Lesion segment's ID; ``unselected`` is the error when a node is missing."""
    if segmentationNode is None or referenceVolumeNode is None:
        raise BreastUSSegmentError(unselected)
    segmentId = segmentId or segments.lesionSegmentId(segmentationNode)
    if not segmentId:
        raise BreastUSSegmentError(
            _("Segmentation '{name}' has no Lesion segment; click Segment lesion first.").format(
                name=segmentationNode.GetName()))
    return segmentId
