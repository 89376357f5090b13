"""The measurement table: one row per lesion per frame, with the core's column names, units and descriptions
(``BreastUSSegmentLib.measure.LESION_COLUMNS``, then the research-use descriptors and malignancy likelihood of
``BreastUSSegmentLib.descriptors.DESCRIPTOR_COLUMNS``: the columns of the command line's sidecar table too).

A frame without a lesion gets one row saying so (its lesion columns empty), so a clip's table lists every frame. The
lesions of box segments are measured box by box, each knowing its box.
"""

import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import vtk

from BreastUSSegmentLib.descriptors import DESCRIPTOR_COLUMNS, RULES, describe_frames
from BreastUSSegmentLib.measure import (
    LESION_COLUMNS, LesionMeasurement, column_unit, measure_frames, measure_lesion, result_in_words, summarize_frame,
)

from .common import MEASUREMENT_TABLE_ROLE, _
from .progress import MEASURING, RunProgress

# Identifiers, not quantities: string columns, empty where there is none (a frame without a lesion, no box).
LABEL_COLUMNS = ("lesion", "box")
SEGMENT_COLUMN = "segment"
RESULT_COLUMN = "result"


class TableColumn(NamedTuple):
    """One column of the table: its name (the core's, as in the sidecar table), header, unit, description, and
    the kind of its values ("int", "double" or "string")."""

    name: str
    title: str
    unit: str
    description: str
    kind: str


def columnTitle(name: str) -> str:
    """The header Slicer shows for the column ``name`` (e.g. "longest_diameter" -> "Longest diameter")."""
    return name.replace("_", " ").capitalize()


def tableColumns(indexSequence=None) -> List[TableColumn]:
    """Every column, in order; a Sequence's index (e.g. "time") comes after the frame number.

    Slicer measures in mm (a volume's spacing), so lengths are in mm; the centroid is in pixels.
    """
    columns = []
    for column in LESION_COLUMNS:
        kind = "int" if column.name == "frame" else "string" if column.name in LABEL_COLUMNS else "double"
        columns.append(TableColumn(column.name, columnTitle(column.name), column_unit(column, calibrated=True),
                                   column.description, kind))
        if column.name == "frame" and indexSequence is not None:
            columns.append(indexColumn(indexSequence))
        if column.name == "box":
            columns.append(TableColumn(SEGMENT_COLUMN, columnTitle(SEGMENT_COLUMN), "",
                                       _("name of the segment the lesion is in"), "string"))
    for column in DESCRIPTOR_COLUMNS:  # lexicon terms are strings, their numbers doubles
        columns.append(TableColumn(column.name, columnTitle(column.name), column.unit, column.description,
                                   "string" if column.name in RULES else "double"))
    columns.append(TableColumn(RESULT_COLUMN, columnTitle(RESULT_COLUMN), "",
                               _("the frame's result in words (\"no lesion found\", \"2 lesions\")"), "string"))
    return columns


def indexColumn(indexSequence) -> TableColumn:
    """The column of a Sequence's index values, named as its index (renamed if a lesion column has that name)."""
    name = indexSequence.GetIndexName() or "index"
    if name in {column.name for column in LESION_COLUMNS} | {SEGMENT_COLUMN, RESULT_COLUMN}:
        name = f"sequence {name}"
    return TableColumn(name, columnTitle(name), indexSequence.GetIndexUnit() or "",
                       _("index value of the frame in the Sequence"), "string")


def tableRows(frames: List[LesionMeasurement], segmentNames: Dict[Optional[int], str],
              emptyBoxes: Optional[Sequence] = None, descriptors: Optional[Sequence] = None) -> List[dict]:
    """One row (column name -> value, None where empty) per lesion of every frame, and one for each frame without.

    ``segmentNames``: the name of the segment of each box number (None: the automatic Lesion segment);
    ``emptyBoxes[frame]``: the numbers of that frame's boxes that hold no lesion; ``descriptors[frame]``: that
    frame's lesions' descriptor dicts, in lesion order (``BreastUSSegmentLib.descriptors.describe_frames``).
    """
    rows = []
    for number, frame in enumerate(frames):
        words = result_in_words(frame.lesions, emptyBoxes[number] if emptyBoxes else ())
        described = descriptors[number] if descriptors else [{}] * len(frame.lesions)
        if len(described) != len(frame.lesions):
            raise ValueError(f"frame {number + 1} has {len(frame.lesions)} lesions but {len(described)} described")
        for lesion, lesionDescriptors in zip(frame.lesions, described) if frame.lesions else [(None, {})]:
            row = dict.fromkeys([*(column.name for column in LESION_COLUMNS), SEGMENT_COLUMN,
                                 *(column.name for column in DESCRIPTOR_COLUMNS)])
            if lesion is not None:
                row.update(lesion.row())
                row.update(lesionDescriptors)
                row[SEGMENT_COLUMN] = segmentNames.get(lesion.box, "")
            row.update({"frame": number + 1, RESULT_COLUMN: words})
            rows.append(row)
    return rows


