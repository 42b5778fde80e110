"""Agreement of model and reference biomarkers per subject, as the paper does it.

Shapiro-Wilk (both raters) and Levene decide: parametric -> ICC(3,1) with its 95% CI
(pingouin), R² of the linear regression, bias +- 1.96 SD; otherwise -> bootstrap ICC(3,1)
over resampled subjects (median and 2.5-97.5 percentiles), median difference with the
2.5/97.5 percentiles of the differences as limits, each with a bootstrap CI, and Spearman
rho. Both correlation measures are reported for every biomarker.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ALPHA = 0.05


def icc3(pairs: np.ndarray) -> np.ndarray:
    """ICC(3,1) of (..., subjects, 2) ratings, vectorised over leading axes for the bootstrap
    (two-way mixed ANOVA: (MS_rows - MS_error) / (MS_rows + (k - 1) MS_error))."""
    n, k = pairs.shape[-2:]
    grand = pairs.mean(axis=(-2, -1), keepdims=True)
    rows = pairs.mean(axis=-1, keepdims=True)
    cols = pairs.mean(axis=-2, keepdims=True)
    ms_rows = k * ((rows - grand) ** 2).sum(axis=(-2, -1)) / (n - 1)
    ms_err = ((pairs - rows - cols + grand) ** 2).sum(axis=(-2, -1)) / ((n - 1) * (k - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ms_rows - ms_err) / (ms_rows + (k - 1) * ms_err)


def _pingouin_icc3(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    import pingouin as pg

    long = pd.DataFrame({"subject": np.tile(np.arange(len(a)), 2), "rater": np.repeat(["model", "reference"], len(a)),
                         "value": np.concatenate([a, b])})
    table = pg.intraclass_corr(long, targets="subject", raters="rater", ratings="value").set_index("Type")
    row = table.loc["ICC(C,1)" if "ICC(C,1)" in table.index else "ICC3"]  # Shrout-Fleiss (3,1) = McGraw-Wong (C,1)
    low, high = row["CI95"] if "CI95" in row else row["CI95%"]
    return float(row["ICC"]), float(low), float(high)


def agree(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Agreement of model values `a` with reference values `b` (paired, finite)."""
    from scipy import stats

    n = len(a)
    out = {"n": n, "reference_mean": float(b.mean()) if n else np.nan}
    if n < 4 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {**out, "method": "too few or constant values"}
    normal = stats.shapiro(a).pvalue > ALPHA and stats.shapiro(b).pvalue > ALPHA
    equal_var = stats.levene(a, b).pvalue > ALPHA
    diff = a - b
    rho, rho_p = stats.spearmanr(a, b)
    fit = stats.linregress(a, b)
    out.update(normal=normal, equal_var=equal_var, r2=float(fit.rvalue ** 2), regression_p=float(fit.pvalue),
               spearman_rho=float(rho), spearman_p=float(rho_p))
    if normal and equal_var:
        icc, low, high = _pingouin_icc3(a, b)
        sd = diff.std(ddof=1)
        bias = diff.mean()
        return {**out, "method": "parametric", "icc": icc, "icc_low": low, "icc_high": high, "bias": float(bias),
                "loa_low": float(bias - 1.96 * sd), "loa_high": float(bias + 1.96 * sd)}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boot_icc = icc3(np.stack([a, b], axis=-1)[idx])
    boot_diff = diff[idx]
    stat = {"bias": np.median(boot_diff, axis=1), "loa_low": np.percentile(boot_diff, 2.5, axis=1),
            "loa_high": np.percentile(boot_diff, 97.5, axis=1)}
    point = {"bias": np.median(diff), "loa_low": np.percentile(diff, 2.5), "loa_high": np.percentile(diff, 97.5)}
    out.update(method="nonparametric", icc=float(np.nanmedian(boot_icc)), icc_low=float(np.nanpercentile(boot_icc, 2.5)),
               icc_high=float(np.nanpercentile(boot_icc, 97.5)))
    for key, values in stat.items():
        out[key] = float(point[key])
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = map(float, np.percentile(values, [2.5, 97.5]))
    return out


def agreement_table(model: pd.DataFrame, reference: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per biomarker column shared by the two (subjects x biomarkers) frames,
    on subjects finite in both."""
    model, reference = model.align(reference, join="inner", axis=0)
    rows = []
    for column in [c for c in reference.columns if c in model.columns]:
        a, b = model[column].to_numpy(float), reference[column].to_numpy(float)
        ok = np.isfinite(a) & np.isfinite(b)
        rows.append({"biomarker": column, **agree(a[ok], b[ok], n_boot, seed)})
    return pd.DataFrame(rows)
