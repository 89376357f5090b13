"""What the module and every part of this package share: the names, tags and roles written into the scene,
the error types and the translation functions."""

try:  # Slicer 5.8 and later
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # plain Python with slicer-core: no translations

    def _(text):
        return text

    def translate(context, text):
        return text


LESION_SEGMENT_NAME = "Lesion"
LESION_SEGMENT_COLOR = (144 / 255.0, 238 / 255.0, 144 / 255.0)
# The module's own segment is found by this tag, never by its (editable) name.
LESION_TAG = "BreastUSSegment.Role"
LESION_TAG_VALUE = "Lesion"
# Slicer terminology entry: context~category~type~type modifier~anatomic context~region~region modifier.
# Codes listed in Slicer's DICOM master lists (Testing/test_terminology.py checks them against a copy).
LESION_TERMINOLOGY_ENTRY = (
    "Segmentation category and type - DICOM master list"
    "~SCT^49755003^Morphologically Altered Structure"
    "~SCT^4147007^Mass"
    "~^^"
    "~Anatomic codes - DICOM master list"
    "~SCT^76752008^Breast"
    "~^^"
)
# Segment tags Slicer's DICOM SEG export reads (it writes MANUAL when they are absent). The Lesion segment
# is AUTOMATIC as the module wrote it and SEMIAUTOMATIC once its voxels differ from what the module wrote
# (checked when the lesion is measured), using the digest kept in WRITTEN_MASK_TAG.
ALGORITHM_TYPE_TAG = "DICOM.SegmentAlgorithmType"
ALGORITHM_NAME_TAG = "DICOM.SegmentAlgorithmName"
ALGORITHM_NAME = "BreastUSSegment Attention U-Net"
WRITTEN_MASK_TAG = "BreastUSSegment.WrittenMask"
# Segments from box prompts ("Lesion 1", "Lesion 2", ...): one per Markups ROI, found by the ROI's ID.
BOX_LESION_TAG_VALUE = "BoxLesion"
BOX_ROI_TAG = "BreastUSSegment.BoxROI"
# Markups ROI nodes the panel placed for box prompts carry this attribute.
BOX_ROI_ATTRIBUTE = "BreastUSSegment.BoxPrompt"
ATTENTION_REFERENCE_ROLE = "BreastUSSegment.AttentionVolume"
PROBABILITY_REFERENCE_ROLE = "BreastUSSegment.ProbabilityVolume"
MEASUREMENT_TABLE_ROLE = "BreastUSSegment.MeasurementTable"
# Attribute of a labelmap exported by the module: the ID of the colour table the export made for it.
OWN_COLOR_TABLE_ATTRIBUTE = "BreastUSSegment.OwnColorTable"
# Columns of the per-frame measurement table (a Sequence's index column, e.g. "time", goes after "Frame").
MEASUREMENT_COLUMNS = (("Frame", ""), ("Area", "mm2"), ("Largest diameter", "mm"))
# The volume classes the input selector shows (its nodeTypes, without child classes; a test compares them).
INPUT_NODE_TYPES = ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode")
# Standard Slicer colour node used for the attention overlay when the scene has it.
STANDARD_HEAT_COLOR_NODE_ID = "vtkMRMLPETProceduralColorNodePET-Heat"
FALLBACK_HEAT_COLOR_NODE_NAME = "BreastUS attention heat"
DEFAULT_ATTENTION_OPACITY = 0.4
LABELMAP_SUFFIXES = (".nrrd", ".nii", ".nii.gz")


class BreastUSSegmentError(ValueError):
    """A problem the user can fix (bad input, missing weights...); the message is shown in the panel."""


class SegmentationCancelled(Exception):
    """Raised by a progress callback to stop a run; the scene is left as it was."""
