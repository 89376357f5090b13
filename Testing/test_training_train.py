"""breastus-train train on a synthetic BUSI tree: learning, resuming, checkpoints, saved model, augmentation."""

import csv
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from BreastUSSegmentLib.preprocessing import prepare_input
from BreastUSSegmentLib.weights import load_model
from breastus_training import cli
from breastus_training.augment import affine_pair, get_augmentation, standard_augment
from breastus_training.busi import load_case, load_manifest
from breastus_training.checkpoint import (ResumeError, capture_rng_state, load_checkpoint, restore_rng_state,
                                         save_checkpoint)
from breastus_training.dataset import SegmentationDataset, preload_cases
from breastus_training.precision import resolve_precision
from breastus_training.train import train as train_run
from breastus_training.train import ProcessContext, config_from_args, make_loss, training_cases, validate
from breastus_training.cli import build_parser

from busi_synthetic import write_synthetic_split

TINY = ["--input-size", "64", "--base-channels", "4", "--depth", "2", "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_split(tmp_path_factory.mktemp("busi_train"))


def train_args(dataset, run_dir, *extra):
    data, split = dataset
    return ["train", "--data", str(data), "--split", str(split), "--run-dir", str(run_dir), *TINY, *extra]


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def scramble_global_rngs():
    """What a fresh process would look like: global generators in some other state."""
    torch.manual_seed(987654)
    np.random.seed(4321)
    random.seed(77)


def test_training_lowers_the_loss_and_writes_the_run_folder(dataset, tmp_path):
    run_dir = tmp_path / "learn"
    assert cli.main(train_args(dataset, run_dir, "--epochs", "10", "--augment", "none", "--lr", "0.01",
                               "--patience", "0")) == 0
    rows = read_metrics(run_dir)
    assert [int(row["epoch"]) for row in rows] == list(range(1, 11))
    losses = [float(row["train_loss"]) for row in rows]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2])
    for name in ("config.json", "checkpoint_last.pt", "best.safetensors", "best.json"):
        assert (run_dir / name).is_file()
    assert any((run_dir / "tensorboard").iterdir())


def test_resumed_run_equals_uninterrupted_run(dataset, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli.main(train_args(dataset, straight, "--epochs", "2")) == 0
    assert cli.main(train_args(dataset, resumed, "--epochs", "1")) == 0
    after_one = torch.load(resumed / "checkpoint_last.pt", weights_only=True)
    scramble_global_rngs()
    # "killed" after epoch 1, run again (early-stopping patience may change on resume)
    assert cli.main(train_args(dataset, resumed, "--epochs", "2", "--patience", "0")) == 0

    expected = torch.load(straight / "checkpoint_last.pt", weights_only=True)
    actual = torch.load(resumed / "checkpoint_last.pt", weights_only=True)
    assert actual["epoch"] == expected["epoch"] == 2
    for key, value in expected["model"].items():
        assert torch.equal(actual["model"][key], value), key
    changed = [key for key, value in after_one["model"].items() if not torch.equal(value, expected["model"][key])]
    assert changed  # epoch 2 really trained after the resume
    for first, second in zip(read_metrics(straight), read_metrics(resumed)):
        for column in ("epoch", "train_loss", "val_loss", "val_dice", "val_iou", "lr"):
            assert first[column] == second[column]


def test_checkpoint_is_weights_only_and_complete(dataset, tmp_path):
    run_dir = tmp_path / "ckpt"
    assert cli.main(train_args(dataset, run_dir, "--epochs", "1", "--scheduler", "cosine")) == 0
    state = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "epoch", "best_score", "epochs_without_improvement", "rng", "config"):
        assert key in state
    assert state["optimizer"]["state"]  # Adam moments were saved
    assert state["scheduler"]["T_max"] == 1


def test_rng_state_round_trip():
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    scramble_global_rngs()
    restore_rng_state(state)
    actual = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(actual[0], expected[0]) and np.array_equal(actual[1], expected[1]) and actual[2] == expected[2]


