"""The Slicer module's Logic on cine clips loaded as Sequences, and runs that fail or are cancelled (slicer-core MRML).

Slicer's DICOM import loads a multi-frame ultrasound clip as a Sequence of single-frame volumes with a
Sequence Browser whose proxy node is the volume the user selects; these tests build the same on a plain scene.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import vtk
from slicer_module import LOAD_MODULE_CODE, load_module

import slicer
from BreastUSSegmentLib.descriptors import SHAPE_TERMS
from BreastUSSegmentLib.modelcard import read_model_card
from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.weights import save_model
from BreastUSSegmentScene import common, inputs, nodes, provenance, rois, segments, status
from conftest import brightness_model

BUS = load_module()
SHAPE = (48, 64)  # rows, columns of a frame
SQUARE = 10  # side of the bright square in pixels
SPACING = (0.1, 0.2)  # I (columns), J (rows) mm
SECOND = 6  # side of the second, still square (with ``second``), in rows 32 to 37 and columns 50 to 55


@pytest.fixture(scope="module")
def bright_weights(tmp_path_factory):
    """The hand-set brightness model (lesion = brighter than mid grey) without smoothing or confidence bar."""
    path = tmp_path_factory.mktemp("bright") / "bright.safetensors"
    options = UNTUNED_POSTPROCESSING.with_overrides(smoothing_sigma=0.0, min_mean_probability=0.0, fill_holes=False)
    save_model(brightness_model(), path, input_size=(64, 64), postprocessing=options)
    return path


@pytest.fixture
def scene(monkeypatch):
    scene = slicer.vtkMRMLScene()
    scene.RegisterNodeClass(slicer.vtkMRMLSequenceBrowserNode())
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    return scene


@pytest.fixture
def logic():
    return BUS.BreastUSSegmentLogic()


def square_column(frame):
    """First column of the bright square in ``frame`` (it moves one pixel right per frame, wrapping)."""
    return 1 + frame % (SHAPE[1] - SQUARE - 2)


def clip_frame(frame, second=False):
    image = np.full((1,) + SHAPE, 40, dtype=np.uint8)
    column = square_column(frame)
    image[0, 12:12 + SQUARE, column:column + SQUARE] = 220
    if second:
        image[0, 32:32 + SECOND, 50:50 + SECOND] = 220
    return image


class Clip:
    """A Sequence of single-frame volumes in a browser, as Slicer's DICOM image sequence import makes it."""

    def __init__(self, scene, frames, second=False):
        self.scene = scene
        self.sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "clip")
        self.sequence.SetIndexName("time")
        self.sequence.SetIndexUnit("s")
        frameVolume = slicer.vtkMRMLScalarVolumeNode()
        for frame in range(frames):
            slicer.util.updateVolumeFromArray(frameVolume, clip_frame(frame, second))
            frameVolume.SetSpacing(*SPACING, 1.0)
            self.sequence.SetDataNodeAtValue(frameVolume, f"{frame * 0.04:.2f}")
        self.browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "clip browser")
        self.browser.AddSynchronizedSequenceNode(self.sequence)
        # What Slicer's Sequences module does on every frame change.
        self.sequences = slicer.vtkSlicerSequencesLogic()
        self.sequences.SetMRMLScene(scene)
        self.sequences.UpdateProxyNodesFromSequences(self.browser)
        self.proxy = self.browser.GetProxyNode(self.sequence)

    def show(self, frame):
        self.browser.SetSelectedItemNumber(frame)
        self.sequences.UpdateProxyNodesFromSequences(self.browser)


def node_ids(scene):
    """IDs of the scene's nodes but those it makes for itself on first use (singletons, subject hierarchy)."""
    found = [scene.GetNthNode(index) for index in range(scene.GetNumberOfNodes())]
    return {node.GetID() for node in found if not nodes.isSceneBookkeeping(node)}


def lesion_columns(logic, segmentation_node, reference):
    masks = segments.arrayFromSegment(segmentation_node, segments.lesionSegmentId(segmentation_node), reference)
    return np.nonzero(masks[0].any(axis=0))[0]


def options(weights):
    return BUS.SegmentationOptions(weightsPath=str(weights), device="cpu")


# --- Sequences ---


