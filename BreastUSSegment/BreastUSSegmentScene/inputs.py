"""Frames from volume nodes: what can be segmented, the voxels as the core takes them, and the pixel spacing."""

import numpy as np
import vtk
import vtk.util.numpy_support

import slicer
from BreastUSSegmentLib.imagetypes import size_problem

from .common import INPUT_NODE_TYPES, BreastUSSegmentError, _
from .nodes import nodesOfClass


def inputProblem(volumeNode, maxPixels: int) -> str:
    """Why ``volumeNode`` cannot be segmented, or an empty string when it can (``maxPixels``: the core's size limit)."""
    if volumeNode is None:
        return _("No input volume selected. Load an ultrasound image and select it as input.")
    name = volumeNode.GetName()
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetPointData() is None or imageData.GetPointData().GetScalars() is None:
        return _("Input volume '{name}' has no image data.").format(name=name)
    dimensions = imageData.GetDimensions()
    if min(dimensions) < 1 or dimensions[0] < 2 or dimensions[1] < 2:
        return _("Input volume '{name}' has no usable image (size {size}).").format(name=name, size=dimensions)
    components = imageData.GetNumberOfScalarComponents()
    if components not in (1, 3, 4):
        return _("Input volume '{name}' has {count} components per pixel; expected grayscale, RGB or RGBA.").format(
            name=name, count=components
        )
    tooLarge = size_problem(dimensions[2], dimensions[1], dimensions[0], maxPixels)
    if tooLarge:
        return _(
            "Input volume '{name}' is too large: {problem}. Crop it or split the clip (e.g. with Crop Volume) "
            "and try again."
        ).format(name=name, problem=tooLarge)
    return ""


def firstInputVolume(scene):
    """The first volume of the scene the input selector shows (of a class in ``INPUT_NODE_TYPES``), or None."""
    for node in nodesOfClass(scene, "vtkMRMLScalarVolumeNode"):
        if node.GetClassName() in INPUT_NODE_TYPES:
            return node
    return None


def volumeArray(volumeNode, maxPixels: int):
    """``(frames, color)``: the voxels as ``(K, J, I)`` or ``(K, J, I, C)`` and whether they are RGB(A)."""
    problem = inputProblem(volumeNode, maxPixels)
    if problem:
        raise BreastUSSegmentError(problem)
    imageData = volumeNode.GetImageData()
    components = imageData.GetNumberOfScalarComponents()
    if components == 1 or volumeNode.IsA("vtkMRMLVectorVolumeNode"):
        array = slicer.util.arrayFromVolume(volumeNode)
    else:  # a scalar volume node carrying colour pixels
        shape = tuple(reversed(imageData.GetDimensions())) + (components,)
        array = vtk.util.numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars()).reshape(shape)
    return array, components > 1


def sequenceArray(sequence, maxPixels: int):
    """``(frames, color)`` of every item of a volume Sequence, stacked ``(N, J, I[, C])``; the items must share a size."""
    arrays, color = [], False
    for item in range(sequence.GetNumberOfDataNodes()):
        array, color = volumeArray(sequence.GetNthDataNode(item), maxPixels)
        if arrays and array.shape != arrays[0].shape:
            raise BreastUSSegmentError(
                _("The frames of sequence '{name}' differ in size ({first} and {other}); segment them one by one.").format(
                    name=sequence.GetName(), first=arrays[0].shape[1:3], other=array.shape[1:3]))
        arrays.append(array)
    frames = np.concatenate(arrays)
    tooLarge = size_problem(frames.shape[0], frames.shape[1], frames.shape[2], maxPixels)
    if tooLarge:
        raise BreastUSSegmentError(_("Sequence '{name}' is too large: {problem}. Split the clip and try again.").format(
            name=sequence.GetName(), problem=tooLarge))
    return frames, color


def volumeSpacing(volumeNode):
    """``(row_mm, col_mm)`` of a volume: spacing along J (rows) and I (columns)."""
    spacing = volumeNode.GetSpacing()
    return float(spacing[1]), float(spacing[0])
