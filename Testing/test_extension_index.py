"""The Slicer Extensions Index's offline checks, run on this repository.

The Index (github.com/Slicer/ExtensionsIndex) checks each submitted catalog entry with its
``scripts/check_description_files.py``, validates the entry against the catalog-entry schema
(v1.0.2) and formats it with prettier. These tests re-implement, from reading those files at
Index commit 07f1d1b, the checks that need no network: the entry's file format and schema, the
extension name, the category, the ``scm_url``, the licence file, the checked-out size and the
top-level CMake project name. What the Index checks online (that the image URLs answer with an
image, the repository's ``3d-slicer-extension`` GitHub topic, that the build dependencies are
Index extensions) is checked here only as far as the files in this repository allow.
"""

import json
import re
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from test_cmake_lists import commands, variables

ROOT = Path(__file__).resolve().parents[1]
ENTRY_PATH = ROOT / "BreastUSSegment.json"
SIZE_LIMIT_BYTES = 100 * 1024 * 1024  # the Index's limit: 100 MB, counted as MiB
LICENSE_FILE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
SCM_SCHEMES = ("git", "https")
SCHEMA_URL = re.compile(
    r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1\.0\.[012]\.json#?"
)
# Properties of the catalog-entry schema v1.0.2 (no others allowed) and their JSON types.
SCHEMA_PROPERTIES = {
    "$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
    "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str, "enabled": bool, "tier": int,
}
SCHEMA_REQUIRED = ("$schema", "category", "scm_url")
SCM_TYPES = ("git", "local")
TIER_RANGE = (1, 5)
# Categories the Index's checker accepted at commit 07f1d1b.
ACCEPTED_CATEGORIES = frozenset({
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform", "Conda",
    "Converters", "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples", "Exporter", "FTV Segmentation",
    "Filtering", "Filtering.Morphology", "Filtering.Vesselness", "Holographic Display", "Image Synthesis", "IGT",
    "Informatics", "Netstim", "Neuroimaging", "Nuclear Medicine", "Orthodontics", "Osteotomy Planning",
    "Otolaryngology", "Photogrammetry", "Pipelines", "Planning", "Printing", "Quantification", "Radiotherapy",
    "Registration", "Remote", "Rendering", "SPHARM", "Segmentation", "Sequences", "Shape Analysis",
    "Shape Regression", "Shape Visualization", "Simulation", "SlicerCMF", "SlicerMorph", "Spectral Imaging",
    "Supervisely", "Surface Models", "SurfaceLearner", "Tomographic Reconstruction", "Tracking", "Tractography",
    "Training", "Ultrasound", "Utilities", "Vascular Modeling Toolkit", "Virtual Reality", "VisSimTools",
    "Web System Tools", "Wizards",
})
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


#
# The checks: each returns a list of problems (empty when the check passes).
#


def file_format_problems(raw: bytes) -> list:
    """LF line endings, valid JSON, and the layout the Index's formatter writes (2-space indent, one item a line)."""
    if b"\r" in raw:
        return ["line endings other than LF"]
    try:
        entry = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return [f"not valid JSON: {error}"]
    expected = json.dumps(entry, indent=2, ensure_ascii=False) + "\n"
    return [] if raw.decode("utf-8") == expected else ["not formatted as 2-space-indented JSON with a final newline"]


def schema_problems(entry: dict) -> list:
    """The catalog-entry schema's rules: required and allowed properties, their types, tier and scm_type values."""
    problems = [f"missing required property {key}" for key in SCHEMA_REQUIRED if key not in entry]
    problems += [f"unknown property {key}" for key in entry if key not in SCHEMA_PROPERTIES]
    for key, value in entry.items():
        expected = SCHEMA_PROPERTIES.get(key)
        # JSON booleans are not integers, although Python's bool is an int.
        if expected is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
            problems.append(f"{key} must be a {expected.__name__}")
    if isinstance(entry.get("$schema"), str) and not SCHEMA_URL.fullmatch(entry["$schema"]):
        problems.append(f"$schema is not a catalog-entry schema URL: {entry['$schema']}")
    if isinstance(entry.get("tier"), int) and not TIER_RANGE[0] <= entry["tier"] <= TIER_RANGE[1]:
        problems.append(f"tier must be within {TIER_RANGE}")
    if "scm_type" in entry and entry["scm_type"] not in SCM_TYPES:
        problems.append(f"scm_type must be one of {SCM_TYPES}")
    if isinstance(entry.get("build_dependencies"), list) and not all(isinstance(d, str) for d in entry["build_dependencies"]):
        problems.append("build_dependencies must be strings")
    return problems


def extension_name_problems(name: str) -> list:
    return [f"extension name {name!r} starts with 'Slicer'"] if name.lower().startswith("slicer") else []


def category_problems(entry: dict) -> list:
    category = entry.get("category")
    return [] if category in ACCEPTED_CATEGORIES else [f"category {category!r} is not one the Index accepts"]


