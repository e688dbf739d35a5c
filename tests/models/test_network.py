"""The hybrid network: shapes and dtypes for both paper backbones, variants, pooling, local weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from safetensors.torch import save_file

from survival_model.config import NetworkParams
from survival_model.errors import ConfigError
from survival_model.models.network import HybridSurvivalNet, ImageTerm


def global_net(**settings: Any) -> NetworkParams:
    """Network settings with the image branch's globally pooled features (these tests were written for them;
    the default pools region features, which needs mask channels)."""
    return NetworkParams(**{"image_features": "global", **settings})

BATCH, SLICES, CHANNELS, SIZE, TABULAR = 2, 3, 4, 64, 7


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, SLICES, CHANNELS, SIZE, SIZE, generator=generator)
    return images, torch.randn(BATCH, TABULAR, generator=generator)


@pytest.mark.parametrize("backbone", ["resnet50", "efficientnet_b0"])
@pytest.mark.parametrize(("objective", "outputs"), [("cox", 1), ("mse", 1), ("weibull", 2)])
def test_the_paper_backbones_give_one_output_row_per_patient(backbone: str, objective: str, outputs: int) -> None:
    torch.manual_seed(0)
    net = HybridSurvivalNet(global_net(backbone=backbone, objective=objective), CHANNELS, TABULAR).eval()
    images, tabular = inputs()
    with torch.no_grad():
        out = net(images, tabular)
    assert out.shape == (BATCH, outputs) and out.dtype == torch.float32 and torch.isfinite(out).all()
    embedding = net.embed_images(images)
    assert embedding.shape == (BATCH, {"resnet50": 2048, "efficientnet_b0": 1280}[backbone])


def test_attention_pooling_weights_the_slices_and_mean_pooling_ignores_their_order() -> None:
    torch.manual_seed(0)
    images, tabular = inputs()
    concat = {"backbone": "resnet18", "fusion": "concat"}  # an additive image term starts at zero: compare heads
    mean = HybridSurvivalNet(global_net(**concat, pooling="mean"), CHANNELS, TABULAR).eval()  # type: ignore[arg-type]
    attention = HybridSurvivalNet(global_net(**concat, pooling="attention"), CHANNELS, TABULAR).eval()  # type: ignore[arg-type]
    reversed_slices = images.flip(1)
    with torch.no_grad():
        assert torch.allclose(mean(images, tabular), mean(reversed_slices, tabular), atol=1e-5)
        assert torch.allclose(attention(images, tabular), attention(reversed_slices, tabular), atol=1e-5)
        assert attention(images, tabular).shape == (BATCH, 1)
        # one slice changed moves the pooled embedding
        changed = images.clone()
        changed[:, 0] += 1.0
        assert not torch.allclose(attention.embed_images(changed), attention.embed_images(images))


def test_the_additive_fusion_starts_as_the_tabular_term_and_adds_an_image_term() -> None:
    torch.manual_seed(0)
    images, tabular = inputs()
    net = HybridSurvivalNet(global_net(backbone="resnet18", image_bottleneck=4), CHANNELS, TABULAR).eval()
    assert net.head is None and isinstance(net.tabular, torch.nn.Sequential)
    linear = [m for m in net.tabular.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 1 and linear[0].in_features == TABULAR  # tabular_hidden [] : a linear (Cox) term
    with torch.no_grad():
        assert torch.equal(net(images, tabular), net.embed_tabular(tabular))  # the image term starts at zero
        assert net.image_head is not None
        last = [m for m in net.image_head.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.fill_(0.1)
        moved = net(images, tabular)
        assert not torch.equal(moved, net.embed_tabular(tabular))
        assert torch.allclose(moved, net.embed_tabular(tabular) + net.image_term(net.embed_images(images)))
        net.output_offset.fill_(2.5)  # type: ignore[operator]
        assert torch.allclose(net(images, tabular), moved - 2.5)  # a fold's centring is part of the model
    assert {id(p) for p in net.image_parameters()}.isdisjoint(id(p) for p in net.tabular_parameters())
    assert len(net.image_parameters()) + len(net.tabular_parameters()) == len(list(net.parameters()))
    assert "output_offset" in net.state_dict()  # saved with the weights


def test_region_features_pool_early_feature_maps_inside_each_mask_and_follow_the_lesion() -> None:
    torch.manual_seed(0)
    images, _ = inputs()
    masks = torch.zeros(BATCH, SLICES, 2, SIZE, SIZE)
    masks[:, :, 0, 16:32, 16:32] = 1  # region 1 on every slice
    masks[:, 1, 1, 40:48, 40:48] = 1  # region 2 on the middle slice only
    with_masks = torch.cat([images, masks], dim=2)
    params = NetworkParams(backbone="mobilenetv3_small_050", image_features="regions", feature_stages=[0, 1],
                           region_intensities=False)
    net = HybridSurvivalNet(params, CHANNELS + 2, TABULAR, region_channels=2).eval()
    embedding = net.embed_images(with_masks)
    assert embedding.shape == (BATCH, (16 + 8) * 3)  # (stage 0 + stage 1 channels) x (2 regions + the window)
    brighter = with_masks.clone()
    brighter[:, :, :CHANNELS, 16:32, 16:32] += 3.0  # brighter only inside region 1
    moved = (net.embed_images(brighter) - embedding).abs().reshape(BATCH, 3, -1).mean(dim=(0, 2))
    assert moved[0] > 10 * moved[1]  # region 1's features change, region 2's (elsewhere) hardly
    with pytest.raises(ConfigError, match="mask_channels"):
        HybridSurvivalNet(params, CHANNELS, TABULAR, region_channels=0)


def test_region_intensities_are_the_input_sequences_means_inside_each_region() -> None:
    torch.manual_seed(0)
    images, _ = inputs()
    masks = torch.zeros(BATCH, SLICES, 1, SIZE, SIZE)
    masks[:, 1:, 0, 8:24, 8:40] = 1  # one region, on two of the three slices
    with_masks = torch.cat([images, masks], dim=2)
    params = NetworkParams(backbone="mobilenetv3_small_050", image_features="regions", feature_stages=[0, 1],
                           region_intensities=True)
    net = HybridSurvivalNet(params, CHANNELS + 1, TABULAR, region_channels=1).eval()
    embedding = net.embed_images(with_masks)
    backbone = (16 + 8) * 2  # the backbone's maps inside the region and over the window
    assert embedding.shape == (BATCH, backbone + CHANNELS * 2)
    inside = images[:, 1:, :, 8:24, 8:40].mean(dim=(1, 3, 4))
    assert torch.allclose(embedding[:, backbone:backbone + CHANNELS], inside, atol=1e-4)
    assert torch.allclose(embedding[:, backbone + CHANNELS:], images.mean(dim=(1, 3, 4)), atol=1e-3)
    plain = HybridSurvivalNet(params.model_copy(update={"region_intensities": False}), CHANNELS + 1, TABULAR,
                              region_channels=1)
    assert plain.embed_images(with_masks).shape == (BATCH, backbone)


def test_the_standardised_image_term_ignores_feature_units_and_its_linear_path_starts_at_zero() -> None:
    torch.manual_seed(0)
    params = global_net(image_standardise=True, image_linear=True, image_bottleneck=4, dropout=0.0)
    term = ImageTerm(6, params, 1).eval()
    features = torch.randn(32, 6) * torch.tensor([1.0, 10.0, 0.5, 1.0, 5.0, 100.0]) + 3.0
    assert torch.equal(term(features), torch.zeros(32, 1))  # both paths start at exactly zero
    assert len(term.output_layers()) == 2
    with torch.no_grad():
        for layer in term.output_layers():
            layer.weight.normal_()
    term.train()
    rescaled = features * torch.tensor([1000.0, 0.1, 7.0, 1.0, 2.0, 0.5]) - 40.0  # other units, other offsets
    assert torch.allclose(term(features), term(rescaled), atol=1e-3)
    term.eval()  # prediction: the last training batch's statistics (a full-batch step: the training set's)
    norm = term.standardise
    assert isinstance(norm, torch.nn.BatchNorm1d)
    assert torch.allclose(norm.running_mean, rescaled.mean(0))  # type: ignore[arg-type]
    eval_out = term(rescaled)  # the same standardisation up to the unbiased variance (32 / 31)
    assert torch.allclose(eval_out, term.train()(rescaled), rtol=0.05, atol=1e-3)
    plain = ImageTerm(6, global_net(image_bottleneck=4, image_standardise=False), 1)
    assert isinstance(plain.standardise, torch.nn.Identity) and plain.linear is None
    assert plain.output_layers() == [plain.bottleneck[-1]]


def test_tabular_only_and_image_only_variants_use_one_branch() -> None:
    images, tabular = inputs()
    tab = HybridSurvivalNet(global_net(variant="tabular"), 0, TABULAR)
    assert tab.backbone is None and tab(None, tabular).shape == (BATCH, 1)
    img = HybridSurvivalNet(global_net(backbone="resnet18", variant="image"), CHANNELS, 0)
    assert img.tabular is None and img(images, None).shape == (BATCH, 1)
    with pytest.raises(ValueError, match="needs the tabular vector"):
        HybridSurvivalNet(global_net(backbone="resnet18"), CHANNELS, TABULAR)(images, None)
    with pytest.raises(ValueError, match=r"images must be \(batch, slices"):
        img.embed_images(images[:, 0])


def test_pretrained_weights_come_from_a_local_file_with_the_first_convolution_adapted(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = timm.create_model("resnet18", pretrained=False)  # an ImageNet-shaped checkpoint: 3 channels, 1000 classes
    weights = tmp_path / "resnet18.safetensors"
    save_file(source.state_dict(), str(weights))
    net = HybridSurvivalNet(global_net(backbone="resnet18", pretrained_weights=weights), CHANNELS, TABULAR)
    assert net.backbone is not None
    loaded = net.backbone.state_dict()
    assert torch.equal(loaded["layer4.1.conv2.weight"], source.state_dict()["layer4.1.conv2.weight"])
    assert loaded["conv1.weight"].shape[1] == CHANNELS  # 3 -> 4 input channels, adapted by timm
    random = HybridSurvivalNet(global_net(backbone="resnet18"), CHANNELS, TABULAR)
    assert random.backbone is not None
    assert not torch.equal(random.backbone.state_dict()["layer4.1.conv2.weight"], loaded["layer4.1.conv2.weight"])


def test_bad_settings_are_refused_with_the_key() -> None:
    with pytest.raises(ConfigError, match="'resnet51' is not a timm model name"):
        HybridSurvivalNet(global_net(backbone="resnet51"), CHANNELS, TABULAR)
    with pytest.raises(ConfigError, match="pretrained_weights: file not found"):
        HybridSurvivalNet(global_net(backbone="resnet18", pretrained_weights=Path("/nonexistent.pth")),
                          CHANNELS, TABULAR)
    with pytest.raises(ConfigError, match="at least one tabular feature"):
        HybridSurvivalNet(global_net(variant="tabular"), 0, 0)
