"""Permutation importance and Grad-CAM of a fold ensemble."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest

from survival_model.config import NetworkParams
from survival_model.evaluation.explain import (
    EnsembleExplainer,
    cam_layer,
    cam_shares,
    explain_cam,
    permutation_importance,
)


def global_net(**settings: Any) -> NetworkParams:
    """Network settings with the image branch's globally pooled features (these tests were written for them;
    the default pools region features, which needs mask channels)."""
    return NetworkParams(**{"image_features": "global", **settings})


class LinearExplainer(EnsembleExplainer):
    """A known model: risk = 2 * (first image channel's mean) - 0.05 * kps; ``noise`` is unused."""

    def __init__(self) -> None:
        super().__init__(models=[], objective="cox", centre=0.0, channels=["t1c", "t2f"])

    def image_embeddings(self, images: Any, batch: int = 16) -> list[Any]:
        return [images[:, :, 0].mean(axis=(1, 2, 3))]

    def tabular_matrices(self, frame: pd.DataFrame) -> list[Any]:
        return [frame[["kps"]].to_numpy(dtype=float)]

    def embed_matrices(self, matrices: Sequence[Any]) -> list[Any]:
        return [m[:, 0] for m in matrices]

    def outputs(self, image_embeddings: Sequence[Any], tabular_embeddings: Sequence[Any]) -> Any:
        return (2 * image_embeddings[0] - 0.05 * tabular_embeddings[0])[:, None].astype(np.float32)

    def risk_and_days(self, outputs: Any) -> tuple[np.ndarray, None]:
        return outputs[:, 0].astype(float), None

    @property
    def tabular_columns(self) -> list[str]:
        return ["kps", "noise"]


def known_cohort(n: int = 120, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 0.1, (n, 2, 2, 4, 4)).astype(np.float32)
    images[:, :, 0] += rng.normal(0, 1, n)[:, None, None, None]
    frame = pd.DataFrame({"case_id": [f"p{i}" for i in range(n)], "kps": rng.choice([60, 70, 80, 90, 100], n),
                          "noise": rng.standard_normal(n)})
    risk = 2 * images[:, :, 0].mean(axis=(1, 2, 3)) - 0.05 * frame["kps"].to_numpy()
    event_time = rng.exponential(300 * np.exp(-risk)) + 1
    frame["time_days"], frame["event"] = np.minimum(event_time, 900), (event_time <= 900).astype(int)
    return frame, images


def test_the_inputs_the_model_uses_rank_above_those_it_ignores() -> None:
    frame, images = known_cohort()
    table = permutation_importance(LinearExplainer(), frame, images, repeats=5, seed=0)
    assert list(table.columns) == ["rank", "feature", "kind", "mean", "sd", "mse_rise_mean", "mse_rise_sd", "repeats"]
    by_feature = table.set_index("feature")
    assert set(by_feature.index) == {"kps", "noise", "t1c", "t2f"}
    assert by_feature.loc["t1c", "kind"] == "image" and by_feature.loc["kps", "kind"] == "tabular"
    assert by_feature.loc["t1c", "mean"] > 0.05 and by_feature.loc["kps", "mean"] > 0.02
    assert by_feature.loc["noise", "mean"] == 0 and by_feature.loc["t2f", "mean"] == 0  # the model ignores them
    assert list(table["rank"]) == [1, 2, 3, 4] and table["mean"].is_monotonic_decreasing
    assert np.isnan(by_feature.loc["kps", "mse_rise_mean"])  # a cox model predicts no days
    again = permutation_importance(LinearExplainer(), frame, images, repeats=5, seed=0)
    pd.testing.assert_frame_equal(table, again)  # seeded


def test_cam_shares_compare_energy_inside_the_region_with_its_area() -> None:
    cam = np.zeros((1, 4, 4), dtype=np.float32)
    cam[0, :2, :2] = 1.0  # all energy in the top-left quarter
    region = np.zeros_like(cam)
    region[0, :2, :] = 1  # the top half
    brain = np.ones_like(cam, dtype=bool)
    assert cam_shares(cam, region, brain) == (1.0, 0.5)
    brain[0, 3, :] = False  # outside the brain counts for neither
    assert cam_shares(cam, region, brain) == (1.0, pytest.approx(8 / 12))
    assert np.isnan(cam_shares(np.zeros_like(cam), region, brain)[0])


@pytest.mark.parametrize(("name", "module"), [("resnet18", "layer4"), ("mobilenetv3_small_050", "blocks.5"),
                                              ("efficientnet_b0", "blocks.6")])
def test_the_cam_layer_is_the_last_spatial_stage(name: str, module: str) -> None:
    import timm

    backbone = timm.create_model(name, pretrained=False, num_classes=0, in_chans=4)
    assert cam_layer(backbone) is backbone.get_submodule(module)


def test_grad_cam_maps_every_slice_of_every_patient() -> None:
    import torch

    from survival_model.models.network import HybridSurvivalNet
    from survival_model.training.folds import FoldModel

    torch.manual_seed(0)
    params = global_net(backbone="resnet18", variant="image", fusion="concat")  # an additive term starts at 0
    net = HybridSurvivalNet(params, in_chans=2, n_tabular=0).eval()
    explainer = EnsembleExplainer([FoldModel(net, None, {"network": {"objective": "cox"}})] * 2, "cox", 0.0,
                                  ["t1c", "t2f"])
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (3, 2, 2, 64, 64)).astype(np.float32)
    regions = {f"p{i}": {"wt": np.zeros((2, 64, 64), np.float32)} for i in range(3)}
    for r in regions.values():
        r["wt"][:, 16:48, 16:48] = 1
    frame = pd.DataFrame({"case_id": list(regions)})
    shares, cams = explain_cam(explainer, list(regions), frame, images, regions)
    assert cams.shape == (3, 2, 64, 64) and (cams >= 0).all() and cams.sum() > 0
    assert list(shares.columns) == ["case_id", "cam_share_tumour_edema", "area_share_tumour_edema", "ratio"]
    assert shares["area_share_tumour_edema"].tolist() == pytest.approx([0.25] * 3)
    assert shares["cam_share_tumour_edema"].between(0, 1).all()


