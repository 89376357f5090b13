"""The result volumes (attention and probability maps) with their heat colours, the attention overlay in the
slice views, and the per-frame measurement table."""

from typing import List

import numpy as np
import vtk

import slicer
from BreastUSSegmentLib.measure import LesionMeasurement

from .common import (
    ATTENTION_REFERENCE_ROLE,
    DEFAULT_ATTENTION_OPACITY,
    FALLBACK_HEAT_COLOR_NODE_NAME,
    MEASUREMENT_COLUMNS,
    MEASUREMENT_TABLE_ROLE,
    PROBABILITY_REFERENCE_ROLE,
    STANDARD_HEAT_COLOR_NODE_ID,
    _,
)
from .nodes import copyGeometry, kji, nodesOfClass


def writeResultVolumes(segmentationNode, result, referenceVolumeNode, probability: bool, frame=None):
    """The attention volume and (with ``probability``) the probability volume of ``result``, or None in its place.

    ``frame``: write only that frame of the result (the shown frame, into a clip's proxy volumes).
    """
    from BreastUSSegmentLib.visualize import attention_display_range

    def pick(array):
        return array if frame is None else array[frame]

    baseName = referenceVolumeNode.GetName()
    # The overlay's colour window spans what the gates actually did (their values sit in a narrow band).
    attentionVolume = updateResultVolume(
        segmentationNode, ATTENTION_REFERENCE_ROLE, f"{baseName} attention", pick(result.combined_attention),
        referenceVolumeNode, displayRange=attention_display_range(result.combined_attention),
    )
    probabilityVolume = None
    if probability:
        probabilityVolume = updateResultVolume(
            segmentationNode, PROBABILITY_REFERENCE_ROLE, f"{baseName} probability", pick(result.probability),
            referenceVolumeNode
        )
    return attentionVolume, probabilityVolume


def updateResultVolume(segmentationNode, role: str, name: str, array, referenceVolumeNode, displayRange=(0.0, 1.0)):
    """Create or update the float volume referenced by ``role`` with ``array`` on the reference geometry,
    displayed with the heat colours over ``displayRange``."""
    scene = segmentationNode.GetScene()
    volume = segmentationNode.GetNodeReference(role)
    if volume is None or volume.GetScene() is not scene:
        volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
        segmentationNode.SetNodeReferenceID(role, volume.GetID())
    slicer.util.updateVolumeFromArray(volume, np.asarray(array, dtype=np.float32).reshape(kji(referenceVolumeNode)))
    copyGeometry(referenceVolumeNode, volume)
    volume.CreateDefaultDisplayNodes()
    display = volume.GetDisplayNode()
    display.SetAndObserveColorNodeID(heatColorNode(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*displayRange)
    return volume


def heatColorNode(scene):
    """Slicer's PET-Heat colour node when the scene has it, else a small heat table created once."""
    standard = scene.GetNodeByID(STANDARD_HEAT_COLOR_NODE_ID)
    if standard is not None:
        return standard
    existing = scene.GetFirstNodeByName(FALLBACK_HEAT_COLOR_NODE_NAME)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    table = slicer.vtkMRMLColorTableNode()
    table.SetName(FALLBACK_HEAT_COLOR_NODE_NAME)
    table.SetTypeToUser()
    table.SetNumberOfColors(256)
    for index in range(256):  # black -> red -> yellow -> white
        value = index / 255.0
        table.SetColor(index, f"{value:.3f}", min(1.0, 3 * value), min(1.0, max(0.0, 3 * value - 1)),
                       min(1.0, max(0.0, 3 * value - 2)), 1.0)
    table.SetSaveWithScene(True)
    scene.AddNode(table)
    return table


def showAttentionOverlay(backgroundVolumeNode, attentionVolumeNode, show: bool = True,
                         opacity: float = DEFAULT_ATTENTION_OPACITY) -> None:
    """Show the attention map over the image in every slice view (or hide it).

    Slice views show the application's scene (``slicer.mrmlScene``); nodes of another scene
    (a batch script's) have no view to be shown in, so nothing is done for them.
    """
    scene = attentionVolumeNode.GetScene()
    if scene is None or getattr(slicer, "mrmlScene", None) is not scene:
        return
    if show:
        slicer.util.setSliceViewerLayers(background=backgroundVolumeNode, foreground=attentionVolumeNode,
                                          foregroundOpacity=float(opacity))
        return
    slicer.util.setSliceViewerLayers(background=backgroundVolumeNode)
    for composite in nodesOfClass(scene, "vtkMRMLSliceCompositeNode"):  # hide only our overlay, not another foreground
        if composite.GetForegroundVolumeID() == attentionVolumeNode.GetID():
            composite.SetForegroundVolumeID(None)


def updateMeasurementTable(segmentationNode, measurements: List[LesionMeasurement], indexSequence=None):
    """Write one row per frame (frame number, the Sequence's index value when given, area, largest diameter)
    into the table node the segmentation refers to (created when missing); return the table node."""
    scene = segmentationNode.GetScene()
    tableNode = segmentationNode.GetNodeReference(MEASUREMENT_TABLE_ROLE)
    if tableNode is None or tableNode.GetScene() is not scene:
        tableNode = scene.AddNewNodeByClass(
            "vtkMRMLTableNode", scene.GenerateUniqueName(f"{segmentationNode.GetName()} measurements"))
        segmentationNode.SetNodeReferenceID(MEASUREMENT_TABLE_ROLE, tableNode.GetID())
    (frameName, _unit), (areaName, areaUnit), (diameterName, diameterUnit) = MEASUREMENT_COLUMNS
    table = vtk.vtkTable()
    frameColumn = vtk.vtkIntArray()
    frameColumn.SetName(frameName)
    table.AddColumn(frameColumn)
    indexColumn = None
    if indexSequence is not None:
        indexColumn = vtk.vtkStringArray()
        indexColumn.SetName(indexSequence.GetIndexName() or _("index"))
        table.AddColumn(indexColumn)
    areaColumn, diameterColumn = vtk.vtkDoubleArray(), vtk.vtkDoubleArray()
    areaColumn.SetName(areaName)
    diameterColumn.SetName(diameterName)
    table.AddColumn(areaColumn)
    table.AddColumn(diameterColumn)
    for frame, measurement in enumerate(measurements):
        frameColumn.InsertNextValue(frame + 1)
        if indexColumn is not None:
            indexColumn.InsertNextValue(indexSequence.GetNthIndexValue(frame))
        areaColumn.InsertNextValue(measurement.area_mm2)
        diameterColumn.InsertNextValue(measurement.largest_diameter_mm)
    tableNode.SetAndObserveTable(table)
    tableNode.SetColumnUnitLabel(areaName, areaUnit)
    tableNode.SetColumnUnitLabel(diameterName, diameterUnit)
    if indexColumn is not None and indexSequence.GetIndexUnit():
        tableNode.SetColumnUnitLabel(indexColumn.GetName(), indexSequence.GetIndexUnit())
    return tableNode
