"""Datasets as adapters: BrEaST's layout, one manifest over two datasets, BUSI's split unchanged."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breastus_training import cli
from breastus_training.busi import load_case, load_manifest
from breastus_training.datasets import BrEaST, DataRoots, DatasetError, detect_adapter
from breastus_training.prepare import build_manifest

from busi_synthetic import write_synthetic_busi

REPOSITORY = Path(__file__).resolve().parent.parent
BUSI_SPLIT = REPOSITORY / "Training" / "splits" / "busi_split.json"
COMBINED_SPLIT = REPOSITORY / "Training" / "splits" / "busi_breast_split.json"


def write_synthetic_breast(root: Path, count: int = 12) -> dict:
    """BrEaST's published layout: images/, masks/ and cases.csv (pixel size in cm). Returns planted specials."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(5)
    rows = []
    for number in range(1, count + 1):
        name = f"case{number:03d}"
        label = "normal" if number == 1 else ("malignant" if number % 3 == 0 else "benign")
        frame = rng.integers(60, 200, (70, 90), dtype=np.uint8)
        mask = np.zeros((70, 90), bool)
        if label != "normal" and number != 2:  # case002: a benign image whose mask is all black
            mask[20:40, 30:55] = True
            frame[mask] = 30
        Image.fromarray(np.stack([frame] * 3, -1) if number % 2 else frame).save(root / "images" / f"{name}.png")
        if number != 4:  # case004 has no mask
            Image.fromarray(mask).save(root / "masks" / f"{name}_mask.png")
        rows.append({"CaseID": number, "Image_filename": f"{name}.png", "Pixel_size": "0.0075",
                     "Classification": label})
    with open(root / "cases.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {"empty_lesion_mask": "case002", "missing_mask": "case004", "normal": "case001"}


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    busi = write_synthetic_busi(root / "BUSI")
    planted = write_synthetic_breast(root / "BrEaST")
    return busi, root / "BrEaST", planted


def test_folders_are_recognised_by_their_layout(two_datasets, tmp_path):
    busi, breast, _ = two_datasets
    assert detect_adapter(busi.root).name == "BUSI" and detect_adapter(breast).name == "BrEaST"
    with pytest.raises(DatasetError, match="not a known dataset folder"):
        detect_adapter(tmp_path)
    with pytest.raises(DatasetError, match="both BrEaST folders"):
        DataRoots.from_paths([breast, breast])


def test_breast_cases_come_from_cases_csv_with_pixel_size_in_mm(two_datasets):
    _, breast, planted = two_datasets
    listing = BrEaST().list_cases(breast)
    ids = {case.id for case in listing.cases}
    assert planted["missing_mask"] not in ids
    assert [entry["image"] for entry in listing.excluded] == [f"images/{planted['missing_mask']}.png"]
    first = next(case for case in listing.cases if case.id == planted["normal"])
    assert first.label == "normal" and first.pixel_size_mm == pytest.approx(0.075)  # 0.0075 cm


def test_one_manifest_covers_both_datasets_and_leaves_busi_split_as_it_was(two_datasets):
    busi, breast, planted = two_datasets
    alone = build_manifest(busi.root)
    both = build_manifest([breast, busi.root])  # order of --data does not matter
    busi_cases = [case for case in both["cases"] if case["dataset"] == "BUSI"]
    assert busi_cases == alone["cases"]
    breast_cases = {case["id"]: case for case in both["cases"] if case["dataset"] == "BrEaST"}
    assert planted["empty_lesion_mask"] not in breast_cases  # a lesion image without a lesion is excluded
    reasons = {entry["image"]: entry["reason"] for entry in both["excluded"] if entry["dataset"] == "BrEaST"}
    assert "all black" in reasons[f"images/{planted['empty_lesion_mask']}.png"]
    assert planted["normal"] in breast_cases  # a normal image's empty mask is fine
    assert set(both["datasets"]) == {"BUSI", "BrEaST"} and "CC BY 4.0" in both["datasets"]["BrEaST"]["licence"]
    busi_groups = {case["group"] for case in busi_cases}
    assert not busi_groups & {case["group"] for case in breast_cases.values()}


def test_cases_load_from_the_folder_of_their_dataset(two_datasets, tmp_path):
    busi, breast, _ = two_datasets
    split = tmp_path / "split.json"
    assert cli.main(["prepare", "--data", str(busi.root), "--data", str(breast), "--output", str(split)]) == 0
    manifest = load_manifest(split)
    assert manifest.datasets == ["BUSI", "BrEaST"]
    roots = DataRoots.from_paths([busi.root, breast])
    case = next(case for case in manifest.cases if case.dataset == "BrEaST" and case.label == "benign")
    image, mask = load_case(roots, case)
    assert image.shape[:2] == mask.shape == (70, 90) and mask.sum() == 20 * 25
    with pytest.raises(DatasetError, match="needs the BrEaST folder"):
        load_case(DataRoots.from_paths([busi.root]), case)


def test_prepare_refuses_a_folder_as_output_and_reports_skipped_files(two_datasets, tmp_path, capsys):
    busi, _, _ = two_datasets
    assert cli.main(["prepare", "--data", str(busi.root), "--output", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    (busi.root / "benign" / "notes.txt").write_text("not an image")
    try:
        assert cli.main(["prepare", "--data", str(busi.root), "--output", str(tmp_path / "s.json")]) == 0
        assert "benign/notes.txt: not an image file" in capsys.readouterr().out
    finally:
        (busi.root / "benign" / "notes.txt").unlink()


def test_committed_combined_split_holds_the_committed_busi_split_unchanged():
    busi = load_manifest(BUSI_SPLIT)
    combined = load_manifest(COMBINED_SPLIT)
    assert [case for case in combined.cases if case.dataset == "BUSI"] == list(busi.cases)
    breast = [case for case in combined.cases if case.dataset == "BrEaST"]
    counts = {split: sum(case.split == split for case in breast) for split in ("train", "val", "test")}
    assert counts == {"train": 179, "val": 25, "test": 52}
    assert all(case.pixel_size_mm and 0.03 < case.pixel_size_mm < 0.2 for case in breast)
    assert json.loads(COMBINED_SPLIT.read_text())["version"] == 2


@pytest.fixture(scope="module")
def two_dataset_split(two_datasets, tmp_path_factory):
    busi, breast, _ = two_datasets
    split = tmp_path_factory.mktemp("split") / "split.json"
    assert cli.main(["prepare", "--data", str(busi.root), "--data", str(breast), "--output", str(split)]) == 0
    return busi.root, breast, split


def weighted(parts, key, count):
    return sum(part[key] * part[count] for part in parts) / sum(part[count] for part in parts)


def test_evaluate_reports_each_dataset_and_the_pooled_numbers_agree(two_dataset_split, tiny_weights, tmp_path, capsys):
    busi, breast, split = two_dataset_split
    output = tmp_path / "report"
    assert cli.main(["evaluate", "--data", str(busi), "--data", str(breast), "--split", str(split), "--subset", "train",
                     "--weights", str(tiny_weights), "--output", str(output), "--no-progress"]) == 0
    report = json.loads((output / "report.json").read_text())
    per_dataset = report["summary"]["per_dataset"]
    assert set(per_dataset) == {"BUSI", "BrEaST"}
    pooled = report["summary"]["processed"]
    parts = [part["processed"]["lesion"] for part in per_dataset.values()]
    assert pooled["lesion"]["images"] == sum(part["images"] for part in parts)
    assert pooled["lesion"]["dice_mean"] == pytest.approx(weighted(parts, "dice_mean", "images"))
    assert {row["dataset"] for row in report["cases"]} == {"BUSI", "BrEaST"}
    markdown = (output / "report.md").read_text()
    assert "## BUSI (" in markdown and "## BrEaST (" in markdown and "Lesions left empty" in markdown
    assert (output / "cases_BUSI.png").is_file() and (output / "cases_BrEaST.png").is_file()
    capsys.readouterr()
    assert cli.main(["evaluate", "--data", str(busi), "--split", str(split), "--subset", "train",
                     "--weights", str(tiny_weights), "--output", str(tmp_path / "r2"), "--no-progress"]) == 2
    assert "needs the BrEaST folder" in capsys.readouterr().err


def test_sweep_tallies_each_dataset_and_the_pooled_rows_agree(two_dataset_split, tiny_weights, tmp_path):
    busi, breast, split = two_dataset_split
    output = tmp_path / "sweep"
    assert cli.main(["sweep", "--data", str(busi), "--data", str(breast), "--split", str(split), "--subset", "train",
                     "--weights", str(tiny_weights), "--thresholds", "0.4", "0.6", "--output", str(output),
                     "--no-progress"]) == 0
    record = json.loads(next(output.glob("*.json")).read_text())
    parts = list(record["per_dataset"].values())
    assert set(record["per_dataset"]) == {"BUSI", "BrEaST"}
    for index, row in enumerate(record["rows"]):
        lesion_images = sum(part["lesion_images"] for part in parts)
        if lesion_images:
            expected = sum(part["rows"][index]["lesion_dice"] * part["lesion_images"] for part in parts) / lesion_images
            assert row["lesion_dice"] == pytest.approx(expected)
        assert row["lesions_missed"] == sum(part["rows"][index]["lesions_missed"] for part in parts)
