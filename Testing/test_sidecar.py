"""The command line's measurement sidecar, run table, --spacing and provenance, on planted images of known size;
and BrEaST's published pixel size giving its lesions' sizes in mm (skipped without the data)."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from BreastUSSegmentLib.cli import main
from BreastUSSegmentLib.descriptors import DESCRIPTOR_COLUMNS, DESCRIPTOR_NOTE, describe_lesion
from BreastUSSegmentLib.fileio import sha256_of_file
from BreastUSSegmentLib.measure import measure_lesions
from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.likelihood import MODEL_PATH, malignancy_likelihood
from BreastUSSegmentLib.sidecar import RUN_TABLE_NAME, TABLE_COLUMNS
from BreastUSSegmentLib.weights import read_model_card, save_model
from conftest import brightness_model

BREAST = Path(__file__).resolve().parents[2] / "shared" / "data" / "BrEaST"
BREAST = BREAST if BREAST.is_dir() else Path("/work/shared/data/BrEaST")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The bright-pixel model at the planted frames' size (no resizing) and without smoothing, keeping every
    region, so masks are the planted pixels."""
    path = tmp_path_factory.mktemp("weights") / "bright.safetensors"
    save_model(brightness_model(), path, input_size=(100, 200), postprocessing=UNTUNED_POSTPROCESSING.with_overrides(
        smoothing_sigma=0.0, min_area_fraction=0.0, keep_largest=False))
    return path


def two_lesion_png(path):
    """Two bright rectangles far apart: 20 x 41 and 10 x 11 pixels."""
    frame = np.full((100, 200), 30, np.uint8)
    frame[10:30, 10:51] = 220
    frame[70:80, 150:161] = 220
    Image.fromarray(frame).save(path)


def run(inputs, out, weights, *options):
    return main([*map(str, inputs), "-o", str(out), "--weights", str(weights), "--device", "cpu", *options])


