"""The panel's state as a parameter node: its fields, the post-processing pack named as the core's settings and
filled from a model card, the options the Logic takes from it, and its connection to the panel's widgets.

Inside Slicer (5.4 or later) the classes are Slicer's parameter node wrapper and parameter pack; with
slicer-core, which lacks them, the node stays a plain annotated class and the pack a dataclass, so the
conversions to and from the core's options run in tests too.
"""

import enum
import typing
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Annotated, Optional, Union

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLVectorVolumeNode

from .common import DEFAULT_ATTENTION_OPACITY, BreastUSSegmentError, _

try:  # Slicer 5.4 and later
    from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper, parameterPack
except ImportError:  # slicer-core has no parameter node wrapper

    def parameterNodeWrapper(cls):
        return cls

    parameterPack = dataclass

    @dataclass(frozen=True)
    class WithinRange:
        minimum: float
        maximum: float

if TYPE_CHECKING:
    from BreastUSSegmentLib.options import PostprocessOptions

# The panel's slider ranges (the .ui sliders use the same limits; a test checks them).
THRESHOLD_RANGE = (0.05, 0.95)
MIN_AREA_FRACTION_RANGE = (0.0, 0.1)
MIN_CONFIDENCE_RANGE = (0.0, 0.95)
MIN_LESION_PROBABILITY_RANGE = (0.0, 0.95)
# Raw parameter of the parameter node: the model file whose card set the post-processing fields, and those fields.
POSTPROCESSING_SOURCE_PARAMETER = "BreastUSSegment.PostprocessingFrom"


class DeviceChoice(enum.Enum):
    """Where the network runs. Values are the core's device names (``BreastUSSegmentLib.device.DEVICE_CHOICES``);
    saved scenes store the member names."""

    AUTO = "auto"
    CPU = "cpu"
    GPU = "cuda"
    MPS = "mps"

    @staticmethod
    def label(member):
        return {"AUTO": _("Auto (CUDA or Apple GPU if available)"), "CPU": _("CPU"), "GPU": _("GPU (CUDA)"),
                "MPS": _("Apple GPU (MPS)")}[member.name]


class BackendChoice(enum.Enum):
    """What runs the network. Values are the core's backend names (``BreastUSSegmentLib.runtime.BACKEND_CHOICES``)."""

    AUTO = "auto"
    TORCH = "torch"
    OPENVINO = "openvino"
    ONNXRUNTIME = "onnxruntime"

    @staticmethod
    def label(member):
        return {"AUTO": _("Auto (GPU through PyTorch, else OpenVINO, else ONNX Runtime)"), "TORCH": _("PyTorch"),
                "OPENVINO": _("OpenVINO (CPU)"), "ONNXRUNTIME": _("ONNX Runtime (CPU)")}[member.name]


class PrecisionChoice(enum.Enum):
    """What the network computes in. Values are the core's (``BreastUSSegmentLib.runtime.PRECISION_CHOICES``)."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"

    @staticmethod
    def label(member):
        return {"AUTO": _("Auto (bfloat16 where the CPU computes it natively)"), "FP32": _("float32"),
                "BF16": _("bfloat16")}[member.name]


class LiveTemporalChoice(enum.Enum):
    """The temporal rule of live segmentation: values are the core's ``K/N`` (``temporal.TemporalRule``) or off."""

    OFF = "off"
    RULE_2_OF_2 = "2/2"
    RULE_2_OF_3 = "2/3"
    RULE_3_OF_5 = "3/5"

    @staticmethod
    def label(member):
        if member.name == "OFF":
            return _("Off (every frame on its own)")
        hits, frames = member.value.split("/")
        return _("Lesion seen on {hits} of the last {frames} frames").format(hits=hits, frames=frames)

    def rule(self):
        """The core's ``TemporalRule``, or None when off."""
        from BreastUSSegmentLib.temporal import TemporalRule

        return TemporalRule.parse(self.value)