def updateMeasurementTable(segmentationNode, frames: List[LesionMeasurement], indexSequence=None,
                           segmentNames: Optional[Dict[Optional[int], str]] = None, emptyBoxes=None,
                           descriptors=None):
    """Write the lesions of ``frames`` (one :class:`LesionMeasurement` per frame) into the table node the
    segmentation refers to (created when missing), one row per lesion per frame; return the table node.

    ``indexSequence``: the Sequence the frames are items of (its index values get a column); ``segmentNames``,
    ``emptyBoxes`` and ``descriptors`` as in :func:`tableRows` (by default the lesions are the module's Lesion
    segment's; without descriptors their columns stay empty).
    """
    tableNode = _tableNode(segmentationNode)
    columns = tableColumns(indexSequence)
    rows = tableRows(frames, segmentNames or {}, emptyBoxes, descriptors)
    if indexSequence is not None:
        name = indexColumn(indexSequence).name
        for row in rows:
            row[name] = indexSequence.GetNthIndexValue(row["frame"] - 1)
    table = vtk.vtkTable()
    for column in columns:
        kind = column.kind
        array = {"int": vtk.vtkIntArray, "double": vtk.vtkDoubleArray, "string": vtk.vtkStringArray}[kind]()
        array.SetName(column.name)
        for row in rows:
            value = row[column.name]
            if kind == "string":
                array.InsertNextValue("" if value is None else str(value))
            elif kind == "double":
                array.InsertNextValue(math.nan if value is None else float(value))
            else:
                array.InsertNextValue(int(value))
        table.AddColumn(array)
    tableNode.SetAndObserveTable(table)
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    for column in columns:
        tableNode.SetColumnTitle(column.name, column.title)
        tableNode.SetColumnDescription(column.name, column.description)
        if column.unit:
            tableNode.SetColumnUnitLabel(column.name, column.unit)
    return tableNode


def boxLabels(roiMasks: List[np.ndarray]) -> np.ndarray:
    """Per pixel the box number (1 the first) whose segment holds it, 0 for none: ``roiMasks[n]`` (``(F, H, W)``) is
    the segment of ROI n, whose lesions are those of box n + 1 (the first ROI keeps a pixel two segments share)."""
    labels = np.zeros(np.shape(roiMasks[0]), dtype=np.uint16)
    for number, masks in reversed(list(enumerate(roiMasks))):
        labels[np.asarray(masks) > 0] = number + 1
    return labels


def measureBoxes(pixels: np.ndarray, color: bool, roiMasks: List[np.ndarray],
                 spacing) -> Tuple[List[LesionMeasurement], List[list]]:
    """Every frame's lesions measured box by box (:func:`boxLabels`), so no lesion spans two boxes, and their
    research-use descriptors in the same order (from the input's ``pixels``, RGB(A) when ``color``)."""
    labels = boxLabels(roiMasks)
    masks = labels > 0
    return measure_frames(masks, spacing, labels), describe_frames(pixels, masks, spacing, labels, color=color)


def byBox(frames: List[LesionMeasurement], count: int) -> List[List[LesionMeasurement]]:
    """Per box (1 to ``count``), one measurement per frame of its own lesions."""
    return [[summarize_frame([lesion for lesion in frame.lesions if lesion.box == box]) for frame in frames]
            for box in range(1, count + 1)]


def emptyBoxes(frames: List[LesionMeasurement], owners: List[list]) -> List[list]:
    """Per frame, the numbers of its boxes that hold no lesion; ``owners[frame]``: the ROIs (0 the first) with a
    box on that frame."""
    return [sorted({owner + 1 for owner in frameOwners} - {lesion.box for lesion in frame.lesions})
            for frameOwners, frame in zip(owners, frames)]


def boxSegmentNames(segmentationNode, segmentIds) -> Dict[Optional[int], str]:
    """Box number (1 the first) -> the name of its segment."""
    segmentation = segmentationNode.GetSegmentation()
    return {number: segmentation.GetSegment(segmentId).GetName() for number, segmentId in enumerate(segmentIds, 1)}


def readTableRows(tableNode) -> List[dict]:
    """The rows of a measurement table (column name -> value; "" or NaN where empty), as written above."""
    table = tableNode.GetTable()
    arrays = [table.GetColumn(index) for index in range(table.GetNumberOfColumns())]
    return [{array.GetName(): array.GetValue(row) for array in arrays} for row in range(table.GetNumberOfRows())]


def _tableNode(segmentationNode):
    """The table node the segmentation refers to, created (and referred to) when missing."""
    scene = segmentationNode.GetScene()
    tableNode = segmentationNode.GetNodeReference(MEASUREMENT_TABLE_ROLE)
    if tableNode is None or tableNode.GetScene() is not scene:
        tableNode = scene.AddNewNodeByClass(
            "vtkMRMLTableNode", scene.GenerateUniqueName(f"{segmentationNode.GetName()} measurements"))
        segmentationNode.SetNodeReferenceID(MEASUREMENT_TABLE_ROLE, tableNode.GetID())
    return tableNode


def measureFrames(masks, pixels, color: bool, spacing,
                  progress: RunProgress) -> Tuple[List[LesionMeasurement], List[list]]:
    """The core's measurements and research-use descriptors (from the input's ``pixels``, RGB(A) when ``color``) of
    each frame of ``masks`` (numbered from 1), reporting :data:`MEASURING` progress frame by frame."""
    measured, described = [], []
    for number, (frame, framePixels) in enumerate(progress.each(MEASURING, zip(masks, pixels)), 1):
        measured.append(measure_lesion(frame, spacing, number))
        described.extend(describe_frames(framePixels, frame, spacing, color=color))
    return measured, described


def lesionTable(segmentationNode, segmentId, frames, indexSequence=None, descriptors=None):
    """The measurement table of the Lesion segment ``segmentId``: one row per lesion per frame, with each
    lesion's research-use ``descriptors`` (one list per frame)."""
    name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
    return updateMeasurementTable(segmentationNode, frames, indexSequence, {None: name},
                                               descriptors=descriptors)
