"""Live segmentation on real MRML scenes (slicer-core): a volume node's image data replaced frame by frame, as
OpenIGTLinkIF does for each IMAGE message, and the Logic's live session stepping along."""

import numpy as np
import pytest
import vtk
import vtk.util.numpy_support
from slicer_module import load_module

import slicer
from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.temporal import TemporalRule
from BreastUSSegmentLib.weights import save_model
from BreastUSSegmentScene import common, live, segments
from conftest import brightness_model

BUS = load_module()
SIZE = 64  # the frames are the brightness model's input size, so its masks are the bright pixels exactly
SQUARE = 12


@pytest.fixture(scope="module")
def brightness_weights(tmp_path_factory):
    """The hand-set brightness model (every pixel brighter than mid grey is lesion), saved with a model card."""
    path = tmp_path_factory.mktemp("brightness") / "brightness.safetensors"
    options = UNTUNED_POSTPROCESSING.with_overrides(smoothing_sigma=0.0, min_area_fraction=0.0,
                                                    min_mean_probability=0.0)
    save_model(brightness_model(), path, input_size=(SIZE, SIZE), postprocessing=options)
    return str(path)


@pytest.fixture
def scene(monkeypatch):
    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    return scene


@pytest.fixture
def logic():
    return BUS.BreastUSSegmentLogic()


def square_frame(step: int) -> np.ndarray:
    """A dark frame with a bright square that moves 3 pixels right and 2 down per step."""
    image = np.full((SIZE, SIZE), 30, dtype=np.uint8)
    row, column = (4 + 2 * step) % (SIZE - SQUARE), (2 + 3 * step) % (SIZE - SQUARE)
    image[row:row + SQUARE, column:column + SQUARE] = 220
    return image


def send(volumeNode, image: np.ndarray) -> None:
    """A new frame as OpenIGTLinkIF delivers one: new image data set on the node between StartModify and
    EndModify (vtkMRMLIGTLConnectorNode::ProcessIncomingDeviceModifiedEvent)."""
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(image.shape[1], image.shape[0], 1)
    scalars = vtk.util.numpy_support.numpy_to_vtk(np.ascontiguousarray(image).ravel(), deep=True)
    imageData.GetPointData().SetScalars(scalars)
    wasModifying = volumeNode.StartModify()
    volumeNode.SetAndObserveImageData(imageData)
    volumeNode.Modified()
    volumeNode.EndModify(wasModifying)


def live_volume(scene, image):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Image_Reference")
    node.SetSpacing(0.1, 0.1, 1.0)
    send(node, image)
    return node


def lesion_of(session) -> np.ndarray:
    segmentationNode = session.segmentationNode
    return segments.arrayFromSegment(segmentationNode, segments.lesionSegmentId(segmentationNode), session.volumeNode)[0]


def options(weights):
    return BUS.SegmentationOptions(weightsPath=weights, device="cpu")


