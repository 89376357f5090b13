"""The public downloads as published: BUSI read as it is, BrEaST (TCIA) converted, on small synthetic copies."""

import csv
import shutil
from pathlib import Path

import numpy as np
import openpyxl
import pytest
from PIL import Image

from breastus_training import cli
from breastus_training.busi import load_case, load_manifest
from breastus_training.convert import convert_breast
from breastus_training.datasets import DataRoots, DatasetError, detect_adapter
from breastus_training.prepare import build_manifest
from breastus_training.sheets import read_table

from busi_synthetic import write_synthetic_busi

SHEET_COLUMNS = ["CaseID", "Image_filename", "Mask_tumor_filename", "Pixel_size", "Age", "BIRADS", "Classification"]


def republish_busi(stored: Path, published: Path, multi_mask: str) -> None:
    """BUSI as users download it: every image RGB, masks a mix of 1-bit, RGB and RGBA, and one image whose
    second mask is split over ``_mask_1`` and ``_mask_2``."""
    modes = ["1", "RGB", "RGBA"]
    for number, path in enumerate(sorted(stored.rglob("*.png"))):
        target = published / path.relative_to(stored)
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            if "_mask" not in path.stem:
                image.convert("RGB").save(target)
                continue
            mask = np.asarray(image.convert("L")) > 0
        if path.stem == f"{multi_mask}_mask_1":
            half = mask.shape[1] // 2
            first, second = mask.copy(), mask.copy()
            first[:, half:], second[:, :half] = False, False
            Image.fromarray(first).save(target)
            Image.fromarray(second).save(target.with_name(f"{multi_mask}_mask_2.png"))
            continue
        mode = modes[number % 3]
        values = np.where(mask, 255, 0).astype(np.uint8)
        if mode == "1":
            Image.fromarray(mask).save(target)
        elif mode == "RGB":
            Image.fromarray(np.stack([values] * 3, -1)).save(target)
        else:
            Image.fromarray(np.stack([values] * 3 + [np.full_like(values, 255)], -1)).save(target)


def test_busi_as_published_gives_the_split_and_the_cases_of_the_stored_copy(tmp_path):
    stored = write_synthetic_busi(tmp_path / "stored")
    published = tmp_path / "Dataset_BUSI_with_GT"
    republish_busi(stored.root, published, stored.multi_mask)
    assert Image.open(published / "benign" / "benign (1).png").mode == "RGB"
    from_stored, from_published = build_manifest(stored.root), build_manifest(published)
    key = ("id", "label", "image", "group", "split")
    assert [{k: case[k] for k in key} for case in from_published["cases"]] == \
           [{k: case[k] for k in key} for case in from_stored["cases"]]
    split, stored_split = tmp_path / "split.json", tmp_path / "stored_split.json"
    assert cli.main(["prepare", "--data", str(published), "--output", str(split)]) == 0
    assert cli.main(["prepare", "--data", str(stored.root), "--output", str(stored_split)]) == 0
    for case, stored_case in zip(load_manifest(split).cases, load_manifest(stored_split).cases, strict=True):
        image, mask = load_case(published, case)
        stored_image, stored_mask = load_case(stored.root, stored_case)
        assert np.array_equal(mask, stored_mask), case.id
        assert np.array_equal(image[..., 0] if image.ndim == 3 and stored_image.ndim == 2 else image, stored_image)
    multi = next(case for case in load_manifest(split).cases if case.id == stored.multi_mask)
    assert [Path(name).name for name in multi.masks] == [f"{stored.multi_mask}_mask.png",
                                                        f"{stored.multi_mask}_mask_1.png",
                                                        f"{stored.multi_mask}_mask_2.png"]


