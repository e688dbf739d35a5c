"""The hybrid survival network: a 2D timm backbone over K axial slices, pooled, fused with a tabular MLP.

Input per patient: ``images`` of shape ``(K, C, S, S)`` (K slices through the tumour, C channels = the
sequences and optionally region masks, S x S pixels) and ``tabular`` of shape ``(T,)`` (the fitted
tabular pipeline's output). The backbone (any timm model name; ``resnet50`` and ``efficientnet_b0`` are
the paper's) embeds every slice with its classifier removed (``num_classes=0``: globally pooled
features); the K slice embeddings become one image embedding by their mean or by attention weights
(Ilse et al. 2018, gated-free form: a small MLP scores each slice, softmax over the slices); the tabular
vector goes through an MLP; the two are concatenated into a head.

Outputs (``output_size``): 1 for ``cox`` (a log-risk score: higher = earlier death) and ``mse`` (a
predicted survival time on the scale the training stage chooses), 2 for ``weibull`` (log scale, log
shape). The ``tabular`` and ``image`` variants drop the other branch (ablations), same head.

Pretrained weights come only from a local file the user gives (``NetworkParams.pretrained_weights``),
through timm's own loader (``pretrained_cfg_overlay={"file": ...}``), which adapts the first
convolution to ``in_chans`` and drops the ImageNet classifier; nothing is downloaded.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import timm
import torch
from torch import nn

from survival_model.config import NetworkParams
from survival_model.errors import ConfigError

OUTPUTS = {"cox": 1, "mse": 1, "weibull": 2}


def create_backbone(name: str, in_chans: int, weights: Path | None = None) -> nn.Module:
    """A timm model without classifier (globally pooled features); weights from a local file only."""
    if name not in timm.list_models():
        raise ConfigError(f"training.network.backbone: {name!r} is not a timm model name "
                          "(e.g. resnet50, efficientnet_b0; see timm.list_models())")
    if weights is None:
        model: nn.Module = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
        return model
    if not Path(weights).is_file():
        raise ConfigError(f"training.network.pretrained_weights: file not found: {weights}")
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0, in_chans=in_chans,
                                  pretrained_cfg_overlay={"file": str(weights)})
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ConfigError(f"training.network.pretrained_weights: {weights} does not fit {name}: "
                          f"{str(exc).splitlines()[0]}") from None
    return model


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.GELU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class AttentionPool(nn.Module):
    """Softmax-weighted mean of slice embeddings, the weights scored by a small MLP."""

    def __init__(self, features: int, hidden: int = 128) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, K, F) -> (B, F)
        weights = torch.softmax(self.score(x).squeeze(-1), dim=1)
        return torch.einsum("bk,bkf->bf", weights, x)


class HybridSurvivalNet(nn.Module):
    """Backbone over slices + tabular MLP -> head (see the module docstring)."""

    def __init__(self, params: NetworkParams, in_chans: int, n_tabular: int) -> None:
        super().__init__()
        self.variant = params.variant
        self.output_size = OUTPUTS[params.objective]
        width = 0
        self.backbone: nn.Module | None = None
        self.pool: nn.Module | None = None
        if params.variant in ("hybrid", "image"):
            if in_chans < 1:
                raise ConfigError("the image branch needs at least one input channel")
            self.backbone = create_backbone(params.backbone, in_chans, params.pretrained_weights)
            # timm's pooled output width: ``head_hidden_size`` where a model has a pre-logits head
            # (MobileNetV3's conv_head), else ``num_features``.
            features: int = getattr(self.backbone, "head_hidden_size", None) or getattr(self.backbone, "num_features")  # noqa: B009
            self.pool = AttentionPool(features) if params.pooling == "attention" else None
            width += features
        self.tabular: nn.Module | None = None
        if params.variant in ("hybrid", "tabular"):
            if n_tabular < 1:
                raise ConfigError("the tabular branch needs at least one tabular feature")
            hidden = list(params.tabular_hidden) or [n_tabular]
            self.tabular = _mlp([n_tabular, *hidden], params.dropout)
            width += hidden[-1]
        self.head = nn.Sequential(_mlp([width, *params.head_hidden], params.dropout),
                                  nn.Linear(([width, *params.head_hidden])[-1], self.output_size))

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, K, C, S, S) -> (B, F): every slice through the backbone, then pooled over the K slices."""
        if self.backbone is None:
            raise ValueError("this network has no image branch")
        if images.ndim != 5:
            raise ValueError(f"images must be (batch, slices, channels, height, width), got {tuple(images.shape)}")
        b, k = images.shape[:2]
        per_slice: torch.Tensor = self.backbone(images.flatten(0, 1)).reshape(b, k, -1)
        pooled: torch.Tensor = self.pool(per_slice) if self.pool is not None else per_slice.mean(dim=1)
        return pooled

    def embed_tabular(self, tabular: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, H): the tabular branch."""
        if self.tabular is None:
            raise ValueError("this network has no tabular branch")
        out: torch.Tensor = self.tabular(tabular)
        return out

    def combine(self, image_embedding: torch.Tensor | None, tabular_embedding: torch.Tensor | None) -> torch.Tensor:
        """The head on the branches' embeddings (a permutation test reuses the branch it does not change)."""
        parts = [p for p in (image_embedding, tabular_embedding) if p is not None]
        out: torch.Tensor = self.head(torch.cat(parts, dim=1))
        return out

    def forward(self, images: torch.Tensor | None, tabular: torch.Tensor | None) -> torch.Tensor:
        image_embedding = tabular_embedding = None
        if self.backbone is not None:
            if images is None:
                raise ValueError(f"the {self.variant} network needs images")
            image_embedding = self.embed_images(images)
        if self.tabular is not None:
            if tabular is None:
                raise ValueError(f"the {self.variant} network needs the tabular vector")
            tabular_embedding = self.embed_tabular(tabular)
        return self.combine(image_embedding, tabular_embedding)
