"""The deeper Attention U-Net: shapes, variants, attention coefficients, initialisation."""

import pytest
import torch

from BreastUSSegmentLib.model import AttentionGate, AttentionUNet, ModelConfig, count_parameters


@pytest.mark.parametrize("base_channels,depth", [(4, 1), (4, 3), (8, 5), (2, 6)])
def test_output_and_attention_shapes(base_channels, depth):
    config = ModelConfig(base_channels=base_channels, depth=depth)
    model = AttentionUNet(config).eval()
    size = 2**depth * 3
    x = torch.randn(2, 1, size, size + 2**depth)
    with torch.no_grad():
        logits, attention, _ = model(x)
    assert logits.shape == (2, 1, size, size + 2**depth)
    assert len(attention) == depth
    for index, coefficients in enumerate(attention):
        scale = 2 ** (depth - 1 - index)  # coarsest gate first
        assert coefficients.shape == (2, 1, x.shape[-2] // scale, x.shape[-1] // scale)
        assert float(coefficients.min()) >= 0.0 and float(coefficients.max()) <= 1.0


def test_channels_double_per_level_and_default_is_deeper_than_unet():
    config = ModelConfig()
    assert config.depth == 5 > 4  # one pooling more than the original U-Net
    assert config.channels == (16, 32, 64, 128, 256, 512)
    model = AttentionUNet(config)
    assert len(model.encoders) == 5 and len(model.decoders) == 5
    assert model.bottleneck[0].out_channels == 512


def test_default_parameter_count_is_documented_value():
    # README documents 8.74 M parameters for the default (bilinear up-sampling) configuration and 7.87 M
    # for the transposed-convolution one of the models shipped before it.
    assert round(count_parameters(AttentionUNet()) / 1e6, 2) == 8.74
    assert round(count_parameters(AttentionUNet(ModelConfig(upsample="transposed"))) / 1e6, 2) == 7.87


def test_input_channels_and_logits_unbounded():
    model = AttentionUNet(ModelConfig(in_channels=3, base_channels=4, depth=2)).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 32, 32) * 10).logits
    assert logits.shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="expected input of shape"):
        model(torch.randn(1, 1, 32, 32))


def test_size_not_multiple_is_rejected():
    model = AttentionUNet(ModelConfig(base_channels=4, depth=3))
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.randn(1, 1, 30, 32))


@pytest.mark.parametrize("bad", [dict(depth=0), dict(base_channels=0), dict(dropout=1.0), dict(in_channels=0)])
def test_invalid_configuration(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad)


def test_config_round_trip_and_unknown_keys():
    config = ModelConfig(base_channels=8, depth=4, dropout=0.2, batch_norm=False)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**config.to_dict(), "width": 3})


def test_he_normal_initialisation():
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(base_channels=32, depth=2))
    conv = model.encoders[1][0]  # 32 -> 64 channels, 3x3
    expected_std = (2.0 / (conv.out_channels * 9)) ** 0.5  # fan_out mode
    assert conv.weight.detach().std().item() == pytest.approx(expected_std, rel=0.05)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None)


def test_dropout_active_only_in_training():
    model = AttentionUNet(ModelConfig(base_channels=4, depth=2, dropout=0.5))
    x = torch.randn(1, 1, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x).logits, model(x).logits)


def test_attention_gate_reweights_skip_and_resamples_coarse_gate():
    gate = AttentionGate(gate_channels=6, skip_channels=4, inter_channels=2)
    skip = torch.randn(1, 4, 16, 16)
    gating = torch.randn(1, 6, 8, 8)  # coarser gating signal is resampled to the skip grid
    gated, coefficients = gate(skip, gating)
    assert coefficients.shape == (1, 1, 16, 16)
    assert torch.allclose(gated, skip * coefficients)
    with torch.no_grad():
        gate.psi.bias.fill_(-50.0)  # gate closed: skip features suppressed
        gated, coefficients = gate(skip, gating)
    assert float(coefficients.max()) < 1e-10 and float(gated.abs().max()) < 1e-8
