"""Evaluation tasks: the comparison on the locked test set, the explanation of the main network, the report.

All three write into the evaluation stage's content-keyed folder (``comparison/``, ``explanation/``,
``report/``); their cache keys are the stage key, so a cache hit always has its files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task

from survival_model.config import EvaluationParams, ImageInputParams
from survival_model.evaluation import stage as lib
from survival_model.evaluation.report import ReportData, write_report
from survival_model.training.splits import Splits
from survival_model.training.stage import TrainingResult
from tasks.caching import KeyFn


def _key(part: str, files: Sequence[str]) -> KeyFn:
    def key(inputs: dict[str, Any]) -> tuple[str, list[Path]]:
        folder: Path = inputs["folder"]
        return f"{part}-{folder.name}", [folder / part / name for name in files]
    return key


compare_key = _key("comparison", lib.FILES)
explain_key = _key("explanation", ("importance.csv", "importance.png"))  # the main network's
_report_files = _key("report", ("report.html", "summary.md", "audit.json"))


def report_key(inputs: dict[str, Any]) -> tuple[str, list[Path]]:
    """The report also names how many gate decisions the test set served: a new count re-renders it."""
    key, files = _report_files(inputs)
    return f"{key}-decisions-{inputs.get('test_set_decisions')}", files


@task(name="compare-models", task_run_name="compare-models")
def compare_models(table_path: Path, trained: Sequence[TrainingResult], image_paths: Mapping[str, Path] | None,
                   clinical: list[str], evaluation: EvaluationParams, oracle: pd.Series | None,
                   folder: Path) -> lib.EvaluationResult:
    """Fit the baselines on the development patients and score every model once on the test set (and per
    cross-validation fold)."""
    from survival_model.evaluation.networks import network_run

    logger = get_run_logger()
    table = pd.read_parquet(table_path)
    splits = Splits.load(trained[0].splits_path)
    if any((other.fingerprint, other.ids_digest) != (splits.fingerprint, splits.ids_digest)
           for other in (Splits.load(t.splits_path) for t in trained)):
        raise ValueError("the networks to compare were trained on different splits")
    networks = [network_run(t, table, image_paths) for t in trained]
    seen: set[str] = set()
    for i, (net, result) in enumerate(zip(networks, trained, strict=True)):  # e.g. two poolings: same name
        if net.name in seen:
            networks[i] = dataclasses.replace(net, name=f"{net.name} [{result.folder.name[:8]}]")
        seen.add(networks[i].name)
    logger.info("scoring %s, %s%s on %d test patients (%d bootstrap resamples)",
                ", ".join(n.name for n in networks), ", ".join(evaluation.baselines),
                " and the oracle" if oracle is not None else "", len(splits.test), evaluation.score_resamples)
    return lib.run_comparison(table, splits, networks, clinical, evaluation, oracle, folder)


@task(name="explain-models", task_run_name="explain-models")
def explain_models(table_path: Path, trained: Sequence[TrainingResult], image_paths: Mapping[str, Path] | None,
                   seg_paths: Mapping[str, Path] | None, inputs: ImageInputParams, evaluation: EvaluationParams,
                   folder: Path) -> Path:
    """Permutation importance of every network on the test patients, and Grad-CAM of the main (first) one:
    ``explanation/`` for the main network, ``explanation/models/<n>/`` for the others."""
    from survival_model.evaluation.explain import run_explanation
    from survival_model.evaluation.networks import explainer, has_images
    from survival_model.training.data import stack_images

    logger = get_run_logger()
    splits = Splits.load(trained[0].splits_path)
    frame = lib.rows(pd.read_parquet(table_path), splits.test)
    images = stack_images(image_paths, splits.test) if image_paths is not None else None
    target = folder / "explanation"
    for index, result in enumerate(trained):
        main = index == 0
        with_images = images if has_images(result) else None
        logger.info("explaining %s on %d test patients: permutation importance (%d repeats)%s", result.name,
                    len(frame), evaluation.importance_repeats,
                    ", Grad-CAM" if main and with_images is not None and evaluation.gradcam else "")
        run_explanation(explainer(result), frame, with_images, seg_paths, inputs, name=result.name,
                        repeats=evaluation.importance_repeats, seed=evaluation.seed,
                        gradcam=main and evaluation.gradcam, panel_patients=evaluation.gradcam_panel,
                        folder=target if main else target / "models" / str(index), progress=logger.info)
    return target


@task(name="write-report", task_run_name="write-report")
def report(table_path: Path, compared: lib.EvaluationResult, trained: TrainingResult, explanation: Path | None,
           evaluation: EvaluationParams, known_effects: list[str], folder: Path,
           test_set_decisions: int | None = None, key_fingerprint: str | None = None) -> Path:
    """The HTML report and the Markdown summary (``test_set_decisions``: gate decisions the locked test set
    served before, from the registry)."""
    from survival_model.imageio import atomic_directory

    splits = Splits.load(trained.splits_path)
    target = folder / "report"
    table_md = (compared.comparison_folder / "table.md").read_text(encoding="utf-8")
    members = trained.predictions().set_index("case_id")[[f"risk_{f.name}" for f in trained.folds]]
    data = ReportData(compared.oof_risks(), compared.oof_calibration(), members)
    with atomic_directory(target, replace=True) as tmp:
        write_report(tmp, table=pd.read_parquet(table_path), splits=splits, comparison=compared.comparison,
                     per_site=compared.per_site, cv=compared.cv, risks=compared.risks(), oof=compared.oof, data=data,
                     table_md=table_md, network=trained.name, baselines=evaluation.baselines, evaluation=evaluation,
                     learning_curves=trained.folder / "learning_curves.png", explanation=explanation,
                     known_effects=known_effects, fold_summaries=[{"fold": f.name, **f.summary} for f in trained.folds],
                     test_set_decisions=test_set_decisions, key_fingerprint=key_fingerprint)
    return target / "report.html"
