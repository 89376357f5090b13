"""Bootstrap intervals of an evaluation report (``breastus-train intervals``)."""

import json

import numpy as np
import pytest

from breastus_training import cli, intervals
from breastus_training.evaluate import REPORT_FORMAT_VERSION, summarize_rows


def scores(dice, predicted_pixels):
    return {"dice": float(dice), "iou": float(dice / (2 - dice)), "hd95_px": None, "intersection": 0, "union": 1,
            "predicted_pixels": int(predicted_pixels)}


def row(dataset, label, dice, predicted_pixels=None, raw_dice=None):
    """One per-case row as evaluate writes it (IoU derived from Dice; the raw mask scores ``raw_dice``,
    by default half the processed Dice, so that a mix-up of the two modes shows)."""
    if predicted_pixels is None:
        predicted_pixels = 0 if dice == 0 and label != "normal" else 100
    raw_dice = dice / 2 if raw_dice is None else raw_dice
    return {"id": f"{label}-{dataset}", "dataset": dataset, "label": label,
            "raw": scores(raw_dice, 0 if raw_dice == 0 and label != "normal" else 100),
            "processed": scores(dice, predicted_pixels)}


def normal(dataset, false_lesion):
    row_ = row(dataset, "normal", 0.0 if false_lesion else 1.0, 50 if false_lesion else 0)
    row_["raw"] = scores(0.0, 50)  # the raw mask always marks something
    return row_


def random_rows(seed=0):
    rng = np.random.default_rng(seed)
    rows = [row("BUSI", rng.choice(["benign", "malignant"]), d) for d in rng.uniform(0, 1, 60)]
    rows += [row("BUSI", "benign", 0.0) for _ in range(4)]  # left empty
    rows += [normal("BUSI", flag) for flag in rng.random(15) < 0.3]
    rows += [row("BrEaST", "malignant", d) for d in rng.uniform(0.3, 1, 25)]
    rows += [normal("BrEaST", True)]
    return rows


def test_values_are_the_reports_own_summary_numbers():
    rows = random_rows()
    for group, mode in ((rows, "processed"), ([r for r in rows if r["dataset"] == "BUSI"], "processed"), (rows, "raw")):
        stats = intervals.intervals_of(group, mode, resamples=50)
        summary = summarize_rows(group)[mode]
        assert stats["lesion_dice"]["value"] == pytest.approx(summary["lesion"]["dice_mean"])
        assert stats["lesion_iou"]["value"] == pytest.approx(summary["lesion"]["iou_mean"])
        assert stats["lesions_empty"]["value"] == pytest.approx(summary["lesion"]["empty"] / summary["lesion"]["images"])
        assert stats["normal_false_positives"]["value"] == pytest.approx(summary["normal"]["false_positive_rate"])
        assert stats["all_image_dice"]["value"] == pytest.approx(summary["all_image_dice"])


def test_interval_of_a_fair_coin_has_the_binomial_width():
    rows = [row("BUSI", "benign", float(i % 2)) for i in range(100)]
    stats = intervals.intervals_of(rows, resamples=4000, seed=3)["lesion_dice"]
    # Binomial(100, 0.5) / 100: 95% of the mass within about 0.5 -+ 0.098.
    assert stats["value"] == 0.5
    assert 0.38 < stats["low"] < 0.42 and 0.58 < stats["high"] < 0.62
    assert stats["images"] == 100


def test_more_images_give_a_narrower_interval():
    def width(count):
        stats = intervals.intervals_of([row("BUSI", "benign", float(i % 2)) for i in range(count)], resamples=3000)
        return stats["lesion_dice"]["high"] - stats["lesion_dice"]["low"]

    assert width(400) < 0.6 * width(40)


def test_datasets_and_kinds_are_resampled_apart():
    """Each dataset keeps its count of lesion and normal images in every resample: when all of one
    dataset's lesions score 1 and all of the other's 0, the pooled means cannot move."""
    rows = [row("A", "benign", 1.0) for _ in range(30)] + [row("B", "benign", 0.0, 100) for _ in range(20)]
    rows += [normal("A", True) for _ in range(12)] + [normal("B", False) for _ in range(12)]
    stats = intervals.intervals_of(rows, resamples=500)
    assert stats["lesion_dice"] == {"images": 50, "value": 0.6, "low": pytest.approx(0.6), "high": pytest.approx(0.6)}
    assert stats["all_image_dice"]["low"] == pytest.approx((30 + 12) / 74)
    assert stats["all_image_dice"]["high"] == pytest.approx((30 + 12) / 74)


def test_shares_get_the_exact_binomial_interval_even_for_no_events():
    rows = [row("BUSI", "benign", 0.8) for _ in range(51)]
    stats = intervals.intervals_of(rows, resamples=100)["lesions_empty"]
    # Clopper-Pearson for 0 of 51 at 95%: [0, 1 - 0.025 ** (1 / 51)] = [0, 0.0698]
    assert stats["value"] == 0.0 and stats["low"] == 0.0
    assert stats["high"] == pytest.approx(1 - 0.025 ** (1 / 51))
    rows[0] = row("BUSI", "benign", 0.0)
    stats = intervals.intervals_of(rows, resamples=100)["lesions_empty"]
    assert stats["low"] == pytest.approx(1 - 0.975 ** (1 / 51))  # one of 51: the lower end solves P(X >= 1) = 0.025
    assert 0.10 < stats["high"] < 0.11
    stats = intervals.intervals_of([normal("BUSI", True)], resamples=100)["normal_false_positives"]
    assert stats == {"images": 1, "value": 1.0, "low": pytest.approx(0.025), "high": 1.0}


