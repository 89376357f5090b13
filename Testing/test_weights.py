"""Weights: safetensors + model card round trip; tampered, missing or foreign files are refused."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from BreastUSSegmentLib.model import AttentionUNet, ModelConfig
from BreastUSSegmentLib.modelcard import WeightsError, card_path_for, read_model_card
from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.weights import load_model, save_model, sha256_of_file, stored_copy


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


@pytest.mark.parametrize("change, message", [
    ({"format_version": 99}, "format version 99"),
    ({"model": {"depth": 0}}, "depth must be between 1 and 8"),
    ({"unexpected": 1}, "unexpected"),
    ({"normalization": "z-score"}, "normalization 'z-score' is not implemented"),
    ({"input_size": [-256, 256]}, "input_size must be two whole numbers >= 1"),
    ({"input_size": [256]}, "input_size must be two whole numbers >= 1"),
    ({"input_size": [64.5, 64]}, "input_size must be two whole numbers >= 1"),
    ({"input_size": [64, 66]}, "input_size [64, 66] must be a multiple of 4"),
])
def test_invalid_card_is_refused(saved, change, message):
    _, path, _ = saved
    card = json.loads(card_path_for(path).read_text())
    card.update(change)
    card_path_for(path).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match=re.escape(message)):
        read_model_card(path)


def test_non_finite_weights_are_refused_even_with_a_matching_checksum(tmp_path):
    """+inf in a BatchNorm running variance never reaches the output as NaN: it silently empties every mask."""
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(base_channels=4, depth=2, dropout=0.0))
    with torch.no_grad():
        model.encoders[1][1].running_var[0] = float("inf")
    path = tmp_path / "model.safetensors"
    save_model(model, path, input_size=(64, 64), postprocessing=UNTUNED_POSTPROCESSING)  # the card's sha256 fits
    with pytest.raises(WeightsError, match=r"hold NaN or infinite values in 1 tensor\(s\) \(first: encoders.1.1.running_var\)"):
        load_model(path)


def test_the_bundled_model_is_checked_against_the_checksum_pinned_in_the_code(tmp_path, monkeypatch):
    """The card's sha256 guards against damage only: a modified bundled file with its card updated is refused."""
    from BreastUSSegmentLib import BUNDLED_SHA256, BUNDLED_WEIGHTS, weights

    assert sha256_of_file(BUNDLED_WEIGHTS) == BUNDLED_SHA256
    model, card = load_model(BUNDLED_WEIGHTS)
    with torch.no_grad():
        model.head.bias.add_(0.5)
    path = tmp_path / "bundled" / BUNDLED_WEIGHTS.name
    save_model(model, path, input_size=tuple(card.input_size), postprocessing=card.postprocess_options,
               storage_dtype=card.storage_dtype)
    load_model(path)  # anywhere else it is just a model with a consistent card
    monkeypatch.setattr(weights, "BUNDLED_WEIGHTS", path)
    with pytest.raises(WeightsError, match=f"has sha256 {sha256_of_file(path)}, not the {BUNDLED_SHA256}"):
        load_model(path)


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


# Half-precision storage: floating-point tensors in float16 or bfloat16, computed in float32 after loading.

def half_saved(tmp_path, storage_dtype):
    """A model large enough for the tensors to dominate the file, saved in float32 and in ``storage_dtype``."""
    torch.manual_seed(1)
    model = AttentionUNet(ModelConfig(base_channels=16, depth=3, dropout=0.0))
    with torch.no_grad():  # BatchNorm statistics and counters that are not their defaults
        for name, buffer in model.named_buffers():
            buffer.copy_(torch.full_like(buffer, 7) if "num_batches" in name else torch.rand_like(buffer) + 0.5)
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    save_model(model, full, postprocessing=UNTUNED_POSTPROCESSING)
    card = save_model(model, half, postprocessing=UNTUNED_POSTPROCESSING, storage_dtype=storage_dtype)
    return model, full, half, card