@pytest.mark.parametrize("harmonise", [False, True])
def test_shuffling_the_encoded_columns_equals_shuffling_the_input_column(harmonise: bool) -> None:
    """The fast path (transform once, move the output columns of one input) and the slow one (shuffle the
    input, transform again) give the same embeddings; with ComBat only the slow one applies."""
    import torch

    from survival_model.config import TabularParams
    from survival_model.evaluation.explain import output_groups
    from survival_model.models.network import HybridSurvivalNet
    from survival_model.models.tabular import feature_names, fit_transform_fold
    from survival_model.training.folds import FoldModel
    from tests.evaluation.cohorts import clinical_cohort

    table, _ = clinical_cohort(80, 3)
    table.loc[::7, "kps"] = np.nan  # a missing-value indicator column too
    params = TabularParams(clinical=["age", "kps", "sex", "extracranial"], volumetric=True, harmonise=harmonise)
    pipeline, (matrix,) = fit_transform_fold(params, table)
    torch.manual_seed(0)
    net = HybridSurvivalNet(global_net(variant="tabular", tabular_hidden=[8], head_hidden=[4]), 0,
                            matrix.shape[1]).eval()
    explainer = EnsembleExplainer([FoldModel(net, pipeline, {})], "cox", 0.0, [])
    groups = output_groups(pipeline)
    if harmonise:
        assert groups is None
    else:
        assert groups is not None and sorted(i for g in groups.values() for i in g) == list(range(matrix.shape[1]))
        names = feature_names(pipeline)
        assert {names[i] for i in groups["sex"]} == {"categories__sex_female", "categories__sex_male"}
        assert len(groups["kps"]) == 2  # the value and its missing indicator
    order = np.random.default_rng(0).permutation(len(table))
    matrices = explainer.tabular_matrices(table)
    for column in ("kps", "sex", "vol_et_mm3"):
        fast = explainer.shuffled_tabular_embeddings(table, column, order, matrices)[0]
        shuffled = table.copy()
        shuffled[column] = table[column].to_numpy()[order]
        slow = explainer.tabular_embeddings(shuffled)[0]
        torch.testing.assert_close(fast, slow)
