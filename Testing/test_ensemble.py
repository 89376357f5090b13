"""Ensembles: N networks in one weights file, their probabilities and attention maps averaged;
``breastus-train ensemble`` joins trained models and refuses those that cannot be averaged."""

import json

import numpy as np
import pytest
import torch

from breastus_training.cli import main as train_main
from breastus_training.ensemble import EnsembleError, join_models
from BreastUSSegmentLib.inference import LesionSegmenter
from BreastUSSegmentLib.model import AttentionUNet, AttentionUNetEnsemble, ModelConfig, build_model
from BreastUSSegmentLib.modelcard import card_path_for, read_model_card
from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.weights import load_model, save_model, stored_copy

CONFIG = ModelConfig(base_channels=4, depth=2, dropout=0.0)
SHARED = {"dataset": "BUSI + BrEaST", "split": "splits/s.json", "split_sha256": "ab" * 32}


def saved_member(folder, seed, config=CONFIG, input_size=(64, 64), training=None):
    """An untrained network of ``config`` (seed ``seed``) saved with a card whose training block is ``training``."""
    torch.manual_seed(seed)
    path = folder / f"member{seed}.safetensors"
    save_model(build_model(config), path, input_size=input_size, postprocessing=UNTUNED_POSTPROCESSING,
               training={**SHARED, "seed": seed} if training is None else training)
    return path


@pytest.fixture
def frame():
    return np.random.default_rng(3).integers(0, 255, size=(50, 70)).astype(np.uint8)


def test_config_members_and_build_model():
    assert ModelConfig().members == 1
    assert ModelConfig.from_dict({"base_channels": 4}).members == 1  # cards written before ensembles
    for bad in (0, 9):
        with pytest.raises(ValueError, match="members"):
            ModelConfig(members=bad)
    with pytest.raises(ValueError, match="build_model"):
        AttentionUNet(ModelConfig(members=2))
    assert isinstance(build_model(CONFIG), AttentionUNet)
    ensemble = build_model(ModelConfig(base_channels=4, depth=2, members=3))
    assert isinstance(ensemble, AttentionUNetEnsemble) and len(ensemble.members) == 3
    assert all(member.config.members == 1 for member in ensemble.members)


