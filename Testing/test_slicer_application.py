"""What the module does that only the real Slicer application showed: box placement, RGB input types, the frame
of a box, progress through every stage, the Sequences' own scenes, converter rules and the packages it installs
(slicer-core MRML and markups logic)."""

import typing

import numpy as np
import pytest
from slicer_module import load_module
from test_slicer_sequences import Clip, bright_weights, clip_frame, logic, options, scene  # noqa: F401 (fixtures)

import slicer
from BreastUSSegmentScene import common, dependencies, nodes, parameters, progress, rois, segments

BUS = load_module()


# --- 1. "Segment in box" places the ROI, not a point list ---


def test_box_placement_places_the_roi_in_single_place_mode(scene):
    selection = scene.AddNode(slicer.vtkMRMLSelectionNode())  # the application's singletons
    interaction = scene.AddNode(slicer.vtkMRMLInteractionNode())
    markups = slicer.vtkSlicerMarkupsLogic()
    markups.SetMRMLScene(scene)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "frame")
    roi = rois.addBoxRoi(scene, volume)

    rois.startBoxPlacement(markups, interaction, roi)

    assert selection.GetActivePlaceNodeClassName() == "vtkMRMLMarkupsROINode"
    assert selection.GetActivePlaceNodeID() == roi.GetID()
    assert interaction.GetCurrentInteractionMode() == slicer.vtkMRMLInteractionNode.Place
    assert interaction.GetPlaceModePersistence() == 0


# --- 2. RGB images and clips can be chosen ---


def declared_node_types(annotation) -> tuple:
    """The class names Slicer's parameter node wrapper gives a node selector for a parameter's annotation
    (``slicer.parameterNodeWrapper.util.getNodeTypes``: a node class, or the node classes of a Union)."""
    arguments = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union else (annotation,)
    return tuple(argument().GetClassName() for argument in arguments
                 if isinstance(argument, type) and issubclass(argument, slicer.vtkMRMLNode))


def test_the_input_parameter_declares_the_vector_volume_class_the_selector_must_list():
    annotation = typing.get_type_hints(parameters.BreastUSSegmentParameterNode)["inputVolume"]
    assert set(declared_node_types(annotation)) == set(common.INPUT_NODE_TYPES)
    assert "vtkMRMLVectorVolumeNode" in declared_node_types(annotation)


# --- 3. A box belongs to the frame it was drawn on ---


def test_a_thick_roi_on_a_clip_segments_only_the_frame_at_its_centre(scene, logic, bright_weights):
    frames = np.concatenate([clip_frame(0) for _frame in range(9)])
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "clip")
    slicer.util.updateVolumeFromArray(volume, frames)
    volume.SetSpacing(0.2, 0.2, 1.0)
    roi = rois.addBoxRoi(scene, volume)
    roi.SetXYZ(0.2 * 8, 0.2 * 17, 4.0)  # around the square (rows 12-21, columns 1-10) on frame 4
    roi.SetRadiusXYZ(0.2 * 7, 0.2 * 7, 3.0)  # as thick as a two-click ROI: it crosses frames 1 to 7

    output = logic.segmentInBoxes(volume, [roi], options=options(bright_weights))
    masks = segments.arrayFromSegment(output.segmentationNode, output.segmentIds[0], volume)
    assert [bool(mask.any()) for mask in masks] == [frame == 4 for frame in range(9)]

    everywhere = logic.segmentInBoxes(volume, [roi], output.segmentationNode, options(bright_weights), allFrames=True)
    masks = segments.arrayFromSegment(everywhere.segmentationNode, everywhere.segmentIds[0], volume)
    assert all(mask.any() for mask in masks)


# --- 5. Progress through every stage, in parts of a few frames ---


def test_a_long_clip_reports_every_stage_and_can_be_cancelled_in_each(scene, logic, bright_weights):
    clip = Clip(scene, 3 * progress.FRAMES_PER_PART + 2)
    total = 3 * progress.FRAMES_PER_PART + 2
    reports = []
    output = logic.segment(clip.proxy, options=options(bright_weights),
                           progressCallback=lambda done, count, stage: reports.append((stage, done, count)))
    stages = [stage for stage, _done, _count in reports]
    assert set(stages) == set(progress.STAGES)
    assert stages.index(progress.WRITING) > max(i for i, s in enumerate(stages) if s == progress.SEGMENTING)
    segmenting = [done for stage, done, count in reports if stage == progress.SEGMENTING]
    assert segmenting == sorted(segmenting) and segmenting[-1] == total and len(set(segmenting)) >= 4
    assert sum(stage == progress.WRITING for stage in stages) >= total  # every Sequence item
    assert [done for stage, done, _count in reports if stage == progress.MEASURING] == list(range(1, total + 1))
    assert output.sequenceNode.GetNumberOfDataNodes() == total

    for stage in progress.STAGES:  # a new output is removed whatever stage the run is cancelled in
        before = {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}

        def cancel(done, count, current, stage=stage):
            if current == stage and done >= 2:
                raise BUS.SegmentationCancelled()

        with pytest.raises(BUS.SegmentationCancelled):
            logic.segment(clip.proxy, options=options(bright_weights), progressCallback=cancel)
        after = {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}
        assert after == before, stage