def test_every_frame_of_a_100_frame_sequence_is_segmented_into_its_own_item(scene, logic, bright_weights):
    clip = Clip(scene, 100)
    clip.show(37)
    progress = []
    output = logic.segment(clip.proxy, options=options(bright_weights), progressCallback=lambda done, total, stage: progress.append((done, total)))

    assert progress[-1] == (100, 100) and len(progress) > 1
    sequence = output.sequenceNode
    assert sequence.GetNumberOfDataNodes() == 100
    assert clip.browser.GetProxyNode(sequence) is output.segmentationNode
    assert clip.browser.GetSaveChanges(sequence)  # edits of the shown frame are kept
    assert (sequence.GetIndexName(), sequence.GetIndexUnit()) == ("time", "s")
    for frame in (0, 1, 37, 99):
        item = sequence.GetDataNodeAtValue(clip.sequence.GetNthIndexValue(frame))
        columns = lesion_columns(logic, item, clip.sequence.GetNthDataNode(frame))
        assert (columns.min(), columns.max()) == (square_column(frame), square_column(frame) + SQUARE - 1), frame
        segment = item.GetSegmentation().GetSegment(segments.lesionSegmentId(item))
        value = vtk.reference("")
        assert segment.GetTag(common.ALGORITHM_TYPE_TAG, value) and str(value) == "AUTOMATIC"
        assert not item.GetSegmentation().ContainsRepresentation("Closed surface")
    # The proxy shows the browser's frame, and follows the browser like the clip does.
    assert lesion_columns(logic, output.segmentationNode, clip.proxy).min() == square_column(37)
    clip.show(80)
    assert lesion_columns(logic, output.segmentationNode, clip.proxy).min() == square_column(80)
    attention = output.attentionVolumeNode
    assert clip.browser.GetSequenceNode(attention).GetNumberOfDataNodes() == 100

    # One table row per lesion (here one) per frame: frame number, index value with its unit, the lesion's values.
    table = output.tableNode
    assert table.GetNumberOfRows() == 100
    assert [table.GetColumnName(column) for column in range(3)] == ["frame", "time", "lesion"]
    assert table.GetColumnUnitLabel("time") == "s"
    assert table.GetCellText(99, 0) == "100" and table.GetCellText(99, 1) == clip.sequence.GetNthIndexValue(99)
    area = SQUARE * SQUARE * SPACING[0] * SPACING[1]
    assert table.GetTable().GetColumnByName("area").GetValue(5) == pytest.approx(area)
    assert output.measurements[5].area_mm2 == pytest.approx(area)
    assert "lesions in 100 of 100 frames" in status.measurementSummary(output.measurements, SPACING[::-1])


def test_segmenting_a_sequence_again_updates_its_items_and_keeps_other_segments(scene, logic, bright_weights):
    clip = Clip(scene, 5)
    first = logic.segment(clip.proxy, options=options(bright_weights))
    item = first.sequenceNode.GetDataNodeAtValue(clip.sequence.GetNthIndexValue(3))
    item.GetSegmentation().AddEmptySegment("mine", "mine")
    sequences_before = len(nodes.nodesOfClass(scene, "vtkMRMLSequenceNode"))
    again = logic.segment(clip.proxy, first.segmentationNode, options(bright_weights))
    assert again.sequenceNode is first.sequenceNode
    assert len(nodes.nodesOfClass(scene, "vtkMRMLSequenceNode")) == sequences_before
    item = again.sequenceNode.GetDataNodeAtValue(clip.sequence.GetNthIndexValue(3))
    assert item.GetSegmentation().GetSegment("mine") is not None
    assert item.GetSegmentation().GetNumberOfSegments() == 2


def test_measuring_a_sequence_reads_every_item_and_marks_an_edited_frame(scene, logic, bright_weights):
    clip = Clip(scene, 6)
    output = logic.segment(clip.proxy, options=options(bright_weights))
    item = output.sequenceNode.GetDataNodeAtValue(clip.sequence.GetNthIndexValue(4))
    frameNode = clip.sequence.GetNthDataNode(4)
    segmentId = segments.lesionSegmentId(item)
    segments.updateSegmentFromArray(item, segmentId, np.zeros((1,) + SHAPE, dtype=np.uint8), frameNode)
    measurements = logic.measureLesion(output.segmentationNode, clip.proxy)
    assert [m.pixel_count for m in measurements] == [SQUARE * SQUARE] * 4 + [0, SQUARE * SQUARE]
    value = vtk.reference("")
    assert item.GetSegmentation().GetSegment(segmentId).GetTag(common.ALGORITHM_TYPE_TAG, value)
    assert str(value) == "SEMIAUTOMATIC"
    table = output.tableNode  # the edited frame's row says it has no lesion
    assert [table.GetCellText(4, column) for column in range(3)] == ["5", clip.sequence.GetNthIndexValue(4), ""]
    assert table.GetCellText(4, table.GetNumberOfColumns() - 1) == "no lesion found"
    assert [lesion.frame for m in measurements for lesion in m.lesions] == [1, 2, 3, 4, 6]