def test_a_save_after_a_killed_save_removes_its_temporary(tmp_path):
    """A run killed inside torch.save (os._exit: no clean-up runs) leaves a temporary; the next save removes it
    (fileio.leftover_temporaries finds it by name)."""
    path = tmp_path / "checkpoint_last.pt"
    script = (
        "import os, sys, torch; torch.save = lambda state, target: (open(target, 'wb').close(), os._exit(9)); "
        "from breastus_training.checkpoint import save_checkpoint; save_checkpoint({'epoch': 1}, sys.argv[1])"
    )
    assert subprocess.run([sys.executable, "-c", script, str(path)]).returncode == 9
    assert len(list(tmp_path.iterdir())) == 1 and not path.exists()  # the killed save left its temporary behind
    save_checkpoint({"epoch": 2}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]
    assert load_checkpoint(path) == {"epoch": 2}


def test_best_model_loads_with_the_core_and_records_its_provenance(dataset, tmp_path):
    run_dir = tmp_path / "best"
    assert cli.main(train_args(dataset, run_dir, "--epochs", "2")) == 0
    model, card = load_model(run_dir / "best.safetensors")
    manifest = load_manifest(dataset[1])
    assert card.model["base_channels"] == 4 and card.model["depth"] == 2
    assert card.input_size == [64, 64]
    assert card.training["split_sha256"] == manifest.sha256
    assert card.training["epoch"] in (1, 2)
    best_row = read_metrics(run_dir)[card.training["epoch"] - 1]
    assert card.training["val_iou"] == pytest.approx(float(best_row["val_iou"]))
    assert model(torch.zeros(1, 1, 64, 64)).logits.shape == (1, 1, 64, 64)


def test_resume_with_other_settings_is_refused(dataset, tmp_path, capsys):
    run_dir = tmp_path / "refuse"
    assert cli.main(train_args(dataset, run_dir, "--epochs", "2")) == 0
    assert cli.main(train_args(dataset, run_dir, "--epochs", "2", "--lr", "0.01")) == 2
    assert "lr: run has 0.001, requested 0.01" in capsys.readouterr().err
    assert cli.main(train_args(dataset, run_dir, "--epochs", "1")) == 2
    assert "may only be increased" in capsys.readouterr().err
    config = config_from_args(build_parser().parse_args(train_args(dataset, run_dir, "--epochs", "2", "--loss", "dice_bce")))
    with pytest.raises(ResumeError, match="loss"):
        train_run(config, ProcessContext(device=torch.device("cpu")))


def test_init_weights_starts_from_an_exported_model(dataset, tmp_path, capsys):
    first = tmp_path / "first"
    assert cli.main(train_args(dataset, first, "--epochs", "2")) == 0
    source, source_card = load_model(first / "best.safetensors")
    # A vanishing learning rate leaves the convolutions where they started.
    warm, cold = tmp_path / "warm", tmp_path / "cold"
    for run_dir, extra in ((warm, ["--init-weights", str(first / "best.safetensors")]), (cold, [])):
        assert cli.main(train_args(dataset, run_dir, "--epochs", "1", "--lr", "1e-12", *extra)) == 0
    warm_model, warm_card = load_model(warm / "best.safetensors")
    cold_model, _ = load_model(cold / "best.safetensors")
    start = source.head.weight
    assert torch.allclose(warm_model.head.weight, start, atol=1e-6)
    assert not torch.allclose(cold_model.head.weight, start, atol=1e-3)
    assert warm_card.training["init_weights_sha256"] == source_card.sha256
    capsys.readouterr()
    # Another architecture cannot be initialised from these weights.
    assert cli.main(train_args(dataset, tmp_path / "wider", "--epochs", "1", "--base-channels", "8",
                               "--init-weights", str(first / "best.safetensors"))) == 2
    assert "--init-weights" in capsys.readouterr().err


def test_normal_repeat_lists_each_normal_case_that_many_times(dataset):
    manifest = load_manifest(dataset[1])
    once = training_cases(manifest, limit=None, seed=0)
    thrice = training_cases(manifest, limit=None, seed=0, normal_repeat=3)
    normal_ids = [case.id for case in once if case.label == "normal"]
    assert normal_ids and len(normal_ids) < len(once)
    assert thrice[:len(once)] == once
    assert sorted(case.id for case in thrice[len(once):]) == sorted(normal_ids * 2)


def test_run_from_before_normal_repeat_resumes_and_other_repeats_are_refused(dataset, tmp_path, capsys):
    run_dir = tmp_path / "older"
    assert cli.main(train_args(dataset, run_dir, "--epochs", "1")) == 0
    checkpoint = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    del checkpoint["config"]["normal_repeat"]  # as written by a version without the option (nor the checksum)
    del checkpoint["checksum"]
    torch.save(checkpoint, run_dir / "checkpoint_last.pt")
    assert cli.main(train_args(dataset, run_dir, "--epochs", "3", "--normal-repeat", "2")) == 2
    assert "normal_repeat: run has 1, requested 2" in capsys.readouterr().err
    assert cli.main(train_args(dataset, run_dir, "--epochs", "2")) == 0
    assert [int(row["epoch"]) for row in read_metrics(run_dir)] == [1, 2]