def read_table(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_every_lesion_is_measured_apart_in_mm_with_the_users_spacing(tmp_path, weights, capsys):
    two_lesion_png(tmp_path / "two.png")
    out = tmp_path / "out"
    assert run([tmp_path / "two.png"], out, weights, "--spacing", "0.2,0.3") == 0
    record = json.loads((out / "two_measurements.json").read_text())
    assert record["spacing"] == {"row_mm": 0.2, "col_mm": 0.3, "source": "user"}
    assert record["units"]["area"] == "mm²" and record["units"]["longest_diameter"] == "mm"
    assert record["frames"] == [{"frame": 1, "lesions": 2, "result": "2 lesions"}]
    first, second = record["lesions"]
    assert (first["pixel_count"], second["pixel_count"]) == (820, 110)
    assert first["area"] == pytest.approx(820 * 0.06)
    assert first["longest_diameter"] == pytest.approx(math.hypot(19 * 0.2, 40 * 0.3))
    assert second["longest_diameter"] == pytest.approx(math.hypot(9 * 0.2, 10 * 0.3))
    assert first["depth"] == pytest.approx(19 * 0.2) and first["width"] == pytest.approx(40 * 0.3)
    assert (first["centroid_x"], first["centroid_y"]) == (pytest.approx(30.0), pytest.approx(19.5))
    line = capsys.readouterr().out
    assert "two.png: lesion in 1/1 frame(s); 2 lesions: lesion 1: area 49.2 mm², diameters 12.6 x" in line
    assert "lesion 2: area 6.6 mm²" in line and "pixel spacing unknown" not in line
    # The mask is written with the user's spacing.
    mask = sitk.ReadImage(str(out / "two_mask.nrrd"))
    assert mask.GetSpacing() == pytest.approx((0.3, 0.2))


def test_the_sidecar_holds_provenance_and_the_headers_too(tmp_path, weights):
    two_lesion_png(tmp_path / "two.png")
    out = tmp_path / "out"
    assert run([tmp_path / "two.png"], out, weights, "--min-confidence", "0.3") == 0
    record = json.loads((out / "two_measurements.json").read_text())
    card = read_model_card(weights)
    assert record["input"] == {"path": str((tmp_path / "two.png").resolve()), "sha256": sha256_of_file(tmp_path / "two.png"),
                               "frames": 1, "rows": 100, "columns": 200}
    assert record["spacing"]["source"] == "default" and record["units"]["area"] == "px²"
    source = record["provenance"]
    assert source["model"] == {"file": "bright.safetensors", "sha256": card.sha256, "name": card.name}
    assert source["settings"]["min_mean_probability"] == 0.3  # the setting used, not the card's
    assert set(UNTUNED_POSTPROCESSING.to_dict()) <= set(source["settings"])
    assert source["device"] == "cpu" and source["precision"] in ("float32", "bfloat16")
    assert source["software"]["name"] == "SlicerBreastUS" and source["software"]["version"]
    assert record["outputs"]["mask"] == "two_mask.nrrd"
    header = sitk.ReadImage(str(out / "two_mask.nrrd"))
    assert header.GetMetaData("BreastUS_model_sha256") == card.sha256
    assert json.loads(header.GetMetaData("BreastUS_settings"))["min_mean_probability"] == 0.3
    assert header.GetMetaData("BreastUS_input_sha256") == record["input"]["sha256"]
    out = tmp_path / "nifti"
    assert run([tmp_path / "two.png"], out, weights, "--format", "nifti") == 0
    description = sitk.ReadImage(str(out / "two_probability.nii.gz")).GetMetaData("descrip")
    assert description.startswith("SlicerBreastUS ") and card.sha256[:32] in description


def test_the_run_table_has_a_row_per_frame_and_lesion_of_every_input(tmp_path, weights):
    two_lesion_png(tmp_path / "two.png")
    Image.fromarray(np.full((50, 60), 40, np.uint8)).save(tmp_path / "empty.png")
    out = tmp_path / "out"
    assert run([tmp_path / "two.png", tmp_path / "empty.png"], out, weights, "--spacing", "0.1") == 0
    rows = read_table(out / RUN_TABLE_NAME)
    assert list(rows[0]) == list(TABLE_COLUMNS)
    assert [(Path(row["file"]).name, row["lesion"], row["result"]) for row in rows] == [
        ("two.png", "1", "2 lesions"), ("two.png", "2", "2 lesions"), ("empty.png", "", "no lesion found")]
    assert float(rows[0]["area"]) == pytest.approx(820 * 0.01)
    assert {row["spacing_source"] for row in rows} == {"user"} and {row["length_unit"] for row in rows} == {"mm"}
    # A second run into the same folder does not replace the table unless asked to.
    assert run([tmp_path / "empty.png"], out, weights) == 2
    assert len(read_table(out / RUN_TABLE_NAME)) == 3
    assert run([tmp_path / "empty.png"], out, weights, "--overwrite") == 0
    assert len(read_table(out / RUN_TABLE_NAME)) == 1


def test_every_lesion_row_gets_its_descriptors_and_likelihood_with_the_research_use_note(tmp_path, weights):
    two_lesion_png(tmp_path / "two.png")
    out = tmp_path / "out"
    assert run([tmp_path / "two.png"], out, weights, "--spacing", "0.2,0.3") == 0
    record = json.loads((out / "two_measurements.json").read_text())
    assert "research use only, not for diagnosis" in record["descriptors_note"] == DESCRIPTOR_NOTE
    assert "weak" in record["descriptors_note"]
    assert record["units"]["long_axis_angle_deg"] == "°"
    assert record["provenance"]["likelihood_model"] == {"file": MODEL_PATH.name, "sha256": sha256_of_file(MODEL_PATH)}
    image = np.asarray(Image.open(tmp_path / "two.png"))
    regions = [(slice(10, 30), slice(10, 51)), (slice(70, 80), slice(150, 161))]
    assert len(record["lesions"]) == 2
    for row, (rows, cols) in zip(record["lesions"], regions):
        assert all(column.name in row for column in DESCRIPTOR_COLUMNS)
        mask = np.zeros(image.shape, bool)
        mask[rows, cols] = True
        expected = describe_lesion(image, mask, (0.2, 0.3))  # the lesion's own region, not both
        assert (row["shape"], row["orientation"], row["margin"]) == (expected.shape, "parallel", "circumscribed")
        assert row["solidity"] == pytest.approx(expected.solidity)
        assert row["echo_ratio_surround"] == pytest.approx(expected.echo_ratio_surround)
        assert row["malignancy_likelihood"] == pytest.approx(malignancy_likelihood(expected.to_dict()))
    assert record["lesions"][0]["long_axis_angle_deg"] < 5  # 12 mm wide, 3.8 mm deep
    table = read_table(out / RUN_TABLE_NAME)
    assert [row["shape"] for row in table] == [row["shape"] for row in record["lesions"]]
    assert [float(row["malignancy_likelihood"]) for row in table] == pytest.approx(
        [row["malignancy_likelihood"] for row in record["lesions"]], rel=1e-5)
    assert {row["descriptors_note"] for row in table} == {DESCRIPTOR_NOTE}


def test_a_clip_gets_a_result_per_frame_and_a_row_per_lesion(tmp_path, weights, capsys):
    clip = np.full((3, 100, 200), 20, np.uint8)
    clip[1, 5:15, 5:15] = 200
    clip[2, 5:25, 5:25] = 200
    clip[2, 30:35, 35:45] = 200
    image = sitk.GetImageFromArray(clip)
    image.SetSpacing((0.4, 0.5, 1.0))
    sitk.WriteImage(image, str(tmp_path / "clip.nrrd"))
    out = tmp_path / "out"
    assert run([tmp_path / "clip.nrrd"], out, weights) == 0
    record = json.loads((out / "clip_measurements.json").read_text())
    assert record["spacing"] == {"row_mm": 0.5, "col_mm": 0.4, "source": "header"}
    assert [frame["result"] for frame in record["frames"]] == ["no lesion found", "1 lesion", "2 lesions"]
    assert [(row["frame"], row["lesion"]) for row in record["lesions"]] == [(2, 1), (3, 1), (3, 2)]
    # each lesion described on its own frame, in mm: a square of pixels 0.5 mm high and 0.4 mm wide is taller than wide
    assert [row["orientation"] for row in record["lesions"]] == ["not parallel", "not parallel", "parallel"]
    assert "lesion in 2/3 frame(s); frame 2: 1 lesion: lesion 1: area 20.0 mm²" in capsys.readouterr().out


def test_spacing_from_the_box_table_and_bad_spacings(tmp_path, weights, capsys):
    two_lesion_png(tmp_path / "two.png")
    (tmp_path / "boxes.csv").write_text('file,x0,y0,x1,y1,spacing\ntwo.png,0,0,60,40,"0.2,0.3"\n'
                                        'two.png,140,60,170,90,"0.2,0.3"\n')
    out = tmp_path / "out"
    assert main(["--boxes", str(tmp_path / "boxes.csv"), "-o", str(out), "--weights", str(weights), "--device", "cpu",
                 "--no-figure"]) == 0
    record = json.loads((out / "two_measurements.json").read_text())
    assert record["spacing"]["source"] == "user" and record["spacing"]["col_mm"] == 0.3
    assert [(row["box"], row["lesion"], row["pixel_count"]) for row in record["lesions"]] == [(1, 1, 820), (2, 2, 110)]
    assert record["boxes"][1] == {"box": 2, "x0": 140, "y0": 60, "x1": 170, "y1": 90}
    for bad in ("0", "-1", "1,2,3", "a"):
        with pytest.raises(SystemExit):
            run([tmp_path / "two.png"], tmp_path / "bad", weights, "--spacing", bad)
        assert "spacing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--boxes", str(tmp_path / "boxes.csv"), "-o", str(tmp_path / "b2"), "--weights", str(weights),
              "--spacing", "0.1"])
    assert "not both" in capsys.readouterr().err



