"""The Slicer module's Logic on real MRML scenes (slicer-core), with a tiny model saved by the tests."""

import dataclasses
import hashlib
import json
import math
import sys

import numpy as np
import pytest
from slicer_module import LOAD_MODULE_CODE, load_module
import SimpleITK as sitk
import slicerio
import torch
import vtk

import slicer
from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib import __version__
from BreastUSSegmentLib.boxes import CONTEXT_MARGIN
from BreastUSSegmentLib.descriptors import DESCRIPTOR_COLUMNS, describe_lesion
from BreastUSSegmentLib.measure import LESION_COLUMNS, measure_frames, measure_lesions
from BreastUSSegmentLib.model import AttentionUNet, ModelConfig
from BreastUSSegmentLib.modelcard import read_model_card
from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.weights import save_model
from BreastUSSegmentScene import common, models, parameters, provenance, rois, segments, status
from BreastUSSegmentScene import dependencies as moduleDependencies
from conftest import brightness_model

SHAPE = (48, 64)  # rows, columns of the synthetic frames
SPACING = (0.12, 0.08, 1.0)  # I (columns), J (rows), K mm
ORIGIN = (12.5, -30.0, 4.0)
ANGLE = math.radians(25)

BUS = load_module()


@pytest.fixture(scope="module")
def weights(tiny_weights):
    return tiny_weights


@pytest.fixture(scope="module")
def reference(weights):
    """The core pipeline run outside Slicer on the same weights."""
    return LesionSegmenter.from_weights(weights, device="cpu")


@pytest.fixture
def logic():
    return BUS.BreastUSSegmentLogic()


@pytest.fixture
def scene(monkeypatch):
    """A fresh scene, bound as the application's scene (``slicer.mrmlScene``) whose slice views show overlays."""
    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    return scene


def frame(seed=0, shape=SHAPE):
    """A smooth synthetic ultrasound-like frame, different for every seed."""
    rows, cols = np.indices(shape)
    rng = np.random.default_rng(seed)
    image = 90 + 60 * np.sin(rows / (4.0 + seed)) * np.cos(cols / 6.0) + rng.normal(0, 8, shape)
    image[rows > shape[0] * (0.55 + 0.05 * seed)] -= 50  # an asymmetric dark region
    return np.clip(image, 0, 255).astype(np.uint8)


def add_volume(scene, array, className="vtkMRMLScalarVolumeNode", name="us"):
    """Volume node from a (K, J, I) or (K, J, I, C) array with a rotated, offset, anisotropic geometry."""
    node = scene.AddNewNodeByClass(className, name)
    slicer.util.updateVolumeFromArray(node, array)
    node.SetSpacing(*SPACING)
    node.SetOrigin(*ORIGIN)
    directions = vtk.vtkMatrix4x4()
    rotation = [[math.cos(ANGLE), -math.sin(ANGLE), 0], [-math.sin(ANGLE), -math.cos(ANGLE), 0], [0, 0, 1]]
    for row in range(3):
        for col in range(3):
            directions.SetElement(row, col, rotation[row][col])
    node.SetIJKToRASDirectionMatrix(directions)
    return node


def ijk_to_ras(node):
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def card_with(weights, **settings):
    """The post-processing of the model card of ``weights`` with ``settings`` changed, as the panel passes it."""
    return read_model_card(weights).postprocess_options.with_overrides(**settings)


def cpu_options(weights, **settings):
    """The options the panel gives for ``weights`` on the CPU, with the post-processing ``settings`` changed."""
    return BUS.SegmentationOptions(weightsPath=weights, device="cpu", postprocessing=card_with(weights, **settings))


def expected_result(reference, image, threshold, color=None):
    options = reference.postprocessing.with_overrides(threshold=threshold)
    return reference.segment(image, color=color, postprocessing=options)


def split_threshold(reference, image, color=None):
    """A threshold that puts about 40 % of the random model's pixels in the lesion."""
    return float(np.quantile(reference.segment(image, color=color).probability, 0.6))


def test_minimum_confidence_discards_lukewarm_regions(scene, logic, weights, reference):
    """The panel's "Min. confidence" reaches the core: a bar above every region's mean probability empties the lesion."""
    image = frame()
    volume = add_volume(scene, image[np.newaxis])
    threshold = split_threshold(reference, image)
    kept = logic.segment(volume, options=cpu_options(weights, threshold=threshold, min_mean_probability=0.0))
    lesion = kept.pipelineResult.processed_mask[0]
    assert lesion.any()
    region_mean = float(kept.pipelineResult.probability[0][lesion].mean())
    above = min(region_mean + 0.02, 0.99)
    dropped = logic.segment(volume, options=cpu_options(weights, threshold=threshold, min_mean_probability=above))
    assert not dropped.pipelineResult.processed_mask.any()
    assert not segments.arrayFromSegment(dropped.segmentationNode, dropped.segmentId, volume).any()
    # The user is told what was hidden and how far it is from the bar.
    assert kept.hiddenConfidence is None
    assert threshold <= dropped.hiddenConfidence < above
    summary = status.measurementSummary(dropped.measurements, (1.0, 1.0), dropped.hiddenConfidence,
                                       dropped.postprocessing.min_mean_probability)
    assert f"mean probability {dropped.hiddenConfidence:.2f}" in summary and f"{above:.2f}" in summary


def test_min_lesion_probability_empties_the_frame_and_says_why(scene, logic, weights, tmp_path):
    """A lesion-head model's Min. lesion probability reaches the core; the status line names the head's verdict."""
    torch.manual_seed(0)
    path = tmp_path / "head.safetensors"
    save_model(AttentionUNet(ModelConfig(base_channels=4, depth=2, lesion_head=True)), path, input_size=(64, 64),
               postprocessing=UNTUNED_POSTPROCESSING.with_overrides(min_mean_probability=0.0))
    volume = add_volume(scene, frame()[np.newaxis])
    threshold = split_threshold(LesionSegmenter.from_weights(path, device="cpu"), frame())
    kept = logic.segment(volume, options=cpu_options(str(path), threshold=threshold, min_lesion_probability=0.0))
    assert kept.pipelineResult.processed_mask.any() and kept.rejectedLesionProbability is None
    head = float(kept.pipelineResult.lesion_probability[0])
    bar = min(head + 0.02, 0.99)
    dropped = logic.segment(volume, options=cpu_options(str(path), threshold=threshold, min_lesion_probability=bar))
    assert not segments.arrayFromSegment(dropped.segmentationNode, dropped.segmentId, volume).any()
    assert dropped.rejectedLesionProbability == pytest.approx(head)
    summary = status.measurementSummary(
        dropped.measurements, (1.0, 1.0), dropped.hiddenConfidence, dropped.postprocessing.min_mean_probability,
        dropped.rejectedLesionProbability, dropped.postprocessing.min_lesion_probability)
    assert f"lesion probability the model gave is {head:.2f}" in summary and f"{bar:.2f}" in summary
    # A model without the head refuses the setting instead of ignoring it.
    with pytest.raises(BUS.BreastUSSegmentError, match="lesion head"):
        logic.segment(volume, options=cpu_options(weights, min_lesion_probability=bar))