def test_warm_started_run_resumes_after_its_init_weights_file_is_gone(dataset, tmp_path, capsys):
    first = tmp_path / "first"
    assert cli.main(train_args(dataset, first, "--epochs", "1")) == 0
    start = tmp_path / "start.safetensors"
    start.write_bytes((first / "best.safetensors").read_bytes())
    (tmp_path / "start.json").write_bytes((first / "best.json").read_bytes())
    warm = tmp_path / "warm"
    assert cli.main(train_args(dataset, warm, "--epochs", "1", "--init-weights", str(start))) == 0
    start.unlink()
    assert cli.main(train_args(dataset, warm, "--epochs", "2", "--init-weights", str(start))) == 0
    assert [int(row["epoch"]) for row in read_metrics(warm)] == [1, 2]
    capsys.readouterr()
    assert cli.main(train_args(dataset, tmp_path / "fresh", "--epochs", "1", "--init-weights", str(start))) == 2
    assert "file not found" in capsys.readouterr().err


def test_weight_average_is_the_mean_of_the_averaged_epochs_and_survives_a_resume(dataset, tmp_path):
    swa = ["--swa-start", "2", "--scheduler", "none", "--lr", "0.01"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli.main(train_args(dataset, straight, "--epochs", "3", *swa)) == 0
    assert cli.main(train_args(dataset, resumed, "--epochs", "2", *swa)) == 0
    after_two = torch.load(resumed / "checkpoint_last.pt", weights_only=True)["model"]
    assert (resumed / "swa.safetensors").is_file()  # a finished run writes its average (here of epoch 2 alone)
    scramble_global_rngs()
    assert cli.main(train_args(dataset, resumed, "--epochs", "3", *swa)) == 0
    after_three = torch.load(resumed / "checkpoint_last.pt", weights_only=True)["model"]

    average, card = load_model(resumed / "swa.safetensors")
    averaged = average.state_dict()
    assert torch.allclose(averaged["head.weight"], (after_two["head.weight"] + after_three["head.weight"]) / 2)
    assert not torch.allclose(after_two["head.weight"], after_three["head.weight"])
    batch_norm = next(key for key in averaged if key.endswith("running_mean"))
    assert not torch.allclose(averaged[batch_norm], after_three[batch_norm])  # recomputed, not copied
    assert card.training["weight_average"] == {"first_epoch": 2, "last_epoch": 3, "epochs": 2,
                                               "batch_norm": "recomputed on the train images"}
    straight_average, _ = load_model(straight / "swa.safetensors")
    for key, value in straight_average.state_dict().items():
        assert torch.allclose(averaged[key], value), key
    # A finished run whose average was lost (e.g. killed while saving it) writes it again from the checkpoint.
    (straight / "swa.safetensors").unlink()
    assert cli.main(train_args(dataset, straight, "--epochs", "3", *swa)) == 0
    rewritten, _ = load_model(straight / "swa.safetensors")
    for key, value in rewritten.state_dict().items():
        assert torch.equal(straight_average.state_dict()[key], value), key
    assert len(read_metrics(straight)) == 3

    # The card's val scores are those of the saved weights.
    manifest = load_manifest(dataset[1])
    val = preload_cases(dataset[0], manifest.cases_for("val"), (64, 64), progress=False)
    scores = validate(average, val, make_loss("bce"), torch.device("cpu"), 4,
                      resolve_precision("auto", torch.device("cpu")))  # as the run validated
    assert card.metrics["val"]["iou"] == pytest.approx(scores["val_iou"])


def test_invalid_settings_give_clear_errors(dataset, tmp_path, capsys):
    assert cli.main(train_args(dataset, tmp_path / "bad", "--epochs", "3", "--swa-start", "4")) == 2
    assert "--swa-start must be between 1 and --epochs 3" in capsys.readouterr().err
    assert cli.main(train_args(dataset, tmp_path / "bad", "--input-size", "66")) == 2
    assert "multiple of 4" in capsys.readouterr().err
    assert cli.main(train_args(dataset, tmp_path / "bad", "--normal-repeat", "0")) == 2
    assert "--normal-repeat must be at least 1" in capsys.readouterr().err
    data, _ = dataset
    assert cli.main(["train", "--data", str(data), "--split", str(tmp_path / "none.json"),
                     "--run-dir", str(tmp_path / "r")]) == 2
    assert "split manifest not found" in capsys.readouterr().err


def test_preloaded_cases_use_the_inference_preprocessing(dataset):
    data, split = dataset
    cases = load_manifest(split).cases_for("train")[:3]
    prepared = preload_cases(data, cases, (64, 64), progress=False)
    for index, case in enumerate(cases):
        image, mask = load_case(data, case)
        assert torch.equal(prepared.images[index], prepare_input(image, (64, 64))[0])
        assert set(prepared.masks[index].unique().tolist()) <= {0.0, 1.0}
        assert abs(prepared.masks[index].mean().item() - mask.mean()) < 0.05  # same lesion fraction


def test_augmentation_depends_only_on_seed_epoch_and_index(dataset):
    data, split = dataset
    cases = load_manifest(split).cases_for("train")[:2]
    augmented = SegmentationDataset(preload_cases(data, cases, (64, 64), progress=False), standard_augment, seed=0)
    augmented.set_epoch(3)
    first = augmented[1]
    augmented.set_epoch(4)
    other_epoch = augmented[1]
    augmented.set_epoch(3)
    again = augmented[1]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other_epoch[0])


