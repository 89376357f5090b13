"""breastus-train prepare: indexing BUSI's layout, duplicate groups, the stratified split and its manifest."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breastus_training import cli
from breastus_training.busi import DatasetError, Case, load_case, load_manifest, read_mask
from breastus_training.prepare import assign_splits, natural_key

from busi_synthetic import write_synthetic_busi

REPO = Path(__file__).resolve().parent.parent
COMMITTED_SPLIT = REPO / "Training" / "splits" / "busi_split.json"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A synthetic BUSI tree and the manifest ``prepare`` writes for it."""
    root = tmp_path_factory.mktemp("busi")
    info = write_synthetic_busi(root / "BUSI")
    output = root / "split.json"
    assert cli.main(["prepare", "--data", str(info.root), "--output", str(output)]) == 0
    return info, output, load_manifest(output)


def cases_by_id(manifest):
    return {case.id: case for case in manifest.cases}


def test_finds_every_valid_case_with_its_class(prepared):
    info, _, manifest = prepared
    assert sorted(case.id for case in manifest.cases) == info.valid_ids
    assert Counter(case.label for case in manifest.cases) == Counter(info.valid_counts())
    for case in manifest.cases:
        assert case.label == info.labels[case.id]
        assert case.image == f"{case.label}/{case.id}.png"  # relative to the dataset root


def test_excluded_cases_are_listed_with_their_reason(prepared, capsys):
    info, output, _ = prepared
    excluded = {entry["image"]: entry["reason"] for entry in json.loads(output.read_text())["excluded"]}
    assert set(excluded) == {f"{info.labels[name]}/{name}.png" for name in info.excluded}
    assert "no mask" in excluded[f"benign/{info.missing_mask}.png"]
    mismatch = excluded[f"malignant/{info.size_mismatch}.png"]
    assert "80x60" in mismatch and "80x64" in mismatch


def test_multiple_masks_are_merged_by_union(prepared):
    info, _, manifest = prepared
    case = cases_by_id(manifest)[info.multi_mask]
    assert case.masks == (f"benign/{info.multi_mask}_mask.png", f"benign/{info.multi_mask}_mask_1.png")
    first, second = (read_mask(info.root / mask) for mask in case.masks)
    _, mask = load_case(info.root, case)
    assert np.array_equal(mask, first | second)
    assert not np.array_equal(mask, first) and not np.array_equal(mask, second)


def test_rgb_image_and_rgba_rgb_one_bit_masks_are_read(prepared):
    info, _, manifest = prepared
    cases = cases_by_id(manifest)
    image, mask = load_case(info.root, cases[info.rgb_image])
    assert image.shape == (64, 80, 3) and image.dtype == np.uint8
    for case_id in (info.rgba_mask, info.rgb_mask, info.one_bit_mask):
        _, mask = load_case(info.root, cases[case_id])
        stored = np.asarray(Image.open(info.root / cases[case_id].masks[0]).convert("L")) > 0
        assert mask.dtype == bool and np.array_equal(mask, stored)
        assert 0 < mask.mean() < 0.5  # the opaque alpha channel of the RGBA mask is not read as lesion
    for case in manifest.cases:
        if case.label == "normal":
            image, mask = load_case(info.root, case)
            assert mask.shape == image.shape[:2] and not mask.any()


def test_duplicates_are_grouped_on_one_split_and_nothing_else_is(prepared):
    info, _, manifest = prepared
    cases = cases_by_id(manifest)
    for first, second in (info.exact_duplicate, info.near_duplicate):
        assert cases[first].group == cases[second].group
        assert cases[first].split == cases[second].split
    assert cases[info.exact_duplicate[0]].label != cases[info.exact_duplicate[1]].label  # both entries are kept
    expected = {frozenset(info.exact_duplicate), frozenset(info.near_duplicate)}
    assert {frozenset(group) for group in manifest.duplicate_groups} == expected
    assert len({case.group for case in manifest.cases}) == len(manifest.cases) - 2


