"""The extension's CMake files: metadata, and file lists equal to the files on disk.

Slicer installs only the files listed in ``BreastUSSegment/CMakeLists.txt``, so a
Python file or resource added without listing it would be missing from the
installed extension. These tests compare the lists with the folders at test time.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "BreastUSSegment"
IGNORED_PARTS = {"__pycache__", ".pytest_cache"}


def strip_comments(text):
    """Drop ``# ...`` comments outside double-quoted strings."""
    lines = []
    for line in text.splitlines():
        in_string = False
        for index, char in enumerate(line):
            if char == '"':
                in_string = not in_string
            elif char == "#" and not in_string:
                line = line[:index]
                break
        lines.append(line)
    return "\n".join(lines)


def commands(path):
    """``[(name, [arguments])]`` of a CMake file (parentheses only inside quoted arguments)."""
    text = strip_comments(path.read_text())
    found = []
    for match in re.finditer(r'(\w+)\s*\(((?:"[^"]*"|[^()"])*)\)', text):
        arguments = [token[1:-1] if token.startswith('"') else token for token in re.findall(r'"[^"]*"|\S+', match.group(2))]
        found.append((match.group(1).lower(), arguments))
    return found


def variables(path):
    """Values of every ``set(NAME values...)``, with ``${NAME}`` references expanded."""
    values = {}
    for name, arguments in commands(path):
        if name == "set" and arguments:
            expanded = [re.sub(r"\$\{(\w+)\}", lambda m: " ".join(values.get(m.group(1), [m.group(0)])), a) for a in arguments[1:]]
            values[arguments[0]] = expanded
    return values


def files_on_disk(folder, pattern):
    return {
        path.relative_to(MODULE_DIR).as_posix()
        for path in folder.rglob(pattern)
        if path.is_file() and not IGNORED_PARTS & set(path.parts) and not path.name.startswith(".")
    }


@pytest.fixture(scope="module")
def module_variables():
    return variables(MODULE_DIR / "CMakeLists.txt")


def test_module_lists_every_python_file(module_variables):
    listed = module_variables["MODULE_PYTHON_SCRIPTS"]
    assert len(listed) == len(set(listed)), "a script is listed twice"
    packages = [init.parent for init in MODULE_DIR.glob("*/__init__.py")]  # the core and the Slicer side
    assert {package.name for package in packages} == {"BreastUSSegmentLib", "BreastUSSegmentScene"}
    on_disk = {p.name for p in MODULE_DIR.glob("*.py")}.union(*(files_on_disk(package, "*.py") for package in packages))
    assert set(listed) == on_disk, (
        f"not listed: {sorted(on_disk - set(listed))}; listed but missing: {sorted(set(listed) - on_disk)}"
    )


def test_module_lists_every_resource_file(module_variables):
    listed = module_variables["MODULE_PYTHON_RESOURCES"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    package_data = files_on_disk(MODULE_DIR / "BreastUSSegmentLib", "*") - files_on_disk(MODULE_DIR / "BreastUSSegmentLib", "*.py")
    on_disk = files_on_disk(MODULE_DIR / "Resources", "*") | package_data
    assert set(listed) == on_disk, (
        f"not listed: {sorted(on_disk - set(listed))}; listed but missing: {sorted(set(listed) - on_disk)}"
    )
    for required in ("Resources/Icons/BreastUSSegment.png", "Resources/UI/BreastUSSegment.ui"):
        assert required in listed


def test_module_is_built_as_a_scripted_module_with_its_self_test(module_variables):
    assert module_variables["MODULE_NAME"] == ["BreastUSSegment"]
    found = commands(MODULE_DIR / "CMakeLists.txt")
    names = [name for name, _ in found]
    build = dict(found)["slicermacrobuildscriptedmodule"]
    assert build[:2] == ["NAME", "${MODULE_NAME}"]
    assert "SCRIPTS" in build and build[build.index("SCRIPTS") + 1] == "${MODULE_PYTHON_SCRIPTS}"
    assert "RESOURCES" in build and build[build.index("RESOURCES") + 1] == "${MODULE_PYTHON_RESOURCES}"
    # The self-test is registered only when testing is enabled.
    assert names.index("if") < names.index("slicer_add_python_unittest") < names.index("endif")
    assert dict(found)["if"] == ["BUILD_TESTING"]
    assert dict(found)["slicer_add_python_unittest"] == ["SCRIPT", "${MODULE_NAME}.py"]
    # Slicer finds the classes by the module name.
    classes = {node.name for node in ast.walk(ast.parse((MODULE_DIR / "BreastUSSegment.py").read_text())) if isinstance(node, ast.ClassDef)}
    assert {"BreastUSSegment", "BreastUSSegmentWidget", "BreastUSSegmentLogic", "BreastUSSegmentTest"} <= classes


def test_top_level_is_a_slicer_extension():
    path = ROOT / "CMakeLists.txt"
    found = commands(path)
    names = [name for name, _ in found]
    assert names[0] == "cmake_minimum_required"
    assert dict(found)["project"] == ["BreastUSSegment"]
    values = variables(path)
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert values.get(key) and values[key][0].strip(), f"{key} is not set"
    assert values["EXTENSION_CATEGORY"] == ["Segmentation"]
    assert "PyTorch" in values["EXTENSION_DEPENDS"][0].split(";")
    assert "Research use only" in values["EXTENSION_DESCRIPTION"][0]

    calls = [(name, args) for name, args in found if name in ("find_package", "include", "add_subdirectory")]
    assert calls[:2] == [("find_package", ["Slicer", "REQUIRED"]), ("include", ["${Slicer_USE_FILE}"])]
    assert calls[-2:] == [("include", ["${Slicer_EXTENSION_GENERATE_CONFIG}"]), ("include", ["${Slicer_EXTENSION_CPACK}"])]
    subdirectories = {args[0] for name, args in found if name == "add_subdirectory"}
    module_folders = {p.parent.name for p in ROOT.glob("*/CMakeLists.txt") if "slicerMacroBuildScriptedModule" in p.read_text()}
    assert subdirectories == module_folders == {"BreastUSSegment"}

