"""SiteHarmoniser: ComBat fitted on training rows only, planted site effects removed, outcomes refused."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from survival_model.features.harmonise import SiteHarmoniser

SITES = ("site_a", "site_b", "site_c")
SHIFT = {"site_a": 0.0, "site_b": 3.0, "site_c": -2.0}   # planted additive site effects (per unit scale)
SCALE = {"site_a": 1.0, "site_b": 1.6, "site_c": 0.7}    # planted multiplicative site effects


def cohort(n_per_site: int = 40, seed: int = 0) -> pd.DataFrame:
    """Rows of a feature table: ids, clinical fields, outcomes and 6 features with site effects."""
    rng = np.random.default_rng(seed)
    rows = []
    for site in SITES:
        for i in range(n_per_site):
            age = rng.normal(60 + (8 if site == "site_b" else 0), 9)
            primary = rng.choice(["lung", "breast", "melanoma"])
            row = {"site": site, "case_id": f"{site}-{i:03d}", "age": age, "primary": primary,
                   "time_days": rng.uniform(30, 900), "event": int(rng.uniform() < 0.7)}
            for j in range(6):
                truth = rng.normal(10.0 + j, 1.0 + 0.2 * j)
                row[f"rad_f{j}"] = SHIFT[site] * (1 + 0.3 * j) + 10.0 + j + SCALE[site] * (truth - 10.0 - j)
            row["vol_wt_mm3"] = rng.lognormal(9.0, 0.5) * (1.3 if site == "site_c" else 1.0)
            rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.set_index(pd.Index([f"r{i}" for i in range(len(frame))]))


def features(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith(("vol_", "rad_"))]


def site_mean_spread(frame: pd.DataFrame, column: str) -> float:
    means = frame.groupby("site")[column].mean()
    return float(means.max() - means.min())


def test_removes_a_planted_site_mean_shift_and_keeps_other_columns() -> None:
    frame = cohort()
    out = SiteHarmoniser().fit_transform(frame)
    assert list(out.columns) == list(frame.columns)
    assert out.index.equals(frame.index)
    for column in [f"rad_f{j}" for j in range(6)]:
        before = site_mean_spread(frame, column)
        assert before > 3.0
        assert site_mean_spread(out, column) < 0.1 * before, column
        # site scale effects are removed too: per-site SDs become similar
        sds = out.groupby("site")[column].std()
        assert sds.max() / sds.min() < 1.35
    pd.testing.assert_frame_equal(out[["site", "case_id", "age", "primary", "time_days", "event"]],
                                  frame[["site", "case_id", "age", "primary", "time_days", "event"]])
    assert all(out[c].dtype == np.float64 for c in features(frame))


def test_held_out_rows_use_the_training_estimates_only() -> None:
    frame = cohort()
    test_rows = frame.iloc[::7]
    train = frame.drop(index=test_rows.index)
    fitted = SiteHarmoniser().fit(train)
    batch = fitted.transform(test_rows)
    for label in test_rows.index[:5]:
        alone = fitted.transform(test_rows.loc[[label]])
        pd.testing.assert_frame_equal(alone, batch.loc[[label]])
    on_all = SiteHarmoniser().fit(frame).transform(test_rows)  # leaky: estimates include the test rows
    assert not np.allclose(on_all[features(frame)].to_numpy(), batch[features(frame)].to_numpy())
    # and transforming the held-out rows never refits: the fitted estimates are unchanged
    again = fitted.transform(test_rows)
    pd.testing.assert_frame_equal(again, batch)


def test_deterministic_and_clonable() -> None:
    frame = cohort()
    first = SiteHarmoniser().fit_transform(frame)
    second = clone(SiteHarmoniser()).fit_transform(frame.sample(frac=1.0, random_state=1)).loc[frame.index]
    pd.testing.assert_frame_equal(first, second, check_exact=False, rtol=1e-9)


@pytest.mark.parametrize("name", ["time_days", "event", "Event", "time_to_death", "os_months", "death", "survival"])
def test_refuses_outcome_covariates(name: str) -> None:
    with pytest.raises(ValueError, match="look like survival outcomes"):
        SiteHarmoniser(covariates=["age", name], method="fortin")
    harmoniser = SiteHarmoniser(covariates=["age"], method="fortin")
    harmoniser.set_params(covariates=[name])  # set_params bypasses __init__: fit checks again
    with pytest.raises(ValueError, match="look like survival outcomes"):
        harmoniser.fit(cohort())


def test_other_bad_settings() -> None:
    with pytest.raises(ValueError, match="method 'chen' is not supported"):
        SiteHarmoniser(method="chen")
    with pytest.raises(ValueError, match="ignores covariates"):
        SiteHarmoniser(covariates=["age"])
    with pytest.raises(ValueError, match="are feature columns"):
        SiteHarmoniser(covariates=["vol_wt_mm3"], method="fortin")
    frame = cohort()
    with pytest.raises(ValueError, match="fewer than 2 rows"):
        SiteHarmoniser().fit(frame.drop(index=frame.index[(frame["site"] == "site_c").to_numpy()][1:]))
    with pytest.raises(ValueError, match=r"column\(s\) \['site'\] missing"):
        SiteHarmoniser().fit(frame.drop(columns="site"))


def test_unseen_site_is_an_error() -> None:
    frame = cohort()
    fitted = SiteHarmoniser().fit(frame[frame["site"] != "site_c"])
    with pytest.raises(ValueError, match=r"site\(s\) \['site_c'\] were not seen"):
        fitted.transform(frame)


def test_fortin_protects_a_covariate_effect() -> None:
    frame = cohort(n_per_site=60, seed=2)
    # a feature that truly depends on age; site_b patients are older, and site_b adds a shift
    frame["rad_age"] = 0.2 * frame["age"] + frame["site"].map({"site_a": 0.0, "site_b": 2.0, "site_c": -1.0})
    frame["rad_age"] += np.random.default_rng(5).normal(0, 0.5, len(frame))

    def slope(out: pd.DataFrame) -> float:
        return float(np.polyfit(out["age"], out["rad_age"], 1)[0])

    protected = SiteHarmoniser(covariates=["age", "primary"], method="fortin").fit_transform(frame)
    assert slope(protected) == pytest.approx(0.2, abs=0.03)
    assert site_mean_spread(protected.assign(rad_age=protected["rad_age"] - 0.2 * protected["age"]), "rad_age") < 0.4
    johnson = SiteHarmoniser().fit_transform(frame)   # age confounded with site: part of its effect is removed
    assert abs(slope(johnson) - 0.2) > abs(slope(protected) - 0.2)


def test_unseen_covariate_level_is_an_error() -> None:
    frame = cohort()
    train = frame[frame["primary"] != "melanoma"]
    fitted = SiteHarmoniser(covariates=["primary"], method="fortin").fit(train)
    with pytest.raises(ValueError, match=r"covariate 'primary' has level\(s\) \['melanoma'\] not seen"):
        fitted.transform(frame)
    one_row = fitted.transform(train.iloc[[3]])  # a single held-out row encodes its level like the fit did
    pd.testing.assert_frame_equal(one_row, fitted.transform(train).iloc[[3]])


def test_missing_values_and_constant_columns() -> None:
    frame = cohort()
    rng = np.random.default_rng(9)
    # NETC-like features: missing for a third of the patients, shifted by site where present
    absent = rng.uniform(size=len(frame)) < 0.33
    for k in range(2):
        values = frame["rad_f0"] * (1 + k) + 0.0
        frame[f"int_netc_{k}"] = values.where(~absent)
    frame["rad_constant"] = 4.0
    frame["rad_all_nan"] = np.nan
    # a feature observed only twice in site_a and once in site_c: cannot be estimated for site_c
    frame["rad_rare"] = np.nan
    frame.loc[frame.index[[0, 1, 80, 81, 82]], "rad_rare"] = [1.0, 2.0, 5.0, 6.0, 7.0]
    frame.loc[frame.index[[40]], "rad_rare"] = 3.0  # site_b row 0 ... but site_b gets 1 observed row
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = SiteHarmoniser().fit(frame)
    assert any("left unharmonised" in str(w.message) for w in caught)
    out = fitted.transform(frame)
    assert fitted.passthrough_["rad_constant"].startswith("constant")
    assert fitted.passthrough_["rad_all_nan"].startswith("constant")
    assert "site_b" in fitted.passthrough_["rad_rare"]
    pd.testing.assert_series_equal(out["rad_rare"], frame["rad_rare"])
    assert (out["rad_constant"] == 4.0).all() and out["rad_all_nan"].isna().all()
    for k in range(2):
        column = f"int_netc_{k}"
        assert out[column].isna().equals(frame[column].isna())  # NaN stays NaN, values stay values
        assert site_mean_spread(out, column) < 0.15 * site_mean_spread(frame, column)
    # a held-out row with a value missing that was always present in training: the rest is harmonised
    row = frame.iloc[[50]].copy()
    full = fitted.transform(row)
    row.loc[:, "rad_f1"] = np.nan
    partial = fitted.transform(row)
    assert np.isnan(partial["rad_f1"].iloc[0])
    others = [c for c in features(frame) if c != "rad_f1"]
    pd.testing.assert_frame_equal(partial[others], full[others])


def test_single_site_passes_through_with_a_warning() -> None:
    frame = cohort()
    one = frame[frame["site"] == "site_a"]
    with pytest.warns(UserWarning, match="only one site"):
        fitted = SiteHarmoniser().fit(one)
    pd.testing.assert_frame_equal(fitted.transform(one), one.astype({c: "float64" for c in features(one)}))
    with pytest.raises(ValueError, match="not seen"):
        fitted.transform(frame)


def test_a_column_a_whole_site_lacks_is_harmonised_among_the_sites_that_have_it() -> None:
    """A sequence one site does not acquire: its columns are NaN for the whole site, harmonised among the others;
    one only a single site acquires is left alone; a column NaN for everyone stays NaN."""
    frame = cohort()
    site_a = (frame["site"] == "site_a").to_numpy()
    frame["int_wt_t2f_mean"] = frame["rad_f2"].where(~site_a)          # site A has no FLAIR
    frame["int_wt_t1n_mean"] = frame["rad_f3"].where(site_a)           # only site A has T1
    frame["int_wt_t2w_mean"] = np.nan                                   # nobody has T2
    with pytest.warns(UserWarning, match=r"observed in site 'site_a' only .* left unharmonised"):
        fitted = SiteHarmoniser().fit(frame)
    out = fitted.transform(frame)
    assert fitted.absent_sites_["int_wt_t2f_mean"] == ["site_a"] and "int_wt_t2f_mean" not in fitted.passthrough_
    assert out["int_wt_t2f_mean"].isna().equals(frame["int_wt_t2f_mean"].isna())
    assert site_mean_spread(out, "int_wt_t2f_mean") < 0.1 * site_mean_spread(frame, "int_wt_t2f_mean")
    assert fitted.passthrough_["int_wt_t1n_mean"] == "observed in site 'site_a' only"
    pd.testing.assert_series_equal(out["int_wt_t1n_mean"], frame["int_wt_t1n_mean"])
    assert out["int_wt_t2w_mean"].isna().all() and fitted.passthrough_["int_wt_t2w_mean"].startswith("constant")
    pd.testing.assert_frame_equal(out[["rad_f0", "rad_f1"]], SiteHarmoniser().fit(
        frame.drop(columns=["int_wt_t2f_mean", "int_wt_t1n_mean", "int_wt_t2w_mean"])).transform(frame)[
        ["rad_f0", "rad_f1"]])  # the other columns as without those
    # a held-out site A patient that has FLAIR after all: its value passes through, the rest is harmonised
    row = frame[site_a].iloc[[0]].copy()
    row.loc[:, "int_wt_t2f_mean"] = 12.5
    with pytest.warns(UserWarning, match=r"values in site\(s\) \['site_a'\], where the harmoniser's training rows"):
        held_out = fitted.transform(row)
    assert held_out["int_wt_t2f_mean"].iloc[0] == 12.5
    assert held_out["rad_f0"].iloc[0] == pytest.approx(out.loc[row.index[0], "rad_f0"])