@parameterPack
class PostprocessingParameters:
    """The panel's post-processing settings, each named as the field of the core's ``PostprocessOptions`` it sets
    (a widget binds one with SlicerParameterName ``postprocessing.<name>``); the chosen model's card fills them.

    Fields are copied by name both ways, so a new setting of the core is one field here and its widget in the
    .ui. One differs in kind: ``smoothing`` switches ``smoothing_sigma`` between the card's strength (the
    untuned one when the card has none) and 0. The defaults only hold the place until a card fills them.
    """

    threshold: Annotated[float, WithinRange(*THRESHOLD_RANGE)] = THRESHOLD_RANGE[0]
    min_area_fraction: Annotated[float, WithinRange(*MIN_AREA_FRACTION_RANGE)] = MIN_AREA_FRACTION_RANGE[0]
    min_mean_probability: Annotated[float, WithinRange(*MIN_CONFIDENCE_RANGE)] = MIN_CONFIDENCE_RANGE[0]
    min_lesion_probability: Annotated[float, WithinRange(*MIN_LESION_PROBABILITY_RANGE)] = MIN_LESION_PROBABILITY_RANGE[0]
    keep_largest: bool = False
    fill_holes: bool = False
    smoothing: bool = False
    test_time_flip: bool = False

    @classmethod
    def fromOptions(cls, options: "PostprocessOptions") -> "PostprocessingParameters":
        """The panel's values for the core's options (a model card's), clamped to the sliders' ranges."""
        values = {name: _clamped(getattr(options, name), hint) for name, hint in _copiedFields().items()}
        return cls(smoothing=options.smoothing_sigma > 0, **values)

    def options(self, card: "PostprocessOptions") -> "PostprocessOptions":
        """The core's options: the model card's with the panel's values."""
        from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING

        sigma = (card.smoothing_sigma or UNTUNED_POSTPROCESSING.smoothing_sigma) if self.smoothing else 0.0
        try:
            return card.with_overrides(smoothing_sigma=sigma, **{name: getattr(self, name) for name in _copiedFields()})
        except ValueError as error:
            raise BreastUSSegmentError(_("Invalid post-processing option: {error}").format(error=error)) from error


def _copiedFields() -> dict:
    """``{name: type hint}`` of the fields of :class:`PostprocessingParameters` that carry a core setting as it is."""
    hints = typing.get_type_hints(PostprocessingParameters, include_extras=True)
    return {name: hint for name, hint in hints.items() if name != "smoothing"}


def _clamped(value, hint):
    """``value`` moved into the range of a field's ``WithinRange`` annotation, if it has one."""
    for limits in getattr(hint, "__metadata__", ()):
        if isinstance(limits, WithinRange):
            return min(max(value, limits.minimum), limits.maximum)
    return value


@parameterNodeWrapper
class BreastUSSegmentParameterNode:
    """The panel's state, stored in the scene.

    inputVolume - the ultrasound frame, cine clip or RGB screenshot to segment.
    outputSegmentation - receives the "Lesion" segment (created when empty).
    postprocessing - the chosen model's post-processing (from its card; see :func:`fillFromModelCard`).
    device - where the network runs.
    backend, precision - what runs the network and in which precision (the core's ``choose_backend``).
    showAttention, attentionOpacity - the attention overlay in the slice views.
    createProbabilityVolume - also write the probability map as a volume.
    boxAllFrames - "Segment in box" uses each box on every frame of a clip, not only the frame it was drawn on.
    liveTemporal - the temporal rule of live segmentation (off by default).
    """

    # Both classes by name: Slicer's wrapper sets the input selector's node types from this annotation, and the
    # selector lists exactly those classes (showChildNodeTypes is off), so RGB images and clips stay selectable.
    inputVolume: Optional[Union[vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode]]
    outputSegmentation: vtkMRMLSegmentationNode
    postprocessing: PostprocessingParameters
    device: DeviceChoice = DeviceChoice.AUTO
    backend: BackendChoice = BackendChoice.AUTO
    precision: PrecisionChoice = PrecisionChoice.AUTO
    showAttention: bool = True
    attentionOpacity: Annotated[float, WithinRange(0.0, 1.0)] = DEFAULT_ATTENTION_OPACITY
    createProbabilityVolume: bool = False
    boxAllFrames: bool = False
    liveTemporal: LiveTemporalChoice = LiveTemporalChoice.OFF


