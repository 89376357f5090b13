"""What the Logic's entry points return: the nodes they wrote, the measurements and the core's result."""

from dataclasses import dataclass, field
from typing import Any, List, Optional

from BreastUSSegmentLib.measure import LesionMeasurement


@dataclass
class SegmentationOutput:
    """What :meth:`BreastUSSegmentLogic.segment` produced."""

    segmentationNode: Any
    segmentId: str
    attentionVolumeNode: Any
    probabilityVolumeNode: Any = None
    measurements: List[LesionMeasurement] = field(default_factory=list)
    pipelineResult: Any = None  # BreastUSSegmentLib.inference.SegmentationResult
    postprocessing: Any = None  # BreastUSSegmentLib.postprocessing.PostprocessOptions used
    hiddenConfidence: Optional[float] = None  # when nothing was found: best mean probability Min. confidence hid
    rejectedLesionProbability: Optional[float] = None  # when the lesion head emptied every frame: its highest probability
    tableNode: Any = None  # the measurement table: one row per lesion per frame (vtkMRMLTableNode)
    descriptors: List[list] = field(default_factory=list)  # per frame, its lesions' research-use descriptor dicts
    sequenceNode: Any = None  # a Sequence's segmentation Sequence (one item per frame; the output node is its proxy)


@dataclass
class BoxSegmentationOutput:
    """What :meth:`BreastUSSegmentLogic.segmentInBoxes` produced: one segment per ROI, in the ROIs' order."""

    segmentationNode: Any
    segmentIds: List[str]
    emptyRois: List[Any]  # the ROIs in which the network saw no lesion
    attentionVolumeNode: Any
    measurements: List[List[LesionMeasurement]] = field(default_factory=list)  # per ROI, one entry per frame
    pipelineResult: Any = None  # BreastUSSegmentLib.inference.SegmentationResult
    tableNode: Any = None  # the measurement table: one row per lesion per frame, with its box (vtkMRMLTableNode)
