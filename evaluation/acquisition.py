"""Effects of acquisition parameters on Dice: a mixed-effects model (statsmodels MixedLM)
with a random intercept per group (center or dataset), as the paper's hierarchical model.

Rows are (model, series): acquisition varies by series, and each series' Dice is the mean
over its structures. Numeric parameters are imputed where missing (iterative imputation
with random forests, as the paper), standardised, and dropped while any variance
inflation factor exceeds 10; categorical ones (vendor, 2D/3D) are one-hot coded against
their most common level; the model is a categorical fixed effect against the first one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from orthodiff.errors import OrthodiffError

NUMERIC = ("field_strength", "slice_thickness", "pixel_spacing", "echo_time", "repetition_time", "flip_angle")  # catalog names
CATEGORICAL = ("vendor", "acquisition")  # `acquisition`: 2D / 3D where the catalog records it
VIF_LIMIT = 10.0


def _impute(numeric: pd.DataFrame, seed: int) -> pd.DataFrame:
    if not numeric.isna().any().any():
        return numeric
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    imputer = IterativeImputer(RandomForestRegressor(n_estimators=25, random_state=seed), max_iter=5, random_state=seed)
    return pd.DataFrame(imputer.fit_transform(numeric), index=numeric.index, columns=numeric.columns)


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


def design_matrix(frame: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """Standardised, imputed, VIF-filtered fixed effects of the acquisition columns present."""
    numeric = frame[[c for c in NUMERIC if c in frame.columns]].apply(pd.to_numeric, errors="coerce")
    numeric = numeric.loc[:, numeric.notna().any() & (numeric.nunique() > 1)]
    numeric = _impute(numeric, seed)
    numeric = (numeric - numeric.mean()) / numeric.std(ddof=0)
    parts = [numeric]
    for column in [c for c in CATEGORICAL if c in frame.columns]:
        values = frame[column].fillna("unknown").astype(str)
        if values.nunique() > 1:
            dummies = pd.get_dummies(values, prefix=column, dtype=float)
            parts.append(dummies.drop(columns=f"{column}_{values.mode()[0]}"))
    design = pd.concat(parts, axis=1)
    return vif_filter(design) if design.shape[1] else (design, [])


def acquisition_effects(series_dice: pd.DataFrame, catalog: pd.DataFrame, group: str, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Fixed effects (coefficient per SD of a numeric parameter, or per level) with 95% CIs
    and p-values of Dice ~ acquisition + model + (1 | group); and a summary (n, groups,
    dropped columns, converged)."""
    import statsmodels.api as sm

    if group not in catalog.columns:
        raise OrthodiffError(f"catalog has no column {group!r} to group the random intercept by; pass --group center or dataset")
    frame = series_dice.merge(catalog, on="series_id", how="left")
    frame = frame[np.isfinite(frame["dice"])].reset_index(drop=True)
    design, dropped = design_matrix(frame, seed)
    models = sorted(frame["model"].unique())
    for m in models[1:]:
        design[f"model_{m}"] = (frame["model"] == m).astype(float)
    groups = frame[group].astype(str)
    exog = sm.add_constant(design, has_constant="add")
    summary = {"rows": len(frame), "groups": int(groups.nunique()), "group_by": group, "vif_dropped": dropped,
               "reference_model": models[0]}
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
