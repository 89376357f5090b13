"""The module panel (.ui) loaded with Qt's own loader, checked against what BreastUSSegment.py uses.

Slicer's custom widgets (qMRMLNodeComboBox, ctkSliderWidget, ...) are not on
PyPI, so small stand-ins with the same class names are registered with
QUiLoader; they draw roughly like the real ones so the panel can also be
rendered to ``Resources/Screenshots/panel.png``:

    QT_QPA_PLATFORM=offscreen .venv/bin/python Testing/test_panel_ui.py --screenshot
"""

import dataclasses
import enum
import os
import re
import sys
import typing
import xml.etree.ElementTree as ElementTree
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from slicer_module import MODULE_PATH
from BreastUSSegmentScene import common, models, parameters
from PySide6.QtCore import Property, QSize, Qt
from PySide6.QtGui import QImage, QPainter, QPalette
from PySide6.QtUiTools import QUiLoader
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QStyle,
    QStyleOptionButton,
    QToolButton,
    QWidget,
)

ROOT = Path(__file__).resolve().parents[1]
UI_PATH = ROOT / "BreastUSSegment" / "Resources" / "UI" / "BreastUSSegment.ui"
SCREENSHOT_PATH = ROOT / "Resources" / "Screenshots" / "panel.png"

# Which .ui class a widget must have, from the suffix of its name (checked in this order).
EXPECTED_CLASS_BY_SUFFIX = (
    ("CollapsibleButton", "ctkCollapsibleButton"),
    ("Button", "QPushButton"),
    ("Selector", "qMRMLNodeComboBox"),
    ("CheckBox", "QCheckBox"),
    ("SliderWidget", "ctkSliderWidget"),
    ("ComboBox", "QComboBox"),
    ("PathLineEdit", "ctkPathLineEdit"),
    ("ProgressBar", "QProgressBar"),
    ("Label", "QLabel"),
)


# --- Stand-ins for Slicer's custom widgets (same class names as in the .ui) ---


class qMRMLWidget(QWidget):
    pass


