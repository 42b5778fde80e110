"""Multi-label classification metrics, patient-level bootstrap CIs, permutation tests.

Every function takes ``y`` (N, L) 0/1 and ``p`` (N, L) probabilities. A label with only one
class among the rows has an undefined AUROC/AP: NaN with a note, never an exception; the
macro AUROC averages the defined labels only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score

from orthodiff.errors import OrthodiffError

SUMMARY_METRICS = ("macro_auroc", "CP", "CR", "CF1", "OP", "OR", "OF1")
SUBGROUP_COLUMNS = ("center", "field_strength", "vendor")


def _check(y, p) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if y.ndim == 1:
        y, p = y[:, None], p[:, None]
    if y.shape != p.shape:
        raise OrthodiffError(f"labels {y.shape} and probabilities {p.shape} differ in shape")
    if np.isnan(p).any():
        raise OrthodiffError("probabilities contain NaN")
    return y, p


def _one_class(column: np.ndarray) -> str | None:
    classes = np.unique(column)
    return None if len(classes) == 2 else f"only class {classes.astype(int).tolist()} present: undefined"


def auroc_per_label(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUROC of every column at once via the Mann-Whitney rank sum (ties count one half,
    as in ``roc_auc_score``); NaN for a column with one class. Used wherever AUROC is
    computed thousands of times (bootstrap, permutations, sweeps)."""
    y = np.asarray(y, dtype=float)
    ranks = rankdata(p, axis=0)
    pos = y.sum(0)
    neg = len(y) - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(0) - pos * (pos + 1) / 2) / (pos * neg)
    return np.where((pos > 0) & (neg > 0), auc, np.nan)


def macro_auroc(y, p) -> float:
    aucs = auroc_per_label(*_check(y, p))
    return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")


def per_label(y, p, labels: list[str]) -> pd.DataFrame:
    """One row per label: n, positives, auroc, ap, note (why a value is undefined)."""
    y, p = _check(y, p)
    rows = []
    for j, label in enumerate(labels):
        note = _one_class(y[:, j])
        rows.append(
            {
                "label": label,
                "n": len(y),
                "positives": int(y[:, j].sum()),
                "auroc": np.nan if note else roc_auc_score(y[:, j], p[:, j]),
                "ap": np.nan if note else average_precision_score(y[:, j], p[:, j]),
                "note": note or "",
            }
        )
    return pd.DataFrame(rows)


def _ratio(num, den):
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def summary(y, p, threshold: float = 0.5) -> dict[str, float]:
    """Macro AUROC; CP/CR/CF1 (per-label precision/recall averaged) and OP/OR/OF1 (pooled)."""
    y, p = _check(y, p)
    pred = p >= threshold
    tp = (pred & (y == 1)).sum(0)
    predicted, actual = pred.sum(0), (y == 1).sum(0)
    cp, cr = float(_ratio(tp, predicted).mean()), float(_ratio(tp, actual).mean())
    op, or_ = float(_ratio(tp.sum(), predicted.sum())), float(_ratio(tp.sum(), actual.sum()))
    return {
        "macro_auroc": macro_auroc(y, p),
        "CP": cp,
        "CR": cr,
        "CF1": float(_ratio(2 * cp * cr, cp + cr)),
        "OP": op,
        "OR": or_,
        "OF1": float(_ratio(2 * op * or_, op + or_)),
    }


def _tidy(y, p, labels) -> dict[tuple[str, str], float]:
    table = per_label(y, p, labels)
    values = {("auroc", r.label): r.auroc for r in table.itertuples()}
    values |= {("ap", r.label): r.ap for r in table.itertuples()}
    values |= {(name, "all"): v for name, v in summary(y, p).items()}
    return values


def _group_rows(groups) -> list[np.ndarray]:
    codes = pd.factorize(np.asarray(groups))[0]
    order = np.argsort(codes, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)


def evaluate(y, p, labels: list[str], groups=None, n_boot: int = 500, seed: int = 0) -> pd.DataFrame:
    """Tidy table (metric, label, value, ci_low, ci_high, note): per-label AUROC/AP and the
    summary metrics, with 95% percentile CIs from resampling whole patients (``groups``)."""
    y, p = _check(y, p)
    point = _tidy(y, p, labels)
    notes = dict(zip(labels, per_label(y, p, labels)["note"]))
    boots: dict[tuple[str, str], list[float]] = {key: [] for key in point}
    if groups is not None and n_boot > 0:
        rows = _group_rows(groups)
        rng = np.random.default_rng(seed)
        for _ in range(n_boot):
            idx = np.concatenate([rows[i] for i in rng.integers(0, len(rows), len(rows))])
            for key, value in _tidy(y[idx], p[idx], labels).items():
                boots[key].append(value)
    out = []
    for (metric, label), value in point.items():
        sample = np.asarray(boots[(metric, label)], float)
        sample = sample[np.isfinite(sample)]
        low, high = np.percentile(sample, [2.5, 97.5]) if len(sample) else (np.nan, np.nan)
        out.append(
            {"metric": metric, "label": label, "value": value, "ci_low": low, "ci_high": high,
             "note": notes.get(label, "")}
        )
    return pd.DataFrame(out)


def permutation_test(y, p_a, p_b, labels: list[str], groups, n_perm: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Paired permutation test of A vs B on the same rows: each patient's predictions are
    swapped between A and B at random. One row per label plus ``macro``: AUROC of A and B,
    delta (A - B) and two-sided p-value."""
    y, p_a = _check(y, p_a)
    _, p_b = _check(y, p_b)

    def stats(a, b):
        da, db = auroc_per_label(y, a), auroc_per_label(y, b)
        macro = np.nanmean(da) - np.nanmean(db) if np.isfinite(da).any() else np.nan
        return np.append(da - db, macro), np.append(da, np.nanmean(da)), np.append(db, np.nanmean(db))

    observed, auc_a, auc_b = stats(p_a, p_b)
    codes, uniques = pd.factorize(np.asarray(groups))
    rng = np.random.default_rng(seed)
    extreme = np.zeros_like(observed)
    for _ in range(n_perm):
        swap = (rng.random(len(uniques)) < 0.5)[codes]
        a = np.where(swap[:, None], p_b, p_a)
        b = np.where(swap[:, None], p_a, p_b)
        extreme += np.abs(stats(a, b)[0]) >= np.abs(observed) - 1e-12
    p_value = np.where(np.isfinite(observed), (1 + extreme) / (1 + n_perm), np.nan)
    return pd.DataFrame(
        {"label": [*labels, "macro"], "auroc_a": auc_a, "auroc_b": auc_b, "delta": observed, "p_value": p_value}
    )


def subgroup_table(y, p, labels: list[str], meta: pd.DataFrame, by=SUBGROUP_COLUMNS) -> pd.DataFrame:
    """Per-label and macro AUROC within each value of each ``by`` column of ``meta`` (row-aligned)."""
    y, p = _check(y, p)
    missing = [c for c in by if c not in meta.columns]
    if missing:
        raise OrthodiffError(f"subgroup columns {missing} are not in the table")
    out = []
    for column in by:
        values = meta[column].to_numpy()
        for value in pd.unique(values):
            rows = values == value
            aucs = auroc_per_label(y[rows], p[rows])
            for label, auc in [*zip(labels, aucs), ("macro", np.nanmean(aucs) if np.isfinite(aucs).any() else np.nan)]:
                out.append({"by": column, "group": str(value), "n": int(rows.sum()), "label": label, "auroc": auc})
    return pd.DataFrame(out)