def test_postprocessing_parameters_follow_the_chosen_models_card(tmp_path):
    """Choosing a model file sets the panel's post-processing to that model's card (fields the panel binds)."""
    Pack = parameters.PostprocessingParameters

    def from_card(path=None):
        return Pack.fromOptions(models.modelCard(path).postprocess_options)

    bundled = read_model_card(BUS.BUNDLED_WEIGHTS).postprocess_options
    values = from_card()
    assert values.threshold == pytest.approx(bundled.threshold)
    assert values.min_mean_probability == pytest.approx(bundled.min_mean_probability)
    assert values.min_area_fraction == pytest.approx(bundled.min_area_fraction)

    custom = tmp_path / "custom.safetensors"
    options = UNTUNED_POSTPROCESSING.with_overrides(threshold=0.3, min_mean_probability=0.5, keep_largest=True,
                                                   fill_holes=False, smoothing_sigma=0.0)
    save_model(AttentionUNet(ModelConfig(base_channels=4, depth=2)), custom, input_size=(64, 64), postprocessing=options)
    assert from_card(str(custom)) == Pack(
        threshold=0.3, min_area_fraction=0.005, min_mean_probability=0.5, min_lesion_probability=0.0,
        keep_largest=True, fill_holes=False, smoothing=False, test_time_flip=False)
    assert not models.modelCard(str(custom)).model_config.lesion_head
    head_card = options.with_overrides(min_lesion_probability=0.4, test_time_flip=True)
    save_model(AttentionUNet(ModelConfig(base_channels=4, depth=2, lesion_head=True)), custom, input_size=(64, 64),
               postprocessing=head_card)
    assert models.modelCard(str(custom)).model_config.lesion_head
    values = from_card(str(custom))
    assert values.min_lesion_probability == pytest.approx(0.4) and values.test_time_flip is True

    # A card outside the sliders' ranges starts the sliders at their ends.
    save_model(AttentionUNet(ModelConfig(base_channels=4, depth=2)), custom, input_size=(64, 64),
               postprocessing=UNTUNED_POSTPROCESSING.with_overrides(threshold=0.98, min_mean_probability=0.99))
    values = from_card(str(custom))
    assert (values.threshold, values.min_mean_probability) == (
        parameters.THRESHOLD_RANGE[1], parameters.MIN_CONFIDENCE_RANGE[1])
    save_model(AttentionUNet(ModelConfig(base_channels=4, depth=2, lesion_head=True)), custom, input_size=(64, 64),
               postprocessing=UNTUNED_POSTPROCESSING.with_overrides(min_lesion_probability=0.99))
    assert from_card(str(custom)).min_lesion_probability == parameters.MIN_LESION_PROBABILITY_RANGE[1]

    custom.with_suffix(".json").unlink()
    with pytest.raises(BUS.BreastUSSegmentError, match="model card not found"):
        from_card(str(custom))


def segment_ids(segmentation_node):
    return list(segmentation_node.GetSegmentation().GetSegmentIDs())


# --- Segmentation into the scene ---


def test_lesion_segment_equals_pipeline_mask_on_input_geometry(scene, logic, weights, reference):
    image = frame()
    volume = add_volume(scene, image[np.newaxis])
    threshold = split_threshold(reference, image)
    expected = expected_result(reference, image, threshold).processed_mask
    assert 0 < expected.sum() < expected.size

    output = logic.segment(volume, options=cpu_options(weights, threshold=threshold))
    segmentation_node = output.segmentationNode
    assert segmentation_node.GetScene() is scene
    np.testing.assert_array_equal(segments.arrayFromSegment(segmentation_node, output.segmentId, volume), expected)

    segment = segmentation_node.GetSegmentation().GetSegment(output.segmentId)
    assert segment.GetName() == "Lesion"
    np.testing.assert_allclose(segment.GetColor(), common.LESION_SEGMENT_COLOR)
    terminology = vtk.reference("")
    assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), terminology)
    assert str(terminology) == common.LESION_TERMINOLOGY_ENTRY
    assert "~SCT^4147007^Mass~" in str(terminology) and "~SCT^76752008^Breast~" in str(terminology)

    # Segment Editor paints on the internal labelmap: its voxels must be the image's voxels.
    internal = segmentation_node.GetBinaryLabelmapInternalRepresentation(output.segmentId)
    image_to_world = vtk.vtkMatrix4x4()
    internal.GetImageToWorldMatrix(image_to_world)
    np.testing.assert_allclose(
        [[image_to_world.GetElement(r, c) for c in range(4)] for r in range(4)], ijk_to_ras(volume), atol=1e-6
    )
    assert segmentation_node.GetSegmentation().ContainsRepresentation("Closed surface")
    assert output.measurements == measure_frames(expected, (SPACING[1], SPACING[0]))


def segment_tag(segmentation_node, segment_id, name):
    value = vtk.reference("")
    return str(value) if segmentation_node.GetSegmentation().GetSegment(segment_id).GetTag(name, value) else None


def test_dicom_algorithm_tags_automatic_then_semiautomatic_after_an_edit(scene, logic, weights, reference, tmp_path):
    """DICOM SEG export reads these tags: AUTOMATIC as written, SEMIAUTOMATIC once the user changed the voxels."""
    image = frame(2)
    volume = add_volume(scene, image[np.newaxis])
    threshold = split_threshold(reference, image)
    options = cpu_options(weights, threshold=threshold)
    output = logic.segment(volume, None, options)
    node, segment_id = output.segmentationNode, output.segmentId
    assert segment_tag(node, segment_id, "DICOM.SegmentAlgorithmType") == "AUTOMATIC"
    assert segment_tag(node, segment_id, "DICOM.SegmentAlgorithmName") == common.ALGORITHM_NAME
    logic.measureLesion(node, volume)  # measuring is not editing
    assert segment_tag(node, segment_id, "DICOM.SegmentAlgorithmType") == "AUTOMATIC"

    # An edit as Segment Editor's Paint or Erase makes: one voxel changed.
    edited = segments.arrayFromSegment(node, segment_id, volume)
    edited[0, 0, 0] = 1 - edited[0, 0, 0]
    segments.updateSegmentFromArray(node, segment_id, edited, volume)
    logic.measureLesion(node, volume)
    assert segment_tag(node, segment_id, "DICOM.SegmentAlgorithmType") == "SEMIAUTOMATIC"

    # The tags are saved with the segmentation.
    path = tmp_path / "edited.seg.nrrd"
    writer = slicer.vtkMRMLSegmentationStorageNode()
    writer.SetFileName(str(path))
    assert writer.WriteData(node)
    reloaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reloaded")
    reader = slicer.vtkMRMLSegmentationStorageNode()
    reader.SetFileName(str(path))
    assert reader.ReadData(reloaded)
    assert segment_tag(reloaded, segment_id, "DICOM.SegmentAlgorithmType") == "SEMIAUTOMATIC"
    assert segment_tag(reloaded, segment_id, "DICOM.SegmentAlgorithmName") == common.ALGORITHM_NAME

    # Segmenting again replaces the edit.
    logic.segment(volume, node, options)
    assert segment_tag(node, segment_id, "DICOM.SegmentAlgorithmType") == "AUTOMATIC"

    # A segment the user drew gets no algorithm tags from measuring it.
    drawn = node.GetSegmentation().AddEmptySegment("", "drawn", [1.0, 0.0, 0.0])
    segments.updateSegmentFromArray(node, drawn, edited, volume)
    logic.measureLesion(node, volume, segmentId=drawn)
    assert segment_tag(node, drawn, "DICOM.SegmentAlgorithmType") is None


