"""Box prompts: the Markups ROIs drawn on a volume, and their boxes laid out per frame as the core takes them."""

from dataclasses import dataclass
from typing import List

import numpy as np
import vtk

from .common import BOX_ROI_ATTRIBUTE, BreastUSSegmentError, _
from .nodes import nodesOfClass


@dataclass(frozen=True)
class VoxelBox:
    """A Markups ROI on a volume's voxel grid: pixel box ``(x0, y0, x1, y1)`` (I, J; x1, y1 exclusive) and frames."""

    box: tuple
    frames: range  # the K indices the ROI covers


@dataclass(frozen=True)
class BoxPrompts:
    """Boxes of numbered ROIs, per frame: ``frameBoxes[frame]`` are the pixel boxes the core segments in that
    frame and ``owners[frame]`` the number (position in the ROI list) of the ROI each box comes from."""

    frameBoxes: List[list]
    owners: List[list]

    def roiMasks(self, boxLabels, number: int) -> np.ndarray:
        """The lesion of ROI ``number`` in every frame, from the core's ``box_labels`` (box k of a frame is label k + 1)."""
        masks = np.zeros(boxLabels.shape, dtype=bool)
        for frame, frameOwners in enumerate(self.owners):
            for position, owner in enumerate(frameOwners):
                if owner == number:
                    masks[frame] |= boxLabels[frame] == position + 1
        return masks

    def emptyNumbers(self, result) -> set:
        """Numbers of the ROIs in none of whose boxes the core found a lesion."""
        empty = {self.owners[outcome.frame][outcome.index] for outcome in result.empty_boxes}
        found = {self.owners[outcome.frame][outcome.index] for outcome in result.boxes if outcome.found}
        return empty - found


def roiVoxelBox(roiNode, volumeNode) -> VoxelBox:
    """The voxels of ``volumeNode`` inside ``roiNode``: the pixels whose centres lie in the ROI.

    The ROI's corners go from world coordinates to the volume's IJK with the volume's own
    matrices (and its parent transform, if any); a rotated ROI gives its IJK bounding box.
    """
    bounds = [0.0] * 6
    roiNode.GetObjectBounds(bounds)
    objectToWorld = roiNode.GetObjectToWorldMatrix()
    worldToIjk = vtk.vtkMatrix4x4()
    volumeNode.GetRASToIJKMatrix(worldToIjk)
    parent = volumeNode.GetParentTransformNode()
    if parent is not None:
        worldToLocal = vtk.vtkMatrix4x4()
        if not parent.GetMatrixTransformFromWorld(worldToLocal):
            raise BreastUSSegmentError(_("Volume '{name}' is under a non-linear transform; harden it first.").format(
                name=volumeNode.GetName()))
        vtk.vtkMatrix4x4.Multiply4x4(worldToIjk, worldToLocal, worldToIjk)
    vtk.vtkMatrix4x4.Multiply4x4(worldToIjk, objectToWorld, worldToIjk)
    corners = np.array([worldToIjk.MultiplyPoint((x, y, z, 1.0))[:3]
                        for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]])
    low, high = corners.min(axis=0), corners.max(axis=0)
    columns, rows, frames = (int(np.ceil(low[axis] - 1e-6)) for axis in range(3))
    endColumns, endRows, endFrames = (int(np.floor(high[axis] + 1e-6)) + 1 for axis in range(3))
    dimensions = volumeNode.GetImageData().GetDimensions()
    # A ROI drawn in a slice view is thin across the slice: it covers the frame it is drawn on.
    if endFrames <= frames:
        frames = endFrames = int(np.floor((low[2] + high[2]) / 2 + 0.5))
        endFrames += 1
    frameRange = range(max(frames, 0), min(endFrames, dimensions[2]))
    if endColumns <= columns or endRows <= rows:
        raise BreastUSSegmentError(_("Box '{name}' holds no pixel of '{volume}'; draw a larger box.").format(
            name=roiNode.GetName(), volume=volumeNode.GetName()))
    if not frameRange:
        raise BreastUSSegmentError(_("Box '{name}' does not cross any frame of '{volume}'.").format(
            name=roiNode.GetName(), volume=volumeNode.GetName()))
    return VoxelBox((columns, rows, endColumns, endRows), frameRange)


def boxPrompts(roiNodes, volumeNode, frameCount: int, allFrames: bool = False) -> BoxPrompts:
    """The boxes of ``roiNodes`` on ``volumeNode``'s ``frameCount`` frames: each on the frames it crosses, or on
    every frame with ``allFrames``."""
    voxelBoxes = [roiVoxelBox(roi, volumeNode) for roi in roiNodes]
    frameBoxes, owners = [[] for _frame in range(frameCount)], [[] for _frame in range(frameCount)]
    for number, voxelBox in enumerate(voxelBoxes):
        for frame in (range(frameCount) if allFrames else voxelBox.frames):
            frameBoxes[frame].append(voxelBox.box)
            owners[frame].append(number)
    return BoxPrompts(frameBoxes, owners)


def boxRois(scene, volumeNode=None) -> list:
    """The placed Markups ROIs of box prompts (on ``volumeNode`` only, if given), in the order they were added."""
    return [roi for roi in nodesOfClass(scene, "vtkMRMLMarkupsROINode")
            if roi.GetAttribute(BOX_ROI_ATTRIBUTE) and roi.GetControlPointPlacementComplete()
            and (volumeNode is None or roi.GetAttribute(BOX_ROI_ATTRIBUTE) == volumeNode.GetID())]


def addBoxRoi(scene, volumeNode):
    """A new, not yet placed Markups ROI for a box prompt on ``volumeNode`` ("Box 1", "Box 2"...)."""
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", scene.GenerateUniqueName(_("Box")))
    roi.SetAttribute(BOX_ROI_ATTRIBUTE, volumeNode.GetID())
    roi.CreateDefaultDisplayNodes()
    return roi