def repository_name(scm_url: str) -> str:
    """Last path part of the URL, without ``.git``."""
    return Path(urllib.parse.urlsplit(scm_url.strip().rstrip("/")).path).stem


def scm_url_problems(entry: dict) -> list:
    """Scheme git or https, and a repository name starting with 'Slicer'."""
    url = entry.get("scm_url", "")
    problems = []
    if "://" not in url or urllib.parse.urlsplit(url).scheme not in SCM_SCHEMES:
        problems.append(f"scm_url {url!r} is not a {' or '.join(SCM_SCHEMES)} URL")
    if not repository_name(url).startswith("Slicer"):
        problems.append(f"repository name {repository_name(url)!r} does not start with 'Slicer'")
    return problems


def cmake_project_problems(cmake_text_path: Path, extension_name: str) -> list:
    """The first ``project()`` of the top-level CMakeLists.txt names the extension."""
    projects = [arguments for name, arguments in commands(cmake_text_path) if name == "project"]
    if not projects or not projects[0]:
        return ["no project() in CMakeLists.txt"]
    found = projects[0][0]
    return [] if found == extension_name else [f"CMake project {found!r} is not the entry's file name {extension_name!r}"]


def license_problems(folder: Path) -> list:
    return [] if any((folder / name).is_file() for name in LICENSE_FILE_NAMES) else ["no licence file at the repository root"]


def git(*arguments, input_text=None) -> str:
    return subprocess.run(["git", *arguments], cwd=ROOT, input=input_text, capture_output=True, text=True, check=True).stdout


def packed_size(object_ids) -> int:
    """Bytes the objects take in this repository's object store (what a clone receives, about)."""
    sizes = git("cat-file", "--batch-check=%(objectsize:disk)", input_text="\n".join(object_ids) + "\n")
    return sum(int(size) for size in sizes.split())


def head_objects() -> list:
    """Ids of the git objects of HEAD's tree: what a clone of one commit (no history) receives."""
    return [line.split()[2] for line in git("ls-tree", "-r", "-t", "HEAD").splitlines()]


def history_objects() -> list:
    """Ids of every git object reachable from HEAD: what a full clone receives."""
    return [line.split()[0] for line in git("rev-list", "--objects", "HEAD").splitlines()]


def checkout_size() -> int:
    """Bytes of the tracked files as they are on disk."""
    tracked = (ROOT / name for name in git("ls-files", "-z").split("\0") if name)
    return sum(path.stat().st_size for path in tracked if path.is_file())


#
# The checks run on this repository
#


@pytest.fixture(scope="module")
def entry():
    return json.loads(ENTRY_PATH.read_text())


@pytest.fixture(scope="module")
def git_work_tree():
    try:
        inside = git("rev-parse", "--is-inside-work-tree").strip() == "true"
    except (OSError, subprocess.CalledProcessError):
        inside = False
    if not inside:
        pytest.skip("not a git work tree: the size checks count the tracked files and the git objects")


def test_the_catalog_entry_is_the_only_json_file_at_the_root():
    assert sorted(path.name for path in ROOT.glob("*.json")) == [ENTRY_PATH.name]


def test_entry_file_format():
    assert file_format_problems(ENTRY_PATH.read_bytes()) == []
    assert file_format_problems(b'{\r\n  "a": 1\r\n}\r\n') == ["line endings other than LF"]
    assert file_format_problems(b'{"a": 1,}\n')[0].startswith("not valid JSON")
    assert file_format_problems(b'{"a": [1]}\n') == ["not formatted as 2-space-indented JSON with a final newline"]


def test_entry_follows_the_schema(entry):
    assert schema_problems(entry) == []
    assert entry["build_dependencies"] == ["PyTorch"]
    assert {"scm_revision", "tier"} <= entry.keys()
    broken = {**entry, "tier": 6, "extra": 1, "enabled": "yes"}
    del broken["scm_url"]
    assert sorted(schema_problems(broken)) == [
        "enabled must be a bool", "missing required property scm_url", f"tier must be within {TIER_RANGE}", "unknown property extra",
    ]
    assert schema_problems({**entry, "tier": True}) == ["tier must be a int"]


def test_extension_name_does_not_start_with_slicer():
    assert extension_name_problems(ENTRY_PATH.stem) == []
    assert extension_name_problems("SlicerBreastUS") == ["extension name 'SlicerBreastUS' starts with 'Slicer'"]


def test_category_is_accepted_and_is_the_cmake_category(entry):
    assert category_problems(entry) == []
    assert variables(ROOT / "CMakeLists.txt")["EXTENSION_CATEGORY"] == [entry["category"]]
    assert category_problems({"category": "Breast Ultrasound"})


def test_scm_url(entry):
    assert scm_url_problems(entry) == []
    assert repository_name(entry["scm_url"]) == "SlicerBreastUS"
    assert len(scm_url_problems({"scm_url": "ftp://example.org/BreastUS"})) == 2