def test_seg_nrrd_written_and_read_back_identical(scene, logic, weights, reference, tmp_path):
    image = frame(1)
    volume = add_volume(scene, image[np.newaxis])
    threshold = split_threshold(reference, image)
    expected = expected_result(reference, image, threshold).processed_mask
    output = logic.segment(volume, options=cpu_options(weights, threshold=threshold))

    path = tmp_path / "lesion.seg.nrrd"
    writer = slicer.vtkMRMLSegmentationStorageNode()
    writer.SetFileName(str(path))
    assert writer.WriteData(output.segmentationNode)

    reloaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reloaded")
    reader = slicer.vtkMRMLSegmentationStorageNode()
    reader.SetFileName(str(path))
    assert reader.ReadData(reloaded)
    segment_id = segments.lesionSegmentId(reloaded)  # the tag survives the file
    assert segment_id == output.segmentId
    np.testing.assert_array_equal(segments.arrayFromSegment(reloaded, segment_id, volume), expected)

    # Independent reader: slicerio gives voxels in (I, J, K) order with their extent offset and IJK-to-LPS.
    segmentation = slicerio.read_segmentation(str(path))
    info = slicerio.segment_from_name(segmentation, "Lesion")
    voxels = segmentation["voxels"]
    if voxels.ndim == 4:
        voxels = voxels[..., info["layer"]]
    offset = segmentation["referenceImageExtentOffset"]
    full = np.zeros((SHAPE[1], SHAPE[0], 1), dtype=bool)
    full[offset[0] : offset[0] + voxels.shape[0], offset[1] : offset[1] + voxels.shape[1], offset[2] : offset[2] + voxels.shape[2]] = (
        voxels == info["labelValue"]
    )
    np.testing.assert_array_equal(full.transpose(2, 1, 0), expected)
    np.testing.assert_allclose(segmentation["ijkToLPS"], ras_to_lps_matrix(ijk_to_ras(volume)), atol=1e-5)


def test_labelmap_export_nrrd_and_nifti_match_mask_and_geometry(scene, logic, weights, reference, tmp_path):
    image = frame(2)
    volume = add_volume(scene, image[np.newaxis])
    threshold = split_threshold(reference, image)
    expected = expected_result(reference, image, threshold).processed_mask
    output = logic.segment(volume, options=cpu_options(weights, threshold=threshold))

    for name in ("lesion.nrrd", "lesion.nii.gz"):
        path = tmp_path / name
        labelmap = logic.exportLabelmap(output.segmentationNode, volume, path)
        assert labelmap.IsA("vtkMRMLLabelMapVolumeNode")
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(labelmap), expected.astype(np.uint8))
        written = sitk.ReadImage(str(path))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written), expected.astype(np.uint8))
        lps = ras_to_lps_matrix(ijk_to_ras(volume))
        np.testing.assert_allclose(written.GetSpacing(), SPACING, atol=1e-5)
        np.testing.assert_allclose(written.GetOrigin(), lps[:3, 3], atol=1e-4)
        directions = lps[:3, :3] / np.array(SPACING)
        np.testing.assert_allclose(np.array(written.GetDirection()).reshape(3, 3), directions, atol=1e-5)

        with pytest.raises(BUS.BreastUSSegmentError, match="already exists"):
            logic.exportLabelmap(output.segmentationNode, volume, path)
        logic.exportLabelmap(output.segmentationNode, volume, path, overwrite=True)

    with pytest.raises(BUS.BreastUSSegmentError, match=r"\.nrrd, \.nii or \.nii\.gz"):
        logic.exportLabelmap(output.segmentationNode, volume, tmp_path / "lesion.png")


def ras_to_lps_matrix(ras_matrix):
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras_matrix


def test_rgb_vector_volume_is_converted_by_the_core(scene, logic, weights, reference):
    gray = frame(3)
    rgb = np.stack([gray, np.clip(gray.astype(int) + 30, 0, 255), gray // 2], axis=-1).astype(np.uint8)
    volume = add_volume(scene, rgb[np.newaxis], className="vtkMRMLVectorVolumeNode")
    threshold = split_threshold(reference, rgb)
    expected = expected_result(reference, rgb, threshold).processed_mask  # the 2-D RGB frame as a user would pass it
    output = logic.segment(volume, options=cpu_options(weights, threshold=threshold))
    np.testing.assert_array_equal(segments.arrayFromSegment(output.segmentationNode, output.segmentId, volume), expected)


def test_multi_slice_volume_segments_every_frame(scene, logic, weights, reference):
    clip = np.stack([frame(seed) for seed in range(3)])
    volume = add_volume(scene, clip)
    threshold = split_threshold(reference, clip)
    expected = expected_result(reference, clip, threshold).processed_mask
    assert not np.array_equal(expected[0], expected[1])
    progress = []
    output = logic.segment(volume, options=cpu_options(weights, threshold=threshold),
                           progressCallback=lambda done, total, stage: progress.append((done, total)))
    np.testing.assert_array_equal(segments.arrayFromSegment(output.segmentationNode, output.segmentId, volume), expected)
    assert progress[-1] == (3, 3)
    assert len(output.measurements) == 3
    assert [m.pixel_count for m in output.measurements] == [int(mask.sum()) for mask in expected]


def test_user_segments_preserved_and_lesion_replaced_not_duplicated(scene, logic, weights, reference):
    image = frame(4)
    volume = add_volume(scene, image[np.newaxis])
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "review")
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation = segmentation_node.GetSegmentation()
    # A user segment that overlaps the lesion, and one the user named "Lesion" (no module tag).
    user_mask = np.zeros((1, *SHAPE), dtype=bool)
    user_mask[0, 10:40, 5:50] = True
    user_id = segmentation.AddEmptySegment("", "Cyst (drawn)", [0.2, 0.4, 1.0])
    segments.updateSegmentFromArray(segmentation_node, user_id, user_mask, volume)
    named_mask = np.zeros((1, *SHAPE), dtype=bool)
    named_mask[0, 2:8, 2:8] = True
    named_id = segmentation.AddEmptySegment("", "Lesion", [1.0, 0.0, 0.0])
    segments.updateSegmentFromArray(segmentation_node, named_id, named_mask, volume)

    low = split_threshold(reference, image)
    first = logic.segment(volume, segmentation_node, cpu_options(weights, threshold=low))
    assert first.segmentId not in (user_id, named_id)
    segmentation.GetSegment(first.segmentId).SetName("Lesion (edited name)")

    high = float(np.quantile(reference.segment(image).probability, 0.8))
    second = logic.segment(volume, segmentation_node, cpu_options(weights, threshold=high))
    assert second.segmentId == first.segmentId
    assert sorted(segment_ids(segmentation_node)) == sorted([user_id, named_id, first.segmentId])
    expected = expected_result(reference, image, high).processed_mask
    assert not np.array_equal(expected, expected_result(reference, image, low).processed_mask)
    np.testing.assert_array_equal(segments.arrayFromSegment(segmentation_node, first.segmentId, volume), expected)
    np.testing.assert_array_equal(segments.arrayFromSegment(segmentation_node, user_id, volume), user_mask)
    np.testing.assert_array_equal(segments.arrayFromSegment(segmentation_node, named_id, volume), named_mask)


def test_attention_volume_geometry_colour_and_slice_views(scene, logic, weights, reference):
    image = frame(5)
    volume = add_volume(scene, image[np.newaxis])
    composites = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(2)]
    threshold = split_threshold(reference, image)
    result = expected_result(reference, image, threshold)

    output = logic.segment(volume, options=BUS.SegmentationOptions(
        weightsPath=weights, device="cpu", postprocessing=card_with(weights, threshold=threshold), attentionOpacity=0.3,
        createProbabilityVolume=True))
    attention = output.attentionVolumeNode
    np.testing.assert_allclose(ijk_to_ras(attention), ijk_to_ras(volume))
    assert attention.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    np.testing.assert_allclose(slicer.util.arrayFromVolume(attention), result.combined_attention, atol=1e-6)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(output.probabilityVolumeNode), result.probability, atol=1e-6)
    color = attention.GetDisplayNode().GetColorNode()
    assert color is not None and color.GetName() == common.ATTENTION_COLOR_NODE_NAME
    assert color.GetNumberOfColors() == 256
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetForegroundVolumeID() == attention.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.3)

    again = logic.segment(volume, output.segmentationNode, options=BUS.SegmentationOptions(
        weightsPath=weights, device="cpu", showAttention=False))
    assert again.attentionVolumeNode is attention  # updated, not duplicated
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") == 1
    assert all(composite.GetForegroundVolumeID() is None for composite in composites)


