"""Effects of acquisition parameters on Dice: a mixed-effects model (statsmodels MixedLM)
with a random intercept per group (center or dataset), as the paper's hierarchical model.

Rows are (model, series): acquisition varies by series, and each series' Dice is the mean
over its structures. Numeric parameters are imputed where missing (iterative imputation
with random forests, as the paper) and a Kolmogorov-Smirnov test compares each imputed
column's imputed values with its observed ones (the paper's sensitivity test); continuous
parameters are standardised, discrete ones (flip angle, matrix size) MinMax-scaled to
[0, 1]; columns are dropped while any variance inflation factor exceeds 10; categorical
ones (vendor, 2D/3D) are one-hot coded against their most common level. The model is a
categorical fixed effect against the first one, beside its fine-tuning covariates where
its run records them (`encoder_finetuned`, `box_shift`), and with `interactions` each
acquisition parameter's two-way interaction with each model (does the model change how
Dice responds to TE?).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from orthodiff.errors import OrthodiffError

NUMERIC = ("field_strength", "slice_thickness", "pixel_spacing", "echo_time", "repetition_time", "flip_angle",
           "image_rows")  # catalog names
DISCRETE = ("flip_angle", "image_rows")  # MinMax-scaled as the paper; the rest standardised
CATEGORICAL = ("vendor", "acquisition")  # `acquisition`: 2D / 3D where the catalog records it
VIF_LIMIT = 10.0


def _impute(numeric: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(imputed columns, KS sensitivity rows: imputed against observed values per column)."""
    from scipy.stats import ks_2samp

    missing = numeric.isna()
    if not missing.any().any():
        return numeric, pd.DataFrame(columns=["parameter", "imputed", "observed", "ks_statistic", "p"])
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    imputer = IterativeImputer(RandomForestRegressor(n_estimators=25, random_state=seed), max_iter=5, random_state=seed)
    imputed = pd.DataFrame(imputer.fit_transform(numeric), index=numeric.index, columns=numeric.columns)
    rows = []
    for column in numeric.columns[missing.any()]:
        test = ks_2samp(imputed.loc[missing[column], column], numeric[column].dropna())
        rows.append({"parameter": column, "imputed": int(missing[column].sum()), "observed": int((~missing[column]).sum()),
                     "ks_statistic": float(test.statistic), "p": float(test.pvalue)})
    return imputed, pd.DataFrame(rows)


def vif_filter(design: pd.DataFrame, limit: float = VIF_LIMIT) -> tuple[pd.DataFrame, list[str]]:
    """Drop the column of highest VIF while any exceeds `limit`; returns (kept, dropped)."""
    import warnings

    from statsmodels.stats.outliers_influence import variance_inflation_factor

    dropped = []
    while design.shape[1] > 1:
        x = np.column_stack([np.ones(len(design)), design.to_numpy(float)])
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # collinear designs are what this loop removes
            vif = pd.Series([variance_inflation_factor(x, i + 1) for i in range(design.shape[1])], index=design.columns)
        worst = vif.fillna(np.inf).idxmax()
        if not np.isfinite(vif.fillna(np.inf)[worst]) or vif[worst] > limit:
            dropped.append(worst)
            design = design.drop(columns=worst)
        else:
            break
    return design, dropped


