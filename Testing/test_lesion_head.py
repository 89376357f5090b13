"""The image-level lesion-present head: model output, cards, post-processing gate, inference, sweep, training."""

import json
import math

import numpy as np
import pytest
import torch

from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.model import AttentionUNet, ModelConfig
from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.postprocessing import postprocess_frames
from BreastUSSegmentLib.preprocessing import prepare_frames
from BreastUSSegmentLib.weights import load_model, save_model
from breastus_training import cli
from breastus_training.train import initialise_from, lesion_presence

from busi_synthetic import write_synthetic_split

HEAD = ModelConfig(base_channels=4, depth=2, dropout=0.0, lesion_head=True)


def head_model(segmentation_bias=None, lesion_probability=None, seed=0):
    """A small model with a lesion head; optionally constant pixel logits and a constant lesion probability."""
    torch.manual_seed(seed)
    model = AttentionUNet(HEAD)
    with torch.no_grad():
        if segmentation_bias is not None:
            model.head.weight.zero_()
            model.head.bias.fill_(segmentation_bias)
        if lesion_probability is not None:
            model.lesion_head.linear.weight.zero_()
            model.lesion_head.linear.bias.fill_(math.log(lesion_probability / (1 - lesion_probability)))
    return model.eval()


def test_the_head_gives_one_logit_per_image_in_a_fixed_output_order():
    model = head_model()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        logits = model(x).logits
        same, attention, lesion = model(x)
        only_logits, _, lesion_again = model(x)
    assert logits.shape == (3, 1, 32, 32) and lesion.shape == (3,)
    assert torch.equal(logits, same) and torch.equal(logits, only_logits) and torch.equal(lesion, lesion_again)
    assert len(attention) == 2
    assert len(set(lesion.tolist())) == 3  # it depends on the image
    assert AttentionUNet(ModelConfig(base_channels=4, depth=2))(x).lesion_logit is None  # no head, no lesion logit


def test_a_card_written_before_the_head_loads_without_it_and_gate_off(tmp_path):
    path = tmp_path / "old.safetensors"
    save_model(AttentionUNet(ModelConfig(base_channels=4, depth=2)), path, postprocessing=UNTUNED_POSTPROCESSING)
    card = json.loads(path.with_suffix(".json").read_text())
    del card["model"]["lesion_head"], card["postprocessing"]["min_lesion_probability"]
    path.with_suffix(".json").write_text(json.dumps(card))
    model, loaded = load_model(path)
    assert model.lesion_head is None and loaded.model_config.lesion_head is False
    assert loaded.postprocess_options.min_lesion_probability == 0.0


def test_a_model_with_the_head_round_trips_through_its_weights_file(tmp_path):
    path = tmp_path / "head.safetensors"
    model = head_model(seed=4)
    save_model(model, path, postprocessing=UNTUNED_POSTPROCESSING, storage_dtype="float16")
    loaded, card = load_model(path)
    assert card.model["lesion_head"] is True
    assert torch.allclose(loaded.lesion_head.linear.weight, model.lesion_head.linear.weight, atol=1e-3)


def test_the_gate_empties_exactly_the_frames_below_the_bar():
    probability = np.zeros((3, 20, 20), np.float32)
    probability[:, 5:15, 5:15] = 0.9
    options = UNTUNED_POSTPROCESSING.with_overrides(min_lesion_probability=0.5)
    masks = postprocess_frames(probability, options, np.array([0.2, 0.5, 0.9], np.float32))
    assert [bool(mask.any()) for mask in masks] == [False, True, True]
    assert np.array_equal(masks[1], postprocess_frames(probability[1:2], UNTUNED_POSTPROCESSING)[0])
    with pytest.raises(ValueError, match="needs a model with a lesion head"):
        postprocess_frames(probability, options)
    with pytest.raises(ValueError, match="min_lesion_probability must be in"):
        UNTUNED_POSTPROCESSING.with_overrides(min_lesion_probability=1.0)


