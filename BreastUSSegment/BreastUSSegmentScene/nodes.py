"""Scene helpers: node lists, voxel geometry, the output segmentation, and removal of a failed write's nodes."""

from contextlib import contextmanager

import vtk

import slicer

from .common import OWN_COLOR_TABLE_ATTRIBUTE, BreastUSSegmentError, _


def collectionItems(collection) -> list:
    """The objects of a ``vtkCollection`` a method returned as a new reference (``GetNodesByClass``...),
    releasing that reference so the collection is freed."""
    items = [collection.GetItemAsObject(index) for index in range(collection.GetNumberOfItems())]
    collection.UnRegister(None)
    return items


def nodesOfClass(scene, className: str) -> list:
    """The scene's nodes of a class (and its subclasses), in the scene's order."""
    return collectionItems(scene.GetNodesByClass(className))


def isSceneBookkeeping(node) -> bool:
    """A singleton or the subject hierarchy: nodes the scene makes for itself on first use, not results."""
    return bool(node.GetSingletonTag()) or node.IsA("vtkMRMLSubjectHierarchyNode")


@contextmanager
def _addedNodes(scene):
    """The list of the nodes added to ``scene`` while the ``with`` block runs, in the order they were added
    (heard from the scene, so no walk over all its nodes)."""
    added = []

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(caller, event, node):
        added.append(node)

    tag = scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, onNodeAdded)
    try:
        yield added
    finally:
        scene.RemoveObserver(tag)


def _removeAdded(scene, added: list, keep=lambda node: False) -> None:
    """Remove the ``added`` nodes still in ``scene``, last added first, except those ``keep`` says to keep."""
    for node in reversed(added):
        if node.GetScene() is scene and not keep(node):
            scene.RemoveNode(node)


@contextmanager
def nodesRemovedOnFailure(scene):
    """Remove every node added to ``scene`` inside the ``with`` block when the block raises, so a failed
    write leaves no half-made nodes (the scene's own singletons and subject hierarchy stay)."""
    with _addedNodes(scene) as added:
        try:
            yield
        except BaseException:
            _removeAdded(scene, added, keep=isSceneBookkeeping)
            raise


@contextmanager
def helperNodesRemoved(scene):
    """Remove every node added to ``scene`` inside the ``with`` block (display nodes, colour tables, subject
    hierarchy... that segmentation imports and exports make), e.g. in a Sequence's own scene, where they would
    pile up with every run and be saved with the Sequence."""
    with _addedNodes(scene) as added:
        try:
            yield
        finally:
            _removeAdded(scene, added)


def kji(volumeNode):
    """``(K, J, I)`` shape of a volume's voxel array."""
    return tuple(reversed(volumeNode.GetImageData().GetDimensions()))


def copyGeometry(sourceVolumeNode, targetVolumeNode) -> None:
    """Give ``target`` the IJK-to-RAS matrix (origin, spacing, directions) and parent transform of ``source``."""
    matrix = vtk.vtkMatrix4x4()
    sourceVolumeNode.GetIJKToRASMatrix(matrix)
    targetVolumeNode.SetIJKToRASMatrix(matrix)
    targetVolumeNode.SetAndObserveTransformNodeID(sourceVolumeNode.GetTransformNodeID())


def removeLabelmapNode(labelmapNode) -> None:
    """Remove a temporary labelmap node with its display and storage nodes and the colour table made for it."""
    scene = labelmapNode.GetScene()
    helpers = [labelmapNode.GetNthDisplayNode(index) for index in range(labelmapNode.GetNumberOfDisplayNodes())]
    helpers += [labelmapNode.GetNthStorageNode(index) for index in range(labelmapNode.GetNumberOfStorageNodes())]
    ownColorTable = labelmapNode.GetAttribute(OWN_COLOR_TABLE_ATTRIBUTE)
    helpers.append(scene.GetNodeByID(ownColorTable) if ownColorTable else None)
    scene.RemoveNode(labelmapNode)
    for node in helpers:
        if node is not None and node.GetScene() is scene:
            scene.RemoveNode(node)


def ensureSegmentationConverterRules() -> bool:
    """Register the standard labelmap <-> surface conversion rules if nobody did; True when it registered any.

    Slicer's Segmentations module registers them at startup; with slicer-core alone the factory starts empty
    and segmentations cannot hold labelmaps. The registered rules are read, not probed by constructing
    representation objects (the factory hands those over unowned, so each probe leaked two objects).
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    registered = {(rule.GetSourceRepresentationName(), rule.GetTargetRepresentationName())
                  for rule in factory.GetConverterRules()}
    labelmap = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    surface = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    missing = [rule for rule, names in ((slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule, (labelmap, surface)),
                                        (slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule, (surface, labelmap)))
               if names not in registered]
    for rule in missing:
        factory.RegisterConverterRule(rule())
    return bool(missing)


def checkOutputScene(inputVolumeNode, outputSegmentationNode) -> None:
    """The input must be in a scene, and a given output segmentation in the same one."""
    scene = inputVolumeNode.GetScene()
    if scene is None:
        raise BreastUSSegmentError(_("Input volume '{name}' is not in a scene.").format(name=inputVolumeNode.GetName()))
    if outputSegmentationNode is not None and outputSegmentationNode.GetScene() is not scene:
        raise BreastUSSegmentError(_("The output segmentation and the input volume are in different scenes."))


def checkStillInScene(*nodes) -> None:
    """Refuse to write when a node the run uses left the scene meanwhile (the panel lets the application
    process events between frames)."""
    for node in nodes:
        if node is not None and node.GetScene() is None:
            raise BreastUSSegmentError(
                _("'{name}' was removed from the scene while segmenting; nothing was written.").format(
                    name=node.GetName()))


def outputSegmentation(inputVolumeNode, outputSegmentationNode):
    """The given output segmentation (it must be in the input's scene), or a new one named after the input."""
    checkOutputScene(inputVolumeNode, outputSegmentationNode)
    if outputSegmentationNode is not None:
        return outputSegmentationNode
    scene = inputVolumeNode.GetScene()
    return scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{inputVolumeNode.GetName()} lesion"))