class qMRMLNodeComboBox(QComboBox):
    """Shows one node name, like the real selector once a scene is set."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._properties = {}

    def showNode(self, name):
        self.clear()
        self.addItem(name)


class ctkCollapsibleButton(QWidget):
    """A button-like header with an arrow; the child widgets sit below it."""

    HEADER = 24

    def __init__(self, parent=None):
        super().__init__(parent)
        self._text = ""
        self._collapsed = False
        self.setContentsMargins(4, self.HEADER + 4, 4, 4)

    def getText(self):
        return self._text

    def setText(self, text):
        self._text = text
        self.update()

    def getCollapsed(self):
        return self._collapsed

    def setCollapsed(self, collapsed):
        self._collapsed = bool(collapsed)
        for child in self.findChildren(QWidget, options=Qt.FindDirectChildrenOnly):
            child.setVisible(not self._collapsed)
        self.setMaximumHeight(self.HEADER + 2 if self._collapsed else 16777215)

    text = Property(str, getText, setText)
    collapsed = Property(bool, getCollapsed, setCollapsed)

    def paintEvent(self, event):
        painter = QPainter(self)
        option = QStyleOptionButton()
        option.initFrom(self)
        option.rect = self.rect().adjusted(0, 0, -1, 0)
        option.rect.setHeight(self.HEADER)
        self.style().drawControl(QStyle.CE_PushButton, option, painter, self)
        arrow = "\u25b6" if self._collapsed else "\u25bc"
        painter.drawText(option.rect.adjusted(8, 0, 0, 0), Qt.AlignVCenter | Qt.AlignLeft, f"{arrow}  {self._text}")
        if not self._collapsed:
            painter.setPen(self.palette().color(QPalette.Mid))
            painter.drawRect(self.rect().adjusted(0, self.HEADER, -1, -1))


class ctkSliderWidget(QWidget):
    """A slider with a spin box, like ctkSliderWidget."""

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.slider = QSlider(Qt.Horizontal)
        self.spinBox = QDoubleSpinBox()
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.spinBox)
        self.slider.setRange(0, 1000)
        self.spinBox.valueChanged.connect(self._syncSlider)

    def _syncSlider(self, value):
        span = (self.spinBox.maximum() - self.spinBox.minimum()) or 1.0
        self.slider.setValue(round(1000 * (value - self.spinBox.minimum()) / span))

    def getMinimum(self):
        return self.spinBox.minimum()

    def setMinimum(self, value):
        self.spinBox.setMinimum(value)

    def getMaximum(self):
        return self.spinBox.maximum()

    def setMaximum(self, value):
        self.spinBox.setMaximum(value)

    def getValue(self):
        return self.spinBox.value()

    def setValue(self, value):
        self.spinBox.setValue(value)
        self._syncSlider(value)

    def getSingleStep(self):
        return self.spinBox.singleStep()

    def setSingleStep(self, value):
        self.spinBox.setSingleStep(value)

    def getDecimals(self):
        return self.spinBox.decimals()

    def setDecimals(self, value):
        self.spinBox.setDecimals(value)

    minimum = Property(float, getMinimum, setMinimum)
    maximum = Property(float, getMaximum, setMaximum)
    value = Property(float, getValue, setValue)
    singleStep = Property(float, getSingleStep, setSingleStep)
    decimals = Property(int, getDecimals, setDecimals)


class ctkPathLineEdit(QWidget):
    """A path field with a browse button."""

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.lineEdit = QLineEdit()
        self.lineEdit.setPlaceholderText("(bundled model)")
        button = QToolButton()
        button.setText("...")
        layout.addWidget(self.lineEdit, 1)
        layout.addWidget(button)


STAND_INS = (qMRMLWidget, qMRMLNodeComboBox, ctkCollapsibleButton, ctkSliderWidget, ctkPathLineEdit)
QT_CLASSES = {
    "QPushButton": QPushButton,
    "QCheckBox": QCheckBox,
    "QComboBox": QComboBox,
    "QLabel": QLabel,
    "QProgressBar": QProgressBar,
    **{cls.__name__: cls for cls in STAND_INS},
}


# --- Helpers ---




def ui_tree():
    return ElementTree.parse(UI_PATH).getroot()


def ui_widgets():
    """``{objectName: element}`` for every widget in the .ui file."""
    return {element.get("name"): element for element in ui_tree().iter("widget")}


def ui_property(element, name):
    """Python value of a ``<property>`` of a widget element (string, bool, number or string list)."""
    for prop in element.findall("property"):
        if prop.get("name") == name:
            value = prop[0]
            if value.tag == "stringlist":
                return [item.text for item in value.findall("string")]
            if value.tag == "bool":
                return value.text == "true"
            if value.tag in ("double", "number"):
                return float(value.text)
            return value.text
    return None


def parameter_fields():
    """``{SlicerParameterName: type hint}`` of the parameter node's fields, a parameter pack's as ``pack.field``
    (how Slicer's parameter node wrapper names them; a pack is a dataclass without Slicer)."""
    found = {}
    for name, hint in typing.get_type_hints(parameters.BreastUSSegmentParameterNode, include_extras=True).items():
        if dataclasses.is_dataclass(hint):
            found.update({f"{name}.{member}": memberHint
                          for member, memberHint in typing.get_type_hints(hint, include_extras=True).items()})
        else:
            found[name] = hint
    return found


def used_ui_names():
    return set(re.findall(r"self\.ui\.(\w+)", MODULE_PATH.read_text()))


def expected_class(name):
    for suffix, class_name in EXPECTED_CLASS_BY_SUFFIX:
        if name.lower().endswith(suffix.lower()):
            return class_name
    return None


@pytest.fixture(scope="module")
def app():
    return QApplication.instance() or QApplication([])


def load_panel():
    loader = QUiLoader()
    for cls in STAND_INS:
        loader.registerCustomWidget(cls)
    panel = loader.load(str(UI_PATH))
    assert panel is not None, loader.errorString()
    return panel


# --- Tests ---


def test_every_widget_the_module_uses_exists_with_a_compatible_class(app):
    panel = load_panel()
    widgets = ui_widgets()
    used = used_ui_names()
    assert {"segmentButton", "statusLabel", "progressBar", "exportNrrdButton", "exportNiftiButton"} <= used
    for name in sorted(used):
        assert name in widgets, f"BreastUSSegment.py uses self.ui.{name}, which the .ui file lacks"
        wanted = expected_class(name)
        assert wanted is not None, f"no rule for the kind of widget self.ui.{name} is"
        assert widgets[name].get("class") == wanted, f"{name} is a {widgets[name].get('class')}, expected {wanted}"
        loaded = panel.findChild(QWidget, name)
        assert isinstance(loaded, QT_CLASSES[wanted]), f"{name} did not load as {wanted}"


def test_parameter_node_fields_are_bound_to_suitable_widgets():
    """Slicer's connectGui picks a connector by exact widget class and field type; check both sides."""
    import slicer

    fields = parameter_fields()
    assert "postprocessing.threshold" in fields
    bound = {}
    for name, element in ui_widgets().items():
        parameter = ui_property(element, "SlicerParameterName")
        if parameter:
            assert parameter not in bound, f"{parameter} is bound twice"
            bound[parameter] = element
    assert set(bound) == set(fields)

    for parameter, hint in fields.items():
        element, class_name = bound[parameter], bound[parameter].get("class")
        base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
        if base is bool:
            assert class_name == "QCheckBox", parameter
        elif base is float:
            assert class_name == "ctkSliderWidget", parameter
            [limits] = [a for a in typing.get_args(hint)[1:] if isinstance(a, parameters.WithinRange)]
            assert (ui_property(element, "minimum"), ui_property(element, "maximum")) == (limits.minimum, limits.maximum)
            assert limits.minimum <= ui_property(element, "value") <= limits.maximum
        elif isinstance(base, type) and issubclass(base, enum.Enum):
            assert class_name == "QComboBox", parameter
        else:  # MRML node types (a class or a Union with None)
            assert class_name == "qMRMLNodeComboBox", parameter
            declared = [t.__name__ for t in typing.get_args(base) if t is not type(None)] or [base.__name__]
            # Slicer's wrapper replaces the selector's nodeTypes by the field's classes: the .ui says the same.
            assert list(ui_property(element, "nodeTypes")) == declared, parameter


def test_node_selectors_get_the_scene_and_offer_the_right_nodes():
    root = ui_tree()
    top = root.find("widget").get("name")
    connected = {
        connection.findtext("receiver")
        for connection in root.iter("connection")
        if connection.findtext("sender") == top
        and connection.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and connection.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    selectors = {name for name, element in ui_widgets().items() if element.get("class") == "qMRMLNodeComboBox"}
    assert selectors == connected == {"inputSelector", "outputSelector"}
    widgets = ui_widgets()
    assert ui_property(widgets["inputSelector"], "showChildNodeTypes") is False  # no labelmaps
    # The first volume chosen for the user is one the selector can show.
    assert tuple(ui_property(widgets["inputSelector"], "nodeTypes")) == common.INPUT_NODE_TYPES
    assert ui_property(widgets["inputSelector"], "addEnabled") is False
    assert ui_property(widgets["outputSelector"], "addEnabled") is True
    assert ui_property(widgets["outputSelector"], "noneEnabled") is True


def test_segment_button_is_prominent_and_advanced_options_start_collapsed(app):
    widgets = ui_widgets()
    assert ui_property(widgets["segmentButton"], "enabled") is False  # enabled once a valid input is selected
    assert ui_property(widgets["segmentButton"], "text") == "Segment lesion"
    panel = load_panel()
    button = panel.findChild(QPushButton, "segmentButton")
    assert button.font().bold() and button.minimumHeight() >= 32
    assert panel.findChild(ctkCollapsibleButton, "advancedCollapsibleButton").collapsed is True
    for name in ("exportNrrdButton", "exportNiftiButton", "measureButton", "editButton"):
        assert ui_property(widgets[name], "enabled") is False, name
    advanced = widgets["advancedCollapsibleButton"]
    inside = {element.get("name") for element in advanced.iter("widget")}
    assert {"deviceComboBox", "thresholdSliderWidget", "keepLargestCheckBox", "fillHolesCheckBox",
            "smoothingCheckBox", "testTimeFlipCheckBox", "minConfidenceSliderWidget",
            "minLesionProbabilitySliderWidget", "minAreaFractionSliderWidget"} <= inside
    assert "Research use only" in ui_property(widgets["disclaimerLabel"], "text")


def test_segment_in_box_section_offers_drawing_and_segmenting(app):
    widgets = ui_widgets()
    section = widgets["boxCollapsibleButton"]
    inside = {element.get("name") for element in section.iter("widget")}
    assert {"segmentInBoxButton", "addBoxButton", "boxAllFramesCheckBox"} <= inside
    assert ui_property(widgets["segmentInBoxButton"], "text") == "Segment in box"
    for name in ("segmentInBoxButton", "addBoxButton"):
        assert ui_property(widgets[name], "enabled") is False, name  # enabled once a valid input is selected
    assert ui_property(widgets["boxAllFramesCheckBox"], "SlicerParameterName") == "boxAllFrames"
    assert "segmentInBoxButton" not in {element.get("name") for element in widgets["advancedCollapsibleButton"].iter("widget")}
    panel = load_panel()
    assert panel.findChild(ctkCollapsibleButton, "boxCollapsibleButton").collapsed is False


def test_live_section_offers_a_toggle_the_temporal_rule_and_the_rate(app):
    widgets = ui_widgets()
    section = widgets["liveCollapsibleButton"]
    inside = {element.get("name") for element in section.iter("widget")}
    assert {"liveButton", "liveTemporalComboBox", "liveStatusLabel"} <= inside
    assert ui_property(widgets["liveButton"], "checkable") is True  # a toggle: on, then off
    assert ui_property(widgets["liveButton"], "enabled") is False  # enabled once a valid input is selected
    assert ui_property(widgets["liveTemporalComboBox"], "SlicerParameterName") == "liveTemporal"
    # Off by default; every choice is a rule the core accepts.
    assert parameters.BreastUSSegmentParameterNode.liveTemporal is parameters.LiveTemporalChoice.OFF
    assert parameters.LiveTemporalChoice.OFF.rule() is None
    assert [str(choice.rule()) for choice in list(parameters.LiveTemporalChoice)[1:]] == ["2/2", "2/3", "3/5"]
    panel = load_panel()
    assert panel.findChild(QPushButton, "liveButton").isCheckable()
    assert panel.findChild(ctkCollapsibleButton, "liveCollapsibleButton").collapsed is True  # for live images only


def test_descriptors_section_says_research_use_and_weak_on_the_models_outline(app):
    from BreastUSSegmentLib.descriptors import DESCRIPTOR_NOTE

    widgets = ui_widgets()
    section = widgets["descriptorsCollapsibleButton"]
    assert ui_property(section, "text") == "Descriptors (research use)"
    assert "not for diagnosis" in ui_property(section, "toolTip")
    inside = {element.get("name") for element in section.iter("widget")}
    assert {"descriptorsLabel", "descriptorsNoteLabel"} <= inside
    assert "Research use only, not for diagnosis" in ui_property(widgets["descriptorsNoteLabel"], "text")
    # The module shows the core's note (one text: research use, weak on the model's outline) and the Logic's lines.
    module = MODULE_PATH.read_text()
    assert "self.ui.descriptorsNoteLabel.text = DESCRIPTOR_NOTE" in module
    assert "self.logic.descriptorSummary(" in module
    assert "not for diagnosis" in DESCRIPTOR_NOTE and "weak" in DESCRIPTOR_NOTE


class SlicerWrapperStandIn:
    """What ``ParameterNodeGui`` uses of a parameterNodeWrapper object, as Slicer's wrapper.py does it:
    ``connectParametersToGui`` stores the widgets under a new tag and returns it, ``disconnectGui(tag)``
    drops them, and ``connectGui`` returns the tag on 5.10 but None on 5.8."""

    def __init__(self, parameterNode, returnsTag):
        self.parameterNode = parameterNode
        self.connected = {}  # tag -> widgets, like the wrapper's _parameterGUIs
        self._nextTag = 0
        self._returnsTag = returnsTag

    def connectParametersToGui(self, mapping):
        tag, self._nextTag = self._nextTag, self._nextTag + 1
        self.connected[tag] = dict(mapping)
        return tag

    def connectGui(self, widgets):
        tag = self.connectParametersToGui(widgets)
        return tag if self._returnsTag else None

    def disconnectGui(self, tag):
        self.connected.pop(tag, None)


@pytest.mark.parametrize("returnsTag", [False, True], ids=["Slicer 5.8", "Slicer 5.10"])
def test_the_panel_connects_once_per_parameter_node(app, returnsTag):
    """Entering the module again re-uses the connection; a new scene's node replaces it (on 5.8 and 5.10)."""
    import slicer

    panel = load_panel()
    widgets = parameters.parameterWidgets(panel.findChildren(QWidget))
    assert set(widgets) == set(parameter_fields())
    assert widgets["postprocessing.threshold"].objectName() == "thresholdSliderWidget"

    gui = parameters.ParameterNodeGui(panel.findChildren(QWidget))
    node = slicer.vtkMRMLScriptedModuleNode()
    first = SlicerWrapperStandIn(node, returnsTag)
    assert gui.connect(first) is True
    for _enter in range(3):  # each enter() wraps the same node anew
        assert gui.connect(SlicerWrapperStandIn(node, returnsTag)) is False
    assert list(first.connected.values()) == [widgets]
    assert gui.parameters is first

    newScene = SlicerWrapperStandIn(slicer.vtkMRMLScriptedModuleNode(), returnsTag)
    assert gui.connect(newScene) is True
    assert first.connected == {} and len(newScene.connected) == 1
    gui.connect(None)
    assert newScene.connected == {} and gui.parameters is None


def render_panel(path):
    """Render the panel as it looks with a frame selected and the live and advanced options open."""
    panel = load_panel()
    panel.findChild(qMRMLNodeComboBox, "inputSelector").showNode("breastus_sample_benign")
    panel.findChild(qMRMLNodeComboBox, "outputSelector").showNode("breastus_sample_benign lesion")
    device = panel.findChild(QComboBox, "deviceComboBox")
    for choice in parameters.DeviceChoice:
        device.addItem(parameters.DeviceChoice.label(choice))
    for name, choices in (("backendComboBox", parameters.BackendChoice), ("precisionComboBox", parameters.PrecisionChoice)):
        combo = panel.findChild(QComboBox, name)
        for choice in choices:
            combo.addItem(choices.label(choice))
    temporal = panel.findChild(QComboBox, "liveTemporalComboBox")
    for choice in parameters.LiveTemporalChoice:
        temporal.addItem(parameters.LiveTemporalChoice.label(choice))
    for name in ("segmentButton", "segmentInBoxButton", "addBoxButton", "liveButton"):
        panel.findChild(QPushButton, name).setEnabled(True)
    panel.findChild(QProgressBar, "progressBar").hide()
    panel.findChild(QPushButton, "cancelButton").hide()  # shown only while a run is going
    # The parameter node fills the advanced options from the bundled model's card, as in Slicer.
    card = models.modelCard()
    values = parameters.PostprocessingParameters.fromOptions(card.postprocess_options)
    for name, widget in parameters.parameterWidgets(panel.findChildren(QWidget)).items():
        if name.startswith("postprocessing."):
            value = getattr(values, name[len("postprocessing."):])
            widget.setChecked(value) if isinstance(widget, QCheckBox) else widget.setValue(value)
    for name in ("minLesionProbabilitySliderWidget", "minLesionProbabilityLabel"):  # enabled for a lesion head only
        panel.findChild(QWidget, name).setEnabled(card.model_config.lesion_head)
    # The descriptors of a lesion, as the Logic words them (status.descriptorSummary) after a run.
    from BreastUSSegmentLib.descriptors import DESCRIPTOR_NOTE
    from BreastUSSegmentScene.status import descriptorSummary

    example = {"frame": 1, "lesion": "1", "area": 84.9, "shape": "oval", "orientation": "parallel",
               "margin": "circumscribed", "echo_pattern": "hypoechoic", "posterior": "none",
               "malignancy_likelihood": 0.196}
    panel.findChild(QLabel, "descriptorsLabel").setText(descriptorSummary([example], 1))
    panel.findChild(QLabel, "descriptorsNoteLabel").setText(DESCRIPTOR_NOTE)
    panel.findChild(ctkCollapsibleButton, "advancedCollapsibleButton").setCollapsed(False)
    panel.findChild(ctkCollapsibleButton, "liveCollapsibleButton").setCollapsed(False)
    panel.resize(QSize(400, panel.sizeHint().height()))
    panel.layout().activate()
    image = panel.grab().toImage()
    assert image.save(str(path))
    return image


def test_panel_renders_to_a_non_blank_image(app, tmp_path):
    image = render_panel(tmp_path / "panel.png")
    assert image.width() >= 400 and image.height() > 400
    colours = {image.pixelColor(x, y).rgb() for x in range(0, image.width(), 3) for y in range(0, image.height(), 3)}
    assert len(colours) > 20
    committed = QImage(str(SCREENSHOT_PATH))
    assert not committed.isNull(), f"{SCREENSHOT_PATH} is missing; run this file with --screenshot"
    assert committed.width() >= 300


if __name__ == "__main__":
    if "--screenshot" in sys.argv:
        application = QApplication.instance() or QApplication([])
        SCREENSHOT_PATH.parent.mkdir(parents=True, exist_ok=True)
        render_panel(SCREENSHOT_PATH)
        print(f"wrote {SCREENSHOT_PATH}")
