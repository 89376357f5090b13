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
from BreastUSSegmentLib.postprocessing import PostprocessOptions, postprocess_mask
from BreastUSSegmentLib.weights import WeightsError, load_model, read_model_card, save_model
from breastus_training import evaluate, export, figures

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


def segmenter_for(model, options=None):
    return LesionSegmenter(model, input_size=INPUT_SIZE, postprocessing=options, device="cpu")


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
    segmenter = segmenter_for(model, PostprocessOptions(threshold=threshold, min_area_fraction=0.01))
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
