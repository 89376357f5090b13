"""A wheel built from pyproject.toml carries the trained model, and the core finds it inside the package."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
                    "--quiet", "--wheel-dir", str(folder), str(ROOT)], check=True, timeout=300)
    [path] = folder.glob("slicer_breastus-*.whl")
    return path


def test_wheel_ships_the_bundled_model_and_its_card(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"BreastUSSegmentLib/bundled/breastus_attention_unet.safetensors",
            "BreastUSSegmentLib/bundled/breastus_attention_unet.json"} <= names


def test_core_loads_the_bundled_model_from_the_unpacked_wheel(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path)
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from BreastUSSegmentLib import BUNDLED_WEIGHTS\n"
        "from BreastUSSegmentLib.cli import build_parser\n"
        "from BreastUSSegmentLib.weights import load_model\n"
        "load_model(BUNDLED_WEIGHTS)  # verifies the sha256 in the card\n"
        "print(BUNDLED_WEIGHTS)\n"
        "print(build_parser().get_default('weights'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    bundled, cli_default = result.stdout.split()
    assert bundled == cli_default
    assert Path(bundled).is_relative_to(tmp_path) and Path(bundled).is_file()


def test_wheel_requires_the_one_dependency_list_and_the_lock_pins_each(wheel):
    from BreastUSSegmentLib import dependencies

    archive = zipfile.ZipFile(wheel)
    [metadata] = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
    requirements = [line.split(":", 1)[1].strip() for line in archive.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
    assert [line for line in requirements if "extra ==" not in line] == dependencies()
    # Optional extras: the runtimes (pip install slicer-breastus[torch]; the command line's list names OpenVINO,
    # so breastus-segment runs without PyTorch) and breastus-live's pyigtl.
    from BreastUSSegmentLib.runtime import TORCH_REQUIREMENT

    assert sorted(line for line in requirements if "extra ==" in line) == [
        'onnxruntime; extra == "onnxruntime"', 'openvino; extra == "openvino"', 'pyigtl; extra == "live"',
        f'{TORCH_REQUIREMENT}; extra == "torch"']
    assert "openvino" in dependencies() and not any(r.startswith("torch") for r in dependencies())
    extras = [line.split(";")[0].strip() for line in requirements if 'extra == "live"' in line]
    pinned = {line.split("==")[0].strip().lower() for line in (ROOT / "requirements.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    names = {re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower() for requirement in dependencies() + extras}
    assert names <= pinned, f"not pinned in requirements.txt: {sorted(names - pinned)}"