@pytest.mark.parametrize("update", ["new image data", "in place"])
def test_the_lesion_follows_the_frames_in_place(scene, logic, brightness_weights, update):
    """Each new frame is segmented at once into the same Lesion segment and attention volume; no node is added."""
    volume = live_volume(scene, square_frame(0))
    session = logic.startLive(volume, options=options(brightness_weights))
    assert session.running and session.framesSegmented == 1
    np.testing.assert_array_equal(lesion_of(session), square_frame(0) > 128)
    attention = session.segmentationNode.GetNodeReference(common.ATTENTION_REFERENCE_ROLE)
    assert attention is not None
    nodeCount = scene.GetNumberOfNodes()
    for step in range(1, 25):
        if update == "in place":
            slicer.util.updateVolumeFromArray(volume, square_frame(step)[np.newaxis])
        else:
            send(volume, square_frame(step))
        assert session.framesSegmented == step + 1
        np.testing.assert_array_equal(lesion_of(session), square_frame(step) > 128)
        assert scene.GetNumberOfNodes() == nodeCount
    assert session.segmentationNode.GetNodeReference(common.ATTENTION_REFERENCE_ROLE) is attention
    assert session.segmentationNode.GetSegmentation().GetNumberOfSegments() == 1
    assert session.framesDropped == 0
    # The overlay shows the attention over the live image.
    composites = [scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
                  for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    assert all(composite.GetForegroundVolumeID() == attention.GetID() for composite in composites)
    session.stop()


def test_frames_arriving_while_busy_are_dropped(scene, logic, brightness_weights):
    """Frames are not queued: while a step waits or runs, newer frames only replace the frame the step will read."""
    volume = live_volume(scene, square_frame(0))
    pending = []  # the event loop: steps scheduled and not run yet
    session = logic.startLive(volume, options=options(brightness_weights), schedule=pending.append)
    assert len(pending) == 1 and session.framesSegmented == 0  # the observer only schedules
    for step in range(1, 4):
        send(volume, square_frame(step))
    assert len(pending) == 1  # one step waits, whatever the number of frames
    pending.pop(0)()
    assert session.framesSegmented == 1 and session.framesDropped == 3
    np.testing.assert_array_equal(lesion_of(session), square_frame(3) > 128)  # only the newest was segmented

    # Frames that arrive while a step segments: one more step is scheduled, and it reads the newest of them.
    segmenter = session.stepper.segmenter
    original = segmenter.segment

    def segmentWhileFramesArrive(*arguments, **keywords):
        segmenter.segment = original
        for step in range(4, 7):
            send(volume, square_frame(step))
        return original(*arguments, **keywords)

    send(volume, square_frame(100))
    segmenter.segment = segmentWhileFramesArrive
    pending.pop(0)()
    assert len(pending) == 1 and session.frameWaiting
    np.testing.assert_array_equal(lesion_of(session), square_frame(100) > 128)
    pending.pop(0)()
    np.testing.assert_array_equal(lesion_of(session), square_frame(6) > 128)
    assert (session.framesArrived, session.framesSegmented, session.framesDropped) == (8, 3, 5)
    assert session.lastStep.frame == 2  # the stepper saw three frames
    session.stop()


@pytest.mark.parametrize("how", ["toggled off", "volume removed", "segmentation removed", "scene closed"])
def test_stopping_leaves_no_observer(scene, logic, brightness_weights, how):
    volume = live_volume(scene, square_frame(0))
    observedBefore = (volume.HasObserver(slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent),
                      scene.HasObserver(slicer.vtkMRMLScene.NodeRemovedEvent),
                      scene.HasObserver(slicer.vtkMRMLScene.StartCloseEvent))
    stops = []
    pending = []
    session = logic.startLive(volume, options=options(brightness_weights), schedule=pending.append,
                              onStopped=lambda reason, error: stops.append(reason))
    assert volume.HasObserver(slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent)
    if how == "toggled off":
        session.stop()
        expected = []
    elif how == "volume removed":
        scene.RemoveNode(volume)
        expected = [live.NODE_REMOVED]
    elif how == "segmentation removed":
        scene.RemoveNode(session.segmentationNode)
        expected = [live.NODE_REMOVED]
    else:
        scene.Clear(0)
        expected = [live.SCENE_CLOSED]
    assert not session.running and stops == expected
    assert session.Observations == []
    assert (volume.HasObserver(slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent),
            scene.HasObserver(slicer.vtkMRMLScene.NodeRemovedEvent),
            scene.HasObserver(slicer.vtkMRMLScene.StartCloseEvent)) == observedBefore
    # A step scheduled before the stop does nothing; new frames are not heard.
    for step in pending:
        step()
    send(volume, square_frame(1))
    assert session.framesSegmented == 0 and session.framesArrived == 1


def test_a_failing_step_stops_the_session_and_says_why(scene, logic, brightness_weights):
    volume = live_volume(scene, square_frame(0))
    stops, pending = [], []
    session = logic.startLive(volume, options=options(brightness_weights), schedule=pending.append,
                              onStopped=lambda reason, error: stops.append((reason, error)))
    pending.pop(0)()
    clip = np.stack([square_frame(1), square_frame(2)])
    slicer.util.updateVolumeFromArray(volume, clip)  # the live image became a clip
    pending.pop(0)()
    assert not session.running and session.Observations == []
    [(reason, error)] = stops
    assert reason == live.FAILED and "single-frame" in error


def test_the_temporal_rule_hides_a_lesion_until_it_persists(scene, logic, brightness_weights):
    volume = live_volume(scene, square_frame(0))
    session = logic.startLive(volume, options=options(brightness_weights), temporal=TemporalRule(2, 2))
    assert not lesion_of(session).any()  # nothing before it
    send(volume, square_frame(0))
    assert not lesion_of(session).any()  # one frame before it holds a lesion: 2/2 needs two
    send(volume, square_frame(0))
    np.testing.assert_array_equal(lesion_of(session), square_frame(0) > 128)
    assert session.segmentationNode.GetAttribute(common.PROVENANCE_ATTRIBUTE_PREFIX + "live.temporal") == "2/2"
    session.stop()


def test_a_clip_is_refused(scene, logic, brightness_weights):
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "clip")
    slicer.util.updateVolumeFromArray(volume, np.stack([square_frame(0), square_frame(1)]))
    with pytest.raises(common.BreastUSSegmentError, match="single-frame"):
        logic.startLive(volume, options=options(brightness_weights))
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_the_live_benchmark_runs_and_adds_no_node():
    """benchmarks/slicer_live_step.py on a few small frames: it prints its three timings (it asserts the node count)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "slicer_live_step.py"
    run = subprocess.run([sys.executable, str(script), "--frames", "3", "--warmup", "1", "--size", "96", "128"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "96x128 frames" in run.stdout
    for part in ("whole step", "core part", "scene part"):
        [line] = [line for line in run.stdout.splitlines() if part in line]
        assert "median" in line and "p95" in line, line
