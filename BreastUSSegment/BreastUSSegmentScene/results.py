"""The result volumes (attention and probability maps) with their heat colours, and the attention overlay in the
slice views."""

import numpy as np

import slicer

from .common import (
    ATTENTION_COLOR_NODE_NAME,
    ATTENTION_REFERENCE_ROLE,
    DEFAULT_ATTENTION_OPACITY,
    PROBABILITY_REFERENCE_ROLE,
    TRANSPARENT_FRACTION,
    _,
)
from .nodes import copyGeometry, kji, nodesOfClass


def writeResultVolumes(segmentationNode, result, referenceVolumeNode, probability: bool, frame=None):
    """The attention volume and (with ``probability``) the probability volume of ``result``, or None in its place.

    ``frame``: write only that frame of the result (the shown frame, into a clip's proxy volumes).
    """
    from BreastUSSegmentLib.visualize import FIGURE_ATTENTION_RANGE

    def pick(array):
        return array if frame is None else array[frame]

    baseName = referenceVolumeNode.GetName()
    # The overlay's colour window is the figures' fixed one: every image on the same scale, a normal frame not
    # stretched into colour.
    attentionVolume = updateResultVolume(
        segmentationNode, ATTENTION_REFERENCE_ROLE, f"{baseName} attention", pick(result.combined_attention),
        referenceVolumeNode, displayRange=FIGURE_ATTENTION_RANGE,
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
    if role == ATTENTION_REFERENCE_ROLE:
        attentionLegend(volume)
    return volume


def attentionColors(count: int = 256) -> np.ndarray:
    """``(count, 4)`` RGBA in [0, 1] of the attention colour table: alpha 0 below :data:`TRANSPARENT_FRACTION`
    of the range, then dark red -> red -> yellow -> white, opaque (the overlay's opacity blends it)."""
    position = np.linspace(0.0, 1.0, count)
    shown = np.clip((position - TRANSPARENT_FRACTION) / (1.0 - TRANSPARENT_FRACTION), 0.0, 1.0)
    red = np.clip(0.5 + 1.5 * shown, 0.0, 1.0)
    green = np.clip(3.0 * shown - 1.0, 0.0, 1.0)
    blue = np.clip(3.0 * shown - 2.0, 0.0, 1.0)
    alpha = (position >= TRANSPARENT_FRACTION).astype(float)
    return np.stack([red, green, blue, alpha], axis=1)


def heatColorNode(scene):
    """The module's attention colour table (see :func:`attentionColors`), created once per scene.

    Slicer's volume display keeps a pixel whose colour has alpha 0 out of the foreground layer, so low
    attention leaves the image as it is instead of darkening it.
    """
    existing = scene.GetFirstNodeByName(ATTENTION_COLOR_NODE_NAME)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    table = slicer.vtkMRMLColorTableNode()
    table.SetName(ATTENTION_COLOR_NODE_NAME)
    table.SetTypeToUser()
    colors = attentionColors()
    table.SetNumberOfColors(len(colors))
    for index, (red, green, blue, alpha) in enumerate(colors):
        table.SetColor(index, f"{index / (len(colors) - 1):.3f}", red, green, blue, alpha)
    table.SetSaveWithScene(True)
    scene.AddNode(table)
    return table


def attentionLegend(volumeNode):
    """The colour legend of the attention volume in the slice views (created once), or None where the scene
    cannot hold one (slicer-core without the Colors module's nodes)."""
    scene = volumeNode.GetScene()
    if not hasattr(slicer, "vtkSlicerColorLogic") or not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
        return None
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(volumeNode)
    if legend is None:
        legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(volumeNode)
        legend.SetTitleText(_("Attention: where the network looked\n(clear: low, red to yellow: high)"))
        legend.SetLabelFormat("%.2f")
        legend.SetNumberOfLabels(3)
    return legend


def showAttentionOverlay(backgroundVolumeNode, attentionVolumeNode, show: bool = True,
                         opacity: float = DEFAULT_ATTENTION_OPACITY) -> None:
    """Show the attention map over the image in every slice view (or hide it), with its colour legend.

    Slice views show the application's scene (``slicer.mrmlScene``); nodes of another scene
    (a batch script's) have no view to be shown in, so nothing is done for them.
    """
    scene = attentionVolumeNode.GetScene()
    if scene is None:
        return
    legend = attentionLegend(attentionVolumeNode)
    if legend is not None:
        legend.SetVisibility(bool(show))
    if getattr(slicer, "mrmlScene", None) is not scene:
        return
    if show:
        slicer.util.setSliceViewerLayers(background=backgroundVolumeNode, foreground=attentionVolumeNode,
                                          foregroundOpacity=float(opacity))
        return
    slicer.util.setSliceViewerLayers(background=backgroundVolumeNode)
    for composite in nodesOfClass(scene, "vtkMRMLSliceCompositeNode"):  # hide only our overlay, not another foreground
        if composite.GetForegroundVolumeID() == attentionVolumeNode.GetID():
            composite.SetForegroundVolumeID(None)
