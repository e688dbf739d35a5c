"""GPA and Cox baselines on the real MOLAB brain-metastasis cohort (../shared/realdata), in one run.

    .venv/bin/python benchmarks/realdata_baselines.py [--repeats 5] [--resamples 1000]

The MOLAB clinical sheet is harmonised by the clinical ingestion through a declaration and joined with
the morphological sheet's tumour volumes at the first segmented MRI (``survival_model.ingest.molab``). Models are
scored by Harrell's C-index with a percentile bootstrap 95% interval over patients
(``survival_model.metrics.bootstrap_c``), on the patients with a reported GPA:

- from the first MRI (day 0, where the GPA is assessed): the reported GPA (risk = -GPA), and Cox models
  on exactly the clinical fields they name, out-of-fold (5-fold cross-validation, each fold's risks centred
  on its training patients, averaged over ``--repeats`` partitions: 75 patients are too few for a locked
  test set);
- from the first segmented MRI (landmark; the volume is only known from then on): the same, and Cox
  models with the log tumour volumes (total, enhancing, necrotic).

Nothing is written. Skips with a message when the folder is absent.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sksurv.linear_model import CoxPHSurvivalAnalysis  # noqa: E402

from survival_model.config import TabularParams  # noqa: E402
from survival_model.evaluation.baselines import Baseline, cross_validated_risk  # noqa: E402
from survival_model.ingest.molab import load_molab  # noqa: E402
from survival_model.ingest.privacy import Pseudonymiser  # noqa: E402
from survival_model.metrics import bootstrap_c  # noqa: E402

CLINICAL = Path(REPO.parent / "shared" / "realdata" / "clinical")


def cox(name: str, clinical: list[str], volumetric: bool) -> Baseline:
    """A Cox model on exactly these columns: no clinical score added (``TabularParams``' default adds the GPA
    computed from age, KPS, extracranial disease and the number of metastases)."""
    return Baseline(name, name, TabularParams(clinical=clinical, volumetric=volumetric, scores=[]),
                    lambda seed: CoxPHSurvivalAnalysis(alpha=0.1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--folder", type=Path, default=CLINICAL)
    args = parser.parse_args()
    clinical_sheet = args.folder / "MOLAB_OpenBTAI_METS_ClinicalData_Nov2023.xlsx"
    morph_sheet = args.folder / "MOLAB_OpenBTAI_MORPHOLOGICAL_MEASUREMENTS.xlsx"
    if not clinical_sheet.is_file() or not morph_sheet.is_file():
        print(f"MOLAB sheets not found in {args.folder}: nothing to measure")
        return
    cohort = load_molab(clinical_sheet, morph_sheet, Pseudonymiser(b"molab-benchmark-key-" * 2))
    frame = cohort.patients[cohort.patients["gpa"].notna()].reset_index(drop=True)
    models = {
        "GPA (reported), risk = -GPA": None,
        "Cox: age, sex, primary": cox("cox_clinical", ["age", "sex", "primary"], False),
        "Cox: age, sex, primary, GPA": cox("cox_clinical_gpa", ["age", "sex", "primary", "gpa"], False),
        "Cox: log volumes (total, enhancing, necrotic)": cox("cox_volumes", [], True),
        "Cox: age, sex, primary, GPA + log volumes": cox("cox_all", ["age", "sex", "primary", "gpa"], True),
    }
    rows = []
    for origin, time_column in (("first MRI", "time_days"), ("first segmented MRI", "landmark_days")):
        data = frame.assign(time_days=frame[time_column])
        for label, baseline in models.items():
            if origin == "first MRI" and baseline is not None and baseline.tabular is not None \
                    and baseline.tabular.volumetric:
                continue  # a volume measured later cannot predict survival from day 0
            risk = -data["gpa"].to_numpy(float) if baseline is None else cross_validated_risk(
                baseline, data, folds=5, repeats=args.repeats, seed=0)
            c = bootstrap_c(risk, data["time_days"], data["event"], resamples=args.resamples, seed=0)
            rows.append({"time origin": origin, "model": label, "patients": len(data), "C-index [95% CI]": str(c)})
    table = pd.DataFrame(rows)
    print(f"MOLAB (Sci Data 2023;10:208): {len(cohort.patients)} patients harmonised by the clinical ingestion "
          f"({cohort.quarantined} quarantined, {cohort.without_volume} without a volume), {len(frame)} with a "
          f"reported GPA, all died; first segmented "
          f"MRI at median day {int(np.median(frame['segmented_day']))} (within 30 days for "
          f"{int((frame['segmented_day'] <= 30).sum())}); Cox models out-of-fold (5-fold CV x {args.repeats}); "
          f"bootstrap {args.resamples}; Python {platform.python_version()}.\n")
    print("| " + " | ".join(table.columns) + " |")
    print("| --- | --- | ---: | --- |")
    for row in table.itertuples(index=False):
        print("| " + " | ".join(str(v) for v in row) + " |")
    print(f"\nCommand: `.venv/bin/python benchmarks/realdata_baselines.py --repeats {args.repeats} "
          f"--resamples {args.resamples}`")


if __name__ == "__main__":
    main()
