"""Weights: safetensors + model card round trip; tampered, missing or foreign files are refused."""

import dataclasses
import json

import pytest
import torch

from BreastUSSegmentLib.model import AttentionUNet, ModelConfig
from BreastUSSegmentLib.postprocessing import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.weights import WeightsError, card_path_for, load_model, read_model_card, save_model, sha256_of_file


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(base_channels=4, depth=2, dropout=0.0))
    path = tmp_path / "model.safetensors"
    card = save_model(
        model, path, input_size=(64, 96), postprocessing=dataclasses.replace(UNTUNED_POSTPROCESSING, threshold=0.4),
        training={"epochs": 3}, metrics={"test_iou": 0.5},
    )
    return model, path, card


def test_round_trip_restores_identical_weights_and_card(saved):
    model, path, card = saved
    loaded, loaded_card = load_model(path)
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded_card == card
    assert loaded_card.input_size == [64, 96] and loaded_card.postprocess_options.threshold == 0.4
    assert loaded_card.sha256 == sha256_of_file(path) and loaded_card.weights_file == "model.safetensors"
    assert json.loads(card_path_for(path).read_text())["metrics"] == {"test_iou": 0.5}


def test_tampered_weights_are_refused(saved):
    _, path, _ = saved
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        load_model(path)


def test_missing_weights_or_card(saved, tmp_path):
    _, path, _ = saved
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "absent.safetensors")
    card_path_for(path).unlink()
    with pytest.raises(WeightsError, match="model card not found"):
        load_model(path)


def test_pickle_files_are_never_loaded(saved, tmp_path):
    model, _, _ = saved
    pickled = tmp_path / "model.pt"
    torch.save(model.state_dict(), pickled)
    with pytest.raises(WeightsError, match="only .safetensors"):
        load_model(pickled)


def test_corrupt_safetensors_with_matching_checksum_is_refused(saved):
    _, path, _ = saved
    path.write_bytes(b"not a safetensors file")
    card = json.loads(card_path_for(path).read_text())
    card["sha256"] = sha256_of_file(path)
    card_path_for(path).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_model(path)


@pytest.mark.parametrize("change, summary", [
    ({"base_channels": 8}, "of another shape (first: "),
    ({"depth": 3}, "tensor(s) missing (first: "),
    ({"depth": 1}, "unexpected (first: "),
])
def test_card_architecture_must_match_weights_and_the_error_is_one_line(saved, change, summary):
    _, path, _ = saved
    card = json.loads(card_path_for(path).read_text())
    card["model"].update(change)
    card_path_for(path).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="do not match the architecture") as error:
        load_model(path)
    message = str(error.value)
    assert "\n" not in message and len(message) < 400
    assert summary in message and str(path) in message


def test_an_upper_case_checksum_in_the_card_is_the_same_checksum(saved):
    _, path, _ = saved
    card = json.loads(card_path_for(path).read_text())
    card["sha256"] = card["sha256"].upper()
    card_path_for(path).write_text(json.dumps(card))
    load_model(path)


@pytest.mark.parametrize("change", [{"format_version": 99}, {"model": {"depth": 0}}, {"unexpected": 1}])
def test_invalid_card_is_refused(saved, change):
    _, path, _ = saved
    card = json.loads(card_path_for(path).read_text())
    card.update(change)
    card_path_for(path).write_text(json.dumps(card))
    with pytest.raises(WeightsError):
        read_model_card(path)


def test_only_safetensors_suffix_is_written(tmp_path):
    with pytest.raises(ValueError, match="safetensors"):
        save_model(AttentionUNet(ModelConfig(base_channels=2, depth=1)), tmp_path / "model.pt",
                   postprocessing=UNTUNED_POSTPROCESSING)


def test_a_card_without_its_complete_postprocessing_is_refused(saved):
    """The card is the only source of a model's post-processing: nothing is filled in from elsewhere."""
    _, path, _ = saved
    card = json.loads(card_path_for(path).read_text())
    del card["postprocessing"]["keep_largest"]
    card_path_for(path).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="lacks keep_largest"):
        read_model_card(path)
    del card["postprocessing"]
    card_path_for(path).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="lacks threshold, min_area_fraction"):
        load_model(path)