def test_a_sequence_with_two_lesions_per_frame_gets_a_row_per_frame_per_lesion(scene, logic, bright_weights):
    clip = Clip(scene, 4, second=True)
    clip.show(2)
    settings = read_model_card(bright_weights).postprocess_options.with_overrides(keep_largest=False, threshold=0.4)
    output = logic.segment(clip.proxy, options=BUS.SegmentationOptions(
        weightsPath=str(bright_weights), device="cpu", postprocessing=settings))
    table = output.tableNode
    assert table.GetNumberOfRows() == 8
    column = {name: table.GetTable().GetColumnByName(name) for name in ("frame", "time", "lesion", "area", "result")}
    assert [column["frame"].GetValue(row) for row in range(8)] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert [column["time"].GetValue(row) for row in range(8)] == [
        clip.sequence.GetNthIndexValue(row // 2) for row in range(8)]
    assert [column["lesion"].GetValue(row) for row in range(8)] == ["1", "2"] * 4
    areas = [SQUARE * SQUARE * SPACING[0] * SPACING[1], SECOND * SECOND * SPACING[0] * SPACING[1]]
    assert [column["area"].GetValue(row) for row in range(8)] == pytest.approx(areas * 4)
    assert {column["result"].GetValue(row) for row in range(8)} == {"2 lesions"}
    summary = status.measurementSummary(output.measurements, SPACING[::-1])
    assert summary.startswith("Largest lesion (frame 1 of 4): ") and "at most 2 in a frame" in summary
    # Every lesion row has its descriptors; the panel's lines are of the frame shown (the third).
    shapes = [table.GetTable().GetColumnByName("shape").GetValue(row) for row in range(8)]
    assert set(shapes) <= set(SHAPE_TERMS) and len(shapes) == 8
    likelihoods = [table.GetTable().GetColumnByName("malignancy_likelihood").GetValue(row) for row in range(8)]
    assert all(0 < value < 1 for value in likelihoods)
    assert [len(frame) for frame in output.descriptors] == [2] * 4
    lines = logic.descriptorSummary(output.segmentationNode, clip.proxy).splitlines()
    assert lines[0].startswith("Largest lesion in frame 3 of 4 (lesion 1 of 2): ") and len(lines) == 2
    # The model and settings stay recorded on the proxy while the clip is browsed, and on the segmentation Sequence.
    digest = hashlib.sha256(Path(bright_weights).read_bytes()).hexdigest()
    clip.show(0)
    for node in (output.segmentationNode, output.sequenceNode):
        recorded = provenance.readProvenance(node)
        assert recorded["model.sha256"] == digest and json.loads(recorded["settings.threshold"]) == 0.4
    # Measuring again (after edits) gives the same rows.
    logic.measureLesion(output.segmentationNode, clip.proxy)
    assert table.GetNumberOfRows() == 8 and table.GetTable().GetColumnByName("frame").GetValue(7) == 4
    assert [table.GetTable().GetColumnByName("shape").GetValue(row) for row in range(8)] == shapes
    assert [table.GetTable().GetColumnByName("malignancy_likelihood").GetValue(row) for row in range(8)] == \
        pytest.approx(likelihoods)


def test_a_clip_in_one_volume_gets_a_table_and_no_3d_surface(scene, logic, bright_weights):
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "stack")
    slicer.util.updateVolumeFromArray(volume, np.concatenate([clip_frame(frame) for frame in range(3)]))
    output = logic.segment(volume, options=options(bright_weights))
    assert not output.segmentationNode.GetSegmentation().ContainsRepresentation("Closed surface")
    assert output.sequenceNode is None and output.tableNode.GetNumberOfRows() == 3
    single = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "frame")
    slicer.util.updateVolumeFromArray(single, clip_frame(0))
    assert logic.segment(single, options=options(bright_weights)).segmentationNode.GetSegmentation().ContainsRepresentation(
        "Closed surface")


# --- Failed and cancelled runs leave no node ---


def cancel_at(frame):
    def progress(done, total, stage):
        if done >= frame:
            raise BUS.SegmentationCancelled()
    return progress


def test_a_cancelled_run_leaves_the_scene_as_it_was(scene, logic, bright_weights):
    clip = Clip(scene, 20)
    before = node_ids(scene)
    with pytest.raises(BUS.SegmentationCancelled):
        logic.segment(clip.proxy, options=options(bright_weights), progressCallback=cancel_at(8))
    assert node_ids(scene) == before

    # An existing output keeps what it had.
    output = logic.segment(clip.proxy, options=options(bright_weights))
    before = node_ids(scene)
    with pytest.raises(BUS.SegmentationCancelled):
        logic.segment(clip.proxy, output.segmentationNode, options(bright_weights), progressCallback=cancel_at(1))
    assert node_ids(scene) == before


