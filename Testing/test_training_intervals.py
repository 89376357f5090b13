"""Bootstrap intervals of an evaluation report (``breastus-train intervals``)."""

import json

import numpy as np
import pytest

from breastus_training import cli, intervals
from breastus_training.evaluate import REPORT_FORMAT_VERSION, summarize_rows


def row(dataset, label, dice, predicted_pixels=None):
    """One per-case row as evaluate writes it (processed scores; IoU derived from Dice)."""
    if predicted_pixels is None:
        predicted_pixels = 0 if dice == 0 and label != "normal" else 100
    scores = {"dice": float(dice), "iou": float(dice / (2 - dice)), "hd95_px": None, "intersection": 0, "union": 1,
              "predicted_pixels": int(predicted_pixels)}
    return {"id": f"{label}-{dataset}", "dataset": dataset, "label": label, "raw": scores, "processed": scores}


def normal(dataset, false_lesion):
    return row(dataset, "normal", 0.0 if false_lesion else 1.0, 50 if false_lesion else 0)


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
    for group in (rows, [r for r in rows if r["dataset"] == "BUSI"]):
        stats = intervals.bootstrap(group, resamples=50)
        summary = summarize_rows(group)["processed"]
        assert stats["lesion_dice"]["value"] == pytest.approx(summary["lesion"]["dice_mean"])
        assert stats["lesion_iou"]["value"] == pytest.approx(summary["lesion"]["iou_mean"])
        assert stats["lesions_empty"]["value"] == pytest.approx(summary["lesion"]["empty"] / summary["lesion"]["images"])
        assert stats["normal_false_positives"]["value"] == pytest.approx(summary["normal"]["false_positive_rate"])
        assert stats["all_image_dice"]["value"] == pytest.approx(summary["all_image_dice"])


def test_interval_of_a_fair_coin_has_the_binomial_width():
    rows = [row("BUSI", "benign", float(i % 2)) for i in range(100)]
    stats = intervals.bootstrap(rows, resamples=4000, seed=3)["lesion_dice"]
    # Binomial(100, 0.5) / 100: 95% of the mass within about 0.5 -+ 0.098.
    assert stats["value"] == 0.5
    assert 0.38 < stats["low"] < 0.42 and 0.58 < stats["high"] < 0.62
    assert stats["images"] == 100


def test_more_images_give_a_narrower_interval():
    def width(count):
        stats = intervals.bootstrap([row("BUSI", "benign", float(i % 2)) for i in range(count)], resamples=3000)
        return stats["lesion_dice"]["high"] - stats["lesion_dice"]["low"]

    assert width(400) < 0.6 * width(40)


def test_datasets_and_kinds_are_resampled_apart():
    """Each dataset keeps its count of lesion and normal images in every resample: when all of one
    dataset's lesions score 1 and all of the other's 0, the pooled mean cannot move."""
    rows = [row("A", "benign", 1.0) for _ in range(30)] + [row("B", "benign", 0.0) for _ in range(20)]
    rows += [normal("A", True) for _ in range(12)] + [normal("B", False) for _ in range(12)]
    stats = intervals.bootstrap(rows, resamples=500)
    assert stats["lesion_dice"] == {"images": 50, "value": 0.6, "low": pytest.approx(0.6), "high": pytest.approx(0.6)}
    assert stats["normal_false_positives"]["low"] == pytest.approx(0.5)
    assert stats["normal_false_positives"]["high"] == pytest.approx(0.5)
    assert stats["all_image_dice"]["low"] == pytest.approx((30 + 12) / 74)


def test_same_seed_same_interval_and_another_seed_differs():
    rows = random_rows()
    first = intervals.bootstrap(rows, resamples=300, seed=1)
    assert intervals.bootstrap(rows, resamples=300, seed=1) == first
    assert intervals.bootstrap(rows, resamples=300, seed=2)["lesion_dice"] != first["lesion_dice"]


def test_too_few_images_get_no_interval_and_missing_kinds_no_number():
    rows = [row("BUSI", "benign", d) for d in np.linspace(0.2, 0.9, 12)] + [normal("BUSI", True)]
    stats = intervals.bootstrap(rows, resamples=100)
    assert stats["lesion_dice"]["low"] is not None
    assert stats["normal_false_positives"] == {"images": 1, "value": 1.0, "low": None, "high": None}
    lesions_only = intervals.bootstrap(rows[:-1], resamples=100)
    assert lesions_only["normal_false_positives"] is None
    table = intervals.markdown_table({"BUSI": {"images": 13, "intervals": stats}}, "processed")
    assert "| BUSI | normal images with a false lesion | 1 | 1.000 | too few images |" in table
    with pytest.raises(ValueError, match="at least 2"):
        intervals.bootstrap(rows, resamples=1)


def test_report_intervals_cover_each_dataset_and_all_pooled():
    result = intervals.report_intervals({"cases": random_rows()}, resamples=100)
    assert list(result) == ["BUSI", "BrEaST", "all"]
    assert result["all"]["images"] == sum(group["images"] for name, group in result.items() if name != "all")
    single = intervals.report_intervals({"cases": [r for r in random_rows() if r["dataset"] == "BUSI"]}, resamples=100)
    assert list(single) == ["BUSI"]


def write_report(path, rows, version=REPORT_FORMAT_VERSION):
    path.mkdir(parents=True, exist_ok=True)
    (path / "report.json").write_text(json.dumps({"format_version": version, "cases": rows}))


def test_command_line_prints_the_table_for_a_report_folder(tmp_path, capsys):
    write_report(tmp_path / "report", random_rows())
    assert cli.main(["intervals", "--report", str(tmp_path / "report"), "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "95% bootstrap intervals, processed masks" in out
    busi_dice = intervals.bootstrap([r for r in random_rows() if r["dataset"] == "BUSI"], resamples=200)["lesion_dice"]
    assert (f"| BUSI | lesion Dice | 64 | {busi_dice['value']:.3f} | "
            f"{busi_dice['low']:.3f} - {busi_dice['high']:.3f} |") in out


def test_command_line_names_a_missing_or_foreign_report(tmp_path, capsys):
    assert cli.main(["intervals", "--report", str(tmp_path / "nowhere.json")]) == 2
    assert f"{tmp_path / 'nowhere.json'}: no such report" in capsys.readouterr().err
    write_report(tmp_path / "old", random_rows(), version=REPORT_FORMAT_VERSION + 1)
    assert cli.main(["intervals", "--report", str(tmp_path / "old" / "report.json")]) == 2
    assert "not a report of this version" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    assert cli.main(["intervals", "--report", str(tmp_path / "broken.json")]) == 2
    assert "cannot read the report" in capsys.readouterr().err