def test_cmake_project_name_is_the_catalog_file_name(entry, tmp_path):
    assert cmake_project_problems(ROOT / "CMakeLists.txt", ENTRY_PATH.stem) == []
    assert variables(ROOT / "CMakeLists.txt")["EXTENSION_DEPENDS"][0].split(";") == entry["build_dependencies"]
    other = tmp_path / "CMakeLists.txt"
    other.write_text("cmake_minimum_required(VERSION 3.16)\nproject(SlicerBreastUS)\n")
    assert cmake_project_problems(other, ENTRY_PATH.stem) == [
        "CMake project 'SlicerBreastUS' is not the entry's file name 'BreastUSSegment'"
    ]


def test_urls_point_at_the_repository_of_the_entry(entry):
    """Homepage, icon and screenshots name the entry's repository and revision; the images are PNG files in it."""
    owner_and_name = urllib.parse.urlsplit(entry["scm_url"]).path.strip("/").removesuffix(".git")
    values = variables(ROOT / "CMakeLists.txt")
    assert values["EXTENSION_HOMEPAGE"][0].startswith(f"https://github.com/{owner_and_name}")
    raw_prefix = f"https://raw.githubusercontent.com/{owner_and_name}/{entry['scm_revision']}/"
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        urls = values[key][0].split()
        assert urls, f"{key} is empty"
        for url in urls:
            assert url.startswith(raw_prefix), f"{key} {url} is not under {raw_prefix}"
            path = ROOT / url[len(raw_prefix):]
            assert path.is_file(), f"{key} points at {path.relative_to(ROOT)}, which is not in the repository"
            assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path.relative_to(ROOT)} is not a PNG image"


def test_licence_file_at_the_root(tmp_path):
    assert license_problems(ROOT) == []
    assert license_problems(tmp_path) == ["no licence file at the repository root"]
    # One licence everywhere: the LICENSE file, the core package's metadata and the README.
    assert "Apache License\n                           Version 2.0" in (ROOT / "LICENSE").read_text()
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()
    assert "Apache License 2.0" in (ROOT / "README.md").read_text()


def test_checkout_of_one_commit_is_under_the_size_limit(git_work_tree):
    """Tracked files plus the git objects of HEAD alone: what a clone of one commit (no history) holds."""
    total = checkout_size() + packed_size(head_objects())
    assert total < SIZE_LIMIT_BYTES, f"{total / 2**20:.1f} MiB checked out with one commit's git objects"


@pytest.mark.xfail(strict=True, reason=(
    "the history holds several versions of the model weights: a full clone, which the Index makes when the entry "
    "names scm_revision, is over 100 MB; publish a snapshot (scripts/release_snapshot.sh, tested below; see README, "
    "'Publishing in the Extensions Index')"))
def test_full_clone_is_under_the_size_limit(git_work_tree):
    """Tracked files plus every git object reachable from HEAD: what the Index counts after its full clone."""
    if git("rev-parse", "--is-shallow-repository").strip() == "true":
        pytest.skip("shallow clone: the history is not here to measure")
    total = checkout_size() + packed_size(history_objects())
    assert total < SIZE_LIMIT_BYTES, f"{total / 2**20:.1f} MiB checked out with the whole history"


def index_checked_out_size(folder: Path) -> int:
    """What the Index's ``check_repository_size`` counts: every file under the clone, ``.git`` included."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def test_release_snapshot_is_one_commit_of_head_and_a_full_clone_of_it_is_under_the_limit(git_work_tree, tmp_path):
    snapshot = tmp_path / "release"
    run = subprocess.run(["bash", str(ROOT / "scripts" / "release_snapshot.sh"), str(snapshot)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "one commit of " + git("rev-parse", "HEAD").strip() in run.stdout

    def in_snapshot(*arguments) -> str:
        return subprocess.run(["git", *arguments], cwd=snapshot, capture_output=True, text=True, check=True).stdout

    assert in_snapshot("rev-list", "--count", "HEAD").strip() == "1"
    assert in_snapshot("ls-tree", "-r", "HEAD") == git("ls-tree", "-r", "HEAD")  # same files, same contents
    assert in_snapshot("log", "-1", "--format=%an %aI") == git("log", "-1", "--format=%an %aI")
    clone = tmp_path / "clone"  # the Index clones the whole history when the entry names a revision
    subprocess.run(["git", "clone", "--quiet", str(snapshot), str(clone)], capture_output=True, check=True)
    assert index_checked_out_size(clone) < SIZE_LIMIT_BYTES
    again = subprocess.run(["bash", str(ROOT / "scripts" / "release_snapshot.sh"), str(snapshot)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr


if __name__ == "__main__":  # print the sizes the checks above measure: python Testing/test_extension_index.py
    files, head, history, mib = checkout_size(), packed_size(head_objects()), packed_size(history_objects()), 2**20
    print(f"HEAD {git('rev-parse', '--short', 'HEAD').strip()}: tracked files {files / mib:.1f} MiB; "
          f"one commit {(files + head) / mib:.1f} MiB (git objects {head / mib:.1f} MiB); "
          f"full clone {(files + history) / mib:.1f} MiB; limit {SIZE_LIMIT_BYTES / mib:.0f} MiB")