def test_low_attention_is_transparent_and_a_legend_says_what_the_colours_mean(scene, logic, weights):
    """Slicer's volume display keeps pixels whose colour has alpha 0 out of the foreground layer, so the overlay
    must not darken the whole frame (PET-Heat's low end is opaque black): its low end is transparent."""
    scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())  # the Colors module does this in Slicer
    slicer.vtkMRMLColorLogic().SetMRMLScene(scene)  # the standard colour nodes, PET-Heat among them
    volume = add_volume(scene, frame(6)[np.newaxis])
    output = logic.segment(volume, options=BUS.SegmentationOptions(weightsPath=weights, device="cpu"))
    display = output.attentionVolumeNode.GetDisplayNode()
    table = display.GetColorNode()
    assert table.GetName() == common.ATTENTION_COLOR_NODE_NAME
    alpha = np.array([table.GetLookupTable().GetTableValue(index)[3] for index in range(256)])
    assert alpha[0] == 0 and alpha[-1] == 1
    assert np.all(alpha[:int(0.45 * 256)] == 0) and np.all(alpha[int(0.55 * 256):] == 1)
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(output.attentionVolumeNode)
    assert legend is not None and legend.GetPrimaryDisplayNode() is display
    assert "Attention" in legend.GetTitleText() and legend.GetVisibility()
    logic.segment(volume, output.segmentationNode, BUS.SegmentationOptions(weightsPath=weights, device="cpu",
                                                                            showAttention=False))
    assert not legend.GetVisibility()  # hidden with the overlay
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode") == 1


# --- Measurement ---


def test_measure_lesion_on_a_disc_of_known_radius(scene, logic):
    volume = add_volume(scene, np.zeros((1, 120, 160), dtype=np.uint8))
    row_mm, col_mm = SPACING[1], SPACING[0]
    radius_mm = 3.0
    rows, cols = np.indices((120, 160))
    disc = np.hypot((rows - 60) * row_mm, (cols - 80) * col_mm) <= radius_mm
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = segments.addLesionSegment(segmentation_node)
    segments.updateSegmentFromArray(segmentation_node, segment_id, disc[np.newaxis], volume)

    [measured] = logic.measureLesion(segmentation_node, volume)
    pixel = max(row_mm, col_mm)
    assert abs(measured.largest_diameter_mm - 2 * radius_mm) <= pixel
    assert abs(measured.area_mm2 - math.pi * radius_mm**2) <= 2 * math.pi * radius_mm * pixel
    assert measured.pixel_count == int(disc.sum())
    summary = status.measurementSummary([measured], (row_mm, col_mm))
    assert f"{measured.area_mm2:.1f} mm²" in summary and f"{measured.largest_diameter_mm:.1f} mm" in summary
    assert "pixels" not in summary
    assert "read mm as pixels" in status.measurementSummary([measured], (1.0, 1.0))
    assert "No lesion found" in status.measurementSummary(measure_frames(np.zeros((2, 4, 4))))


# --- Errors ---


def test_errors_have_clear_messages(scene, logic, weights, tmp_path, monkeypatch):
    Error = BUS.BreastUSSegmentError
    volume = add_volume(scene, frame(7)[np.newaxis])
    with pytest.raises(Error, match="No input volume selected"):
        logic.segment(None, options=BUS.SegmentationOptions(weightsPath=weights))

    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(Error, match="'empty' has no image data"):
        logic.segment(empty, options=BUS.SegmentationOptions(weightsPath=weights))

    two = add_volume(scene, np.zeros((1, 8, 8, 2), dtype=np.uint8), className="vtkMRMLVectorVolumeNode", name="two")
    with pytest.raises(Error, match="2 components per pixel"):
        logic.segment(two, options=BUS.SegmentationOptions(weightsPath=weights))

    logic.maxInputPixels = 1000
    with pytest.raises(Error, match=r"too large: 1 frame\(s\) of 48 x 64 pixels is 3,072 pixels; the limit is 1,000\. "):
        logic.segment(volume, options=BUS.SegmentationOptions(weightsPath=weights))
    logic.maxInputPixels = BUS.MAX_INPUT_PIXELS

    with pytest.raises(Error, match="Model weights not found: .*missing.safetensors"):
        logic.segment(volume, options=BUS.SegmentationOptions(weightsPath=tmp_path / "missing.safetensors"))
    monkeypatch.setattr(models, "BUNDLED_WEIGHTS", tmp_path / "Models" / "bundled.safetensors")
    with pytest.raises(Error, match="trained model is not installed"):
        logic.segment(volume)

    tampered = tmp_path / "tampered.safetensors"
    tampered.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    (tmp_path / "tampered.json").write_text(weights.with_suffix(".json").read_text())
    with pytest.raises(Error, match="Cannot load the model .*checksum"):
        logic.segment(volume, options=BUS.SegmentationOptions(weightsPath=tampered))

    with pytest.raises(Error, match="threshold"):  # the panel's value meets the core's checks
        parameters.PostprocessingParameters(threshold=1.5).options(read_model_card(weights).postprocess_options)

    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "nothing yet")
    with pytest.raises(Error, match="'nothing yet' has no Lesion segment"):
        logic.exportLabelmap(segmentation_node, volume, tmp_path / "x.nrrd")
    with pytest.raises(Error, match="no Lesion segment"):
        logic.measureLesion(segmentation_node, volume)

    other_scene = slicer.vtkMRMLScene()
    foreign = other_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    with pytest.raises(Error, match="different scenes"):
        logic.segment(volume, foreign, options=BUS.SegmentationOptions(weightsPath=weights))


def test_segmenter_is_cached_per_weights_and_device(logic, weights):
    assert logic.segmenters.get(weights, "cpu") is logic.segmenters.get(weights, "cpu")
    assert logic.segmenters.get(weights, "cpu") is not logic.segmenters.get(weights, "auto")


# --- Module file ---


def test_module_category_is_slicers_translated_segmentation_category(monkeypatch):
    """Slicer translates its built-in category names in the qSlicerAbstractCoreModule context."""
    from types import SimpleNamespace

    calls = []
    monkeypatch.setattr(BUS, "translate", lambda context, text: calls.append((context, text)) or f"<{text}>")
    module = BUS.BreastUSSegment(SimpleNamespace())
    assert calls == [("qSlicerAbstractCoreModule", "Segmentation")]
    assert module.parent.categories == ["<Segmentation>"]
    monkeypatch.undo()
    assert BUS.BreastUSSegment(SimpleNamespace()).parent.categories == ["Segmentation"]  # untranslated without Slicer


