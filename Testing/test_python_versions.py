"""The module and its core run on Python 3.9, the Python that Slicer 5.8 bundles.

Two checks over every file under ``BreastUSSegment/``:

- ``vermin -t=3.9-`` finds no syntax, standard-library function or argument newer than 3.9;
- no ``X | Y`` union in an annotation that Python evaluates (one in a file without
  ``from __future__ import annotations``): vermin cannot tell such a union from a bitwise or.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "BreastUSSegment"
TARGET = "3.9"
VERMIN = Path(sys.executable).with_name("vermin")


def python_files():
    files = sorted(p for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts)
    assert len(files) > 10, f"only {len(files)} Python files found under {MODULE_DIR}"
    return files


def vermin(*paths):
    """vermin's exit status and report, targeting Python 3.9 and later, annotations treated as evaluated."""
    result = subprocess.run(
        [str(VERMIN), f"-t={TARGET}-", "--violations", "--no-tips", "--eval-annotations", *map(str, paths)],
        capture_output=True, text=True, timeout=300,
    )
    return result.returncode, result.stdout + result.stderr


def evaluated_unions(source, filename="<source>"):
    """``name:line`` of each annotation with ``X | Y`` that is evaluated at run time (no postponed annotations)."""
    tree = ast.parse(source, filename, feature_version=(3, 9))
    postponed = any(
        isinstance(node, ast.ImportFrom) and node.module == "__future__" and any(a.name == "annotations" for a in node.names)
        for node in tree.body
    )
    if postponed:
        return []

    def has_union(annotation):
        if annotation is None:
            return False
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):  # read by typing at run time
            annotation = ast.parse(annotation.value, mode="eval")
        return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(annotation))

    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs + [node.args.vararg, node.args.kwarg]
            if has_union(node.returns) or any(a is not None and has_union(a.annotation) for a in arguments):
                found.append(f"{node.name}:{node.lineno}")
        elif isinstance(node, ast.AnnAssign) and has_union(node.annotation):
            found.append(f"{ast.unparse(node.target)}:{node.lineno}")
    return found


def test_vermin_finds_nothing_newer_than_python_3_9():
    status, report = vermin(*python_files())
    assert status == 0 and "Target versions not met" not in report, report


def test_vermin_reports_a_python_3_10_feature(tmp_path):
    """The check can fail: a 3.10 ``match`` statement is reported."""
    newer = tmp_path / "newer.py"
    newer.write_text("def f(x):\n    match x:\n        case 1:\n            return 0\n")
    status, report = vermin(newer)
    assert status != 0 and "3.10" in report, report


def test_no_evaluated_union_annotations():
    offending = {str(path.relative_to(ROOT)): evaluated_unions(path.read_text(), str(path)) for path in python_files()}
    assert {path: names for path, names in offending.items() if names} == {}
    # The parameter node wrapper reads the parameter node's annotations as real types: they must stay evaluated.
    for path in (MODULE_DIR / "BreastUSSegment.py", MODULE_DIR / "BreastUSSegmentScene" / "parameters.py"):
        assert "from __future__ import annotations" not in path.read_text(), path


def test_union_check_tells_evaluated_from_postponed_annotations():
    assert evaluated_unions("def f(a: int | None = None) -> None:\n    pass\n") == ["f:1"]
    assert evaluated_unions("class P:\n    volume: 'Node | None'\n") == ["volume:2"]
    assert evaluated_unions("from __future__ import annotations\ndef f(a: int | None = None):\n    pass\n") == []
    assert evaluated_unions("def f(a, b):\n    return a | b\n") == []
