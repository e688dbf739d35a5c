"""The hybrid network: shapes and dtypes for both paper backbones, variants, pooling, local weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from survival_model.config import NetworkParams
from survival_model.errors import ConfigError
from survival_model.models.network import HybridSurvivalNet

BATCH, SLICES, CHANNELS, SIZE, TABULAR = 2, 3, 4, 64, 7


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, SLICES, CHANNELS, SIZE, SIZE, generator=generator)
    return images, torch.randn(BATCH, TABULAR, generator=generator)


@pytest.mark.parametrize("backbone", ["resnet50", "efficientnet_b0"])
@pytest.mark.parametrize(("objective", "outputs"), [("cox", 1), ("mse", 1), ("weibull", 2)])
def test_the_paper_backbones_give_one_output_row_per_patient(backbone: str, objective: str, outputs: int) -> None:
    torch.manual_seed(0)
    net = HybridSurvivalNet(NetworkParams(backbone=backbone, objective=objective), CHANNELS, TABULAR).eval()
    images, tabular = inputs()
    with torch.no_grad():
        out = net(images, tabular)
    assert out.shape == (BATCH, outputs) and out.dtype == torch.float32 and torch.isfinite(out).all()
    embedding = net.embed_images(images)
    assert embedding.shape == (BATCH, {"resnet50": 2048, "efficientnet_b0": 1280}[backbone])


def test_attention_pooling_weights_the_slices_and_mean_pooling_ignores_their_order() -> None:
    torch.manual_seed(0)
    images, tabular = inputs()
    mean = HybridSurvivalNet(NetworkParams(backbone="resnet18", pooling="mean"), CHANNELS, TABULAR).eval()
    attention = HybridSurvivalNet(NetworkParams(backbone="resnet18", pooling="attention"), CHANNELS, TABULAR).eval()
    reversed_slices = images.flip(1)
    with torch.no_grad():
        assert torch.allclose(mean(images, tabular), mean(reversed_slices, tabular), atol=1e-5)
        assert torch.allclose(attention(images, tabular), attention(reversed_slices, tabular), atol=1e-5)
        assert attention(images, tabular).shape == (BATCH, 1)
        # one slice changed moves the pooled embedding
        changed = images.clone()
        changed[:, 0] += 1.0
        assert not torch.allclose(attention.embed_images(changed), attention.embed_images(images))


def test_tabular_only_and_image_only_variants_use_one_branch() -> None:
    images, tabular = inputs()
    tab = HybridSurvivalNet(NetworkParams(variant="tabular"), 0, TABULAR)
    assert tab.backbone is None and tab(None, tabular).shape == (BATCH, 1)
    img = HybridSurvivalNet(NetworkParams(backbone="resnet18", variant="image"), CHANNELS, 0)
    assert img.tabular is None and img(images, None).shape == (BATCH, 1)
    with pytest.raises(ValueError, match="needs the tabular vector"):
        HybridSurvivalNet(NetworkParams(backbone="resnet18"), CHANNELS, TABULAR)(images, None)
    with pytest.raises(ValueError, match=r"images must be \(batch, slices"):
        img.embed_images(images[:, 0])


def test_pretrained_weights_come_from_a_local_file_with_the_first_convolution_adapted(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = timm.create_model("resnet18", pretrained=False)  # an ImageNet-shaped checkpoint: 3 channels, 1000 classes
    weights = tmp_path / "resnet18.safetensors"
    save_file(source.state_dict(), str(weights))
    net = HybridSurvivalNet(NetworkParams(backbone="resnet18", pretrained_weights=weights), CHANNELS, TABULAR)
    assert net.backbone is not None
    loaded = net.backbone.state_dict()
    assert torch.equal(loaded["layer4.1.conv2.weight"], source.state_dict()["layer4.1.conv2.weight"])
    assert loaded["conv1.weight"].shape[1] == CHANNELS  # 3 -> 4 input channels, adapted by timm
    random = HybridSurvivalNet(NetworkParams(backbone="resnet18"), CHANNELS, TABULAR)
    assert random.backbone is not None
    assert not torch.equal(random.backbone.state_dict()["layer4.1.conv2.weight"], loaded["layer4.1.conv2.weight"])


def test_bad_settings_are_refused_with_the_key() -> None:
    with pytest.raises(ConfigError, match="'resnet51' is not a timm model name"):
        HybridSurvivalNet(NetworkParams(backbone="resnet51"), CHANNELS, TABULAR)
    with pytest.raises(ConfigError, match="pretrained_weights: file not found"):
        HybridSurvivalNet(NetworkParams(backbone="resnet18", pretrained_weights=Path("/nonexistent.pth")),
                          CHANNELS, TABULAR)
    with pytest.raises(ConfigError, match="at least one tabular feature"):
        HybridSurvivalNet(NetworkParams(variant="tabular"), 0, 0)