def test_a_broken_model_is_the_modules_error_and_leaves_no_node(scene, logic, tmp_path):
    model = brightness_model()
    with torch.no_grad():  # finite weights whose output overflows (NaN or infinite weights are refused at loading)
        model.encoders[0][0].weight[0, 0, 1, 1] = 3e38
        model.encoders[0][2].weight[0, 0, 1, 1] = 3e38
    broken = tmp_path / "broken.safetensors"
    save_model(model, broken, input_size=(64, 64), postprocessing=UNTUNED_POSTPROCESSING)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "frame")
    slicer.util.updateVolumeFromArray(volume, clip_frame(0))
    before = node_ids(scene)
    for attempt in range(2):
        with pytest.raises(BUS.BreastUSSegmentError, match=f"NaN or infinite: the model {broken} is broken"):
            logic.segment(volume, options=options(broken))
    assert node_ids(scene) == before
    roi = rois.addBoxRoi(scene, volume)
    roi.SetXYZ(3.0, 3.0, 0.0)
    roi.SetRadiusXYZ(2.0, 2.0, 0.5)
    before = node_ids(scene)
    with pytest.raises(BUS.BreastUSSegmentError, match="NaN or infinite"):
        logic.segmentInBoxes(volume, [roi], options=options(broken))
    assert node_ids(scene) == before


def test_an_input_removed_during_the_run_is_reported_and_nothing_is_written(scene, logic, bright_weights):
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "frame")
    slicer.util.updateVolumeFromArray(volume, np.concatenate([clip_frame(frame) for frame in range(2)]))
    before = node_ids(scene) - {volume.GetID()}
    with pytest.raises(BUS.BreastUSSegmentError, match="'frame' was removed from the scene while segmenting"):
        logic.segment(volume, options=options(bright_weights), progressCallback=lambda done, total, stage: scene.RemoveNode(volume))
    assert node_ids(scene) - {volume.GetID()} == before


def test_a_failed_export_leaves_no_labelmap(scene, logic, bright_weights, tmp_path):
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "frame")
    slicer.util.updateVolumeFromArray(volume, clip_frame(0))
    output = logic.segment(volume, options=options(bright_weights))
    before = node_ids(scene)
    (tmp_path / "a file").write_text("not a folder")
    unwritable = tmp_path / "a file" / "lesion.nrrd"
    with pytest.raises(BUS.BreastUSSegmentError, match="Writing the labelmap to .*lesion.nrrd failed"):
        logic.exportLabelmap(output.segmentationNode, volume, unwritable)
    assert node_ids(scene) == before
    # A successful export's temporary labelmap goes with its display, storage and colour-table nodes.
    labelmap = logic.exportLabelmap(output.segmentationNode, volume, tmp_path / "lesion.nrrd")
    nodes.removeLabelmapNode(labelmap)
    assert node_ids(scene) == before
    logic.measureLesion(output.segmentationNode, volume)
    assert node_ids(scene) == before


# --- Smaller points ---


def test_node_collections_are_released():
    scene = slicer.vtkMRMLScene()
    collection = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    assert collection.GetReferenceCount() == 2  # the new reference the method returned, and Python's
    nodes.collectionItems(collection)
    assert collection.GetReferenceCount() == 1


def test_the_first_volume_chosen_is_one_the_input_selector_shows(scene, logic):
    assert inputs.firstInputVolume(scene) is None
    for className in ("vtkMRMLLabelMapVolumeNode", "vtkMRMLDiffusionWeightedVolumeNode", "vtkMRMLDiffusionTensorVolumeNode"):
        scene.AddNewNodeByClass(className, className)
    assert inputs.firstInputVolume(scene) is None
    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "screenshot")
    scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "frame")
    assert inputs.firstInputVolume(scene) is vector


def test_the_model_card_is_read_without_pytorch():
    """The panel fills its post-processing options from the card before PyTorch is installed."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['safetensors'] = None  # importing either fails\n"
        + LOAD_MODULE_CODE
        + "from BreastUSSegmentScene import models, parameters\n"
        "card = models.modelCard()\n"
        "print(parameters.PostprocessingParameters.fromOptions(card.postprocess_options).threshold)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    from BreastUSSegmentLib.modelcard import read_model_card

    expected = read_model_card(BUS.BUNDLED_WEIGHTS).postprocess_options.threshold
    assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(expected)