def test_a_bad_spacing_cell_fails_only_its_image(tmp_path, weights, capsys):
    two_lesion_png(tmp_path / "a.png")
    two_lesion_png(tmp_path / "b.png")
    (tmp_path / "boxes.csv").write_text('file,x0,y0,x1,y1,spacing\na.png,0,0,60,40,-1\nb.png,0,0,60,40,"0.2,0.3"\n')
    out = tmp_path / "out"
    assert main(["--boxes", str(tmp_path / "boxes.csv"), "-o", str(out), "--weights", str(weights), "--device", "cpu",
                 "--no-figure"]) == 1
    assert "boxes.csv line 2" in capsys.readouterr().err
    assert not list(out.glob("a_*")) and (out / "b_measurements.json").exists()

def test_a_box_on_a_lukewarm_region_says_no_lesion_found_in_it(tmp_path, weights, capsys):
    """The box used to return whatever region it held; now the minimum confidence applies inside it too."""
    frame = np.full((80, 100), 30, np.uint8)
    frame[10:30, 10:30] = 220  # probability about 1
    frame[45:78, 35:98] = 130  # probability about 0.7
    Image.fromarray(frame).save(tmp_path / "f.png")
    out = tmp_path / "out"
    assert run([tmp_path / "f.png"], out, weights, "--min-confidence", "0.9", "--box", "5,5,35,35",
               "--box", "40,40,100,80") == 0
    line = capsys.readouterr().out
    assert "f.png: lesion in 1/1 frame(s); 1 lesion: lesion 1 (box 1)" in line
    assert line.strip().splitlines()[0].endswith("; no lesion found in box 2 (pixel spacing unknown: give --spacing)")
    record = json.loads((out / "f_measurements.json").read_text())
    assert record["frames"][0]["result"] == "1 lesion; no lesion found in box 2"
    assert [row["box"] for row in record["lesions"]] == [1]
    assert run([tmp_path / "f.png"], tmp_path / "only", weights, "--min-confidence", "0.9", "--box", "40,40,100,80") == 0
    assert "f.png: no lesion found in box 1" in capsys.readouterr().out
    # With the bar below the region's confidence the box finds it.
    assert run([tmp_path / "f.png"], tmp_path / "low", weights, "--min-confidence", "0.5", "--box", "40,40,100,80") == 0
    assert "lesion 1 (box 1)" in capsys.readouterr().out