def test_segmenter_reports_each_frames_head_probability_and_applies_the_bar():
    model = head_model(seed=2)
    frames = np.random.default_rng(5).random((5, 40, 48)).astype(np.float32)
    segmenter = LesionSegmenter(model, (32, 32), UNTUNED_POSTPROCESSING, device="cpu")
    result = segmenter.segment(frames, batch_size=2)
    network_input, _ = prepare_frames(frames, (32, 32))
    with torch.no_grad():
        expected = model(torch.from_numpy(network_input)).lesion_logit
    assert result.lesion_probability.shape == (5,)
    assert np.allclose(result.lesion_probability, torch.sigmoid(expected).numpy(), atol=1e-5)
    bar = float(np.median(result.lesion_probability))
    gated = segmenter.segment(frames, postprocessing=UNTUNED_POSTPROCESSING.with_overrides(min_lesion_probability=bar))
    below = result.lesion_probability < bar
    assert not gated.processed_mask[below].any()
    assert np.array_equal(gated.processed_mask[~below], result.processed_mask[~below])


def test_a_bar_on_a_model_without_the_head_is_refused_up_front():
    options = UNTUNED_POSTPROCESSING.with_overrides(min_lesion_probability=0.5)
    with pytest.raises(ValueError, match="lesion head"):
        LesionSegmenter(AttentionUNet(ModelConfig(base_channels=4, depth=2)), (32, 32), options, device="cpu")
    plain = LesionSegmenter(AttentionUNet(ModelConfig(base_channels=4, depth=2, dropout=0.0)), (32, 32),
                            UNTUNED_POSTPROCESSING, device="cpu")
    assert plain.segment(np.zeros((20, 20), np.float32)).lesion_probability is None
    passes = []
    plain.model.register_forward_hook(lambda *_: passes.append(1))
    with pytest.raises(ValueError, match="the model: min_lesion_probability 0.5 needs a model with a lesion head"):
        plain.segment(np.zeros((4, 20, 20), np.float32), postprocessing=options)
    assert passes == []  # refused before any frame ran through the network