def assert_same_result(parts, whole):
    for name in vars(whole):
        mine, theirs = getattr(parts, name), getattr(whole, name)
        if isinstance(theirs, np.ndarray):
            np.testing.assert_array_equal(mine, theirs, err_msg=name)
        else:
            assert mine == theirs, name


def test_segmenting_in_parts_gives_the_result_of_one_call(bright_weights):
    from BreastUSSegmentLib.inference import LesionSegmenter

    segmenter = LesionSegmenter.from_weights(bright_weights, device="cpu")
    frames = np.concatenate([clip_frame(frame) for frame in range(2 * progress.FRAMES_PER_PART + 3)])
    run = progress.RunProgress()
    assert_same_result(progress.segmentInParts(segmenter, frames, run), segmenter.segment(frames))
    boxes = [[(1 + frame % 5, 12, 12 + frame % 5 + 10, 22)] if frame % 3 else [] for frame in range(len(frames))]
    assert_same_result(progress.segmentInParts(segmenter, frames, run, frame_boxes=boxes),
                       segmenter.segment(frames, frame_boxes=boxes))
    hiding = segmenter.postprocessing.with_overrides(min_mean_probability=0.999)  # every lesion hidden
    whole = segmenter.segment(frames, postprocessing=hiding)
    assert not whole.processed_mask.any() and whole.why_empty.hidden_confidence is not None
    assert_same_result(progress.segmentInParts(segmenter, frames, run, postprocessing=hiding), whole)


# --- 10, 11. No helper nodes pile up; converter rules are read, not probed ---


def private_node_counts(sequence_nodes):
    return [sequence.GetSequenceScene().GetNumberOfNodes() for sequence in sequence_nodes]


def test_a_sequences_own_scene_holds_only_its_items_over_runs(scene, logic, bright_weights):
    clip = Clip(scene, 5)
    output = logic.segment(clip.proxy, options=options(bright_weights))
    sequence = output.sequenceNode
    assert private_node_counts([sequence]) == [5]  # the items and nothing else
    logic.segment(clip.proxy, output.segmentationNode, options(bright_weights))
    logic.measureLesion(output.segmentationNode, clip.proxy)
    assert private_node_counts([sequence]) == [5]
    assert all(sequence.GetNthDataNode(item).IsA("vtkMRMLSegmentationNode") for item in range(5))


def test_converter_rules_are_registered_once_and_not_probed_again():
    nodes.ensureSegmentationConverterRules()
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    count = len(factory.GetConverterRules())
    assert nodes.ensureSegmentationConverterRules() is False  # already there: nothing constructed or registered
    assert len(factory.GetConverterRules()) == count


# --- 8. The module installs the library's packages, at the versions it needs ---


def test_the_module_installs_the_librarys_requirements_not_the_command_lines():
    from BreastUSSegmentLib import dependencies as coreDependencies

    required = dependencies.moduleRequirements()
    assert "tqdm" not in " ".join(required) and "tqdm" in " ".join(coreDependencies())
    assert not any(requirement.startswith("torch") for requirement in required)  # the PyTorch extension's job
    assert set(required) < set(coreDependencies())


def test_installed_versions_are_compared_with_the_requirements():
    requirements = ["safetensors>=0.4", "numpy", "SimpleITK"]
    assert dependencies.unmetRequirements(requirements, {"safetensors": "0.3.3", "numpy": "1.26.4", "simpleitk": "2.4.0"}) \
        == ["safetensors>=0.4"]
    assert dependencies.unmetRequirements(requirements, {"safetensors": "0.4.5", "numpy": "2.0"}) == ["SimpleITK"]
    assert dependencies.unmetRequirements(dependencies.moduleRequirements()) == []  # this environment has them all


def test_the_installed_pytorch_is_checked_against_the_cores_requirement():
    version = dependencies.installedVersions()["torch"]
    requirement = "torch" + dependencies.torchVersionRequirement()
    assert dependencies.unmetRequirements([requirement]) == []
    assert dependencies.unmetRequirements([requirement], {"torch": "2.0.1"}) == [requirement]
    assert version.split("+")[0] == __import__("torch").__version__.split("+")[0]