def design_matrix(frame: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    """Scaled, imputed, VIF-filtered fixed effects of the acquisition columns present, the
    dropped columns and the imputation's KS sensitivity table."""
    numeric = frame[[c for c in NUMERIC if c in frame.columns]].apply(pd.to_numeric, errors="coerce")
    numeric = numeric.loc[:, numeric.notna().any() & (numeric.nunique() > 1)]
    numeric, sensitivity = _impute(numeric, seed)
    discrete = [c for c in numeric.columns if c in DISCRETE]
    continuous = [c for c in numeric.columns if c not in DISCRETE]
    numeric[continuous] = (numeric[continuous] - numeric[continuous].mean()) / numeric[continuous].std(ddof=0)
    numeric[discrete] = (numeric[discrete] - numeric[discrete].min()) / (numeric[discrete].max() - numeric[discrete].min())
    parts = [numeric]
    for column in [c for c in CATEGORICAL if c in frame.columns]:
        values = frame[column].fillna("unknown").astype(str)
        if values.nunique() > 1:
            dummies = pd.get_dummies(values, prefix=column, dtype=float)
            parts.append(dummies.drop(columns=f"{column}_{values.mode()[0]}"))
    design = pd.concat(parts, axis=1)
    kept, dropped = vif_filter(design) if design.shape[1] else (design, [])
    return kept, dropped, sensitivity


def acquisition_effects(series_dice: pd.DataFrame, catalog: pd.DataFrame, group: str, seed: int = 0,
                        model_covariates: pd.DataFrame | None = None, interactions: bool = True) -> tuple[pd.DataFrame, dict]:
    """Fixed effects (coefficient per SD of a continuous parameter, per full range of a
    discrete one, or per level) with 95% CIs and p-values of Dice ~ acquisition + model
    (+ `model_covariates`, a frame indexed by model) (+ acquisition x model) + (1 | group);
    and a summary (n, groups, dropped columns, converged, KS sensitivity of the imputation)."""
    import statsmodels.api as sm

    if group not in catalog.columns:
        raise OrthodiffError(f"catalog has no column {group!r} to group the random intercept by; pass --group center or dataset")
    frame = series_dice.merge(catalog, on="series_id", how="left")
    frame = frame[np.isfinite(frame["dice"])].reset_index(drop=True)
    design, dropped, sensitivity = design_matrix(frame, seed)
    acquisition = list(design.columns)
    models = sorted(frame["model"].unique())
    for m in models[1:]:
        design[f"model_{m}"] = (frame["model"] == m).astype(float)
        if interactions:
            for column in acquisition:
                design[f"{column}:model_{m}"] = design[column] * design[f"model_{m}"]
    left_out = []
    if model_covariates is not None:  # identifiable only where they vary within a model's rows, or models share one
        for column in model_covariates.columns:
            values = frame["model"].map(model_covariates[column]).astype(float)
            trial = np.column_stack([np.ones(len(design)), design.to_numpy(float), values.to_numpy()])
            if values.notna().all() and np.linalg.matrix_rank(trial) == trial.shape[1]:
                design[column] = values
            else:
                left_out.append(column)
    groups = frame[group].astype(str)
    exog = sm.add_constant(design, has_constant="add")
    summary = {"rows": len(frame), "groups": int(groups.nunique()), "group_by": group, "vif_dropped": dropped,
               "reference_model": models[0], "interactions": interactions,
               "covariates_left_out": [f"{c} (constant or a combination of the model effects)" for c in left_out],
               "imputation_ks": sensitivity.to_dict("records")}
    if groups.nunique() < 2:
        fit = sm.OLS(frame["dice"], exog).fit()
        summary.update(fit="ols (one group: no random intercept)", converged=True)
    else:
        import warnings

        try:
            with warnings.catch_warnings():  # convergence and boundary warnings: `converged` is reported
                warnings.simplefilter("ignore")
                fit = sm.MixedLM(frame["dice"], exog, groups=groups).fit(reml=True)
        except np.linalg.LinAlgError as err:  # e.g. every parameter but one constant within each group
            fit = sm.OLS(frame["dice"], exog).fit()
            summary.update(fit=f"ols (mixedlm failed: {err}; are the acquisition parameters constant within each "
                               f"{group}? try --group dataset)", converged=True)
        else:
            summary.update(fit="mixedlm", converged=bool(fit.converged), group_variance=float(fit.cov_re.iloc[0, 0]))
    ci = fit.conf_int()
    table = pd.DataFrame({"effect": exog.columns, "coefficient": fit.params[exog.columns].to_numpy(),
                          "ci_low": ci.loc[exog.columns, 0].to_numpy(), "ci_high": ci.loc[exog.columns, 1].to_numpy(),
                          "p": fit.pvalues[exog.columns].to_numpy()})
    return table, summary
