"""What the trained fold ensemble looks at: permutation importance and Grad-CAM, on the locked test set.

**Permutation importance.** One input at a time is shuffled across the test patients (a raw feature-table
column, so a categorical field's one-hot columns move together; or one image channel, i.e. one
sequence, in every slice, as a group) and the ensemble predicts again; the importance is the drop in
Harrell's C-index (and, for ``mse`` models, the rise in the mean squared error of the predicted days on
uncensored patients), averaged over ``repeats`` shuffles with its SD. Written here rather than with
``sklearn.inspection.permutation_importance`` because the inputs are a table *and* an image array
(channel groups), and because a tabular shuffle reuses each fold's image embedding instead of running the
backbone again (the backbone is most of the cost).

**Grad-CAM** (captum's ``LayerGradCam``) on the backbone's last feature stage (timm's ``feature_info``),
for every test patient and every slice of its input, with respect to the model's risk (higher = earlier
death), averaged over the fold models and upsampled to the input size. The quantitative check compares
where the map's energy lies with the anatomy: the share of CAM energy inside the tumour + edema region
(whole tumour: NETC + SNFH + ET) against that region's share of the brain in the same slices (a map
that ignores the anatomy has energy share ~ area share).

It imports torch: ``survival_model.evaluation.stage`` and ``survival_model.registry.predict`` import it only where
they explain, so their stages' keys and reuse need no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from captum.attr import LayerAttribution, LayerGradCam

from survival_model.config import ImageInputParams
from survival_model.evaluation import plots
from survival_model.evaluation.scores import Outcome
from survival_model.features.scores import SCORE_INPUTS
from survival_model.imageio import atomic_directory, write_text
from survival_model.metrics import harrell_c
from survival_model.models.inputs import region_planes
from survival_model.models.losses import predicted_days, risk_score
from survival_model.models.tabular import feature_names

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from survival_model.training.folds import FoldModel

FloatArray = npt.NDArray[np.float64]


def output_groups(pipeline: Pipeline) -> dict[str, list[int]] | None:
    """Which output columns of a fitted tabular pipeline come from each input column (the value, its
    missing-value indicator, its one-hot categories), or None when the pipeline mixes rows or columns
    (a ComBat step) or a name cannot be traced back."""
    if pipeline.named_steps["harmonise"] != "passthrough":
        return None
    raw = input_columns(pipeline)
    scores = [f"score_{s}" for s in getattr(pipeline.named_steps["columns"], "scores", ())]
    groups: dict[str, list[int]] = {c: [] for c in [*raw, *scores]}  # a score's group: its own derived column
    for index, name in enumerate(feature_names(pipeline)):
        kind, _, rest = name.partition("__")
        rest = rest.removeprefix("missingindicator_") if kind == "numbers" else rest
        matches = [c for c in [*raw, *scores] if rest == c or (kind == "categories" and rest.startswith(f"{c}_"))]
        if not matches:
            return None
        groups[max(matches, key=len)].append(index)
    return groups


def input_columns(pipeline: Pipeline) -> list[str]:
    """The feature-table columns a fitted tabular pipeline reads (radiomics it dropped excluded)."""
    columns = list(pipeline.named_steps["columns"].columns_)
    dropped = set(getattr(pipeline.named_steps["radiomics"], "dropped_", []))
    return [c for c in columns if c not in dropped]


def _tensor(array: npt.NDArray[Any]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


@dataclass
class EnsembleExplainer:
    """The fold models of one training run, predicting one set of patients (see the module docstring)."""

    models: Sequence[FoldModel]
    objective: str
    centre: float
    channels: Sequence[str]

    def image_embeddings(self, images: npt.NDArray[np.float32] | None, batch: int = 16) -> list[Any]:
        out: list[Any] = []
        for model in self.models:
            if model.network.backbone is None or images is None:
                out.append(None)
                continue
            with torch.no_grad():
                out.append(torch.cat([model.network.embed_images(_tensor(images[i:i + batch]))
                                      for i in range(0, len(images), batch)]))
        return out

    def tabular_matrices(self, frame: pd.DataFrame) -> list[npt.NDArray[np.float32] | None]:
        """Each fold's tabular pipeline applied to ``frame`` (None for a fold without the tabular branch)."""
        return [np.asarray(m.pipeline.transform(frame), dtype=np.float32)
                if m.pipeline is not None and m.network.tabular is not None else None for m in self.models]

    def embed_matrices(self, matrices: Sequence[npt.NDArray[np.float32] | None]) -> list[Any]:
        with torch.no_grad():
            return [m.network.embed_tabular(_tensor(x)) if x is not None else None
                    for m, x in zip(self.models, matrices, strict=True)]

    @cached_property
    def _output_groups(self) -> list[dict[str, list[int]] | None]:
        return [output_groups(m.pipeline) if m.pipeline is not None else None for m in self.models]

    @cached_property
    def _score_inputs(self) -> set[str]:
        """Input columns a derived clinical score reads (shuffling one moves the score: the pipeline runs again)."""
        return {c for m in self.models if m.pipeline is not None
                for s in getattr(m.pipeline.named_steps["columns"], "scores", ()) for c in SCORE_INPUTS[s]}

    def tabular_embeddings(self, frame: pd.DataFrame) -> list[Any]:
        return self.embed_matrices(self.tabular_matrices(frame))

    def shuffled_tabular_embeddings(self, frame: pd.DataFrame, column: str, order: npt.NDArray[np.intp],
                                    matrices: Sequence[npt.NDArray[np.float32] | None] | None = None) -> list[Any]:
        """The tabular embeddings with ``column`` shuffled by ``order``. Where every fold's pipeline works row
        by row (no ComBat step, which depends on the site column), shuffling the input column equals shuffling
        the pipeline's output columns made from it: the matrices are transformed once and only those columns
        move (``matrices``: the unshuffled ones); otherwise the shuffled frame goes through the pipelines."""
        groups = self._output_groups
        if matrices is None or not self.models or column in self._score_inputs or \
                any(g is None for g, x in zip(groups, matrices, strict=True) if x is not None):
            shuffled = frame.copy()
            shuffled[column] = frame[column].to_numpy()[order]
            return self.tabular_embeddings(shuffled)
        moved = []
        for x, group in zip(matrices, groups, strict=True):
            if x is None or group is None:
                moved.append(x)
                continue
            y = x.copy()
            cols = group.get(column, [])
            y[:, cols] = x[order][:, cols]
            moved.append(y)
        return self.embed_matrices(moved)

    def outputs(self, image_embeddings: Sequence[Any], tabular_embeddings: Sequence[Any]) -> npt.NDArray[np.float32]:
        """Mean raw output over the fold models."""
        with torch.no_grad():
            per_fold = [m.network.combine(i, t).numpy() for m, i, t in
                        zip(self.models, image_embeddings, tabular_embeddings, strict=True)]
        return np.asarray(np.mean(per_fold, axis=0), dtype=np.float32)

    def risk_and_days(self, outputs: npt.NDArray[np.float32]) -> tuple[FloatArray, FloatArray | None]:
        tensor = torch.from_numpy(outputs)
        risk = risk_score(self.objective, tensor, self.centre).numpy().astype(float)  # type: ignore[arg-type]
        days = predicted_days(self.objective, tensor, self.centre)  # type: ignore[arg-type]
        return risk, (days.numpy().astype(float) if days is not None else None)

    @property
    def tabular_columns(self) -> list[str]:
        columns: dict[str, None] = {}
        for model in self.models:
            if model.pipeline is not None:
                columns.update(dict.fromkeys(input_columns(model.pipeline)))
        return list(columns)


