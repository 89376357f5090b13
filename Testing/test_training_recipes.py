"""Recipes (--recipe), --limit on validation, the training-curve figure, --precision of evaluate and sweep, and
training in two processes (torchrun, gloo on the CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.weights import load_model
from breastus_training import cli, figures
from breastus_training.cli import build_parser
from breastus_training.recipes import DEFAULTS
from breastus_training.train import config_from_args

from breastus_training.busi import load_manifest

from busi_synthetic import write_synthetic_busi, write_synthetic_split

REPOSITORY = Path(__file__).resolve().parent.parent
BUNDLED_CARD = REPOSITORY / "BreastUSSegment" / "BreastUSSegmentLib" / "bundled" / "breastus_attention_unet.json"
TINY_RECIPE = """# a tiny recipe for tests
epochs = 1
input_size = [64, 64]
base_channels = 4
depth = 2
batch_size = 4
loss = "dice_bce"
"""


def parsed_config(*flags):
    return config_from_args(build_parser().parse_args(
        ["train", "--data", "BUSI", "--split", "split.json", "--run-dir", "runs/x", *flags]))


def test_recipe_v2_is_the_bundled_models_recorded_training():
    card = json.loads(BUNDLED_CARD.read_text())
    recorded = card["training"]
    config = parsed_config("--recipe", "v2")
    for key in DEFAULTS:
        if key in recorded:
            assert config[key] == recorded[key], key
    # The card predates these two options: the model has neither a lesion head nor deep supervision.
    assert not card["model"].get("lesion_head", False)
    assert config["lesion_head_weight"] == 0.0 and config["deep_supervision"] == 0.0
    assert {key for key in DEFAULTS if key not in recorded} == {"lesion_head_weight", "deep_supervision"}
    assert (config["epochs"], config["loss"], config["scheduler"], config["normal_repeat"]) == (60, "dice_bce", "cosine", 2)


def test_recipe_v2_equals_the_command_model_v2_was_trained_with():
    text = (REPOSITORY / "Training" / "EXPERIMENTS.md").read_text()
    plan = text[text.index("### v2_s0 — plan"):]
    command = " ".join(plan[:plan.index("--no-progress")].replace("\\\n", " ").split())
    flags = command[command.index("--run-dir runs/v2_s0") + len("--run-dir runs/v2_s0"):].split()
    assert "--loss" in flags and "--normal-repeat" in flags
    from_command, from_recipe = parsed_config(*flags), parsed_config("--recipe", "v2")
    assert {key: from_command[key] for key in DEFAULTS} == {key: from_recipe[key] for key in DEFAULTS}


def test_flags_override_the_recipe_and_defaults_fill_the_rest():
    config = parsed_config("--recipe", "v2", "--epochs", "3", "--lr", "0.01", "--augment-off", "marks")
    assert (config["epochs"], config["lr"], config["augment_off"]) == (3, 0.01, ["marks"])
    assert config["scheduler"] == "cosine" and config["recipe"] == "v2"
    plain = parsed_config()
    assert {key: plain[key] for key in DEFAULTS if key != "input_size"} == \
           {key: value for key, value in DEFAULTS.items() if key != "input_size"}
    assert plain["input_size"] == [256, 256] and plain["recipe"] is None


def test_bad_recipes_are_refused_naming_the_file(tmp_path):
    with pytest.raises(ValueError, match="no such recipe.*v2"):
        parsed_config("--recipe", "nonexistent")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("epochs = 2\nlearning_rate = 0.1\n")
    with pytest.raises(ValueError, match=r"unknown\.toml: unknown setting 'learning_rate'"):
        parsed_config("--recipe", str(unknown))
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('epochs = "many"\n')
    with pytest.raises(ValueError, match=r"wrong\.toml: epochs must be a int"):
        parsed_config("--recipe", str(wrong))


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    """One tiny training run from a recipe file, with a flag overriding it and --limit 3."""
    root = tmp_path_factory.mktemp("recipe_run")
    data, split = write_synthetic_busi(root / "BUSI").root, root / "split.json"
    assert cli.main(["prepare", "--data", str(data), "--output", str(split), "--ratios", "0.5", "0.3", "0.2"]) == 0
    assert len(load_manifest(split).cases_for("val")) > 3
    recipe = root / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    run_dir = root / "run"
    assert cli.main(["train", "--data", str(data), "--split", str(split), "--run-dir", str(run_dir),
                     "--recipe", str(recipe), "--epochs", "2", "--limit", "3", "--no-progress"]) == 0
    return data, split, recipe, run_dir


def test_the_run_folder_records_the_recipe_and_what_the_command_line_changed(recipe_run):
    _, _, recipe, run_dir = recipe_run
    record = json.loads((run_dir / "config.json").read_text())
    assert record["recipe"]["file"] == str(recipe) and record["recipe"]["overridden"] == ["epochs"]
    assert record["recipe"]["settings"]["epochs"] == 1 and record["args"]["epochs"] == 2
    assert len(record["recipe"]["sha256"]) == 64
    _, card = load_model(run_dir / "best.safetensors")
    assert card.training["recipe"] == str(recipe) and card.training["loss"] == "dice_bce"
    assert card.model["base_channels"] == 4


def test_limit_limits_validation_too(recipe_run):
    _, _, _, run_dir = recipe_run
    record = json.loads((run_dir / "config.json").read_text())
    assert record["train_cases"] == 3 and record["val_cases"] == 3


def test_evaluate_and_sweep_run_and_record_the_requested_precision(recipe_run, tmp_path):
    data, split, _, run_dir = recipe_run
    weights = run_dir / "best.safetensors"
    assert cli.main(["evaluate", "--data", str(data), "--split", str(split), "--weights", str(weights),
                     "--subset", "val", "--output", str(tmp_path / "report"), "--precision", "fp32",
                     "--no-progress"]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["options"]["precision"] == "fp32" and report["options"]["precision_requested"] == "fp32"
    assert not report["options"]["cpu_bf16"]
    assert "network precision: fp32 (requested fp32)" in (tmp_path / "report" / "report.md").read_text()
    assert cli.main(["sweep", "--data", str(data), "--split", str(split), "--weights", str(weights),
                     "--precision", "bf16", "--output", str(tmp_path / "sweep"), "--no-progress"]) == 0
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert sweep["precision"] == "bf16" and sweep["cpu_bf16"]


def test_segmenter_precision_overrides_the_cpu_check(recipe_run):
    weights = recipe_run[3] / "best.safetensors"
    assert LesionSegmenter.from_weights(weights, "cpu", backend="torch", precision="fp32").precision == "fp32"
    bf16 = LesionSegmenter.from_weights(weights, "cpu", backend="torch", precision="bf16")
    assert bf16.precision == "bf16" and bf16.cpu_bf16 and bf16.requested_precision == "bf16"
    with pytest.raises(ValueError, match="precision"):
        LesionSegmenter.from_weights(weights, "cpu", precision="fp16")


def test_training_curves_mark_the_epoch_chosen_by_the_selection_score(tmp_path):
    # pooled IoU peaks at epoch 2, the per-dataset mean (the selection score) at epoch 3
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(
        "epoch,train_loss,val_loss,val_dice,val_iou,lr,seconds,val_iou_A,val_iou_B,val_score\n"
        "1,0.9,0.8,0.3,0.20,0.001,3,0.2,0.2,0.20\n"
        "2,0.7,0.7,0.5,0.50,0.001,3,0.6,0.2,0.40\n"
        "3,0.6,0.7,0.5,0.45,0.001,3,0.5,0.4,0.45\n"
        "4,0.5,0.7,0.5,0.40,0.001,3,0.4,0.3,0.35\n")
    columns = figures.read_metrics_csv(csv_path)
    assert figures.chosen_epoch(columns) == (3.0, 0.45)
    figure = figures.training_curves_figure(columns)
    score_axis = figure.axes[1]
    assert np.allclose(score_axis.collections[0].get_offsets(), [[3.0, 0.45]])
    assert all(tick == int(tick) for tick in score_axis.get_xticks())
    legend = score_axis.get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().x0 > score_axis.get_window_extent().x1  # beside
    figures.plt.close(figure)
    # a run from before the per-dataset score: chosen by val IoU
    old = {key: value for key, value in columns.items() if key == "epoch" or not key.startswith("val_iou_")
           and key != "val_score"}
    assert figures.chosen_epoch(old) == (2.0, 0.5)


def test_two_processes_train_one_run_with_gloo_on_the_cpu(tmp_path):
    data, split = write_synthetic_split(tmp_path)
    run_dir = tmp_path / "ddp"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "breastus_training", "train", "--data", str(data), "--split", str(split),
               "--run-dir", str(run_dir), "--epochs", "1", "--input-size", "64", "--base-channels", "4",
               "--depth", "2", "--batch-size", "2", "--device", "cpu", "--no-progress"]
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    record = json.loads((run_dir / "config.json").read_text())
    assert record["world_size"] == 2
    assert (run_dir / "best.safetensors").is_file()
    assert len((run_dir / "metrics.csv").read_text().strip().splitlines()) == 2  # header + epoch 1
