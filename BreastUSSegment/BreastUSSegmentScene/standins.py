"""Minimal stand-ins for Slicer's scripted-module base classes, used where ``slicer.ScriptedLoadableModule`` is
absent (plain Python with ``slicer-core``), so that the module imports and its Logic runs headless."""

import logging
import unittest


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
        self.moduleName = self.__class__.__name__


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = self.__class__.__name__[: -len("Logic")]


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=100):
        logging.info(message)
