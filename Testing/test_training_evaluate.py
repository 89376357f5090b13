"""Evaluation report, figures and export, with tiny models whose predictions the tests control."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.metrics import dice_score, hausdorff95, iou_score
from BreastUSSegmentLib.model import AttentionUNet, ModelConfig
from BreastUSSegmentLib.modelcard import WeightsError, card_path_for, read_model_card
from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.postprocessing import postprocess_mask
from BreastUSSegmentLib.weights import load_model, save_model
from breastus_training import evaluate, export, figures, sweep

INPUT_SIZE = (32, 32)


def tiny_model(head_bias=None, seed=0):
    """A small untrained network; with ``head_bias`` its output is that constant logit everywhere."""
    torch.manual_seed(seed)
    model = AttentionUNet(ModelConfig(base_channels=4, depth=2, dropout=0.0))
    if head_bias is not None:
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.bias.fill_(head_bias)
    return model.eval()


def ellipse(shape, center, radii):
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    return ((rows - center[0]) / radii[0]) ** 2 + ((cols - center[1]) / radii[1]) ** 2 <= 1


def make_samples():
    """Lesion and normal frames of different sizes, gray and RGB."""
    rng = np.random.default_rng(1)
    specs = [
        ("benign (1)", "benign", (40, 56), (20, 25), (8, 10)),
        ("benign (2)", "benign", (48, 40), (15, 20), (6, 5)),
        ("benign (3)", "benign", (36, 36), (18, 18), (12, 12)),
        ("malignant (1)", "malignant", (44, 60), (22, 30), (10, 14)),
        ("malignant (2)", "malignant", (50, 50), (30, 20), (7, 9)),
        ("normal (1)", "normal", (40, 48), None, None),
        ("normal (2)", "normal", (32, 44), None, None),
    ]
    samples = []
    for number, (case_id, label, shape, center, radii) in enumerate(specs):
        target = ellipse(shape, center, radii) if center else np.zeros(shape, bool)
        image = (rng.random(shape) * 200 + 30).astype(np.uint8)
        image[target] //= 4
        if number == 1:
            image = np.stack([image] * 3, axis=-1)  # one RGB frame
        samples.append(evaluate.Sample(case_id, label, image, target))
    return samples


def segmenter_for(model, options=UNTUNED_POSTPROCESSING):
    return LesionSegmenter(model, INPUT_SIZE, options, device="cpu")


def test_empty_predictions_score_zero_dice_and_no_false_positives():
    samples = make_samples()
    rows = evaluate.evaluate_samples(segmenter_for(tiny_model(head_bias=-30.0)), samples, progress=False)
    summary = evaluate.summarize(rows)
    for mode in evaluate.MODES:
        lesion, normal = summary[mode]["lesion"], summary[mode]["normal"]
        assert lesion["images"] == 5 and summary[mode]["benign"]["images"] == 3
        assert summary[mode]["malignant"]["images"] == 2
        assert lesion["dice_mean"] == 0.0 and lesion["iou_mean"] == 0.0 and lesion["pooled_iou"] == 0.0
        # An empty prediction has no HD95: every lesion image is counted as undefined.
        assert lesion["hd95_undefined"] == 5 and lesion["hd95_px_mean"] is None
        assert normal == {"images": 2, "false_positives": 0, "false_positive_rate": 0.0}
        assert summary[mode]["all_image_dice"] == pytest.approx(2 / 7)  # only the two empty normals score


def test_full_predictions_give_hand_computable_scores():
    samples = make_samples()
    segmenter = segmenter_for(tiny_model(head_bias=30.0))
    rows = evaluate.evaluate_samples(segmenter, samples, progress=False)
    summary = evaluate.summarize(rows)
    lesion_samples = [s for s in samples if s.label != "normal"]
    # Raw mask = every pixel: Dice 2|GT| / (|GT| + HW) and IoU |GT| / HW, per image.
    expected_dice = [2 * s.target.sum() / (s.target.sum() + s.target.size) for s in lesion_samples]
    expected_iou = [s.target.sum() / s.target.size for s in lesion_samples]
    raw = summary["raw"]
    assert raw["lesion"]["dice_mean"] == pytest.approx(np.mean(expected_dice))
    assert raw["lesion"]["dice_std"] == pytest.approx(np.std(expected_dice))
    assert raw["lesion"]["iou_mean"] == pytest.approx(np.mean(expected_iou))
    assert raw["lesion"]["pooled_iou"] == pytest.approx(
        sum(s.target.sum() for s in lesion_samples) / sum(s.target.size for s in lesion_samples)
    )
    assert raw["malignant"]["dice_mean"] == pytest.approx(np.mean(expected_dice[3:]))
    assert raw["normal"] == {"images": 2, "false_positives": 2, "false_positive_rate": 1.0}
    assert summary["processed"]["normal"]["false_positive_rate"] == 1.0
    assert raw["all_image_dice"] == pytest.approx(np.sum(expected_dice) / 7)  # the normals score 0
    # Processed masks: the post-processing of a probability of one everywhere.
    for sample, row in zip(samples, rows):
        processed = postprocess_mask(np.ones(sample.target.shape, np.float32), segmenter.postprocessing)
        assert row["processed"]["dice"] == pytest.approx(dice_score(processed, sample.target))
        assert row["processed"]["predicted_pixels"] == processed.sum()


def test_report_numbers_equal_a_recomputation_from_the_same_predictions():
    samples = make_samples()
    model = tiny_model(seed=3)
    # Threshold at the median probability so that about half of every frame is predicted.
    probabilities = [segmenter_for(model).segment(s.image).probability.ravel() for s in samples]
    threshold = float(np.median(np.concatenate(probabilities)))
    segmenter = segmenter_for(model, UNTUNED_POSTPROCESSING.with_overrides(threshold=threshold, min_area_fraction=0.01))
    rows = evaluate.evaluate_samples(segmenter, samples, progress=False)
    summary = evaluate.summarize(rows)
    predictions = {s.case_id: segmenter.segment(s.image) for s in samples}
    for mode, field in (("raw", "raw_mask"), ("processed", "processed_mask")):
        lesion = [s for s in samples if s.label != "normal"]
        masks = [getattr(predictions[s.case_id], field)[0] for s in lesion]
        dice = [dice_score(m, s.target) for m, s in zip(masks, lesion)]
        iou = [iou_score(m, s.target) for m, s in zip(masks, lesion)]
        hd95 = [hausdorff95(m, s.target) for m, s in zip(masks, lesion)]
        defined = [value for value in hd95 if not math.isnan(value)]
        pooled = sum((m & s.target).sum() for m, s in zip(masks, lesion)) / sum((m | s.target).sum() for m, s in zip(masks, lesion))
        assert 0 < np.mean(dice) < 1  # the predictions overlap the lesions only partly
        stats = summary[mode]["lesion"]
        assert stats["dice_mean"] == pytest.approx(np.mean(dice)) and stats["iou_std"] == pytest.approx(np.std(iou))
        assert stats["pooled_iou"] == pytest.approx(pooled)
        assert stats["hd95_undefined"] == len(hd95) - len(defined)
        if defined:
            assert stats["hd95_px_median"] == pytest.approx(np.median(defined))
        normal_masks = [getattr(predictions[s.case_id], field)[0] for s in samples if s.label == "normal"]
        assert summary[mode]["normal"]["false_positives"] == sum(bool(m.any()) for m in normal_masks)


def test_select_extremes_takes_best_and_worst_lesion_cases_without_overlap():
    rows = [{"id": f"c{i}", "label": "benign", "processed": {"dice": d}} for i, d in enumerate([0.5, 0.9, 0.1, 0.7])]
    rows.append({"id": "n", "label": "normal", "processed": {"dice": 1.0}})
    best, worst = evaluate.select_extremes(rows, count=3)
    assert [r["id"] for r in best] == ["c1", "c3", "c0"]
    assert [r["id"] for r in worst] == ["c2"]


def test_case_grid_and_training_curves_are_written_with_the_expected_size(tmp_path):
    samples = make_samples()[:4]
    segmenter = segmenter_for(tiny_model(seed=1))
    rows = evaluate.evaluate_samples(segmenter, samples, progress=False)
    grid = figures.plot_case_grid(evaluate.case_figures(segmenter, samples, rows), tmp_path / "cases.png")
    with Image.open(grid) as image:
        assert image.size == (5 * figures.CELL_INCHES * figures.DPI, (4 * figures.CELL_INCHES + 0.5) * figures.DPI)
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # not a blank canvas

    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(
        "epoch,train_loss,val_loss,val_dice,val_iou,lr,seconds\n"
        "1,0.9,0.8,0.3,0.2,0.001,3.0\n2,0.7,0.75,0.5,0.35,0.001,3.1\n3,0.6,0.7,0.55,0.4,0.0005,3.0\n"
    )
    curves = figures.plot_training_curves(csv_path, tmp_path / "curves.png")
    with Image.open(curves) as image:
        assert image.size == (1000, 400)


def test_training_curves_name_a_missing_column(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("epoch,train_loss\n1,0.5\n")
    with pytest.raises(ValueError, match=r"metrics.csv: missing column\(s\) val_loss, val_iou"):
        figures.plot_training_curves(csv_path, tmp_path / "curves.png")


# ---------------------------------------------------------------------------
# End to end on a synthetic BUSI tree: prepare -> evaluate -> export, through the command line.

from busi_synthetic import write_synthetic_busi  # noqa: E402

from breastus_training import cli  # noqa: E402
from breastus_training.busi import load_case, load_manifest  # noqa: E402
from breastus_training.prepare import build_manifest, write_manifest  # noqa: E402
from BreastUSSegmentLib.weights import sha256_of_file  # noqa: E402


@pytest.fixture(scope="module")
def busi(tmp_path_factory):
    """A synthetic BUSI tree, its split manifest and two controlled models saved with their cards."""
    root = tmp_path_factory.mktemp("busi")
    write_synthetic_busi(root / "BUSI")
    split = root / "split.json"
    write_manifest(build_manifest(root / "BUSI"), split)
    full, empty = root / "full" / "best.safetensors", root / "empty" / "best.safetensors"
    provenance = {"epochs": 2, "note": "synthetic test run"}
    save_model(tiny_model(head_bias=30.0), full, input_size=INPUT_SIZE, postprocessing=UNTUNED_POSTPROCESSING,
               training=provenance)
    save_model(tiny_model(head_bias=-30.0), empty, input_size=INPUT_SIZE, postprocessing=UNTUNED_POSTPROCESSING,
               training=provenance)
    (full.parent / "metrics.csv").write_text(
        "epoch,train_loss,val_loss,val_dice,val_iou,lr,seconds\n1,0.9,0.8,0.3,0.2,0.001,3.0\n2,0.7,0.75,0.5,0.35,0.001,3.1\n"
    )
    return {"data": root / "BUSI", "split": split, "full": full, "empty": empty, "root": root}


def run_evaluate(busi, weights, name, *extra):
    output = busi["root"] / "reports" / name
    code = cli.main(["evaluate", "--data", str(busi["data"]), "--split", str(busi["split"]), "--weights", str(weights),
                     "--subset", "test", "--output", str(output), "--device", "cpu", "--no-progress", *extra])
    assert code == 0
    return output, json.loads((output / "report.json").read_text())


@pytest.fixture(scope="module")
def full_report(busi):
    return run_evaluate(busi, busi["full"], "full", "--run-dir", str(busi["full"].parent))


def test_evaluate_report_matches_hand_computed_scores_of_an_all_lesion_model(busi, full_report):
    output, report = full_report
    manifest = load_manifest(busi["split"])
    test_cases = manifest.cases_for("test")
    assert [row["id"] for row in report["cases"]] == [case.id for case in test_cases]
    assert report["split"]["sha256"] == manifest.sha256
    assert report["weights"]["sha256"] == sha256_of_file(busi["full"])
    assert report["subset"] == "test" and report["options"]["test_time_flip"] is False

    masks = {case.id: load_case(busi["data"], case)[1] for case in test_cases}
    lesion = [case for case in test_cases if case.label != "normal"]
    normal = [case for case in test_cases if case.label == "normal"]
    assert lesion and normal  # the synthetic split's test subset holds both kinds
    dice = [2 * masks[c.id].sum() / (masks[c.id].sum() + masks[c.id].size) for c in lesion]
    raw = report["summary"]["raw"]
    assert raw["lesion"]["dice_mean"] == pytest.approx(np.mean(dice))
    assert raw["lesion"]["iou_mean"] == pytest.approx(np.mean([masks[c.id].sum() / masks[c.id].size for c in lesion]))
    assert raw["lesion"]["images"] == len(lesion)
    assert raw["normal"]["false_positive_rate"] == 1.0
    assert report["summary"]["processed"]["normal"]["false_positive_rate"] == 1.0
    for row in report["cases"]:
        assert (row["height"], row["width"]) == masks[row["id"]].shape  # scored at the original resolution
        assert row["raw"]["predicted_pixels"] == masks[row["id"]].size

    markdown = (output / "report.md").read_text()
    lesion_on = report["summary"]["processed"]["lesion"]
    assert f"| off | {raw['lesion']['dice_mean']:.3f} ± {raw['lesion']['dice_std']:.3f} |" in markdown
    assert f"| on | {lesion_on['dice_mean']:.3f} ± {lesion_on['dice_std']:.3f} |" in markdown
    assert report["weights"]["sha256"] in markdown

    with Image.open(output / "cases.png") as grid:
        rows = min(len(lesion), 6)
        assert grid.size == (5 * figures.CELL_INCHES * figures.DPI, (rows * figures.CELL_INCHES + 0.5) * figures.DPI)
    with Image.open(output / "training_curves.png") as curves:
        assert curves.size == (1000, 400)


def test_evaluate_an_all_background_model(busi):
    _, report = run_evaluate(busi, busi["empty"], "empty", "--test-time-flip")
    for mode in ("raw", "processed"):
        summary = report["summary"][mode]
        assert summary["lesion"]["dice_mean"] == 0.0 and summary["lesion"]["pooled_iou"] == 0.0
        assert summary["lesion"]["hd95_undefined"] == summary["lesion"]["images"]
        assert summary["normal"]["false_positives"] == 0 and summary["normal"]["false_positive_rate"] == 0.0
    assert report["options"]["test_time_flip"] is True


def test_evaluate_names_a_missing_data_folder_or_weights_file(busi, capsys):
    code = cli.main(["evaluate", "--data", str(busi["root"] / "nowhere"), "--split", str(busi["split"]),
                     "--weights", str(busi["full"]), "--output", str(busi["root"] / "x"), "--no-progress"])
    assert code == 2
    assert f"dataset folder not found: {busi['root'] / 'nowhere'}" in capsys.readouterr().err
    code = cli.main(["evaluate", "--data", str(busi["data"]), "--split", str(busi["split"]),
                     "--weights", str(busi["root"] / "missing.safetensors"), "--output", str(busi["root"] / "x"),
                     "--no-progress"])
    assert code == 2
    assert "model weights not found" in capsys.readouterr().err


def test_export_round_trips_and_carries_the_evaluation(busi, full_report, capsys):
    output_dir, report = full_report
    target = busi["root"] / "bundle" / "breastus_attention_unet.safetensors"
    arguments = ["export", "--weights", str(busi["full"]), "--report", str(output_dir / "report.json"), "--output", str(target)]
    assert cli.main(arguments) == 0
    card = read_model_card(target)
    assert f"sha256 {card.sha256}" in capsys.readouterr().out
    assert card.onnx["file"] == target.with_suffix(".onnx").name and card.onnx["storage_dtype"] == "float16"
    assert card.onnx["sha256"] == sha256_of_file(target.with_suffix(".onnx"))

    model, loaded_card = load_model(target)  # verifies the sha256
    source, _ = load_model(busi["full"])
    exported_state, source_state = model.state_dict(), source.state_dict()
    assert exported_state.keys() == source_state.keys()
    for key in source_state:
        assert torch.equal(exported_state[key], source_state[key]), key

    summary = report["summary"]
    assert loaded_card.metrics["subset"] == "test"
    assert loaded_card.metrics["processed"]["lesion_dice_mean"] == summary["processed"]["lesion"]["dice_mean"]
    assert loaded_card.metrics["raw"]["lesion_pooled_iou"] == summary["raw"]["lesion"]["pooled_iou"]
    assert loaded_card.metrics["processed"]["normal_false_positive_rate"] == 1.0
    assert loaded_card.metrics["processed"]["all_image_dice"] == pytest.approx(
        report["summary"]["processed"]["all_image_dice"])
    assert loaded_card.training["epochs"] == 2  # the training card's provenance is kept
    assert loaded_card.training["split_sha256"] == report["split"]["sha256"]
    assert loaded_card.training["evaluation_report"]["sha256"] == sha256_of_file(output_dir / "report.json")
    assert loaded_card.postprocessing == report["options"]["postprocessing"]

    # A second export refuses to overwrite, unless --force.
    assert cli.main(arguments) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert cli.main(arguments + ["--force"]) == 0
    load_model(target)


def test_export_refuses_a_report_of_other_weights_or_threshold(busi, full_report, capsys):
    report_path = str(full_report[0] / "report.json")
    target = str(busi["root"] / "bundle2" / "model.safetensors")
    assert cli.main(["export", "--weights", str(busi["empty"]), "--report", report_path, "--output", target]) == 2
    assert "evaluate these weights first" in capsys.readouterr().err
    assert cli.main(["export", "--weights", str(busi["full"]), "--report", report_path, "--output", target,
                     "--threshold", "0.3"]) == 2
    assert "computed at threshold 0.5, not 0.3" in capsys.readouterr().err
    with pytest.raises(WeightsError):
        load_model(target)  # nothing was written


def test_export_names_a_report_that_is_not_an_evaluation(busi, tmp_path, capsys):
    bad = tmp_path / "report.json"
    bad.write_text(json.dumps({"subset": "test", "summary": {}}))
    code = cli.main(["export", "--weights", str(busi["full"]), "--report", str(bad), "--output", str(tmp_path / "m.safetensors")])
    assert code == 2
    assert "is not an evaluation report" in capsys.readouterr().err


def test_post_processing_chosen_at_evaluation_is_what_export_ships(busi, tmp_path):
    """evaluate --threshold/--min-area-fraction/--min-confidence override the card; export ships exactly those settings."""
    output, report = run_evaluate(busi, busi["full"], "chosen", "--threshold", "0.4", "--min-area-fraction", "0.02",
                                  "--min-confidence", "0.6")
    evaluated = report["options"]["postprocessing"]
    assert evaluated["threshold"] == 0.4 and evaluated["min_area_fraction"] == 0.02
    assert evaluated["min_mean_probability"] == 0.6
    assert evaluated["keep_largest"] == read_model_card(busi["full"]).postprocessing["keep_largest"]
    assert "minimum component area 0.02 of the frame" in (output / "report.md").read_text()
    target = tmp_path / "model.safetensors"
    assert cli.main(["export", "--weights", str(busi["full"]), "--report", str(output / "report.json"),
                     "--output", str(target)]) == 0
    assert read_model_card(target).postprocessing == evaluated


def export_arguments(busi, weights, report_dir, target, *extra):
    return ["export", "--weights", str(weights), "--report", str(report_dir / "report.json"), "--output", str(target),
            "--no-progress", *extra]


def half_precision_check(busi, storage_dtype="float16"):
    return ["--storage-dtype", storage_dtype, "--data", str(busi["data"]), "--split", str(busi["split"])]


def test_half_precision_export_checks_the_val_agreement_and_records_it(busi, full_report, tmp_path, capsys):
    float32, half = tmp_path / "float32.safetensors", tmp_path / "float16.safetensors"
    assert cli.main(export_arguments(busi, busi["full"], full_report[0], float32)) == 0
    assert cli.main(export_arguments(busi, busi["full"], full_report[0], half, *half_precision_check(busi))) == 0
    val = load_manifest(busi["split"]).cases_for("val")
    assert f"processed-mask Dice float16 vs float32 on {len(val)} val images: mean 1.0000, min 1.0000, 0 below 0.99" \
        in capsys.readouterr().out
    card, float32_card = read_model_card(half), read_model_card(float32)
    assert card.storage_dtype == "float16" and float32_card.storage_dtype == "float32"
    assert half.stat().st_size < 0.75 * float32.stat().st_size  # the tiny model's header is a large part of it
    agreement = card.training["storage_agreement"]
    assert agreement == {"storage_dtype": "float16", "subset": "val", "split_sha256": load_manifest(busi["split"]).sha256,
                         "test_time_flip": False, "images": len(val), "processed_dice_mean": 1.0,
                         "processed_dice_min": 1.0, "images_below": 0, "required_mean": export.AGREEMENT_DICE}
    assert card.metrics == float32_card.metrics and card.postprocessing == float32_card.postprocessing
    load_model(half)  # its checksum verified


def test_the_storage_check_compares_in_float32_compute_even_on_a_bf16_cpu(busi, monkeypatch):
    """Only the storage dtype may differ between the two copies, not the precision they compute in."""
    monkeypatch.setattr("BreastUSSegmentLib.device.cpu_has_native_bf16", lambda: True)
    computed_in_bf16 = []
    real_segment = LesionSegmenter.segment

    def recording(self, *args, **kwargs):
        computed_in_bf16.append(self.cpu_bf16)
        return real_segment(self, *args, **kwargs)

    monkeypatch.setattr(LesionSegmenter, "segment", recording)
    model, card = load_model(busi["full"])
    export.storage_agreement(model, tuple(card.input_size), card.postprocess_options, "float16", [busi["data"]],
                             busi["split"], progress=False)
    assert computed_in_bf16 and not any(computed_in_bf16)


def test_half_precision_export_is_refused_when_the_stored_copy_changes_the_masks(busi, tmp_path, capsys):
    """A constant logit just below the threshold's in float32 rounds to one above it in float16 and bfloat16:
    the float32 model leaves every image empty, the stored copy marks every pixel."""
    threshold_logit = math.log(0.6 / 0.4)  # 0.405465...; nearest float16 values 0.405273 and 0.405518
    weights = tmp_path / "edge" / "best.safetensors"
    save_model(tiny_model(head_bias=0.40543), weights, input_size=INPUT_SIZE,
               postprocessing=UNTUNED_POSTPROCESSING.with_overrides(threshold=0.6))
    assert torch.tensor(0.40543) < threshold_logit < torch.tensor(0.40543).half().float()
    report_dir = tmp_path / "edge_report"
    assert cli.main(["evaluate", "--data", str(busi["data"]), "--split", str(busi["split"]), "--weights", str(weights),
                     "--subset", "test", "--output", str(report_dir), "--device", "cpu", "--no-progress"]) == 0
    val = len(load_manifest(busi["split"]).cases_for("val"))
    for storage_dtype in ("float16", "bfloat16"):
        target = tmp_path / f"{storage_dtype}.safetensors"
        code = cli.main(export_arguments(busi, weights, report_dir, target, *half_precision_check(busi, storage_dtype)))
        assert code == 2
        assert (f"{storage_dtype} storage changes the processed masks: processed-mask Dice {storage_dtype} vs "
                f"float32 on {val} val images: mean 0.0000, min 0.0000, {val} below 0.99") in capsys.readouterr().err
        assert not target.exists() and not card_path_for(target).exists()
    assert cli.main(export_arguments(busi, weights, report_dir, tmp_path / "float32.safetensors")) == 0


def test_half_precision_export_needs_the_reports_split_and_its_data(busi, full_report, tmp_path, capsys):
    target = tmp_path / "model.safetensors"
    assert cli.main(export_arguments(busi, busi["full"], full_report[0], target, "--storage-dtype", "bfloat16")) == 2
    assert "storing in bfloat16 needs --data and --split" in capsys.readouterr().err
    assert cli.main(export_arguments(busi, busi["full"], full_report[0], target, "--split", str(busi["split"]))) == 2
    assert "only used to check a half-precision --storage-dtype" in capsys.readouterr().err
    other = tmp_path / "other_split.json"
    write_manifest(build_manifest(busi["data"], seed=5), other)
    code = cli.main(export_arguments(busi, busi["full"], full_report[0], target, "--storage-dtype", "float16",
                                     "--data", str(busi["data"]), "--split", str(other)))
    assert code == 2 and f"--split {other} is not the split the report was computed on" in capsys.readouterr().err
    assert not target.exists()


def run_sweep(busi, weights, name, *extra):
    output = busi["root"] / "sweeps" / name
    code = cli.main(["sweep", "--data", str(busi["data"]), "--split", str(busi["split"]), "--weights", str(weights),
                     "--output", str(output), "--device", "cpu", "--no-progress", *extra])
    assert code == 0
    return json.loads((output / "sweep.json").read_text())


def test_sweep_rows_equal_evaluate_reports_of_the_same_settings(busi, tmp_path):
    """One inference pass scores the grid exactly as separate 'evaluate' runs would."""
    weights = tmp_path / "untrained" / "best.safetensors"
    save_model(tiny_model(seed=3), weights, input_size=INPUT_SIZE, postprocessing=UNTUNED_POSTPROCESSING,
               training={"note": "untrained"})
    probabilities = [segmenter_for(tiny_model(seed=3)).segment(load_case(busi["data"], case)[0]).probability
                     for case in load_manifest(busi["split"]).cases_for("train")]
    median = float(np.median(np.concatenate([p.ravel() for p in probabilities])))
    thresholds = [round(median, 4), round(median + 0.002, 4)]
    record = run_sweep(busi, weights, "untrained", "--thresholds", *map(str, thresholds),
                       "--min-area-fractions", "0", "0.01", "--min-confidences", "0", "0.6", "--keep-largest", "yes", "no",
                       "--subset", "train")
    assert record["subset"] == "train" and len(record["rows"]) == 16
    assert record["lesion_images"] >= 3 and record["normal_images"] >= 1
    assert record["rows"][1]["keep_largest"] is False
    for index, row in enumerate(record["rows"][:3]):
        _, report = run_evaluate(busi, weights, f"row{index}",
                                 "--threshold", str(row["threshold"]), "--min-area-fraction", str(row["min_area_fraction"]),
                                 "--min-confidence", str(row["min_mean_probability"]),
                                 "--keep-largest", "yes" if row["keep_largest"] else "no", "--subset", "train")
        assert report["options"]["postprocessing"]["keep_largest"] is row["keep_largest"]
        processed = report["summary"]["processed"]
        assert row["lesion_dice"] == pytest.approx(processed["lesion"]["dice_mean"])
        assert row["lesion_iou"] == pytest.approx(processed["lesion"]["iou_mean"])
        assert row["normal_false_positives"] == processed["normal"]["false_positives"]
        lesions, normals = processed["lesion"]["images"], processed["normal"]["images"]
        expected_overall = (processed["lesion"]["dice_mean"] * lesions + normals - row["normal_false_positives"]) / (
            lesions + normals)
        assert row["all_image_dice"] == pytest.approx(expected_overall)
    assert record["rows"][0]["lesion_dice"] != record["rows"][1]["lesion_dice"]  # keep-largest matters here
    assert (busi["root"] / "sweeps" / "untrained" / "sweep.md").read_text().count("\n| ") == 16 + 1


def test_sweep_counts_false_lesions_and_misses_and_refuses_the_test_split(busi):
    everywhere = run_sweep(busi, busi["full"], "full", "--subset", "train")["rows"][0]
    nowhere = run_sweep(busi, busi["empty"], "empty", "--subset", "train")
    assert everywhere["normal_false_positive_rate"] == 1.0 and everywhere["lesions_missed"] == 0
    assert nowhere["rows"][0]["normal_false_positives"] == 0
    assert nowhere["rows"][0]["lesions_missed"] == nowhere["lesion_images"] > 0
    assert nowhere["rows"][0]["lesion_dice"] == 0.0
    assert nowhere["rows"][0]["all_image_dice"] == pytest.approx(
        nowhere["normal_images"] / (nowhere["normal_images"] + nowhere["lesion_images"]))
    with pytest.raises(ValueError, match="not 'test'"):
        sweep.sweep_split(busi["data"], busi["split"], busi["full"], "test", {
            "threshold": [0.5], "min_area_fraction": [0.0], "min_mean_probability": [0.0]})


def test_sweep_settings_not_listed_keep_the_model_cards_values():
    card = UNTUNED_POSTPROCESSING.with_overrides(threshold=0.6, keep_largest=False)
    assert sweep.option_grid(card) == [card]
    grid = sweep.option_grid(card, min_mean_probability=[0.0, 0.7])
    assert [options.min_mean_probability for options in grid] == [0.0, 0.7]
    assert all(options.threshold == 0.6 and options.keep_largest is False for options in grid)


def test_simulated_box_is_the_grown_bounding_box_jittered_the_same_way_every_time():
    target = np.zeros((50, 60), bool)
    target[10:20, 20:40] = True  # bounding box (20, 10, 40, 20): 20 wide, 10 high
    assert evaluate.BoxPrompt(0.0).box_for("a", target).as_tuple() == (20, 10, 40, 20)
    assert evaluate.BoxPrompt(0.5).box_for("a", target).as_tuple() == (10, 5, 50, 25)
    jittered = evaluate.BoxPrompt(0.0, jitter=0.2)
    box = jittered.box_for("a", target)
    assert box == jittered.box_for("a", target) != jittered.box_for("b", target)
    assert abs(box.x0 - 20) <= 4 and abs(box.x1 - 40) <= 4 and abs(box.y0 - 10) <= 2 and abs(box.y1 - 20) <= 2
    with pytest.raises(ValueError, match="jitter"):
        evaluate.BoxPrompt(0.1, jitter=0.6)


def test_evaluate_with_box_prompt_scores_lesion_images_inside_their_boxes(busi):
    _, report = run_evaluate(busi, busi["full"], "box", "--box-margin", "0", "--box-context", "0.5")
    manifest = load_manifest(busi["split"])
    lesion = [case for case in manifest.cases_for("test") if case.label != "normal"]
    assert [row["id"] for row in report["cases"]] == [case.id for case in lesion]  # normal images get no box
    dice, automatic = [], []
    for case in lesion:
        target = load_case(busi["data"], case)[1]
        rows, columns = np.nonzero(target)
        box = np.zeros_like(target)
        box[rows.min():rows.max() + 1, columns.min():columns.max() + 1] = True  # everything in the box is lesion
        dice.append(dice_score(box, target))
        automatic.append(dice_score(np.ones_like(target), target))
    assert report["summary"]["processed"]["lesion"]["dice_mean"] == pytest.approx(np.mean(dice))
    prompt = report["summary"]["box_prompt"]
    assert prompt["automatic_dice_mean"] == pytest.approx(np.mean(automatic))
    assert prompt["worse_than_automatic"] == 0 and prompt["box_empty"] == 0 and prompt["boxes_without_lesion"] == 0
    assert report["options"]["box_prompt"] == {"margin": 0.0, "jitter": 0.0, "context_margin": 0.5,
                                               "frame_weight": evaluate.FRAME_WEIGHT, "seed": evaluate.BOX_SEED}
    assert report["summary"]["processed"]["normal"]["images"] == 0
    assert "Box prompt: each lesion's bounding box grown by 0" in evaluate.markdown_report(report)
    with pytest.raises(export.ExportError, match="box prompts"):
        export.export_model(busi["full"], busi["root"] / "reports" / "box" / "report.json",
                            busi["root"] / "exported_box.safetensors")


def test_evaluate_box_options_need_a_box_margin(busi, capsys):
    code = cli.main(["evaluate", "--data", str(busi["data"]), "--split", str(busi["split"]), "--weights",
                     str(busi["full"]), "--output", str(busi["root"] / "x"), "--box-jitter", "0.1", "--no-progress"])
    assert code != 0 and "--box-margin" in capsys.readouterr().err


def sweep_row(threshold, confidence, all_image_dice, area=0.005, largest=False):
    return {"threshold": threshold, "min_area_fraction": area, "min_mean_probability": confidence,
            "keep_largest": largest, "min_lesion_probability": 0.0, "all_image_dice": all_image_dice}


def test_sweep_rule_takes_the_best_row_and_breaks_ties_by_confidence_then_threshold():
    rows = [sweep_row(0.5, 0.8, 0.7536), sweep_row(0.6, 0.8, 0.7527), sweep_row(0.4, 0.75, 0.7400),
            sweep_row(0.6, 0.85, 0.7500)]
    assert sweep.choose_row({"rows": rows}) == 1  # 0.7527 ties with 0.7536: same confidence, higher threshold
    rows[2]["all_image_dice"] = 0.7520
    assert sweep.choose_row({"rows": rows}) == 2  # now in the tie, with the lower minimum confidence
    rows[0]["all_image_dice"] = 0.7600
    assert sweep.choose_row({"rows": rows}) == 0  # the others fall out of the tie
    rows.append(sweep_row(0.4, 0.0, 0.7600 - 0.0025))  # lower confidence, just outside the tie
    assert sweep.choose_row({"rows": rows}) == 0
    rows.append(sweep_row(0.4, 0.0, 0.7600 - 0.002))  # exactly at the tie's edge: inside
    assert sweep.choose_row({"rows": rows}) == len(rows) - 1


def test_sweep_rule_breaks_exact_ties_toward_the_model_cards_settings():
    rows = [sweep_row(0.6, 0.8, 0.75, area=0.001), sweep_row(0.6, 0.8, 0.75, area=0.005),
            sweep_row(0.6, 0.8, 0.75, area=0.01)]
    assert sweep.choose_row({"rows": rows}) == 0  # no card in the record: the first listed
    card = {"threshold": 0.5, "min_area_fraction": 0.005, "min_mean_probability": 0.0, "keep_largest": True}
    assert sweep.choose_row({"rows": rows, "card_postprocessing": card}) == 1


def test_sweep_rule_keeps_each_dataset_above_its_floor():
    rows = [sweep_row(0.5, 0.8, 0.77), sweep_row(0.6, 0.85, 0.76), sweep_row(0.4, 0.0, 0.70)]
    part = {"rows": [{"lesion_dice": dice} for dice in (0.70, 0.72, 0.80)]}
    record = {"rows": rows, "per_dataset": {"BrEaST": part, "BUSI": {"rows": [{"lesion_dice": 0.9}] * 3}}}
    assert sweep.choose_row(record) == 0
    assert sweep.choose_row(record, {"BrEaST": 0.715}) == 1
    assert sweep.choose_row(record, {"BrEaST": 0.72}) == 1  # a row exactly at its floor is allowed
    assert sweep.choose_row(record, {"BrEaST": 0.9}) is None
    assert sweep.choose_row(record, {"BrEaST": 0.715, "BUSI": 0.95}) is None  # every floor must hold
    with pytest.raises(ValueError, match="no per-dataset rows for Other"):
        sweep.choose_row(record, {"Other": 0.5})


def test_sweep_records_and_prints_the_rules_choice(busi, capsys):
    record = run_sweep(busi, busi["full"], "chosen", "--subset", "train", "--thresholds", "0.4", "0.6",
                       "--min-confidences", "0", "0.7")
    assert record["chosen"]["index"] == sweep.choose_row(record) is not None
    assert record["chosen"]["min_dataset_lesion_dice"] == {}
    chosen = record["rows"][record["chosen"]["index"]]
    assert f"Chosen by the rule (highest all-image Dice; ties within {sweep.TIE_ALL_IMAGE_DICE}" in capsys.readouterr().out
    assert f"threshold {chosen['threshold']}," in (busi["root"] / "sweeps" / "chosen" / "sweep.md").read_text()


def test_sweep_refuses_a_floor_it_cannot_apply_before_segmenting(busi, capsys, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the sweep started before its floors were checked")

    monkeypatch.setattr(sweep, "sweep_split", must_not_run)
    arguments = ["sweep", "--data", str(busi["data"]), "--split", str(busi["split"]), "--weights", str(busi["full"]),
                 "--subset", "train", "--no-progress"]
    assert cli.main(arguments + ["--min-dataset-lesion-dice", "BUSI=0.5"]) == 2
    assert "one dataset, so no per-dataset rows" in capsys.readouterr().err
    assert cli.main(arguments + ["--min-dataset-lesion-dice", "BUSI=0.5", "--min-dataset-lesion-dice", "BUSI=0.4"]) == 2
    assert "gives BUSI more than once" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(arguments + ["--min-dataset-lesion-dice", "BrEaST"])
    assert "expected NAME=DICE" in capsys.readouterr().err


def test_intervals_of_an_evaluate_report_are_centred_on_its_summary(full_report, capsys):
    output, report = full_report
    assert cli.main(["intervals", "--report", str(output / "report.json"), "--resamples", "300"]) == 0
    summary = report["summary"]["processed"]
    out = capsys.readouterr().out
    lesions = summary["lesion"]["images"]
    assert f"| BUSI | lesion Dice | {lesions} | {summary['lesion']['dice_mean']:.3f} |" in out
    assert f"| BUSI | all-image Dice | {len(report['cases'])} | {summary['all_image_dice']:.3f} |" in out