def test_self_test_is_skipped_with_a_clear_message_without_a_runtime(monkeypatch, caplog):
    """CTest runs the test methods with unittest: without any network runtime both are skipped, which counts as
    success, and Reload and Test says why; without PyTorch only the tiny-model test (it builds a torch model) is."""
    import importlib.util
    import io
    import unittest

    find_spec = importlib.util.find_spec
    hidden = {"torch", "openvino", "onnxruntime"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name in hidden else find_spec(name, *args))
    suite = unittest.TestLoader().loadTestsFromTestCase(BUS.BreastUSSegmentTest)
    result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=2).run(suite)
    assert result.testsRun == 2 and result.wasSuccessful()
    assert [reason for _test, reason in result.skipped] == [BUS.BreastUSSegmentTest.NO_RUNTIME] * 2
    with caplog.at_level("WARNING"):
        BUS.BreastUSSegmentTest().runTest()  # returns instead of failing
    assert BUS.BreastUSSegmentTest.NO_RUNTIME in caplog.text

    hidden = {"torch"}
    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
    test = BUS.BreastUSSegmentTest("test_TinyModelMatchesThePipeline")
    result = unittest.TextTestRunner(stream=io.StringIO()).run(test)
    assert [reason for _test, reason in result.skipped] == [BUS.BreastUSSegmentTest.TORCH_MISSING]


def test_module_classes_and_parameter_node_fields():
    for suffix in ("", "Widget", "Logic", "Test"):
        assert hasattr(BUS, "BreastUSSegment" + suffix)
    fields = BUS.BreastUSSegmentParameterNode.__annotations__
    assert set(fields) == {
        "inputVolume", "outputSegmentation", "postprocessing", "device", "backend", "precision", "showAttention",
        "attentionOpacity",
        "createProbabilityVolume", "boxAllFrames", "liveTemporal",
    }
    # The post-processing fields are the core's settings under the core's names: all of them, smoothing as a switch.
    from BreastUSSegmentLib.options import PostprocessOptions

    pack = set(parameters.PostprocessingParameters.__annotations__)
    assert pack - {"smoothing"} == {f.name for f in dataclasses.fields(PostprocessOptions)} - {"smoothing_sigma"}
    from BreastUSSegmentLib.device import DEVICE_CHOICES

    assert [choice.value for choice in parameters.DeviceChoice] == list(DEVICE_CHOICES)
    from BreastUSSegmentLib.runtime import BACKEND_CHOICES, PRECISION_CHOICES

    assert [choice.value for choice in parameters.BackendChoice] == list(BACKEND_CHOICES)
    assert [choice.value for choice in parameters.PrecisionChoice] == list(PRECISION_CHOICES)


def test_segmentation_options_are_the_parameter_nodes_fields_mapped_once_to_the_core():
    from types import SimpleNamespace

    names = {field.name for field in dataclasses.fields(BUS.SegmentationOptions)} - {"weightsPath"}
    assert names <= set(BUS.BreastUSSegmentParameterNode.__annotations__)
    Pack = parameters.PostprocessingParameters
    chosen = Pack(threshold=0.3, min_area_fraction=0.02, min_mean_probability=0.6, min_lesion_probability=0.4,
                  keep_largest=True, fill_holes=False, smoothing=True, test_time_flip=True)
    node = SimpleNamespace(postprocessing=chosen, device=parameters.DeviceChoice.GPU,
                           backend=parameters.BackendChoice.OPENVINO, precision=parameters.PrecisionChoice.FP32,
                           showAttention=False, attentionOpacity=0.2, createProbabilityVolume=True)
    card = SimpleNamespace(postprocess_options=UNTUNED_POSTPROCESSING.with_overrides(smoothing_sigma=0.0))
    options = BUS.SegmentationOptions.fromParameterNode(node, "model.safetensors", card)
    assert options == BUS.SegmentationOptions(
        weightsPath="model.safetensors", device="cuda", backend="openvino", precision="fp32", showAttention=False, attentionOpacity=0.2,
        createProbabilityVolume=True, postprocessing=UNTUNED_POSTPROCESSING.with_overrides(
            threshold=0.3, min_area_fraction=0.02, min_mean_probability=0.6, min_lesion_probability=0.4,
            keep_largest=True, fill_holes=False, test_time_flip=True))  # smoothing on: the untuned strength
    for cardOptions in (UNTUNED_POSTPROCESSING, card.postprocess_options):  # nothing changed: the card's own
        assert Pack.fromOptions(cardOptions).options(cardOptions) == cardOptions
    chosen.smoothing = False
    assert chosen.options(UNTUNED_POSTPROCESSING).smoothing_sigma == 0.0


def test_panel_post_processing_follows_the_chosen_models_card_one_way(logic, tmp_path):
    """A new parameter node is filled from the card; the user's changes stay until another model is chosen."""
    from types import SimpleNamespace

    custom = tmp_path / "custom.safetensors"
    save_model(AttentionUNet(ModelConfig(base_channels=4, depth=2)), custom, input_size=(64, 64),
               postprocessing=UNTUNED_POSTPROCESSING.with_overrides(threshold=0.3))
    node = SimpleNamespace(parameterNode=slicer.vtkMRMLScriptedModuleNode(), postprocessing=None)
    slider, label = SimpleNamespace(enabled=True), SimpleNamespace(enabled=True)
    panel = SimpleNamespace(_parameterNode=node, logic=logic, statuses=[],
                            _setStatus=lambda text, error=False: panel.statuses.append((text, error)),
                            ui=SimpleNamespace(modelPathLineEdit=SimpleNamespace(currentPath=""),
                                               minLesionProbabilitySliderWidget=slider,
                                               minLesionProbabilityLabel=label))
    panel._modelPath = lambda: BUS.BreastUSSegmentWidget._modelPath(panel)
    panel._setLesionHeadAvailable = lambda available: BUS.BreastUSSegmentWidget._setLesionHeadAvailable(panel, available)
    follow = BUS.BreastUSSegmentWidget.followModelCard

    bundledCard = models.modelCard()
    assert follow(panel) == bundledCard  # a new parameter node: the bundled model's card
    bundled = parameters.PostprocessingParameters.fromOptions(bundledCard.postprocess_options)
    assert node.postprocessing == bundled
    node.postprocessing.threshold = 0.61  # the user's choice survives re-entering the module
    assert follow(panel) and node.postprocessing.threshold == 0.61
    # A scene saved by an earlier version (the bundled model, but fewer post-processing fields): filled again.
    node.parameterNode.SetParameter(parameters.POSTPROCESSING_SOURCE_PARAMETER, str(BUS.BUNDLED_WEIGHTS))
    assert follow(panel) and node.postprocessing.threshold == bundled.threshold
    node.postprocessing.threshold = 0.61
    assert follow(panel) and node.postprocessing.threshold == 0.61
    assert slider.enabled is label.enabled is bundledCard.model_config.lesion_head
    panel.ui.modelPathLineEdit.currentPath = str(custom)  # another model: its card
    assert follow(panel) and node.postprocessing.threshold == pytest.approx(0.3)
    assert slider.enabled is False and label.enabled is False  # no lesion head: nothing for the slider to do
    node.postprocessing.threshold = 0.61
    assert follow(panel, force=True) and node.postprocessing.threshold == pytest.approx(0.3)  # chosen again: its card again
    custom.with_suffix(".json").unlink()
    panel.ui.modelPathLineEdit.currentPath = str(tmp_path / "other.safetensors")
    assert not follow(panel) and "model card not found" in panel.statuses[-1][0]
    assert slider.enabled is False  # an unreadable card promises no lesion head
    save_model(AttentionUNet(ModelConfig(base_channels=4, depth=2, lesion_head=True)), tmp_path / "head.safetensors",
               input_size=(64, 64), postprocessing=UNTUNED_POSTPROCESSING)
    panel.ui.modelPathLineEdit.currentPath = str(tmp_path / "head.safetensors")
    assert follow(panel) and slider.enabled is True and label.enabled is True