def sector_alpha(height: int, width: int) -> np.ndarray:
    """255 inside a fan opening downwards from the top centre, 0 outside (the published images' alpha)."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.where(np.abs(cols - width / 2) <= 8 + rows * 0.6, 255, 0).astype(np.uint8)


def write_published_breast(folder: Path, sheet_suffix: str) -> dict:
    """BrEaST-Lesions_USG as TCIA publishes it, small: RGBA images with alpha 0 outside the sector (and colour
    there, which compositing must remove), ``_tumor`` masks (two for case003), ``_other`` masks, a sheet."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    height, width = 48, 64
    alpha = sector_alpha(height, width)
    expected = {}
    rows = []
    labels = {1: "benign", 2: "malignant", 3: "benign", 4: "normal", 5: "benign", 6: "malignant"}
    for number, label in labels.items():
        name = f"case{number:03d}"
        gray = rng.integers(40, 220, (height, width), dtype=np.uint8)
        rgb = np.stack([gray] * 3, -1)
        if number == 2:
            rgb[30:33, 20:40] = (0, 255, 255)  # a coloured marker inside the sector
        outside = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        rgb_published = np.where(alpha[..., None] > 0, rgb, outside)
        Image.fromarray(np.dstack([rgb_published, alpha]), mode="RGBA").save(folder / f"{name}.png")
        lesion = np.zeros((height, width), bool)
        if label != "normal" and number != 5:  # case005: a benign image without any _tumor mask
            lesion[10:25, 25:40] = True
            Image.fromarray(np.where(lesion, 255, 0).astype(np.uint8)).save(folder / f"{name}_tumor.png")
        if number == 3:  # a second tumour, as white on transparent RGBA
            second = np.zeros((height, width), bool)
            second[30:40, 28:36] = True
            white = np.full((height, width, 3), 255, np.uint8)
            Image.fromarray(np.dstack([white, np.where(second, 255, 0).astype(np.uint8)]), mode="RGBA").save(
                folder / f"{name}_tumor2.png")
            (folder / f"{name}_tumor.png").rename(folder / f"{name}_tumor1.png")
            lesion |= second
        if number in (1, 3):  # another finding, not a lesion
            other = np.zeros((height, width), np.uint8)
            other[2:12, 28:36] = 255
            Image.fromarray(other).save(folder / f"{name}_other1.png")
        expected[name] = {"rgb": np.where(alpha[..., None] > 0, rgb, 0), "mask": lesion, "label": label}
        rows.append([number, f"{name}.png", f"{name}_tumor.png", 0.0078125, 50 + number, "4a", label])
    rows.append([7, "case007.png", "case007_tumor.png", 0.0075, 61, "3", "benign"])  # no image file
    Image.fromarray(np.zeros((height, width, 4), np.uint8), mode="RGBA").save(folder / "case008.png")  # no row
    sheet = folder.parent / f"clinical{sheet_suffix}"
    if sheet_suffix == ".xlsx":
        workbook = openpyxl.Workbook()
        workbook.active.append(SHEET_COLUMNS)
        for row in rows:
            workbook.active.append(row)
        workbook.save(sheet)
    else:
        with open(sheet, "w", newline="") as stream:
            csv.writer(stream).writerows([SHEET_COLUMNS, *rows])
    return {"sheet": sheet, "expected": expected}


@pytest.mark.parametrize("sheet_suffix", [".xlsx", ".csv"])
def test_breast_as_published_converts_to_the_layout_prepare_reads(tmp_path, sheet_suffix, capsys):
    published = tmp_path / "BrEaST-Lesions_USG-images_and_masks"
    planted = write_published_breast(published, sheet_suffix)
    with pytest.raises(DatasetError, match="breastus-train convert"):
        detect_adapter(published)
    output = tmp_path / "BrEaST"
    assert cli.main(["convert", "--source", str(published), "--sheet", str(planted["sheet"]),
                     "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "case007.png'" in printed and "case008.png: not in" in printed and "case005.png: a benign image" in printed
    for name, want in planted["expected"].items():
        with Image.open(output / "images" / f"{name}.png") as image:
            assert image.mode == ("RGB" if name == "case002" else "L"), name
            pixels = np.asarray(image.convert("RGB"))
        assert np.array_equal(pixels, want["rgb"]), name  # transparent pixels are black, the sector unchanged
        mask_path = output / "masks" / f"{name}_mask.png"
        if name == "case005":
            assert not mask_path.exists()
            continue
        with Image.open(mask_path) as mask:
            assert mask.mode == "1"
            assert np.array_equal(np.asarray(mask), want["mask"]), name  # tumours united, _other left out
    with open(output / "cases.csv", newline="") as stream:
        table = list(csv.DictReader(stream))
    assert [row["Image_filename"] for row in table] == [f"case{n:03d}.png" for n in range(1, 7)]
    assert float(table[0]["Pixel_size"]) == 0.0078125 and table[1]["Classification"] == "malignant"
    assert int(table[2]["lesion_pixels"]) == planted["expected"]["case003"]["mask"].sum()

    manifest = build_manifest(output)
    assert {case["id"] for case in manifest["cases"]} == {f"case{n:03d}" for n in (1, 2, 3, 4, 6)}
    assert [entry["image"] for entry in manifest["excluded"]] == ["images/case005.png"]
    assert next(case for case in manifest["cases"] if case["id"] == "case001")["pixel_size_mm"] == 0.078125
    assert DataRoots.from_paths([output]).root_for("BrEaST") == output

    with pytest.raises(DatasetError, match="not an empty folder"):
        convert_breast(published, planted["sheet"], output)


def test_an_xlsx_sheet_reads_like_its_csv_export(tmp_path):
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["Image_filename", "Pixel_size", "Diagnosis", "Age"])
    sheet.append(["case001.png", 0.006462036, "Intramammary lymph node", 57])
    sheet.append(["case002.png", 0.0075, None, "not available"])  # an empty cell in the middle
    sheet.append([])
    sheet.append(["case003.png", 1e-3, "fibroadenoma; łagodny", 40])
    workbook.create_sheet("second").append(["ignored"])
    workbook.save(tmp_path / "sheet.xlsx")
    rows = read_table(tmp_path / "sheet.xlsx")
    assert [row["Image_filename"] for row in rows] == ["case001.png", "case002.png", "case003.png"]
    assert float(rows[0]["Pixel_size"]) == 0.006462036 and float(rows[2]["Pixel_size"]) == 1e-3
    assert rows[1]["Diagnosis"] == "" and rows[1]["Age"] == "not available" and rows[0]["Age"] == "57"
    assert rows[2]["Diagnosis"] == "fibroadenoma; łagodny"
    (tmp_path / "broken.xlsx").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="broken.xlsx"):
        read_table(tmp_path / "broken.xlsx")
