"""The hybrid survival network: a 2D timm backbone over K slices around the main lesion and a tabular branch.

Input per patient: ``images`` of shape ``(K, C, S, S)`` (K slices, C channels = the sequences and
optionally region masks, S x S pixels) and ``tabular`` of shape ``(T,)`` (the fitted tabular pipeline's
output). The backbone (any timm model name; ``resnet50`` and ``efficientnet_b0`` are the paper's) embeds
every slice with its classifier removed (``num_classes=0``: globally pooled features); the K slice
embeddings become one image embedding by their mean or by attention weights (Ilse et al. 2018, gated-free
form: a small MLP scores each slice, softmax over the slices).

Two fusions (``NetworkParams.fusion``):

- ``additive`` (default): output = tabular term + image term. The tabular term is linear in the tabular
  vector (a Cox model for ``cox``; hidden layers only if ``tabular_hidden`` asks for them); the image term
  is a narrow bottleneck (``image_bottleneck`` units, dropout) whose last layer starts at exactly zero, so
  an untrained image branch leaves the tabular model unchanged. The training fits the tabular term first
  and then the image term on top of it (``survival_model.training.loop``): a backbone trained from scratch
  on a few hundred patients cannot drown the clinical signal, and it only moves the risk where the images
  add something the tabular vector does not hold.
- ``concat``: the image embedding and a tabular MLP embedding concatenated into a head MLP, trained
  jointly (the earlier design; kept for comparison in ``benchmarks/validity.py``).

Outputs (``output_size``): 1 for ``cox`` (a log-risk score: higher = earlier death) and ``mse`` (a
predicted survival time on the scale the training stage chooses), 2 for ``weibull`` (log scale, log
shape). The ``tabular`` and ``image`` variants drop the other branch (ablations). A ``cox`` network
subtracts ``output_offset`` (its fold's mean risk on the fold's training patients, set after training and
stored with the weights), so the risks of different folds are on one scale.

Pretrained weights come only from a local file the user gives (``NetworkParams.pretrained_weights``),
through timm's own loader (``pretrained_cfg_overlay={"file": ...}``), which adapts the first
convolution to ``in_chans`` and drops the ImageNet classifier; nothing is downloaded.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from survival_model.config import NetworkParams
from survival_model.errors import ConfigError

OUTPUTS = {"cox": 1, "mse": 1, "weibull": 2}


def create_backbone(name: str, in_chans: int, weights: Path | None = None,
                    stages: Sequence[int] | None = None) -> nn.Module:
    """A timm model without classifier: globally pooled features, or with ``stages`` the feature maps of those
    stages (timm's ``features_only``; the later stages are not built). Weights from a local file only."""
    if name not in timm.list_models():
        raise ConfigError(f"training.network.backbone: {name!r} is not a timm model name "
                          "(e.g. resnet50, efficientnet_b0; see timm.list_models())")
    kwargs: dict[str, Any] = {"features_only": True, "out_indices": tuple(stages)} if stages is not None \
        else {"num_classes": 0}
    if weights is None:
        try:
            model: nn.Module = timm.create_model(name, pretrained=False, in_chans=in_chans, **kwargs)
        except (IndexError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"training.network.feature_stages {list(stages or [])} do not fit {name}: "
                              f"{str(exc).splitlines()[0]}") from None
        return model
    if not Path(weights).is_file():
        raise ConfigError(f"training.network.pretrained_weights: file not found: {weights}")
    try:
        model = timm.create_model(name, pretrained=True, in_chans=in_chans,
                                  pretrained_cfg_overlay={"file": str(weights)}, **kwargs)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ConfigError(f"training.network.pretrained_weights: {weights} does not fit {name}: "
                          f"{str(exc).splitlines()[0]}") from None
    return model


def region_pool(feature_maps: Sequence[torch.Tensor], masks: torch.Tensor, batch: int) -> torch.Tensor:
    """Masked average pooling: every feature map ``(B*K, F, h, w)`` averaged inside each region mask ``(B*K, R,
    H, W)`` (resized to ``h x w`` as area fractions) and over the whole window, weighted by the region's area in
    each of the K slices (a slice without the region adds nothing) -> ``(B, (R + 1) * sum F)``."""
    pooled = []
    for fm in feature_maps:
        weights = torch.nn.functional.adaptive_avg_pool2d(masks.to(fm.dtype), (int(fm.shape[-2]), int(fm.shape[-1])))
        weights = torch.cat([weights, torch.ones_like(weights[:, :1])], dim=1)  # + the whole window
        sums = torch.einsum("nrhw,nchw->nrc", weights, fm)
        sums = sums.reshape(batch, -1, *sums.shape[1:]).sum(dim=1)  # over the K slices
        areas = weights.sum(dim=(2, 3)).reshape(batch, -1, weights.shape[1]).sum(dim=1)
        pooled.append((sums / (areas[..., None] + 1e-3)).flatten(1))
    return torch.cat(pooled, dim=1)


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.GELU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class ImageTerm(nn.Module):
    """The additive fusion's image term: (optionally standardised) pooled features, dropout, a narrow bottleneck
    and optionally a linear path beside it; both end in layers that start at exactly zero."""

    def __init__(self, features: int, params: NetworkParams, outputs: int) -> None:
        super().__init__()
        # momentum 1: the running statistics are those of the last training step, i.e. of the whole training set
        # (steps are full-batch) as the backbone now stands; an average over the steps (momentum None) lagged
        # behind a backbone that moves fast and cost a planted-signal test its signal (tests/training)
        self.standardise: nn.Module = nn.BatchNorm1d(features, affine=False, momentum=1.0) \
            if params.image_standardise else nn.Identity()
        self.dropout = nn.Dropout(params.dropout)
        last = nn.Linear(params.image_bottleneck, outputs)
        self.bottleneck = nn.Sequential(nn.Linear(features, params.image_bottleneck), nn.GELU(),
                                        nn.Dropout(params.dropout), last)
        self.linear: nn.Linear | None = nn.Linear(features, outputs) if params.image_linear else None
        for layer in (last, self.linear):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def output_layers(self) -> list[nn.Linear]:
        """The layers whose outputs add up to the term (negating them negates it)."""
        return [m for m in (self.bottleneck[-1], self.linear) if isinstance(m, nn.Linear)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.dropout(self.standardise(x))
        out: torch.Tensor = self.bottleneck(z)
        return out + self.linear(z) if self.linear is not None else out


class AttentionPool(nn.Module):
    """Softmax-weighted mean of slice embeddings, the weights scored by a small MLP."""

    def __init__(self, features: int, hidden: int = 128) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, K, F) -> (B, F)
        weights = torch.softmax(self.score(x).squeeze(-1), dim=1)
        return torch.einsum("bk,bkf->bf", weights, x)


def additive_tabular_term(params: NetworkParams, n_tabular: int, outputs: int) -> nn.Sequential:
    """The additive fusion's tabular term over ``n_tabular`` inputs: linear (a Cox model for ``cox``) unless
    ``params.tabular_hidden`` asks for hidden layers."""
    widths = [n_tabular, *params.tabular_hidden]
    return nn.Sequential(_mlp(widths, params.dropout), nn.Linear(widths[-1], outputs))


class HybridSurvivalNet(nn.Module):
    """Backbone over slices + tabular branch -> risk (see the module docstring)."""

    def __init__(self, params: NetworkParams, in_chans: int, n_tabular: int, region_channels: int = 0) -> None:
        super().__init__()
        self.variant = params.variant
        self.fusion = params.fusion
        #: With ``image_features: regions``, the last ``region_channels`` input channels are region masks.
        self.region_channels = region_channels if params.image_features == "regions" else 0
        self.output_size = OUTPUTS[params.objective]
        #: Subtracted from every output: a ``cox`` fold's mean risk on its training patients (a Cox risk is
        #: defined up to a constant; centring puts every fold on one scale). Zero for other objectives.
        self.register_buffer("output_offset", torch.zeros(self.output_size))
        #: ``region_intensities``: the leading (sequence) input channels pooled inside the regions as they are.
        self.intensity_channels = 0
        self.backbone: nn.Module | None = None
        self.pool: nn.Module | None = None
        features = 0
        if params.variant in ("hybrid", "image"):
            if in_chans < 1:
                raise ConfigError("the image branch needs at least one input channel")
            if params.image_features == "regions":
                if region_channels < 1:
                    raise ConfigError("training.network.image_features: regions pools the image features inside the "
                                      "region masks: give training.inputs.mask_channels (e.g. [et, netc, snfh]), or "
                                      "use image_features: global")
                self.backbone = create_backbone(params.backbone, in_chans, params.pretrained_weights,
                                                params.feature_stages)
                widths = sum(self.backbone.feature_info.channels())  # type: ignore[union-attr,operator]
                self.intensity_channels = in_chans - region_channels if params.region_intensities else 0
                features = (widths + self.intensity_channels) * (region_channels + 1)
            else:
                self.backbone = create_backbone(params.backbone, in_chans, params.pretrained_weights)
                # timm's pooled output width: ``head_hidden_size`` where a model has a pre-logits head
                # (MobileNetV3's conv_head), else ``num_features``.
                features = getattr(self.backbone, "head_hidden_size", None) or getattr(self.backbone, "num_features")  # noqa: B009
                self.pool = AttentionPool(features) if params.pooling == "attention" else None
        self.tabular: nn.Module | None = None
        self.image_head: ImageTerm | None = None
        self.head: nn.Module | None = None
        uses_tabular = params.variant in ("hybrid", "tabular")
        if uses_tabular and n_tabular < 1:
            raise ConfigError("the tabular branch needs at least one tabular feature")
        if params.fusion == "additive":
            if uses_tabular:
                self.tabular = additive_tabular_term(params, n_tabular, self.output_size)
            if self.backbone is not None:  # the image term, starting at exactly zero
                self.image_head = ImageTerm(features, params, self.output_size)
        else:
            width = features
            if uses_tabular:
                hidden = list(params.tabular_hidden) or [n_tabular]
                self.tabular = _mlp([n_tabular, *hidden], params.dropout)
                width += hidden[-1]
            self.head = nn.Sequential(_mlp([width, *params.head_hidden], params.dropout),
                                      nn.Linear(([width, *params.head_hidden])[-1], self.output_size))

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, K, C, S, S) -> (B, F): every slice through the backbone, then pooled over the K slices (global
        features: their mean or attention; region features: :func:`region_pool`)."""
        if self.backbone is None:
            raise ValueError("this network has no image branch")
        if images.ndim != 5:
            raise ValueError(f"images must be (batch, slices, channels, height, width), got {tuple(images.shape)}")
        b, k = images.shape[:2]
        if self.region_channels:
            flat = images.flatten(0, 1)
            maps = list(self.backbone(flat))
            if self.intensity_channels:
                maps.append(flat[:, :self.intensity_channels])
            return region_pool(maps, flat[:, -self.region_channels:], b)
        per_slice: torch.Tensor = self.backbone(images.flatten(0, 1)).reshape(b, k, -1)
        pooled: torch.Tensor = self.pool(per_slice) if self.pool is not None else per_slice.mean(dim=1)
        return pooled

    def embed_tabular(self, tabular: torch.Tensor) -> torch.Tensor:
        """(B, T) -> the tabular branch's output: the tabular term ``(B, outputs)`` (additive fusion) or its
        embedding ``(B, H)`` (concat)."""
        if self.tabular is None:
            raise ValueError("this network has no tabular branch")
        out: torch.Tensor = self.tabular(tabular)
        return out

    def image_term(self, image_embedding: torch.Tensor) -> torch.Tensor:
        """The additive image term ``(B, outputs)`` from the pooled image embedding."""
        if self.image_head is None:
            raise ValueError("this network has no additive image term")
        out: torch.Tensor = self.image_head(image_embedding)
        return out

    def combine(self, image_embedding: torch.Tensor | None, tabular_embedding: torch.Tensor | None) -> torch.Tensor:
        """The output from the branches' embeddings (a permutation test reuses the branch it does not change)."""
        if self.head is not None:
            parts = [p for p in (image_embedding, tabular_embedding) if p is not None]
            out: torch.Tensor = self.head(torch.cat(parts, dim=1))
        else:
            terms = [t for t in (tabular_embedding,
                                 self.image_term(image_embedding) if image_embedding is not None else None)
                     if t is not None]
            out = terms[0] if len(terms) == 1 else terms[0] + terms[1]
        offset: torch.Tensor = self.output_offset  # type: ignore[assignment]
        return out - offset.to(out.dtype)

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

    def image_parameters(self) -> list[nn.Parameter]:
        """The parameters of the image branch (backbone, pooling, image term)."""
        return [p for m in (self.backbone, self.pool, self.image_head) if m is not None for p in m.parameters()]

    def tabular_parameters(self) -> list[nn.Parameter]:
        """The parameters of the tabular branch."""
        return list(self.tabular.parameters()) if self.tabular is not None else []