def test_python_requirements_come_from_the_cores_dependency_list():
    """The packages the panel checks and installs are the core library's list, which holds no network runtime
    (PyTorch comes through its extension, a CPU runtime after asking: see runtimesToOffer)."""
    from BreastUSSegmentLib import dependencies
    from BreastUSSegmentLib.runtime import RUNTIME_PACKAGES, TORCH_REQUIREMENT

    assert moduleDependencies.moduleRequirements() == dependencies(command_line=False)
    assert not any(r.startswith(tuple(RUNTIME_PACKAGES)) for r in moduleDependencies.moduleRequirements())
    assert "torch" + moduleDependencies.torchVersionRequirement() == TORCH_REQUIREMENT == "torch>=2.5"


def test_the_runtime_offered_is_the_smallest_that_can_run_the_chosen_backend_and_device():
    offer = moduleDependencies.runtimesToOffer
    nothing = set()
    assert offer("auto", "auto", nothing) == ["openvino", "onnxruntime", "torch"]  # small CPU runtimes first
    assert offer("auto", "cpu", nothing) == ["openvino", "onnxruntime", "torch"]
    for installed in ({"openvino"}, {"onnxruntime"}, {"torch"}):
        assert offer("auto", "auto", installed) == []  # any of them runs the graph or the model on the CPU
    assert offer("openvino", "cpu", {"onnxruntime", "torch"}) == ["openvino"]  # asked by name: that one
    assert offer("onnxruntime", "auto", {"openvino"}) == ["onnxruntime"]
    assert offer("onnxruntime", "auto", {"onnxruntime"}) == []
    for device in ("cuda", "mps"):  # a GPU: PyTorch only
        assert offer("auto", device, {"openvino", "onnxruntime"}) == ["torch"]
        assert offer("auto", device, {"torch"}) == []
    assert offer("torch", "cpu", {"openvino"}) == ["torch"]
    assert offer("auto", "cpu", {"openvino"}, graph=False) == ["torch"]  # a model without an ONNX graph
    assert offer("openvino", "cpu", {"openvino"}, graph=False) == []  # named: the core says what is missing
    assert set(moduleDependencies.RUNTIME_SIZES_MB) == {"openvino", "onnxruntime", "torch"}
    assert moduleDependencies.RUNTIME_SIZES_MB["onnxruntime"] < moduleDependencies.RUNTIME_SIZES_MB["openvino"] < moduleDependencies.RUNTIME_SIZES_MB["torch"]


def test_sample_sources_list_only_existing_frames(tmp_path):
    assert BUS.sampleDataSources(tmp_path) == []
    (tmp_path / "breastus_sample_benign.png").write_bytes(b"png bytes")
    [(name, path, digest)] = BUS.sampleDataSources(tmp_path)
    assert name == "breastus_sample_benign" and path == tmp_path / "breastus_sample_benign.png"
    assert digest == hashlib.sha256(b"png bytes").hexdigest()


def test_slicer_self_test_with_tiny_model_runs_headless(monkeypatch):
    """Run the module's in-Slicer self-test (tiny-model part) with Slicer's globals bound to real slicer-core objects.

    Inside Slicer, ``slicer.mrmlScene`` is the application's scene and
    ``slicer.modules.segmentations.logic()`` the Segmentations logic; here they
    are a fresh scene and a real ``vtkSlicerSegmentationsModuleLogic``.
    """
    from types import SimpleNamespace

    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    monkeypatch.setattr(slicer, "modules", SimpleNamespace(segmentations=SimpleNamespace(logic=lambda: segmentations)),
                        raising=False)
    test = BUS.BreastUSSegmentTest("test_TinyModelMatchesThePipeline")
    test.setUp()
    test.test_TinyModelMatchesThePipeline()
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1


def test_conversion_rules_are_registered_once():
    """The Logic registers the labelmap/surface rules only when the factory lacks them (Slicer registers its own)."""

    def rule_names():
        return sorted(rule.GetClassName() for rule in slicer.vtkSegmentationConverterFactory.GetInstance().GetConverterRules())

    BUS.BreastUSSegmentLogic()
    before = rule_names()
    assert {"vtkBinaryLabelmapToClosedSurfaceConversionRule", "vtkClosedSurfaceToBinaryLabelmapConversionRule"} <= set(before)
    BUS.BreastUSSegmentLogic()
    assert rule_names() == before


def test_module_imports_without_loading_torch():
    """Inside Slicer PyTorch may not be installed yet: the module must still load to offer installing it."""
    import subprocess

    code = (
        LOAD_MODULE_CODE
        + "module.BreastUSSegmentLogic()\n"
        "print(sorted(name for name in ('torch', 'safetensors', 'scipy') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_attention_overlay_has_the_figures_fixed_window(tmp_path):
    """The overlay's colour window is 0 to 1 (the figures' fixed scale), not the attention map's own range."""
    weights = tmp_path / "m.safetensors"
    torch.manual_seed(3)
    save_model(AttentionUNet(ModelConfig(base_channels=4, depth=2, dropout=0.0)), weights, input_size=(64, 64),
               postprocessing=UNTUNED_POSTPROCESSING)
    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "frame")
    slicer.util.updateVolumeFromArray(volume, np.random.default_rng(0).integers(0, 255, (1, 50, 60)).astype(np.uint8))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    BUS.BreastUSSegmentLogic().segment(volume, segmentation, BUS.SegmentationOptions(weightsPath=weights, device="cpu"))
    attention = segmentation.GetNodeReference(common.ATTENTION_REFERENCE_ROLE)
    values = slicer.util.arrayFromVolume(attention)
    display = attention.GetDisplayNode()
    window_min = display.GetLevel() - display.GetWindow() / 2
    window_max = display.GetLevel() + display.GetWindow() / 2
    assert (window_min, window_max) == pytest.approx((0.0, 1.0))
    assert values.max() - values.min() < 0.9  # a map that a window on its own range would have stretched


