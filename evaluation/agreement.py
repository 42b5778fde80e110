"""Agreement of model and reference biomarkers per subject, as the paper does it.

Shapiro-Wilk (both raters) and Levene decide: parametric -> ICC(3,1) with its F-distribution
95% CI, R² of the linear regression, bias +- 1.96 SD; otherwise -> the paper's
non-parametric ICC: the between-subject share of variance of a linear mixed model
(value ~ 1 + (1 | subject)) over bootstrap draws of subjects (median and 2.5-97.5
percentiles), the median difference with the 2.5/97.5 percentiles of the differences as
limits, each with a bootstrap CI, and Spearman rho. Both correlation measures are reported
for every biomarker, and so is the absolute-agreement ICC(2,1) (McGraw & Wong's ICC(A,1)).

`icc` computes the six Shrout & Fleiss forms from the ANOVA mean squares by hand: pingouin
has them too, but only for a long table one at a time, where the bootstrap needs thousands
of (subjects x raters) arrays at once; the tests hold `icc` to pingouin and to the published
values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from orthodiff.errors import OrthodiffError
from orthodiff.options import IccForm

ALPHA = 0.05
# `evaluate seg` compares one model with one reference, two fixed raters known by name, each
# measuring once: consistency ICC(3,1) (the paper's) and absolute agreement ICC(2,1) fit;
# ICC(1,*) (raters not identified) and the k-rater averages (nobody averages the two) do not.
SEG_FORMS = (IccForm.ICC3, IccForm.ICC2)


def mean_squares(ratings: np.ndarray) -> dict[str, np.ndarray]:
    """Two-way ANOVA mean squares of (..., subjects, raters) ratings, vectorised over leading
    axes: rows (subjects), columns (raters), error, and within subjects (one-way)."""
    n, k = ratings.shape[-2:]
    grand = ratings.mean(axis=(-2, -1), keepdims=True)
    rows = ratings.mean(axis=-1, keepdims=True)
    cols = ratings.mean(axis=-2, keepdims=True)
    ss_rows = k * ((rows - grand) ** 2).sum(axis=(-2, -1))
    ss_cols = n * ((cols - grand) ** 2).sum(axis=(-2, -1))
    ss_err = ((ratings - rows - cols + grand) ** 2).sum(axis=(-2, -1))
    return {"rows": ss_rows / (n - 1), "cols": ss_cols / (k - 1), "error": ss_err / ((n - 1) * (k - 1)),
            "within": (ss_cols + ss_err) / (n * (k - 1))}


def icc_values(ratings: np.ndarray, form: str) -> np.ndarray:
    """Point estimates of `form` for (..., subjects, raters) ratings; NaN where undefined."""
    n, k = ratings.shape[-2:]
    ms = mean_squares(np.asarray(ratings, float))
    r, c, e, w = ms["rows"], ms["cols"], ms["error"], ms["within"]
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            IccForm.ICC1: (r - w) / (r + (k - 1) * w),
            IccForm.ICC2: (r - e) / (r + (k - 1) * e + k * (c - e) / n),
            IccForm.ICC3: (r - e) / (r + (k - 1) * e),
            IccForm.ICC1k: (r - w) / r,
            IccForm.ICC2k: (r - e) / (r + (c - e) / n),
            IccForm.ICC3k: (r - e) / r,
        }[IccForm(form)]


@dataclass(frozen=True)
class Icc:
    """An ICC with its confidence interval, or NaNs and the `reason` it is undefined."""

    form: str
    value: float
    low: float
    high: float
    reason: str = ""


def _ratings(ratings) -> np.ndarray:
    ratings = np.asarray(ratings, float)
    if ratings.ndim != 2:
        raise OrthodiffError(f"ICC needs a (subjects x raters) array, got shape {ratings.shape}")
    n, k = ratings.shape
    if n < 2 or k < 2:
        raise OrthodiffError(f"ICC needs at least 2 subjects and 2 raters, got {n} subject(s) x {k} rater(s)")
    if not np.isfinite(ratings).all():
        raise OrthodiffError("ICC needs finite ratings: drop the subjects with a missing (NaN) value first")
    return ratings


def icc(ratings, form: str = IccForm.ICC3, alpha: float = ALPHA) -> Icc:
    """ICC `form` of a (subjects x raters) array with its 1 - `alpha` confidence interval
    from the F distribution: Shrout & Fleiss (1979) for (1,*) and (3,*); for (2,*) McGraw &
    Wong's (1996) Satterthwaite interval for ICC(A,1), and its Spearman-Brown step-up for
    ICC(A,k), as pingouin. Constant ratings (no variance between subjects or raters) give
    NaN with the reason."""
    from scipy.stats import f as fdist

    form = IccForm(form)
    x = _ratings(ratings)
    n, k = x.shape
    ms = mean_squares(x)
    r, c, e, w = (float(ms[key]) for key in ("rows", "cols", "error", "within"))
    if r == 0:
        return Icc(form.value, np.nan, np.nan, np.nan, "every subject has the same mean rating: no between-subject "
                   "variance, ICC undefined")
    value = float(icc_values(x, form))
    q = 1 - alpha / 2
    if form in (IccForm.ICC2, IccForm.ICC2k):
        if e == 0:
            return Icc(form.value, value, np.nan, np.nan, "raters differ by constants only: no error variance, no CI")
        icc2 = float(icc_values(x, IccForm.ICC2))
        fj = c / e
        v = ((n - 1) * (k - 1) * (k * icc2 * fj + n * (1 + (k - 1) * icc2) - k * icc2) ** 2
             / ((n - 1) * k**2 * icc2**2 * fj**2 + (n * (1 + (k - 1) * icc2) - k * icc2) ** 2))
        fu, fl = fdist.ppf(q, n - 1, v), fdist.ppf(q, v, n - 1)
        low = n * (r - fu * e) / (fu * (k * c + (k * n - k - n) * e) + n * r)
        high = n * (fl * r - e) / (k * c + (k * n - k - n) * e + n * fl * r)
        if form == IccForm.ICC2k:
            low, high = (b * k / (1 + b * (k - 1)) for b in (low, high))
        return Icc(form.value, value, float(low), float(high))
    one_way = form in (IccForm.ICC1, IccForm.ICC1k)
    denominator = w if one_way else e
    if denominator == 0:
        return Icc(form.value, value, np.nan, np.nan, "no residual variance: the F ratio is infinite, no CI")
    df2 = n * (k - 1) if one_way else (n - 1) * (k - 1)
    f0 = r / denominator
    f_low, f_high = f0 / fdist.ppf(q, n - 1, df2), f0 * fdist.ppf(q, df2, n - 1)
    if form in (IccForm.ICC1, IccForm.ICC3):
        low, high = (f_low - 1) / (f_low + k - 1), (f_high - 1) / (f_high + k - 1)
    else:
        low, high = 1 - 1 / f_low, 1 - 1 / f_high
    return Icc(form.value, value, float(low), float(high))


def mixed_model_icc(ratings: np.ndarray) -> float:
    """The paper's non-parametric ICC of one (subjects x raters) array, fitted: statsmodels
    MixedLM `value ~ 1` with a random intercept per subject (REML); between-subject variance
    over total variance. Used to check `variance_ratio`, which the bootstrap uses instead."""
    import warnings

    import statsmodels.api as sm

    n, k = ratings.shape
    with warnings.catch_warnings():  # boundary fits (no subject variance) warn; the ratio is then 0
        warnings.simplefilter("ignore")
        fit = sm.MixedLM(ratings.ravel(), np.ones((n * k, 1)), groups=np.repeat(np.arange(n), k)).fit(reml=True)
    between = float(np.asarray(fit.cov_re)[0, 0])
    return between / (between + float(fit.scale))


def variance_ratio(ratings: np.ndarray) -> np.ndarray:
    """`mixed_model_icc` in closed form for (..., subjects, raters) arrays: with every subject
    rated by every rater the REML variance components are the one-way ANOVA ones, subject
    variance (MS_rows - MS_within) / k truncated at 0 and residual MS_within, so the ratio is
    ICC(1,1) floored at 0. 10,000 MixedLM fits per biomarker would take minutes; this takes
    milliseconds (the tests check both agree on bootstrap draws)."""
    return np.maximum(icc_values(ratings, IccForm.ICC1), 0.0)


def bootstrap_icc(ratings, n_boot: int = 10000, seed: int = 0) -> Icc:
    """The paper's non-parametric ICC: `variance_ratio` over `n_boot` resamples of subjects
    (with replacement, each subject's ratings kept together); median and 2.5-97.5 percentiles.
    NaN with the reason where every draw is undefined (constant ratings)."""
    x = _ratings(ratings)
    if np.ptp(x) == 0:
        return Icc("mixed-model variance ratio", np.nan, np.nan, np.nan, "constant ratings: no variance, ICC undefined")
    rng = np.random.default_rng(seed)
    draws = variance_ratio(x[rng.integers(0, len(x), size=(n_boot, len(x)))])
    draws = draws[np.isfinite(draws)]  # a draw of one subject repeated has no variance at all
    return Icc("mixed-model variance ratio", float(np.median(draws)), *map(float, np.percentile(draws, [2.5, 97.5])))


def agree(a: np.ndarray, b: np.ndarray, n_boot: int = 10000, seed: int = 0) -> dict:
    """Agreement of model values `a` with reference values `b` (paired, finite); `reason`
    says why the statistics are missing where they are."""
    from scipy import stats

    n = len(a)
    out = {"n": n, "reference_mean": float(b.mean()) if n else np.nan}
    if n < 4:
        return {**out, "method": "none", "reason": f"{n} subject(s) with both values: agreement needs at least 4"}
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        which = "model and reference" if np.ptp(a) == np.ptp(b) == 0 else "model" if np.ptp(a) == 0 else "reference"
        return {**out, "method": "none", "reason": f"constant {which} values: ICC, correlation and normality tests undefined"}
    normal = stats.shapiro(a).pvalue > ALPHA and stats.shapiro(b).pvalue > ALPHA
    equal_var = stats.levene(a, b).pvalue > ALPHA
    diff = a - b
    rho, rho_p = stats.spearmanr(a, b)
    fit = stats.linregress(a, b)
    pairs = np.stack([a, b], axis=-1)
    absolute = icc(pairs, IccForm.ICC2)
    out.update(normal=normal, equal_var=equal_var, r2=float(fit.rvalue ** 2), regression_p=float(fit.pvalue),
               spearman_rho=float(rho), spearman_p=float(rho_p), icc_a1=absolute.value, icc_a1_low=absolute.low,
               icc_a1_high=absolute.high, reason="")
    if normal and equal_var:
        consistency = icc(pairs, IccForm.ICC3)
        sd = diff.std(ddof=1)
        bias = diff.mean()
        out["reason"] = "; ".join(r for r in (consistency.reason, absolute.reason) if r)  # e.g. identical values: no CI
        return {**out, "method": "parametric", "icc_form": consistency.form, "icc": consistency.value,
                "icc_low": consistency.low, "icc_high": consistency.high, "bias": float(bias),
                "loa_low": float(bias - 1.96 * sd), "loa_high": float(bias + 1.96 * sd)}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boot = bootstrap_icc(pairs, n_boot, seed)
    boot_diff = diff[idx]
    stat = {"bias": np.median(boot_diff, axis=1), "loa_low": np.percentile(boot_diff, 2.5, axis=1),
            "loa_high": np.percentile(boot_diff, 97.5, axis=1)}
    point = {"bias": np.median(diff), "loa_low": np.percentile(diff, 2.5), "loa_high": np.percentile(diff, 97.5)}
    out.update(method="nonparametric", icc_form=f"{boot.form}, bootstrap median of {n_boot}", icc=boot.value,
               icc_low=boot.low, icc_high=boot.high)
    for key, values in stat.items():
        out[key] = float(point[key])
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = map(float, np.percentile(values, [2.5, 97.5]))
    return out


def agreement_table(model: pd.DataFrame, reference: pd.DataFrame, n_boot: int = 10000, seed: int = 0) -> pd.DataFrame:
    """One row per biomarker column shared by the two (subjects x biomarkers) frames,
    on subjects finite in both."""
    model, reference = model.align(reference, join="inner", axis=0)
    rows = []
    for column in [c for c in reference.columns if c in model.columns]:
        a, b = model[column].to_numpy(float), reference[column].to_numpy(float)
        ok = np.isfinite(a) & np.isfinite(b)
        rows.append({"biomarker": column, **agree(a[ok], b[ok], n_boot, seed)})
    return pd.DataFrame(rows)
