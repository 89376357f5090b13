"""Deep supervision: auxiliary masks from the coarser decoder levels, trained but never exported."""

import pytest
import torch

from BreastUSSegmentLib.model import AttentionUNet, ModelConfig
from BreastUSSegmentLib.weights import load_model
from breastus_training import cli
from breastus_training.deep_supervision import DeeplySupervisedUNet, deep_supervision_loss

from busi_synthetic import write_synthetic_split

CONFIG = ModelConfig(base_channels=4, depth=3, dropout=0.0)
TINY = ["--input-size", "64", "--base-channels", "4", "--depth", "2", "--batch-size", "4", "--no-progress",
        "--patience", "0", "--lr", "0.01"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_split(tmp_path_factory.mktemp("deep_supervision"))


def train(dataset, run_dir, *extra):
    data, split = dataset
    return cli.main(["train", "--data", str(data), "--split", str(split), "--run-dir", str(run_dir), *TINY, *extra])


def test_one_auxiliary_mask_per_coarser_level_at_the_input_size_and_the_output_unchanged():
    torch.manual_seed(0)
    model = AttentionUNet(CONFIG).eval()
    supervised = DeeplySupervisedUNet(model)
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        logits, _, _, auxiliary = supervised(images)
        plain = model(images).logits
    assert len(auxiliary) == CONFIG.depth - 1
    assert all(level.shape == (2, 1, 32, 32) for level in auxiliary)
    assert torch.equal(logits, plain)
    # finest first: the first auxiliary mask reads the decoder level just above the output
    with torch.no_grad():
        supervised(images)
        finest_features = {}
        model.decoders[-2].register_forward_hook(lambda _m, _i, output: finest_features.update(x=output[0]))
        model(images)
        expected = torch.nn.functional.interpolate(supervised.auxiliary_heads[-1](finest_features["x"]),
                                                   size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(auxiliary[0], expected)


def test_lesion_logits_pass_through_the_wrapper():
    model = AttentionUNet(ModelConfig(base_channels=4, depth=2, dropout=0.0, lesion_head=True)).eval()
    with torch.no_grad():
        logits, _, lesion, auxiliary = DeeplySupervisedUNet(model)(torch.rand(3, 1, 16, 16))
    assert logits.shape == (3, 1, 16, 16) and len(auxiliary) == 1 and lesion.shape == (3,)


def test_loss_halves_the_weight_of_each_coarser_level():
    def mean_prediction(logits, _masks):
        return logits.mean()

    masks = torch.zeros(1, 1, 4, 4)
    levels = [torch.full((1, 1, 4, 4), 2.0), torch.full((1, 1, 4, 4), 8.0), torch.full((1, 1, 4, 4), 16.0)]
    loss = deep_supervision_loss(mean_prediction, levels, masks, weight=0.4)
    assert float(loss) == pytest.approx(0.4 * (0.5 * 2 + 0.25 * 8 + 0.125 * 16))


def test_training_with_deep_supervision_changes_the_model_exports_it_plain_and_resumes_exactly(dataset, tmp_path):
    assert train(dataset, tmp_path / "plain", "--epochs", "2") == 0
    assert train(dataset, tmp_path / "deep", "--epochs", "2", "--deep-supervision", "1") == 0
    (plain, _), (deep, card) = load_model(tmp_path / "plain" / "best.safetensors"), \
        load_model(tmp_path / "deep" / "best.safetensors")
    assert set(deep.state_dict()) == set(plain.state_dict())  # no auxiliary head in the exported weights
    assert card.training["deep_supervision"] == 1.0
    # same seed and data: only the auxiliary losses can make the decoder differ
    assert not torch.allclose(deep.decoders[0].conv[0].weight, plain.decoders[0].conv[0].weight)

    assert train(dataset, tmp_path / "resumed", "--epochs", "1", "--deep-supervision", "1") == 0
    assert train(dataset, tmp_path / "resumed", "--epochs", "2", "--deep-supervision", "1") == 0
    expected = torch.load(tmp_path / "deep" / "checkpoint_last.pt", weights_only=True)
    actual = torch.load(tmp_path / "resumed" / "checkpoint_last.pt", weights_only=True)
    assert set(actual["auxiliary_heads"]) == {"0.weight", "0.bias"}
    for part in ("model", "auxiliary_heads"):
        for key, value in expected[part].items():
            assert torch.equal(actual[part][key], value), f"{part}.{key}"


def test_deep_supervision_settings_are_checked(dataset, tmp_path, capsys):
    assert train(dataset, tmp_path / "negative", "--epochs", "1", "--deep-supervision", "-1") == 2
    assert "--deep-supervision must be a number >= 0, got -1.0" in capsys.readouterr().err
    assert train(dataset, tmp_path / "nan", "--epochs", "1", "--deep-supervision", "nan") == 2
    assert "--deep-supervision must be a number >= 0, got nan" in capsys.readouterr().err
    assert train(dataset, tmp_path / "shallow", "--epochs", "1", "--deep-supervision", "1", "--depth", "1") == 2
    assert "--deep-supervision needs --depth 2 or more" in capsys.readouterr().err
    assert train(dataset, tmp_path / "changed", "--epochs", "1") == 0
    assert train(dataset, tmp_path / "changed", "--epochs", "2", "--deep-supervision", "1") != 0
    assert "deep_supervision: run has 0.0, requested 1.0" in capsys.readouterr().err