def test_two_lesions_get_a_row_each_with_their_own_values_units_and_descriptions(scene, logic):
    """Planted two-region mask: each region measured alone, one table row each; no length joins the two."""
    row_mm, col_mm = SPACING[1], SPACING[0]
    rectangles = [(slice(20, 40), slice(10, 50)), (slice(70, 80), slice(100, 130))]  # rows, columns: large first
    mask = np.zeros((120, 160), bool)
    for rows, cols in rectangles:
        mask[rows, cols] = True
    image = np.where(mask, 40, 120).astype(np.uint8)  # dark lesions in brighter tissue
    image[20:40, 10:50][:, ::2] = 90  # the large one not uniform
    volume = add_volume(scene, image[np.newaxis])
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = segments.addLesionSegment(segmentation_node)
    segments.updateSegmentFromArray(segmentation_node, segment_id, mask[np.newaxis], volume)

    [measured] = logic.measureLesion(segmentation_node, volume)
    assert len(measured.lesions) == 2
    for number, (lesion, (rows, cols)) in enumerate(zip(measured.lesions, rectangles), start=1):
        height, width = rows.stop - rows.start, cols.stop - cols.start
        assert (lesion.frame, lesion.lesion, lesion.box, lesion.pixel_count) == (1, number, None, height * width)
        assert lesion.area == pytest.approx(height * width * row_mm * col_mm)
        assert lesion.longest_diameter == pytest.approx(math.hypot((height - 1) * row_mm, (width - 1) * col_mm))
        assert (lesion.depth, lesion.width) == pytest.approx(((height - 1) * row_mm, (width - 1) * col_mm))
        assert (lesion.centroid_x, lesion.centroid_y) == pytest.approx(
            ((cols.start + cols.stop - 1) / 2, (rows.start + rows.stop - 1) / 2))
        alone = np.zeros_like(mask)
        alone[rows, cols] = True
        [expected] = measure_lesions(alone, (row_mm, col_mm))
        assert lesion.perpendicular_diameter == pytest.approx(expected.perpendicular_diameter)

    table = segmentation_node.GetNodeReference(common.MEASUREMENT_TABLE_ROLE)
    names = [table.GetColumnName(column) for column in range(table.GetNumberOfColumns())]
    assert names == ["frame", "lesion", "box", "segment", *[c.name for c in LESION_COLUMNS[3:]],
                     *[c.name for c in DESCRIPTOR_COLUMNS], "result"]
    assert table.GetNumberOfRows() == 2
    for column in LESION_COLUMNS + DESCRIPTOR_COLUMNS:
        assert table.GetColumnUnitLabel(column.name) == column.unit
        assert table.GetColumnDescription(column.name) == column.description
    assert table.GetColumnUnitLabel("long_axis_angle_deg") == "°"
    assert "research use" in table.GetColumnDescription("malignancy_likelihood")
    assert (table.GetColumnUnitLabel("area"), table.GetColumnUnitLabel("longest_diameter")) == ("mm²", "mm")
    assert table.GetColumnTitle("longest_diameter") == "Longest diameter" and table.GetUseColumnTitleAsColumnHeader()
    values = table.GetTable()
    for row, lesion in enumerate(measured.lesions):
        for column in ("pixel_count", "area", "longest_diameter", "perpendicular_diameter", "depth", "width",
                       "depth_to_width", "centroid_x", "centroid_y"):
            assert values.GetColumnByName(column).GetValue(row) == pytest.approx(getattr(lesion, column)), column
        assert [values.GetColumnByName(name).GetValue(row) for name in ("lesion", "box", "segment", "result")] == [
            str(row + 1), "", "Lesion", "2 lesions"]
        # Its descriptors: of its own region and the volume's pixels, in mm.
        alone = np.zeros_like(mask)
        alone[rectangles[row]] = True
        expected = describe_lesion(image, alone, (row_mm, col_mm))
        for name in ("shape", "orientation", "margin", "echo_pattern", "posterior"):
            assert values.GetColumnByName(name).GetValue(row) == getattr(expected, name), name
        for name in ("solidity", "axis_ratio", "echo_ratio_surround", "echo_spread"):
            assert values.GetColumnByName(name).GetValue(row) == pytest.approx(getattr(expected, name)), name
        assert 0 < values.GetColumnByName("malignancy_likelihood").GetValue(row) < 1
    assert values.GetColumnByName("echo_spread").GetValue(0) > values.GetColumnByName("echo_spread").GetValue(1)

    # The panel's descriptor lines: the largest lesion first, then the other.
    lines = logic.descriptorSummary(segmentation_node, volume).splitlines()
    assert lines[0].startswith("Largest lesion (lesion 1 of 2): ") and lines[1].startswith("Lesion 2: ")
    assert "malignancy likelihood" in lines[0] and values.GetColumnByName("shape").GetValue(0) in lines[0]

    # The status line: the count and the largest lesion's own diameters, never a length across the two.
    summary = status.measurementSummary([measured], (row_mm, col_mm))
    large = measured.lesions[0]
    assert summary.startswith(f"2 lesions; largest {large.longest_diameter:.1f} x {large.perpendicular_diameter:.1f} mm, "
                              f"area {large.area:.1f} mm²")
    across = math.hypot((79 - 20) * row_mm, (129 - 10) * col_mm)
    assert f"{across:.1f}" not in summary and f"{measured.area_mm2:.1f}" not in summary

    # An empty frame gets one row saying so.
    segments.updateSegmentFromArray(segmentation_node, segment_id, np.zeros((1, 120, 160), np.uint8), volume)
    logic.measureLesion(segmentation_node, volume)
    assert table.GetNumberOfRows() == 1
    assert [table.GetTable().GetColumnByName(name).GetValue(0) for name in ("frame", "lesion", "result")] == [
        1, "", "no lesion found"]
    assert math.isnan(table.GetTable().GetColumnByName("area").GetValue(0))
    assert table.GetTable().GetColumnByName("shape").GetValue(0) == ""
    assert math.isnan(table.GetTable().GetColumnByName("malignancy_likelihood").GetValue(0))
    assert logic.descriptorSummary(segmentation_node, volume) == "No lesion to describe."