@pytest.mark.parametrize("name", ["standard", "strong"])
def test_augmentation_moves_image_and_mask_together_and_never_flips_vertically(name):
    augment = get_augmentation(name)
    image = torch.zeros(1, 64, 64)
    image[:, 8:24, 20:50] = 1.0  # a bright block near the top (the transducer side)
    mask = (image > 0.5).float()
    same_image, same_mask = affine_pair(image, mask, 0.0, 1.0)
    assert torch.allclose(same_image, image, atol=1e-5) and torch.equal(same_mask, mask)
    rows = torch.arange(64, dtype=torch.float32)[:, None]
    for seed in range(20):
        out_image, out_mask = augment(image, mask, torch.Generator().manual_seed(seed))
        assert out_image.shape == image.shape and out_mask.shape == mask.shape
        assert 0.0 <= float(out_image.min()) and float(out_image.max()) <= 1.0
        assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
        assert float((out_mask[0] * rows).sum() / out_mask.sum()) < 32  # the lesion stays in the top half
        bright = out_image[0] > out_image[0][out_mask[0] == 0].mean()
        overlap = (bright & (out_mask[0] > 0)).sum() / out_mask.sum()
        assert overlap > 0.8  # the mask follows the image's geometric transform


def test_shift_moves_the_content_by_the_given_fraction_of_the_image():
    image = torch.zeros(1, 40, 80)
    image[:, 10:20, 10:30] = 1.0
    mask = image.clone()
    moved_image, moved_mask = affine_pair(image, mask, 0.0, 1.0, shift=(0.25, -0.25))  # 20 px right, 10 px up
    assert torch.allclose(moved_image[:, 0:10, 30:50], image[:, 10:20, 10:30], atol=1e-5)
    assert torch.equal(moved_mask[:, 0:10, 30:50], mask[:, 10:20, 10:30])
    assert float(moved_mask.sum()) == float(mask.sum())


def test_strong_augmentation_reaches_further_than_standard():
    image = torch.zeros(1, 64, 64)
    image[:, 24:40, 24:40] = 1.0
    mask = image.clone()

    def centre_spread(name):
        augment = get_augmentation(name)
        centres = []
        for seed in range(40):
            _, out_mask = augment(image, mask, torch.Generator().manual_seed(seed))
            ys, xs = torch.nonzero(out_mask[0], as_tuple=True)
            centres.append(float(ys.float().mean()))
        return float(torch.tensor(centres).std())

    assert centre_spread("standard") < 0.5  # rotation and zoom about the centre keep a centred block centred
    assert centre_spread("strong") > 1.5  # the shift moves it


# ---------------------------------------------------------------- damaged checkpoints and a diverging loss