# Rounding to nearest: half a unit in the last place, relative, and absolute for float16's subnormals.
@pytest.mark.parametrize("storage_dtype, relative, absolute", [("float16", 2 ** -11, 2 ** -25), ("bfloat16", 2 ** -8, 0)])
def test_half_precision_round_trip(tmp_path, storage_dtype, relative, absolute):
    model, full, half, card = half_saved(tmp_path, storage_dtype)
    assert card.storage_dtype == storage_dtype
    assert json.loads(card_path_for(half).read_text())["storage_dtype"] == storage_dtype
    assert card.sha256 == sha256_of_file(half)  # the checksum covers the file as written
    assert 0.45 < half.stat().st_size / full.stat().st_size < 0.55
    stored = safe_open_dtypes(half)
    assert stored["head.weight"] == getattr(torch, storage_dtype)
    assert stored["bottleneck.1.num_batches_tracked"] == torch.int64  # integer tensors keep their dtype

    loaded, loaded_card = load_model(half)
    assert loaded_card == read_model_card(half) == card
    for key, value in model.state_dict().items():
        restored = loaded.state_dict()[key]
        assert restored.dtype == value.dtype, key  # computed in float32 (integers as integers)
        if value.is_floating_point():
            assert torch.allclose(restored, value, rtol=relative, atol=absolute), key
        else:
            assert torch.equal(restored, value), key
    assert not all(torch.equal(loaded.state_dict()[key], value) for key, value in model.state_dict().items())


def safe_open_dtypes(path):
    """The dtype of each tensor as stored in a safetensors file."""
    from safetensors.torch import load_file

    return {key: value.dtype for key, value in load_file(str(path)).items()}


def test_stored_copy_computes_with_exactly_the_weights_that_loading_gives(tmp_path):
    model, _, half, _ = half_saved(tmp_path, "float16")
    loaded, _ = load_model(half)
    copy = stored_copy(model, "float16")
    for key, value in loaded.state_dict().items():
        assert torch.equal(copy.state_dict()[key], value), key


def test_a_tampered_half_precision_file_is_refused(tmp_path):
    _, _, half, _ = half_saved(tmp_path, "float16")
    data = bytearray(half.read_bytes())
    data[-10] ^= 0xFF
    half.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        load_model(half)


def test_float32_storage_is_the_format_as_before(tmp_path):
    """float32 writes every tensor in float32 (counters included), and a card without the field is float32."""
    model, full, _, _ = half_saved(tmp_path, "float16")
    assert set(safe_open_dtypes(full).values()) == {torch.float32}
    card = json.loads(card_path_for(full).read_text())
    assert card["storage_dtype"] == "float32"
    del card["storage_dtype"]  # a card written before storage dtypes existed
    card_path_for(full).write_text(json.dumps(card))
    loaded, loaded_card = load_model(full)
    assert loaded_card.storage_dtype == "float32"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_card_whose_storage_dtype_is_not_the_files_is_refused(tmp_path):
    _, full, half, _ = half_saved(tmp_path, "float16")
    card = json.loads(card_path_for(half).read_text())
    card["storage_dtype"] = "float32"
    card_path_for(half).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="hold float16 tensors, but its model card says they are stored in float32"):
        load_model(half)
    card = json.loads(card_path_for(full).read_text())
    card["storage_dtype"] = "int8"
    card_path_for(full).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="storage dtype must be one of float32, float16, bfloat16, got 'int8'"):
        read_model_card(full)


def test_an_unknown_storage_dtype_or_a_value_out_of_its_range_is_not_written(tmp_path):
    model = AttentionUNet(ModelConfig(base_channels=2, depth=1))
    with pytest.raises(ValueError, match="storage dtype must be one of"):
        save_model(model, tmp_path / "m.safetensors", postprocessing=UNTUNED_POSTPROCESSING, storage_dtype="float64")
    with torch.no_grad():
        model.head.bias.fill_(1e6)  # beyond float16's largest value, 65504
    with pytest.raises(ValueError, match="head.bias has values beyond the range of float16"):
        save_model(model, tmp_path / "m.safetensors", postprocessing=UNTUNED_POSTPROCESSING, storage_dtype="float16")
    assert not (tmp_path / "m.safetensors").exists()
    save_model(model, tmp_path / "m.safetensors", postprocessing=UNTUNED_POSTPROCESSING, storage_dtype="bfloat16")


def test_reading_a_card_imports_neither_the_algorithms_nor_their_libraries():
    """The panel reads a card before PyTorch is installed: modelcard must not pull in the post-processing code."""
    import subprocess
    import sys

    code = ("import sys, BreastUSSegmentLib.modelcard as m; "
            "print(' '.join(sorted(n for n in sys.modules if n.split('.')[0] in ('scipy', 'numpy', 'torch') "
            "or n in ('BreastUSSegmentLib.postprocessing', 'BreastUSSegmentLib.boxes'))))")
    library = Path(__file__).resolve().parents[1] / "BreastUSSegment"
    result = subprocess.run([sys.executable, "-c", code], cwd=library, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