def _mse_uncensored(days: FloatArray | None, time: FloatArray, event: npt.NDArray[np.bool_]) -> float:
    if days is None or not event.any():
        return float("nan")
    return float(np.mean((days[event] - time[event]) ** 2))


def permutation_importance(explainer: EnsembleExplainer, frame: pd.DataFrame, images: npt.NDArray[np.float32] | None,
                           repeats: int, seed: int,
                           progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Ranked importance of every tabular input column and image channel on ``frame``'s patients.

    Columns: ``feature``, ``kind`` (tabular | image), ``mean`` / ``sd`` (drop in Harrell's C over the
    repeats), ``mse_rise_mean`` / ``mse_rise_sd`` (``mse`` objective only, else NaN), ``repeats``.
    """
    outcome = Outcome.of_frame(frame)
    time, event = outcome.time, outcome.event
    rng = np.random.default_rng(seed)
    matrices = explainer.tabular_matrices(frame)
    image_emb, tab_emb = explainer.image_embeddings(images), explainer.embed_matrices(matrices)
    risk, days = explainer.risk_and_days(explainer.outputs(image_emb, tab_emb))
    base_c, base_mse = harrell_c(risk, time, event), _mse_uncensored(days, time, event)
    n = len(frame)
    groups: list[tuple[str, str]] = [(c, "tabular") for c in explainer.tabular_columns]
    if images is not None and any(e is not None for e in image_emb):
        groups += [(str(c), "image") for c in explainer.channels]
    rows = []
    for index, (name, kind) in enumerate(groups):
        drops, rises = [], []
        for _ in range(repeats):
            order = rng.permutation(n)
            if kind == "tabular":
                outputs = explainer.outputs(image_emb, explainer.shuffled_tabular_embeddings(frame, name, order,
                                                                                             matrices))
            elif images is not None:
                channel = list(explainer.channels).index(name)
                permuted = images.copy()
                permuted[:, :, channel] = images[order][:, :, channel]
                outputs = explainer.outputs(explainer.image_embeddings(permuted), tab_emb)
            else:  # pragma: no cover - image groups exist only with images
                raise ValueError(f"image channel {name} without images")
            r, d = explainer.risk_and_days(outputs)
            drops.append(base_c - harrell_c(r, time, event))
            rises.append(_mse_uncensored(d, time, event) - base_mse)
        rows.append({"feature": name, "kind": kind, "mean": float(np.mean(drops)),
                     "sd": float(np.std(drops, ddof=1)) if repeats > 1 else float("nan"),
                     "mse_rise_mean": float(np.mean(rises)),
                     "mse_rise_sd": float(np.std(rises, ddof=1)) if repeats > 1 else float("nan"),
                     "repeats": repeats})
        if progress is not None:
            progress(f"permutation importance {index + 1}/{len(groups)}: {name}")
    table = pd.DataFrame(rows, columns=["feature", "kind", "mean", "sd", "mse_rise_mean", "mse_rise_sd", "repeats"])
    table = table.sort_values("mean", ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table.attrs["baseline_cindex"] = base_c
    return table


def cam_layer(backbone: torch.nn.Module) -> torch.nn.Module:
    """The backbone's last spatial feature stage (timm's ``feature_info``; before global pooling)."""
    info = getattr(backbone, "feature_info", None)
    if not info:
        raise ValueError(f"{type(backbone).__name__} declares no feature_info: no layer for Grad-CAM")
    last = info[-1] if isinstance(info, list) else info.get_dicts()[-1]
    return backbone.get_submodule(str(last["module"]))


def grad_cam(explainer: EnsembleExplainer, images: npt.NDArray[np.float32],
             tabular_embeddings: Sequence[Any]) -> npt.NDArray[np.float32]:
    """``(N, K, S, S)`` Grad-CAM maps of the risk for ``images`` ``(N, K, C, S, S)``, mean over the fold
    models (each ReLU'd and upsampled to S x S by captum), not normalised."""
    n, k, _, size, _ = images.shape
    total = np.zeros((n, k, size, size), dtype=np.float32)
    used = 0
    for model, tab in zip(explainer.models, tabular_embeddings, strict=True):
        net = model.network
        if net.backbone is None:
            continue
        for i in range(n):
            row_tab = tab[i:i + 1] if tab is not None else None

            def forward(slices: torch.Tensor, net: Any = net, row_tab: Any = row_tab) -> torch.Tensor:
                out = net.combine(net.embed_images(slices[None]), row_tab)
                return risk_score(explainer.objective, out, explainer.centre)  # type: ignore[arg-type]

            cam = LayerGradCam(forward, cam_layer(net.backbone))
            x = _tensor(images[i]).requires_grad_(True)  # (K, C, S, S): the slices as a batch
            attribution = cam.attribute(x, relu_attributions=True)  # (K, 1, h, w)
            upsampled = LayerAttribution.interpolate(attribution, (size, size), interpolate_mode="bilinear")
            total[i] += upsampled[:, 0].detach().numpy().clip(min=0)
        used += 1
    if used == 0:
        raise ValueError("no fold model has an image branch: nothing for Grad-CAM")
    return (total / used).astype(np.float32)


def cam_shares(cam: npt.NDArray[np.float32], region: npt.NDArray[np.float32],
               brain: npt.NDArray[np.bool_]) -> tuple[float, float]:
    """(CAM energy share inside ``region`` within the brain, ``region``'s share of the brain's pixels)."""
    inside = region.astype(bool) & brain
    energy = float(cam[brain].sum())
    area = float(brain.sum())
    share = float(cam[inside].sum()) / energy if energy > 0 else float("nan")
    return share, (float(inside.sum()) / area if area > 0 else float("nan"))


def explain_cam(explainer: EnsembleExplainer, case_ids: Sequence[str], frame: pd.DataFrame,
                images: npt.NDArray[np.float32], regions: Mapping[str, Mapping[str, npt.NDArray[np.float32]]],
                ) -> tuple[pd.DataFrame, npt.NDArray[np.float32]]:
    """Grad-CAM for every patient and the per-patient shares (``case_id``, ``cam_share_tumour_edema``,
    ``area_share_tumour_edema``, ``ratio``); returns the table and the maps ``(N, K, S, S)``."""
    cams = grad_cam(explainer, images, explainer.tabular_embeddings(frame))
    brain = np.abs(images).sum(axis=2) > 0  # (N, K, S, S): the preprocessed images are 0 outside the brain
    rows = []
    for i, case in enumerate(case_ids):
        share, area = cam_shares(cams[i], regions[case]["wt"], brain[i])
        rows.append({"case_id": case, "cam_share_tumour_edema": share, "area_share_tumour_edema": area,
                     "ratio": share / area if area and np.isfinite(area) and area > 0 else float("nan")})
    return pd.DataFrame(rows), cams


def panel_slices(images: npt.NDArray[np.float32], cams: npt.NDArray[np.float32], regions: Mapping[str, Any],
                 channels: Sequence[str], case_id: str, share: float, area: float) -> dict[str, Any]:
    """One Grad-CAM panel row: the slice with the largest tumour + edema area, T1c and FLAIR with the CAM
    (scaled to 0-1 over the patient's slices) and the region outlines."""
    k = int(np.argmax(regions["wt"].reshape(len(regions["wt"]), -1).sum(axis=1)))
    peak = float(cams.max())

    def channel(name: str) -> npt.NDArray[np.float32]:
        return images[k, list(channels).index(name)] if name in channels else np.zeros(images.shape[-2:], np.float32)

    return {"case_id": case_id, "t1c": channel("t1c"), "flair": channel("t2f"),
            "cam": cams[k] / peak if peak > 0 else cams[k],
            "regions": {"tumour core": regions["tc"][k] > 0.5, "tumour + edema": regions["wt"][k] > 0.5},
            "share": share, "area_share": area}


def save_cams(cams: npt.NDArray[np.float32], case_ids: Sequence[str], path: Path) -> None:
    """The maps as one compressed array (no pickle), with the case ids in order."""
    np.savez_compressed(path, cams=cams.astype(np.float16), case_ids=np.asarray(list(case_ids), dtype=str))


def run_explanation(explainer: EnsembleExplainer, frame: pd.DataFrame, images: npt.NDArray[np.float32] | None,
                    seg_paths: Mapping[str, Path] | None, inputs: ImageInputParams, *, name: str, repeats: int,
                    seed: int, gradcam: bool, panel_patients: int, folder: Path,
                    progress: Callable[[str], None] | None = None) -> Path:
    """Permutation importance (``importance.csv`` / ``.png``) and, for a network with images, Grad-CAM
    (``gradcam.csv``: per-patient shares; ``gradcam.npz``: the maps; ``gradcam.png``: a panel of patients
    spread over the predicted risk) for the test patients in ``frame``, written atomically to ``folder``."""
    if (folder / "importance.csv").is_file():
        return folder
    with atomic_directory(folder) as tmp:
        importance = permutation_importance(explainer, frame, images, repeats, seed, progress)
        importance.insert(0, "model", name)
        write_text(importance.to_csv(index=False), tmp / "importance.csv")
        plots.importance_bar(importance, tmp / "importance.png", subject=name)
        if gradcam and images is not None and any(m.network.backbone is not None for m in explainer.models):
            if seg_paths is None:
                raise ValueError("Grad-CAM needs the patients' label maps")
            case_ids = [str(c) for c in frame["case_id"]]
            regions = {c: region_planes(seg_paths[c], inputs, ["tc", "wt"]) for c in case_ids}
            shares, cams = explain_cam(explainer, case_ids, frame, images, regions)
            risk, _ = explainer.risk_and_days(explainer.outputs(explainer.image_embeddings(images),
                                                                explainer.tabular_embeddings(frame)))
            shares.insert(1, "risk", risk)
            write_text(shares.to_csv(index=False), tmp / "gradcam.csv")
            save_cams(cams, case_ids, tmp / "gradcam.npz")
            order = np.argsort(-risk, kind="stable")
            spread = np.linspace(0, len(order) - 1, min(panel_patients, len(order))).round().astype(int)
            chosen = order[np.unique(spread)]
            panels = [panel_slices(images[i], cams[i], regions[case_ids[i]], explainer.channels, case_ids[i],
                                   float(shares.loc[i, "cam_share_tumour_edema"]),
                                   float(shares.loc[i, "area_share_tumour_edema"])) for i in chosen]
            plots.gradcam_panel(panels, tmp / "gradcam.png")
            if progress is not None:
                progress(f"Grad-CAM for {len(case_ids)} test patients")
    return folder