def test_split_respects_the_ratios_per_class(prepared):
    _, _, manifest = prepared
    for label in ("benign", "malignant", "normal"):
        labelled = [case for case in manifest.cases if case.label == label]
        for split, ratio in manifest.ratios.items():
            count = sum(case.split == split for case in labelled)
            assert abs(count - ratio * len(labelled)) <= 1.0, (label, split, count)


def test_assign_splits_keeps_groups_whole_and_is_stratified():
    rng = np.random.default_rng(3)
    labels = ["benign"] * 300 + ["malignant"] * 150 + ["normal"] * 90
    groups = list(range(len(labels)))
    for start in range(0, 120, 3):  # 40 groups of three images of the same class
        groups[start + 1] = groups[start + 2] = groups[start]
    order = rng.permutation(len(labels))
    labels, groups = [labels[i] for i in order], [groups[i] for i in order]
    ratios = {"train": 0.7, "val": 0.1, "test": 0.2}
    splits = assign_splits(labels, groups, ratios, seed=5)
    for group in set(groups):
        assert len({split for split, g in zip(splits, groups) if g == group}) == 1
    for label, total in Counter(labels).items():
        for split, ratio in ratios.items():
            count = sum(1 for l, s in zip(labels, splits) if l == label and s == split)
            assert abs(count / total - ratio) < 0.02, (label, split, count)
    assert splits == assign_splits(labels, groups, ratios, seed=5)
    assert splits != assign_splits(labels, groups, ratios, seed=6)


def test_manifest_is_stable_across_runs_and_seed_changes_the_split(prepared, tmp_path):
    info, output, manifest = prepared
    again = tmp_path / "again.json"
    other_seed = tmp_path / "seed1.json"
    assert cli.main(["prepare", "--data", str(info.root), "--output", str(again)]) == 0
    assert again.read_bytes() == output.read_bytes()
    assert cli.main(["prepare", "--data", str(info.root), "--output", str(other_seed), "--seed", "1"]) == 0
    reseeded = load_manifest(other_seed)
    assert [case.id for case in reseeded.cases] == [case.id for case in manifest.cases]
    assert reseeded.sha256 != manifest.sha256
    ids = [case.id for case in manifest.cases]
    assert ids == sorted(ids, key=lambda case_id: (natural_key(case_id.split(" ")[0]), natural_key(case_id)))


def test_edited_manifest_is_refused(prepared, tmp_path):
    _, output, _ = prepared
    values = json.loads(output.read_text())
    values["cases"][0]["split"] = "test" if values["cases"][0]["split"] != "test" else "train"
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(values))
    with pytest.raises(DatasetError, match="edited.json.*cases_sha256"):
        load_manifest(edited)


def test_bad_paths_give_clear_errors(tmp_path, capsys):
    assert cli.main(["prepare", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "s.json")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    assert cli.main(["prepare", "--data", str(tmp_path), "--output", str(tmp_path / "s.json")]) == 2
    assert "none of the class folders" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="not found"):
        load_case(tmp_path, Case("x", "benign", "benign/x.png", ("benign/x_mask.png",), 0, "train"))


def test_committed_busi_split_is_valid_and_keeps_duplicates_together():
    manifest = load_manifest(COMMITTED_SPLIT)
    assert Counter(case.label for case in manifest.cases) == {"benign": 437, "malignant": 210, "normal": 133}
    cases = cases_by_id(manifest)
    assert cases["benign (433)"].group == cases["malignant (145)"].group
    assert cases["benign (433)"].split == cases["malignant (145)"].split
    splits_of_group = {}
    for case in manifest.cases:
        splits_of_group.setdefault(case.group, set()).add(case.split)
    assert all(len(splits) == 1 for splits in splits_of_group.values())
    counts = Counter(case.split for case in manifest.cases)
    assert abs(counts["train"] / 780 - 0.7) < 0.02 and abs(counts["test"] / 780 - 0.2) < 0.02