def fillFromModelCard(parameters, card, source: str, force: bool = False) -> bool:
    """Give ``parameters`` (a wrapped parameter node) the post-processing of ``card``, the model card of the model
    file ``source``, unless it has it already; True when it was filled.

    The card is the one source of these values: a new parameter node, one set from another model, or one saved
    by a version of this module with other post-processing fields is filled from it; ``force`` fills it again.
    """
    stamp = f"{source} | {' '.join(typing.get_type_hints(PostprocessingParameters))}"  # the model, and the fields
    if not force and parameters.parameterNode.GetParameter(POSTPROCESSING_SOURCE_PARAMETER) == stamp:
        return False
    parameters.postprocessing = PostprocessingParameters.fromOptions(card.postprocess_options)
    parameters.parameterNode.SetParameter(POSTPROCESSING_SOURCE_PARAMETER, stamp)
    return True


@dataclass(frozen=True)
class SegmentationOptions:
    """Everything :meth:`BreastUSSegmentLogic.segment` does besides its input and output nodes.

    The names are the parameter node's, but ``weightsPath`` and ``postprocessing`` (the core's options: the model
    card's with the panel's choices, or None for the card's own).
    """

    weightsPath: Optional[str] = None  # None: the bundled model
    device: str = "auto"  # one of the core's device names
    backend: str = "auto"  # one of the core's backend names
    precision: str = "auto"  # one of the core's precision names
    postprocessing: Optional["PostprocessOptions"] = None
    showAttention: bool = True
    attentionOpacity: float = DEFAULT_ATTENTION_OPACITY
    createProbabilityVolume: bool = False

    @classmethod
    def fromParameterNode(cls, parameters, weightsPath, card) -> "SegmentationOptions":
        """The panel's choices: every field of the same name in the parameter node (a choice, an enum there, as
        its value), its post-processing applied to the model card ``card`` (a ``ModelCard``) of the model at
        ``weightsPath``."""
        values = {f.name: getattr(parameters, f.name) for f in fields(cls)
                  if f.name not in ("weightsPath", "postprocessing")}
        return cls(weightsPath=weightsPath, postprocessing=parameters.postprocessing.options(card.postprocess_options),
                   **{name: value.value if isinstance(value, enum.Enum) else value for name, value in values.items()})


def parameterWidgets(widgets) -> dict:
    """``{parameter name: widget}`` of the widgets that name a parameter in their ``SlicerParameterName`` property."""
    found = {}
    for widget in widgets:
        name = widget.property("SlicerParameterName") if hasattr(widget, "property") else None
        if name:
            found[str(name)] = widget
    return found


class ParameterNodeGui:
    """Keeps the panel's widgets connected to one parameter node: connected once per node, disconnected when
    another node (a new scene's) replaces it.

    Slicer 5.8's ``connectGui`` returns no tag (5.10 returns one), so its connection could not be undone and
    every reconnection added connectors and an observer. ``connectParametersToGui`` returns the tag on both.
    """

    def __init__(self, widgets) -> None:
        self._widgets = list(widgets)
        self.parameters = None  # the connected parameter node wrapper
        self._tag = None

    def connect(self, parameters) -> bool:
        """Connect the widgets to ``parameters`` (a wrapper, or None) unless its node is connected already;
        True when the connection changed."""
        node = parameters.parameterNode if parameters is not None else None
        connected = self.parameters.parameterNode if self.parameters is not None else None
        if node is connected:
            return False
        self.disconnect()
        if parameters is not None:
            self._tag = parameters.connectParametersToGui(parameterWidgets(self._widgets))
            self.parameters = parameters
        return True

    def disconnect(self) -> None:
        if self.parameters is not None:
            self.parameters.disconnectGui(self._tag)
        self.parameters = self._tag = None