def sha256_of(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_every_run_records_the_models_sha256_and_settings_on_the_segmentation(scene, logic, weights,
                                                                                brightness_weights):
    image = np.full(SHAPE, 30, np.uint8)
    image[10:30, 10:30] = 220
    volume = add_volume(scene, image[np.newaxis])
    output = logic.segment(volume, options=cpu_options(weights, threshold=0.3))
    node = output.segmentationNode
    recorded = provenance.readProvenance(node)
    assert node.GetAttribute(common.PROVENANCE_ATTRIBUTE_PREFIX + "model.sha256") == sha256_of(weights)
    assert recorded["model.file"] == "tiny.safetensors" and recorded["software.version"] == __version__
    settings = {key[len("settings."):]: json.loads(value) for key, value in recorded.items() if key.startswith("settings.")}
    assert settings == card_with(weights, threshold=0.3).to_dict()
    assert (recorded["device"], recorded["precision"], recorded["input.volume"]) == ("cpu", "float32", "us")

    # Box prompts record their own settings; a later run without boxes leaves none of them behind.
    roi = volume_aligned_roi(scene, volume, (5, 5, 35, 35))
    logic.segmentInBoxes(volume, [roi], node, BUS.SegmentationOptions(weightsPath=brightness_weights, device="cpu"))
    recorded = provenance.readProvenance(node)
    assert recorded["model.sha256"] == sha256_of(brightness_weights)
    assert (json.loads(recorded["settings.box_all_frames"]), json.loads(recorded["settings.box_context_margin"])) == (
        False, CONTEXT_MARGIN)
    logic.segment(volume, node, cpu_options(weights))
    recorded = provenance.readProvenance(node)
    assert recorded["model.sha256"] == sha256_of(weights) and "settings.box_all_frames" not in recorded


# --- Box prompts ---


@pytest.fixture(scope="module")
def brightness_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("brightness") / "brightness.safetensors"
    save_model(brightness_model(), path, input_size=(64, 64),
               postprocessing=UNTUNED_POSTPROCESSING.with_overrides(smoothing_sigma=0.0))
    return path


def volume_aligned_roi(scene, volume, box, frame=0, name="box"):
    """A Markups ROI whose axes follow the volume's I, J, K and that covers pixel box ``(x0, y0, x1, y1)`` of ``frame``."""
    x0, y0, x1, y1 = box
    matrix = ijk_to_ras(volume)
    center = matrix @ np.array([(x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, frame, 1.0])
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    objectToNode = vtk.vtkMatrix4x4()
    for row in range(3):
        for col in range(3):
            objectToNode.SetElement(row, col, matrix[row, col] / spacing[col])
        objectToNode.SetElement(row, 3, center[row])
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    roi.SetAndObserveObjectToNodeMatrix(objectToNode)
    roi.SetSize((x1 - x0) * spacing[0], (y1 - y0) * spacing[1], 0.3 * spacing[2])
    roi.SetAttribute(common.BOX_ROI_ATTRIBUTE, volume.GetID())
    return roi


def test_roi_bounds_become_the_volumes_pixel_box_with_its_own_matrices(scene, logic):
    volume = add_volume(scene, np.zeros((3, *SHAPE), np.uint8))  # rotated, offset, anisotropic
    roi = volume_aligned_roi(scene, volume, (10, 5, 31, 22), frame=1)
    assert rois.roiVoxelBox(roi, volume) == rois.VoxelBox((10, 5, 31, 22), 1)
    # Under a parent transform, the volume's pixels move with it; a ROI moved the same way keeps its box.
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 7.0)
    shift.SetElement(1, 3, -3.0)
    transform.SetMatrixTransformToParent(shift)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    assert rois.roiVoxelBox(roi, volume).box != (10, 5, 31, 22)
    roi.SetAndObserveTransformNodeID(transform.GetID())
    assert rois.roiVoxelBox(roi, volume) == rois.VoxelBox((10, 5, 31, 22), 1)


def test_roi_outside_the_image_or_too_small_gets_a_clear_error(scene, logic, brightness_weights):
    volume = add_volume(scene, np.zeros((1, *SHAPE), np.uint8))
    tiny = volume_aligned_roi(scene, volume, (10, 5, 10.4, 22), name="tiny")
    with pytest.raises(BUS.BreastUSSegmentError, match="Box 'tiny' holds no pixel"):
        rois.roiVoxelBox(tiny, volume)
    far = volume_aligned_roi(scene, volume, (500, 500, 520, 520), name="far")
    with pytest.raises(BUS.BreastUSSegmentError, match="outside"):
        logic.segmentInBoxes(volume, [far], options=BUS.SegmentationOptions(weightsPath=brightness_weights, device="cpu"))
    with pytest.raises(BUS.BreastUSSegmentError, match="Draw a box"):
        logic.segmentInBoxes(volume, [])


def test_each_roi_gets_its_own_lesion_segment_and_other_segments_are_untouched(scene, logic, brightness_weights):
    image = np.full(SHAPE, 30, np.uint8)
    lesions = [(8, 6, 22, 20), (34, 24, 50, 40)]
    for x0, y0, x1, y1 in lesions:
        image[y0:y1, x0:x1] = 220
    volume = add_volume(scene, image[np.newaxis])
    options = BUS.SegmentationOptions(weightsPath=brightness_weights, device="cpu")
    automatic = logic.segment(volume, None, options)
    segmentation_node = automatic.segmentationNode
    user_mask = np.zeros((1, *SHAPE), bool)
    user_mask[0, 2:5, 2:5] = True
    user_id = segmentation_node.GetSegmentation().AddEmptySegment("", "Drawn", [0.2, 0.4, 1.0])
    segments.updateSegmentFromArray(segmentation_node, user_id, user_mask, volume)
    automatic_mask = segments.arrayFromSegment(segmentation_node, automatic.segmentId, volume)

    boxes = [volume_aligned_roi(scene, volume, (4, 2, 26, 24), name="one"),
            volume_aligned_roi(scene, volume, (30, 20, 54, 44), name="two"),
            volume_aligned_roi(scene, volume, (52, 2, 62, 12), name="background")]
    pending = rois.addBoxRoi(scene, volume)  # being placed: not a box yet
    other = add_volume(scene, image[np.newaxis], name="other")
    assert pending.GetName() == "Box" and pending.GetAttribute(common.BOX_ROI_ATTRIBUTE) == volume.GetID()
    assert rois.boxRois(scene) == rois.boxRois(scene, volume) == boxes and rois.boxRois(scene, other) == []
    output = logic.segmentInBoxes(volume, boxes, segmentation_node, options)
    summary = status.boxSummary(output.segmentationNode, output.segmentIds, output.measurements)
    assert summary.startswith("Lesion 1: 1 lesion: ") and summary.endswith("Lesion 3: no lesion found in its box")
    # One table row per lesion, numbered box by box, with its box and segment; the empty box is named.
    table = output.tableNode.GetTable()
    assert output.tableNode.GetNumberOfRows() == 2
    assert [[table.GetColumnByName(name).GetValue(row) for name in ("frame", "lesion", "box", "segment", "result")]
            for row in range(2)] == [[1, "1", "1", "Lesion 1", "2 lesions; no lesion found in box 3"],
                                     [1, "2", "2", "Lesion 2", "2 lesions; no lesion found in box 3"]]
    for row, (x0, y0, x1, y1) in enumerate(lesions):
        assert table.GetColumnByName("centroid_x").GetValue(row) == pytest.approx((x0 + x1 - 1) / 2, abs=1.0)
        assert table.GetColumnByName("shape").GetValue(row) and table.GetColumnByName("margin").GetValue(row)
        assert 0 < table.GetColumnByName("malignancy_likelihood").GetValue(row) < 1
        assert [m.lesions[0].box for m in output.measurements[row]] == [row + 1]
    segmentation = segmentation_node.GetSegmentation()
    assert [segmentation.GetSegment(i).GetName() for i in output.segmentIds] == ["Lesion 1", "Lesion 2", "Lesion 3"]
    assert output.emptyRois == [boxes[2]]
    for segmentId, (x0, y0, x1, y1) in zip(output.segmentIds, lesions):
        mask = segments.arrayFromSegment(segmentation_node, segmentId, volume)[0] > 0
        truth = np.zeros(SHAPE, bool)
        truth[y0:y1, x0:x1] = True
        assert np.logical_and(mask, truth).sum() / np.logical_or(mask, truth).sum() > 0.85
        segment = segmentation.GetSegment(segmentId)
        assert segment_tag(segmentation_node, segmentId, common.LESION_TAG) == common.BOX_LESION_TAG_VALUE
        assert segment_tag(segmentation_node, segmentId, slicer.vtkSegment.GetTerminologyEntryTagName()) == \
            common.LESION_TERMINOLOGY_ENTRY
        assert segment_tag(segmentation_node, segmentId, common.ALGORITHM_TYPE_TAG) == "SEMIAUTOMATIC"
        assert tuple(segment.GetColor()) == pytest.approx(common.LESION_SEGMENT_COLOR)
    assert not segments.arrayFromSegment(segmentation_node, output.segmentIds[2], volume).any()

    # Moving a ROI and segmenting again replaces that ROI's segment; nothing else changes.
    smaller = volume_aligned_roi(scene, volume, (40, 30, 54, 44))
    boxes[1].SetAndObserveObjectToNodeMatrix(smaller.GetObjectToNodeMatrix())
    boxes[1].SetSize(smaller.GetSize())
    scene.RemoveNode(smaller)
    again = logic.segmentInBoxes(volume, boxes[:2], segmentation_node, options)
    assert again.segmentIds == output.segmentIds[:2]
    moved = segments.arrayFromSegment(segmentation_node, again.segmentIds[1], volume)[0] > 0
    assert moved.any() and not moved[:, :40].any()
    assert segments.lesionSegmentId(segmentation_node) == automatic.segmentId
    np.testing.assert_array_equal(segments.arrayFromSegment(segmentation_node, automatic.segmentId, volume), automatic_mask)
    np.testing.assert_array_equal(segments.arrayFromSegment(segmentation_node, user_id, volume), user_mask)


def test_box_on_a_clip_covers_its_frame_or_all_frames(scene, logic, brightness_weights):
    clip = np.full((3, *SHAPE), 30, np.uint8)
    clip[:, 10:30, 10:30] = 220
    volume = add_volume(scene, clip)
    roi = volume_aligned_roi(scene, volume, (5, 5, 35, 35), frame=1)
    options = BUS.SegmentationOptions(weightsPath=brightness_weights, device="cpu")
    output = logic.segmentInBoxes(volume, [roi], None, options)
    frames = segments.arrayFromSegment(output.segmentationNode, output.segmentIds[0], volume).any(axis=(1, 2))
    assert frames.tolist() == [False, True, False]
    output = logic.segmentInBoxes(volume, [roi], output.segmentationNode, options, allFrames=True)
    frames = segments.arrayFromSegment(output.segmentationNode, output.segmentIds[0], volume).any(axis=(1, 2))
    assert frames.tolist() == [True, True, True]