def test_forward_averages_the_members_probabilities_attention_and_lesion_head():
    torch.manual_seed(0)
    config = ModelConfig(base_channels=4, depth=2, dropout=0.0, lesion_head=True, members=2)
    ensemble = build_model(config).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        logits, attention, lesion = ensemble(x)
        runs = [member(x) for member in ensemble.members]
        plain = ensemble(x).logits
    expected = (torch.sigmoid(runs[0][0]) + torch.sigmoid(runs[1][0])) / 2
    assert not torch.allclose(torch.sigmoid(runs[0][0]), torch.sigmoid(runs[1][0]), atol=1e-3)  # members differ
    torch.testing.assert_close(torch.sigmoid(logits), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(plain, logits)
    for level, gate in enumerate(attention):
        torch.testing.assert_close(gate, (runs[0][1][level] + runs[1][1][level]) / 2)
    torch.testing.assert_close(torch.sigmoid(lesion), (torch.sigmoid(runs[0][2]) + torch.sigmoid(runs[1][2])) / 2,
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("biases,expected", [((1e4, 1e4), 1.0), ((-1e4, -1e4), 0.0), ((1e4, -1e4), 0.5)])
def test_logits_are_finite_and_exact_where_the_members_are_certain(biases, expected):
    ensemble = build_model(ModelConfig(base_channels=2, depth=1, dropout=0.0, members=2)).eval()
    with torch.no_grad():
        for member, bias in zip(ensemble.members, biases):
            member.head.bias.fill_(bias)
        logits = ensemble(torch.randn(1, 1, 8, 8)).logits
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(torch.sigmoid(logits), torch.full_like(logits, expected))


def test_bf16_autocast_gives_float32_outputs_close_to_float32():
    torch.manual_seed(0)
    ensemble = build_model(ModelConfig(base_channels=4, depth=2, dropout=0.0, members=2)).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        reference, reference_attention, _ = ensemble(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, attention, _ = ensemble(x)
    assert logits.dtype == torch.float32 and all(gate.dtype == torch.float32 for gate in attention)
    torch.testing.assert_close(torch.sigmoid(logits), torch.sigmoid(reference), atol=0.05, rtol=0)
    torch.testing.assert_close(attention[-1], reference_attention[-1], atol=0.05, rtol=0)


def test_card_names_members_only_for_an_ensemble():
    assert "members" not in CONFIG.to_dict()  # single-model cards stay readable by versions before ensembles
    assert ModelConfig.from_dict(ModelConfig(members=2).to_dict()).members == 2


def test_joined_file_segments_like_the_mean_of_its_members(tmp_path, frame):
    members = [saved_member(tmp_path, seed) for seed in (0, 1)]
    output = tmp_path / "ensemble.safetensors"
    card = join_models(members, output)
    assert card.model_config == ModelConfig(base_channels=4, depth=2, dropout=0.0, members=2)
    assert read_model_card(output) == card and card.postprocess_options == UNTUNED_POSTPROCESSING
    assert card.training["split_sha256"] == SHARED["split_sha256"]
    assert [item["training"]["seed"] for item in card.training["members"]] == [0, 1]
    assert [item["sha256"] for item in card.training["members"]] == [read_model_card(p).sha256 for p in members]

    joined = LesionSegmenter.from_weights(output, device="cpu").segment(frame)
    singles = [LesionSegmenter.from_weights(path, device="cpu").segment(frame) for path in members]
    assert np.abs(singles[0].probability - singles[1].probability).max() > 1e-3
    np.testing.assert_allclose(joined.probability, (singles[0].probability + singles[1].probability) / 2, atol=1e-5)
    assert np.abs(singles[0].combined_attention - singles[1].combined_attention).max() > 1e-3
    np.testing.assert_allclose(joined.combined_attention,  # each gate averaged, so their mean is too
                               (singles[0].combined_attention + singles[1].combined_attention) / 2, atol=1e-5)


def test_joined_file_round_trips_and_stores_in_half_precision(tmp_path):
    output = tmp_path / "ensemble.safetensors"
    join_models([saved_member(tmp_path, seed) for seed in (0, 1)], output)
    model, _ = load_model(output)
    original, _ = load_model(tmp_path / "member1.safetensors")
    for key, value in original.state_dict().items():
        assert torch.equal(model.state_dict()[f"members.1.{key}"], value), key
    half_path = tmp_path / "half.safetensors"
    save_model(model, half_path, input_size=(64, 64), postprocessing=UNTUNED_POSTPROCESSING, storage_dtype="float16")
    half, half_card = load_model(half_path)
    assert isinstance(half, AttentionUNetEnsemble) and half_card.model_config.members == 2
    for key, value in stored_copy(model, "float16").state_dict().items():
        assert torch.equal(half.state_dict()[key], value), key


def test_lesion_head_of_an_ensemble_reaches_the_segmenter(tmp_path, frame):
    config = ModelConfig(base_channels=4, depth=2, dropout=0.0, lesion_head=True)
    members = [saved_member(tmp_path, seed, config=config) for seed in (0, 1)]
    join_models(members, tmp_path / "ensemble.safetensors")
    joined = LesionSegmenter.from_weights(tmp_path / "ensemble.safetensors", device="cpu")
    assert joined.has_lesion_head
    heads = [float(LesionSegmenter.from_weights(path, device="cpu").segment(frame).lesion_probability[0])
             for path in members]
    result = joined.segment(frame)
    assert float(result.lesion_probability[0]) == pytest.approx(sum(heads) / 2, abs=1e-5)
    bar = joined.postprocessing.with_overrides(min_lesion_probability=0.999, min_mean_probability=0.0,
                                               min_area_fraction=0.0, threshold=0.01)
    assert result.raw_mask.any() and not joined.segment(frame, postprocessing=bar).processed_mask.any()


def test_an_ensemble_cannot_start_a_training_run(tmp_path):
    from breastus_training.train import initialise_from

    join_models([saved_member(tmp_path, seed) for seed in (0, 1)], tmp_path / "ensemble.safetensors")
    with pytest.raises(ValueError, match="ensemble of 2 networks; start from one of its members"):
        initialise_from(build_model(CONFIG), str(tmp_path / "ensemble.safetensors"), verbose=False)


def test_join_refuses_what_cannot_be_averaged(tmp_path):
    first = saved_member(tmp_path, 0)
    output = tmp_path / "ensemble.safetensors"
    with pytest.raises(EnsembleError, match="at least two"):
        join_models([first], output)
    wider = saved_member(tmp_path, 1, config=ModelConfig(base_channels=8, depth=2, dropout=0.0))
    with pytest.raises(EnsembleError, match="architecture"):
        join_models([first, wider], output)
    larger = saved_member(tmp_path, 2, input_size=(96, 96))
    with pytest.raises(EnsembleError, match="input size"):
        join_models([first, larger], output)
    other_split = saved_member(tmp_path, 3, training={**SHARED, "split_sha256": "cd" * 32})
    with pytest.raises(EnsembleError, match="split sha256"):
        join_models([first, other_split], output)
    other_data = saved_member(tmp_path, 5, training={**SHARED, "datasets": [{"name": "BUSI"}]})
    with pytest.raises(EnsembleError, match="datasets"):
        join_models([first, other_data], output)
    with pytest.raises(EnsembleError, match="same weights"):
        join_models([first, first], output)
    with pytest.raises(EnsembleError, match="one of the --weights files"):
        join_models([first, saved_member(tmp_path, 6)], first, force=True)
    nested = saved_member(tmp_path, 4, config=ModelConfig(base_channels=4, depth=2, dropout=0.0, members=2))
    with pytest.raises(EnsembleError, match="already an ensemble"):
        join_models([first, nested], output)
    assert not output.exists()
    same_split_other_path = saved_member(tmp_path, 7, training={**SHARED, "split": "/elsewhere/s.json"})
    assert join_models([first, same_split_other_path], output).training["split"] == SHARED["split"]


def test_command_line_writes_once_and_names_the_problem(tmp_path, capsys):
    members = [saved_member(tmp_path, seed) for seed in (0, 1)]
    output = tmp_path / "ensemble.safetensors"
    arguments = ["ensemble", "--weights", str(members[0]), "--weights", str(members[1]), "--output", str(output)]
    assert train_main(arguments) == 0
    assert json.loads(card_path_for(output).read_text())["model"]["members"] == 2
    written = output.read_bytes()
    assert train_main(arguments) == 2 and "already exists" in capsys.readouterr().err
    assert output.read_bytes() == written
    assert train_main(arguments + ["--force"]) == 0
    (tmp_path / "member1.json").unlink()
    assert train_main(arguments + ["--force"]) == 2
    assert "model card not found" in capsys.readouterr().err
