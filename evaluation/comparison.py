"""Paired comparison of models on subject Dice: Friedman across three or more models,
pairwise Wilcoxon signed-rank with Benjamini-Hochberg adjustment."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd


def compare_models(subject_dice: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(friedman, pairwise) per dataset and over all datasets (`all`), on subjects every
    model was scored on. Friedman needs three models; pairwise p-values are adjusted
    within each dataset."""
    from scipy import stats
    from statsmodels.stats.multitest import multipletests

    friedman, pairwise = [], []
    everything = subject_dice.assign(dataset="all")
    datasets = subject_dice["dataset"].unique()
    for name, part in pd.concat([subject_dice, everything] if len(datasets) > 1 else [subject_dice]).groupby("dataset"):
        wide = part.pivot_table(index="subject", columns="model", values="dice").dropna()
        models = list(wide.columns)
        if len(models) >= 3 and len(wide) >= 2:
            res = stats.friedmanchisquare(*(wide[m] for m in models))
            friedman.append({"dataset": name, "models": len(models), "subjects": len(wide),
                             "statistic": float(res.statistic), "p": float(res.pvalue)})
        rows = []
        for a, b in combinations(models, 2):
            d = wide[a] - wide[b]
            p = float(stats.wilcoxon(wide[a], wide[b]).pvalue) if (d != 0).any() else 1.0
            rows.append({"dataset": name, "model_a": a, "model_b": b, "subjects": len(wide),
                         "median_difference": float(np.median(d)) if len(d) else np.nan, "p": p})
        if rows:
            adjusted = multipletests([r["p"] for r in rows], method="fdr_bh")[1]
            for r, q in zip(rows, adjusted):
                r["p_adjusted"] = float(q)
            pairwise += rows
    return pd.DataFrame(friedman), pd.DataFrame(pairwise)