def test_a_bar_from_the_command_line_on_a_weights_file_without_the_head_names_the_file(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_model(AttentionUNet(ModelConfig(base_channels=4, depth=2)), path, postprocessing=UNTUNED_POSTPROCESSING)
    with pytest.raises(ValueError, match=f"{path}: min_lesion_probability 0.5 needs a model with a lesion head"):
        LesionSegmenter.from_weights(path, device="cpu", min_lesion_probability=0.5)


@pytest.fixture(scope="module")
def busi(tmp_path_factory):
    root = tmp_path_factory.mktemp("busi_head")
    data, split = write_synthetic_split(root)
    full = root / "full.safetensors"  # lesion everywhere, head probability 0.4 on every image
    save_model(head_model(segmentation_bias=30.0, lesion_probability=0.4), full, input_size=(64, 64),
               postprocessing=UNTUNED_POSTPROCESSING)
    plain = root / "plain.safetensors"
    save_model(AttentionUNet(ModelConfig(base_channels=4, depth=2, dropout=0.0)), plain, input_size=(64, 64),
               postprocessing=UNTUNED_POSTPROCESSING)
    return {"root": root, "data": data, "split": split, "full": full, "plain": plain}


def command(busi, name, weights, *extra):
    return ["--data", str(busi["data"]), "--split", str(busi["split"]), "--weights", str(weights), "--device", "cpu",
            "--no-progress", "--output", str(busi["root"] / name), *extra]


def test_sweep_scores_the_bar_and_evaluate_records_the_heads_probability(busi):
    assert cli.main(["sweep", *command(busi, "sweep", busi["full"], "--subset", "train",
                                       "--min-lesion-probabilities", "0", "0.5")]) == 0
    rows = json.loads((busi["root"] / "sweep" / "sweep.json").read_text())["rows"]
    assert [row["min_lesion_probability"] for row in rows] == [0.0, 0.5]
    assert rows[0]["lesions_missed"] == 0 and rows[0]["normal_false_positive_rate"] == 1.0
    assert rows[1]["normal_false_positives"] == 0 and rows[1]["lesion_dice"] == 0.0  # 0.4 < 0.5: all emptied
    assert cli.main(["evaluate", *command(busi, "report", busi["full"], "--subset", "test",
                                          "--min-lesion-probability", "0.3")]) == 0
    report = json.loads((busi["root"] / "report" / "report.json").read_text())
    assert report["options"]["postprocessing"]["min_lesion_probability"] == 0.3
    assert all(row["lesion_probability"] == pytest.approx(0.4) for row in report["cases"])
    assert all(row["processed"]["predicted_pixels"] > 0 for row in report["cases"])  # 0.4 >= 0.3: kept


def test_sweep_of_a_bar_on_a_model_without_the_head_is_an_input_error(busi, capsys):
    code = cli.main(["sweep", *command(busi, "sweep_plain", busi["plain"], "--subset", "train",
                                       "--min-lesion-probabilities", "0.5")])
    assert code == 2 and "lesion head" in capsys.readouterr().err


def test_presence_target_is_whether_a_mask_holds_a_lesion_pixel():
    masks = torch.zeros(3, 1, 8, 8)
    masks[1, 0, 2, 2] = 1.0
    masks[2, 0, 4, 4] = 0.4  # a resampled edge below one half is no lesion
    assert lesion_presence(masks).tolist() == [0.0, 1.0, 0.0]


def test_a_model_without_the_head_starts_one_and_the_reverse_is_refused(tmp_path):
    plain_path = tmp_path / "plain.safetensors"
    plain = AttentionUNet(ModelConfig(base_channels=4, depth=2, dropout=0.0))
    save_model(plain, plain_path, postprocessing=UNTUNED_POSTPROCESSING)
    model = AttentionUNet(HEAD)
    fresh_head = model.lesion_head.linear.weight.clone()
    initialise_from(model, str(plain_path), verbose=False)
    assert torch.equal(model.head.weight, plain.head.weight)
    assert torch.equal(model.lesion_head.linear.weight, fresh_head)
    head_path = tmp_path / "head.safetensors"
    save_model(model, head_path, postprocessing=UNTUNED_POSTPROCESSING)
    with pytest.raises(ValueError, match="--lesion-head-weight"):
        initialise_from(AttentionUNet(ModelConfig(base_channels=4, depth=2, dropout=0.0)), str(head_path), False)


def test_training_with_the_head_trains_it_and_records_its_val_accuracy(busi, tmp_path, capsys):
    def train(name, lr, weight="1"):
        run_dir = tmp_path / name
        code = cli.main(["train", "--data", str(busi["data"]), "--split", str(busi["split"]), "--run-dir", str(run_dir),
                         "--input-size", "64", "--base-channels", "4", "--depth", "2", "--dropout", "0",
                         "--batch-size", "4", "--epochs", "1", "--patience", "0", "--lr", lr, "--no-progress",
                         "--lesion-head-weight", weight, "--init-weights", str(busi["plain"])])
        return code, run_dir

    code, still = train("still", "1e-12")
    assert code == 0
    code, moved = train("moved", "0.01")
    assert code == 0
    (still_model, _), (model, card) = load_model(still / "best.safetensors"), load_model(moved / "best.safetensors")
    assert card.model_config.lesion_head and card.training["lesion_head_weight"] == 1.0
    # Same seed, same fresh head; only the lesion loss can move it (the pixel loss does not reach it).
    assert not torch.allclose(model.lesion_head.linear.weight, still_model.lesion_head.linear.weight, atol=1e-4)
    header, first = (moved / "metrics.csv").read_text().splitlines()[:2]
    accuracy = float(first.split(",")[header.split(",").index("val_presence_accuracy")])
    assert 0.0 <= accuracy <= 1.0
    capsys.readouterr()
    assert train("negative", "0.01", "-1")[0] == 2
    assert "--lesion-head-weight must be a number >= 0" in capsys.readouterr().err