def test_same_seed_same_interval_and_another_seed_differs():
    rows = random_rows()
    first = intervals.intervals_of(rows, resamples=300, seed=1)
    assert intervals.intervals_of(rows, resamples=300, seed=1) == first
    assert intervals.intervals_of(rows, resamples=300, seed=2)["lesion_dice"] != first["lesion_dice"]


def test_bootstrap_numbers_need_ten_images_and_missing_kinds_give_no_number():
    nine = [row("BUSI", "benign", d) for d in np.linspace(0.2, 0.9, 9)]
    assert intervals.intervals_of(nine, resamples=100)["lesion_dice"]["low"] is None
    ten = nine + [row("BUSI", "benign", 0.5)]
    assert intervals.intervals_of(ten, resamples=100)["lesion_dice"]["low"] is not None
    lesions_only = intervals.intervals_of(ten, resamples=100)
    assert lesions_only["normal_false_positives"] is None and lesions_only["all_image_dice"] is None
    normals_only = intervals.intervals_of([normal("BUSI", i < 3) for i in range(12)], resamples=100)
    assert normals_only["lesion_dice"] is None
    assert normals_only["all_image_dice"]["value"] == pytest.approx(9 / 12)
    table = intervals.markdown_table({"BUSI": intervals.intervals_of(nine, resamples=100)}, "processed")
    assert "| BUSI | lesion Dice | 9 | 0.550 | too few images |" in table
    assert "all-image" not in table
    with pytest.raises(ValueError, match="at least 2"):
        intervals.intervals_of(ten, resamples=1)


def test_report_intervals_cover_each_dataset_and_all_pooled():
    rows = random_rows()
    result = intervals.report_intervals({"cases": rows}, resamples=100)
    assert list(result) == ["BUSI", "BrEaST", "all"]
    assert result["all"]["all_image_dice"]["images"] == len(rows)
    busi = [r for r in rows if r["dataset"] == "BUSI"]
    assert list(intervals.report_intervals({"cases": busi}, resamples=100)) == ["BUSI"]
    legacy = [{key: value for key, value in r.items() if key != "dataset"} for r in busi]  # rows before "dataset"
    assert intervals.report_intervals({"cases": legacy}, resamples=100) == {"BUSI": intervals.intervals_of(busi, resamples=100)}


def write_report(path, rows, version=REPORT_FORMAT_VERSION):
    path.mkdir(parents=True, exist_ok=True)
    (path / "report.json").write_text(json.dumps({"format_version": version, "cases": rows}))


def test_command_line_prints_the_table_for_a_report_folder(tmp_path, capsys):
    write_report(tmp_path / "report", random_rows())
    assert cli.main(["intervals", "--report", str(tmp_path / "report"), "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "95% intervals, processed masks" in out
    busi_dice = intervals.intervals_of([r for r in random_rows() if r["dataset"] == "BUSI"], resamples=200)["lesion_dice"]
    assert (f"| BUSI | lesion Dice | 64 | {busi_dice['value']:.3f} | "
            f"{busi_dice['low']:.3f} - {busi_dice['high']:.3f} |") in out
    assert cli.main(["intervals", "--report", str(tmp_path / "report"), "--resamples", "200", "--mode", "raw"]) == 0
    raw = intervals.intervals_of([r for r in random_rows() if r["dataset"] == "BUSI"], "raw", resamples=200)
    assert f"| BUSI | lesion Dice | 64 | {raw['lesion_dice']['value']:.3f} |" in capsys.readouterr().out
    assert raw["lesion_dice"]["value"] != pytest.approx(busi_dice["value"])


def test_command_line_names_a_missing_or_foreign_report(tmp_path, capsys):
    assert cli.main(["intervals", "--report", str(tmp_path / "nowhere.json")]) == 2
    assert f"{tmp_path / 'nowhere.json'}: no such report" in capsys.readouterr().err
    write_report(tmp_path / "old", random_rows(), version=REPORT_FORMAT_VERSION + 1)
    assert cli.main(["intervals", "--report", str(tmp_path / "old" / "report.json")]) == 2
    assert "not a report of this version" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    assert cli.main(["intervals", "--report", str(tmp_path / "broken.json")]) == 2
    assert "cannot read the report" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert cli.main(["intervals", "--report", str(tmp_path / "folder")]) == 2
    assert f"{tmp_path / 'folder' / 'report.json'}: no such report" in capsys.readouterr().err
    write_report(tmp_path / "none", [])
    assert cli.main(["intervals", "--report", str(tmp_path / "none")]) == 2
    assert "the report has no cases" in capsys.readouterr().err
    rows = random_rows()
    del rows[3]["processed"]
    write_report(tmp_path / "partial", rows)
    assert cli.main(["intervals", "--report", str(tmp_path / "partial")]) == 2
    assert f"case {rows[3]['id']!r} needs a label" in capsys.readouterr().err
    rows = random_rows()
    rows[5]["label"] = "cyst"
    write_report(tmp_path / "unknown", rows)
    assert cli.main(["intervals", "--report", str(tmp_path / "unknown")]) == 2
    assert f"case {rows[5]['id']!r} needs a label (benign, malignant, normal)" in capsys.readouterr().err
    write_report(tmp_path / "strings", ["a case"])
    assert cli.main(["intervals", "--report", str(tmp_path / "strings")]) == 2
    assert "case 'a case' needs a label" in capsys.readouterr().err
    (tmp_path / "list.json").write_text("[1, 2]")
    assert cli.main(["intervals", "--report", str(tmp_path / "list.json")]) == 2
    assert "not a report of this version" in capsys.readouterr().err
