"""Figures of an evaluation: raincloud of subject Dice, Bland-Altman and regression
panels per biomarker (linear or Gaussian-process), forest plot of acquisition effects."""

from __future__ import annotations

import numpy as np
import pandas as pd

from orthodiff.outputs import atomic_savefig, pyplot


def raincloud(subject_dice: pd.DataFrame, path) -> None:
    """Per dataset, one half-violin + box + jittered subject points per model."""
    plt = pyplot()
    datasets = sorted(subject_dice["dataset"].unique())
    models = sorted(subject_dice["model"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(1.6 + 1.4 * len(models) * len(datasets), 3.2), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, dataset in zip(axes[0], datasets):
        part = subject_dice[subject_dice["dataset"] == dataset]
        values = [part.loc[part["model"] == m, "dice"].dropna().to_numpy() for m in models]
        keep = [i for i, v in enumerate(values) if len(v) > 1 and np.ptp(v) > 0]
        if keep:
            parts = ax.violinplot([values[i] for i in keep], positions=keep, showextrema=False, widths=0.7)
            for body in parts["bodies"]:  # keep the left half: the cloud
                verts = body.get_paths()[0].vertices
                centre = verts[:, 0].mean()
                verts[:, 0] = np.minimum(verts[:, 0], centre)
                body.set_alpha(0.5)
        ax.boxplot([v if len(v) else [np.nan] for v in values], positions=range(len(models)), widths=0.12, showfliers=False)
        for i, v in enumerate(values):
            ax.scatter(i + 0.12 + rng.uniform(0, 0.15, len(v)), v, s=8, alpha=0.7)
        ax.set_xticks(range(len(models)), models, rotation=20, fontsize=7)
        ax.set_title(dataset, fontsize=8)
        ax.set_ylabel("subject Dice")
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def gaussian_process_fit(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's regression for non-normal biomarkers: scikit-learn Gaussian-process
    regression of the reference `y` on the model `x`, kernel RBF + white noise (both fitted),
    alpha 0, normalised targets; (mean, SD) of the prediction at `grid`."""
    import warnings

    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, WhiteKernel

    scale = float(np.ptp(x)) or 1.0
    gpr = GaussianProcessRegressor(RBF(length_scale=scale) + WhiteKernel(), alpha=0.0, normalize_y=True, random_state=0)
    with warnings.catch_warnings():  # hyperparameters at their bounds (a near-linear relation) warn
        warnings.simplefilter("ignore")
        gpr.fit(x[:, None], y)
    mean, sd = gpr.predict(grid[:, None], return_std=True)
    return mean, sd


def agreement_panels(model: pd.DataFrame, reference: pd.DataFrame, table: pd.DataFrame, path, title: str) -> None:
    """Per biomarker: Bland-Altman (bias, limits, bootstrap CI bands when non-parametric)
    and reference vs model with the identity line and, as the paper, a linear regression
    (R², ICC(3,1)) for normal data or a Gaussian-process regression with its 95% band
    (Spearman rho, bootstrap ICC) for the rest."""
    plt = pyplot()
    model, reference = model.align(reference, join="inner", axis=0)
    table = table[table["method"].isin(["parametric", "nonparametric"])]
    fig, axes = plt.subplots(len(table), 2, figsize=(6.4, 2.3 * max(len(table), 1)), squeeze=False)
    for (ax_ba, ax_reg), row in zip(axes, table.to_dict("records")):
        a, b = model[row["biomarker"]].to_numpy(float), reference[row["biomarker"]].to_numpy(float)
        ok = np.isfinite(a) & np.isfinite(b)
        a, b = a[ok], b[ok]
        ax_ba.scatter((a + b) / 2, a - b, s=8)
        for key, style in (("bias", "-"), ("loa_low", "--"), ("loa_high", "--")):
            ax_ba.axhline(row[key], color="k", linestyle=style, linewidth=0.8)
            if np.isfinite(row.get(f"{key}_ci_low", np.nan)):
                ax_ba.axhspan(row[f"{key}_ci_low"], row[f"{key}_ci_high"], color="grey", alpha=0.2)
        ax_ba.set_title(f"{row['biomarker']}: model - reference", fontsize=7)
        ax_reg.scatter(a, b, s=8)
        line = np.array([min(a.min(), b.min()), max(a.max(), b.max())])
        ax_reg.plot(line, line, "k:", linewidth=0.8)
        icc = f"ICC {row['icc']:.2f} [{row['icc_low']:.2f}, {row['icc_high']:.2f}]"
        if row["method"] == "parametric":
            slope, intercept = np.polyfit(a, b, 1)
            ax_reg.plot(line, slope * line + intercept, "r-", linewidth=0.8)
            ax_reg.set_title(f"linear: R² {row['r2']:.2f} (p {row['regression_p']:.2g}), {icc}", fontsize=7)
        else:
            grid = np.linspace(*line, 50)
            mean, sd = gaussian_process_fit(a, b, grid)
            ax_reg.plot(grid, mean, "r-", linewidth=0.8)
            ax_reg.fill_between(grid, mean - 1.96 * sd, mean + 1.96 * sd, color="r", alpha=0.15)
            ax_reg.set_title(f"GPR: rho {row['spearman_rho']:.2f} (p {row['spearman_p']:.2g}), bootstrap {icc}", fontsize=7)
        ax_reg.set_xlabel("model", fontsize=6)
        ax_reg.set_ylabel("reference", fontsize=6)
        for ax in (ax_ba, ax_reg):
            ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def forest(effects: pd.DataFrame, path, title: str = "") -> None:
    """Fixed effects (intercept left out) with 95% CIs."""
    plt = pyplot()
    effects = effects[effects["effect"] != "const"].iloc[::-1]
    fig, ax = plt.subplots(figsize=(5.5, 0.8 + 0.35 * len(effects)))
    y = np.arange(len(effects))
    ax.errorbar(effects["coefficient"], y, xerr=[effects["coefficient"] - effects["ci_low"], effects["ci_high"] - effects["coefficient"]],
                fmt="o", color="k", capsize=3, markersize=4)
    ax.axvline(0, color="grey", linestyle=":")
    ax.set_yticks(y, effects["effect"], fontsize=7)
    ax.set_xlabel("effect on Dice (per SD of a parameter, or per level) with 95% CI")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)
