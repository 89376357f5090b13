"""Live segmentation: the newest frame of a volume whose image data is replaced frame by frame (PLUS through
OpenIGTLinkIF, which calls ``SetAndObserveImageData`` on the volume node for each IMAGE message), written into the
Lesion segment and the attention overlay in place.

Frames are never queued: a new frame only raises a "frame waiting" flag and asks the caller (the panel) to run
:meth:`LiveSession.step` soon; a step reads the node's image data as it is then, so frames that arrived in between
are dropped. No Qt here: the caller gives the ``schedule`` function (the panel's ``qt.QTimer.singleShot(0, ...)``).
"""

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import vtk

import slicer
from slicer.util import VTKObservationMixin

from .common import ATTENTION_REFERENCE_ROLE, BreastUSSegmentError, _
from .inputs import volumeArray
from .results import showAttentionOverlay
from .writer import writeLiveFrame

FPS_WINDOW = 10  # frames per second are counted over the last this many steps

# Why a session stopped (the ``onStopped`` callback's argument besides an error's text).
STOPPED = "stopped"
NODE_REMOVED = "node removed"
SCENE_CLOSED = "scene closed"
FAILED = "failed"


@dataclass
class LiveStep:
    """What one step did."""

    frame: int  # the frame's number in the stream (from 0)
    seconds: float  # read, segment and write


class LiveSession(VTKObservationMixin):
    """Segments the newest frame of ``volumeNode`` into ``segmentationNode`` each time its image data changes.

    ``stepper`` is the core's ``stream.FrameStepper`` (the segmenter, its post-processing and the temporal rule).
    ``schedule(function)`` must call ``function`` later, after the observer returns; ``onStopped(reason, error)``
    hears when the session stops by itself (the node removed, the scene closed, a step failed).
    """

    def __init__(self, volumeNode, segmentationNode, stepper, schedule: Callable[[Callable[[], None]], None],
                 maxPixels: int, showAttention: bool = True, attentionOpacity: float = 0.5,
                 onStopped: Optional[Callable[[str, str], None]] = None) -> None:
        VTKObservationMixin.__init__(self)
        self.volumeNode = volumeNode
        self.segmentationNode = segmentationNode
        self.stepper = stepper
        self.maxPixels = maxPixels
        self.overlay = (bool(showAttention), float(attentionOpacity))
        self.onStopped = onStopped
        self._schedule = schedule
        self.frameWaiting = False  # a frame arrived that no step has read yet
        self.running = False
        self.framesArrived = 0
        self.framesSegmented = 0
        self.lastStep: Optional[LiveStep] = None
        self._stepEnds: deque = deque(maxlen=FPS_WINDOW)
        self._overlayShown = False

    # --- Start and stop ---

    def start(self) -> None:
        """Observe the volume and the scene, and segment the frame the volume holds now."""
        if self.running:
            return
        scene = self.volumeNode.GetScene()
        if scene is None or self.segmentationNode.GetScene() is not scene:
            raise BreastUSSegmentError(_("The input volume and the output segmentation must be in the same scene."))
        self.stepper.reset()
        self.running = True
        self.addObserver(self.volumeNode, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, self._onFrame)
        self.addObserver(scene, slicer.vtkMRMLScene.NodeRemovedEvent, self._onNodeRemoved)
        self.addObserver(scene, slicer.vtkMRMLScene.StartCloseEvent, self._onSceneClose)
        self._onFrame()

    def stop(self, reason: str = STOPPED, error: str = "") -> None:
        """Stop observing; a step already scheduled does nothing. ``onStopped`` hears of it unless the caller
        stopped the session itself (``reason`` :data:`STOPPED`)."""
        if not self.running:
            return
        self.running = False
        self.frameWaiting = False
        self.removeObservers()
        if reason != STOPPED and self.onStopped is not None:
            self.onStopped(reason, error)

    # --- Frames ---

    def _onFrame(self, caller=None, event=None) -> None:
        """A new frame: raise the flag; schedule a step unless one is waiting already (returns at once)."""
        self.framesArrived += 1
        if self.frameWaiting:
            return  # the waiting step will read this newer frame: the one before is dropped
        self.frameWaiting = True
        self._schedule(self.stepScheduled)

    def stepScheduled(self) -> None:
        """The scheduled step: :meth:`step`, stopping the session (``onStopped`` hears why) if it fails."""
        if not self.running or not self.frameWaiting:
            return
        try:
            self.step()
        except Exception as error:  # a failed step must not be retried on every frame
            self.stop(FAILED, str(error))

    def step(self) -> LiveStep:
        """Segment the frame the volume holds now and write it in place: the Lesion segment, the attention volume."""
        self.frameWaiting = False  # frames from now on wait for the next step
        started = time.perf_counter()
        frames, _color = volumeArray(self.volumeNode, self.maxPixels)
        if frames.shape[0] != 1:
            raise BreastUSSegmentError(_("Live segmentation needs a single-frame image; '{name}' has {count} frames.")
                                       .format(name=self.volumeNode.GetName(), count=frames.shape[0]))
        result = self.stepper.step(np.array(frames[0]))  # a copy: the image data may change while segmenting
        writeLiveFrame(self.segmentationNode, self.volumeNode, result)
        if not self._overlayShown:
            attention = self.segmentationNode.GetNodeReference(ATTENTION_REFERENCE_ROLE)
            showAttentionOverlay(self.volumeNode, attention, *self.overlay)
            self._overlayShown = True
        ended = time.perf_counter()
        self._stepEnds.append(ended)
        self.framesSegmented += 1
        self.lastStep = LiveStep(result.index, ended - started)
        return self.lastStep

    @property
    def framesDropped(self) -> int:
        """Frames that arrived but were replaced by a newer one before a step read them."""
        return max(0, self.framesArrived - self.framesSegmented - int(self.frameWaiting))

    @property
    def framesPerSecond(self) -> Optional[float]:
        """Steps per second over the last :data:`FPS_WINDOW` steps; None before two steps."""
        if len(self._stepEnds) < 2 or self._stepEnds[-1] <= self._stepEnds[0]:
            return None
        return (len(self._stepEnds) - 1) / (self._stepEnds[-1] - self._stepEnds[0])

    # --- The scene ---

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeRemoved(self, caller, event, node) -> None:
        if node is self.volumeNode or node is self.segmentationNode:
            self.stop(NODE_REMOVED)

    def _onSceneClose(self, caller=None, event=None) -> None:
        self.stop(SCENE_CLOSED)