# ---------------------------------------------------------------- BrEaST's published pixel size


def breast_cases(count=12):
    with open(BREAST / "cases.csv", newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["lesion_pixels"] or 0) > 0]
    return rows[:count]


@pytest.mark.skipif(not (BREAST / "cases.csv").is_file(), reason="BrEaST data not here")
def test_breast_lesions_come_out_in_mm_as_published():
    """cases.csv gives each image's pixel size in cm and its lesion's pixel count: the mask measured with that
    spacing has the published area in mm², and lesion sizes of about a centimetre (data README)."""
    diameters = []
    for row in breast_cases():
        mm = float(row["Pixel_size"]) * 10.0
        mask = np.array(Image.open(BREAST / "masks" / row["Image_filename"].replace(".png", "_mask.png"))) > 0
        lesions = measure_lesions(mask, (mm, mm))
        assert sum(lesion.pixel_count for lesion in lesions) == int(row["lesion_pixels"])
        assert sum(lesion.area for lesion in lesions) == pytest.approx(int(row["lesion_pixels"]) * mm * mm)
        largest = lesions[0]
        assert largest.perpendicular_diameter <= largest.longest_diameter
        diameters.append(2 * math.sqrt(largest.area / math.pi))
    assert 5.0 < float(np.median(diameters)) < 20.0  # a median lesion of about 1 cm, not 0.1 or 10


@pytest.mark.skipif(not (BREAST / "cases.csv").is_file(), reason="BrEaST data not here")
def test_breast_spacing_column_reaches_the_sidecar(tmp_path, weights):
    row = breast_cases(1)[0]
    image = BREAST / "images" / row["Image_filename"]
    mm = float(row["Pixel_size"]) * 10.0
    (tmp_path / "boxes.csv").write_text(f"file,x0,y0,x1,y1,spacing\n{image},0,0,100000,100000,{mm}\n")
    assert main(["--boxes", str(tmp_path / "boxes.csv"), "-o", str(tmp_path / "out"), "--weights", str(weights),
                 "--device", "cpu", "--no-figure"]) == 0
    record = json.loads((tmp_path / "out" / f"{image.stem}_measurements.json").read_text())
    assert record["spacing"] == {"row_mm": mm, "col_mm": mm, "source": "user"}
    area = sum(lesion["area"] for lesion in record["lesions"])
    assert area == pytest.approx(sum(lesion["pixel_count"] for lesion in record["lesions"]) * mm * mm)