def tensor_data_offsets(path):
    """Where each tensor's bytes start in a torch.save file (a zip archive storing them uncompressed)."""
    import struct
    import zipfile

    offsets = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as stream:
        for info in archive.infolist():
            if "/data/" in info.filename:
                stream.seek(info.header_offset)
                header = stream.read(30)
                name_length, extra_length = struct.unpack("<HH", header[26:30])
                offsets[info.filename] = (info.header_offset + 30 + name_length + extra_length, info.file_size)
    return offsets


def test_a_checkpoint_damaged_inside_its_tensor_data_is_refused_and_kept(dataset, tmp_path, capsys):
    run_dir = tmp_path / "damaged"
    assert cli.main(train_args(dataset, run_dir, "--epochs", "1", "--augment", "none")) == 0
    path = run_dir / "checkpoint_last.pt"
    offset, size = max(tensor_data_offsets(path).values(), key=lambda item: item[1])  # the largest tensor
    data = bytearray(path.read_bytes())
    data[offset:offset + 8] = np.array([np.nan, np.nan], np.float32).tobytes()
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # torch itself does not notice
    capsys.readouterr()
    assert cli.main(train_args(dataset, run_dir, "--epochs", "2", "--augment", "none")) == 2
    assert (f"cannot load checkpoint {path}: its contents do not match the checksum written with it"
            in capsys.readouterr().err)
    assert path.read_bytes() == bytes(data) and len(read_metrics(run_dir)) == 1


@pytest.mark.parametrize("damage, message", [
    (lambda state: state.pop("optimizer"), "missing optimizer"),
    (lambda state: state["model"][next(iter(state["model"]))].fill_(float("inf")),
     "1 tensor(s) hold NaN or infinite values (first: model."),
    (None, "the file is empty (0 bytes)"),
])
def test_a_checkpoint_without_a_checksum_is_still_checked(dataset, tmp_path, capsys, damage, message):
    """Checkpoints written before the checksum (or by hand) are checked for their entries and finite values."""
    run_dir = tmp_path / "old"
    assert cli.main(train_args(dataset, run_dir, "--epochs", "1", "--augment", "none")) == 0
    path = run_dir / "checkpoint_last.pt"
    if damage is None:
        path.write_bytes(b"")
    else:
        state = torch.load(path, weights_only=True)
        state.pop("checksum", None)
        damage(state)
        torch.save(state, path)
    capsys.readouterr()
    assert cli.main(train_args(dataset, run_dir, "--epochs", "2", "--augment", "none")) == 2
    err = capsys.readouterr().err
    assert f"cannot load checkpoint {path}: {message}" in err and "Traceback" not in err


def test_a_loss_that_becomes_nan_stops_the_run_before_the_last_good_checkpoint_is_replaced(
        dataset, tmp_path, capsys, monkeypatch):
    from breastus_training import train as train_module

    run_dir = tmp_path / "nan"
    assert cli.main(train_args(dataset, run_dir, "--epochs", "1", "--augment", "none")) == 0
    kept = {name: (run_dir / name).read_bytes() for name in ("checkpoint_last.pt", "best.safetensors", "metrics.csv")}

    class NaNLoss(torch.nn.Module):
        def forward(self, logits, target):
            return (logits * float("nan")).mean()

    monkeypatch.setattr(train_module, "make_loss", lambda name: NaNLoss())
    capsys.readouterr()
    assert cli.main(train_args(dataset, run_dir, "--epochs", "3", "--augment", "none")) == 1
    err = capsys.readouterr().err
    assert "epoch 2: train_loss nan" in err and f"{run_dir / 'checkpoint_last.pt'} keeps epoch 1" in err
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept
    monkeypatch.undo()
    assert cli.main(train_args(dataset, run_dir, "--epochs", "2", "--augment", "none")) == 0  # resumes from epoch 1
    assert [int(row["epoch"]) for row in read_metrics(run_dir)] == [1, 2]


def test_help_of_every_command_and_subcommand_prints(capsys):
    """argparse formats help texts with %: a bare '95%' crashed 'breastus-train --help'."""
    from BreastUSSegmentLib.cli import build_parser as segment_parser

    parsers = {"breastus-segment": (segment_parser(), [[]]),
               "breastus-train": (build_parser(), [[]] + [[name] for name in cli.SUBCOMMANDS])}
    for program, (parser, commands) in parsers.items():
        for command in commands:
            with pytest.raises(SystemExit) as stop:
                parser.parse_args([*command, "--help"])
            assert stop.value.code == 0, (program, command)
            assert capsys.readouterr().out.startswith(f"usage: {program}")
