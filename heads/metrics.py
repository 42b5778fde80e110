"""Multi-label classification metrics, patient-level bootstrap CIs, permutation tests.

Every function takes ``y`` (N, L) 0/1 and ``p`` (N, L) probabilities. A label with only one
class among the rows has an undefined AUROC/AP: NaN with a note, never an exception; the
macro AUROC averages the defined labels only. Thresholded metrics use ``threshold``: 0.5
(the paper's), any number, or one number per label (e.g. Youden's J chosen on validation
by ``youden_thresholds`` and frozen for test). As in the paper's code, CF1 is the mean of
the per-label F1 (``f1_score(average="macro")``), not the harmonic mean of CP and CR.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score, roc_curve

from orthodiff.errors import OrthodiffError

SUMMARY_METRICS = ("macro_auroc", "CP", "CR", "CF1", "OP", "OR", "OF1")
THRESHOLD_RULES = ("youden",)
SUBGROUP_COLUMNS = ("center", "field_strength", "vendor")
# Below this many positives (or negatives) in a split, a label's AUROC and its CI rest on a
# handful of exams: the tables and the report flag it.
MIN_SUPPORT = 5


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


def average_precision_per_label(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Average precision of every column, as ``average_precision_score`` computes it (the
    sum over distinct thresholds, highest first, of precision times the recall gained);
    NaN for a column with one class. For the bootstrap, where sklearn's per-call input
    checks would cost more than the metric."""
    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        positives = y[:, j].sum()
        if positives == 0 or positives == len(y):
            continue
        order = np.argsort(-p[:, j], kind="mergesort")
        score, hit = p[order, j], y[order, j]
        last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # the end of each run of ties
        tp = np.cumsum(hit)[last]
        precision, recall = tp / (last + 1), tp / positives
        out[j] = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    return out


def macro_auroc(y, p) -> float:
    aucs = auroc_per_label(*_check(y, p))
    return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")


def thresholds(threshold, n_labels: int) -> np.ndarray:
    """One threshold per label from a number or a per-label sequence."""
    values = np.broadcast_to(np.asarray(threshold, dtype=float), (n_labels,)) if np.ndim(threshold) == 0 else np.asarray(threshold, float)
    if values.shape != (n_labels,):
        raise OrthodiffError(f"{len(values)} thresholds for {n_labels} labels")
    return values


def youden_thresholds(y, p) -> np.ndarray:
    """Per label, the probability threshold maximising Youden's J = sensitivity +
    specificity - 1 on these rows (0.5 for a label with one class)."""
    y, p = _check(y, p)
    out = np.full(y.shape[1], 0.5)
    for j in range(y.shape[1]):
        if _one_class(y[:, j]) is None:
            fpr, tpr, cut = roc_curve(y[:, j], p[:, j])
            out[j] = min(float(cut[np.argmax(tpr - fpr)]), 1.0)
    return out


def _counts(y: np.ndarray, p: np.ndarray, threshold) -> tuple[np.ndarray, ...]:
    pred = p >= thresholds(threshold, y.shape[1])
    positive = y == 1
    return pred, (pred & positive).sum(0), (pred & ~positive).sum(0), (~pred & positive).sum(0), (~pred & ~positive).sum(0)


def per_label(y, p, labels: list[str], threshold=0.5) -> pd.DataFrame:
    """One row per label: n, positives, auroc, ap, threshold, sensitivity, specificity, f1,
    note (why a value is undefined)."""
    y, p = _check(y, p)
    pred, tp, fp, fn, tn = _counts(y, p, threshold)
    f1 = f1_score(y, pred, average=None, zero_division=0)
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
                "threshold": float(thresholds(threshold, y.shape[1])[j]),
                "sensitivity": tp[j] / (tp[j] + fn[j]) if tp[j] + fn[j] else np.nan,
                "specificity": tn[j] / (tn[j] + fp[j]) if tn[j] + fp[j] else np.nan,
                "f1": float(f1[j]),
                "note": note or "",
            }
        )
    return pd.DataFrame(rows)


def _ratio(num, den):
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def summary(y, p, threshold=0.5) -> dict[str, float]:
    """Macro AUROC; CP/CR (per-label precision/recall averaged), CF1 (per-label F1
    averaged) and OP/OR/OF1 (pooled over labels)."""
    y, p = _check(y, p)
    pred, tp, fp, fn, _ = _counts(y, p, threshold)
    predicted, actual = tp + fp, tp + fn
    op, or_ = float(_ratio(tp.sum(), predicted.sum())), float(_ratio(tp.sum(), actual.sum()))
    return {
        "macro_auroc": macro_auroc(y, p),
        "CP": float(_ratio(tp, predicted).mean()),
        "CR": float(_ratio(tp, actual).mean()),
        "CF1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "OP": op,
        "OR": or_,
        "OF1": float(_ratio(2 * op * or_, op + or_)),
    }


PER_LABEL_METRICS = ("auroc", "ap", "sensitivity", "specificity", "f1")


def _tidy(y, p, labels, threshold=0.5) -> dict[tuple[str, str], float]:
    """Every per-label and summary metric of ``evaluate``, computed on whole arrays (the
    bootstrap calls it hundreds of times); equal to ``per_label`` and ``summary``."""
    _, tp, fp, fn, tn = _counts(y, p, threshold)
    one_class = (y.sum(0) == 0) | (y.sum(0) == len(y))
    per = {
        "auroc": auroc_per_label(y, p),
        "ap": average_precision_per_label(y, p),
        "sensitivity": np.where(tp + fn > 0, _ratio(tp, tp + fn), np.nan),
        "specificity": np.where(tn + fp > 0, _ratio(tn, tn + fp), np.nan),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }
    values = {(m, label): float(per[m][j]) for m in PER_LABEL_METRICS for j, label in enumerate(labels)}
    predicted, actual = tp + fp, tp + fn
    op, or_ = float(_ratio(tp.sum(), predicted.sum())), float(_ratio(tp.sum(), actual.sum()))
    aucs = np.where(one_class, np.nan, per["auroc"])
    values |= {
        ("macro_auroc", "all"): float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan"),
        ("CP", "all"): float(_ratio(tp, predicted).mean()), ("CR", "all"): float(_ratio(tp, actual).mean()),
        ("CF1", "all"): float(per["f1"].mean()), ("OP", "all"): op, ("OR", "all"): or_,
        ("OF1", "all"): float(_ratio(2 * op * or_, op + or_)),
    }
    return values


def patient_resamples(groups, n_boot: int, seed: int = 0):
    """Yield `n_boot` bootstrap row-index arrays, each drawing whole groups (patients) with replacement."""
    codes = pd.factorize(np.asarray(groups))[0]
    order = np.argsort(codes, kind="stable")
    rows = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.concatenate([rows[i] for i in rng.integers(0, len(rows), len(rows))])


def evaluate(y, p, labels: list[str], groups=None, n_boot: int = 500, seed: int = 0, threshold=0.5) -> pd.DataFrame:
    """Tidy table (metric, label, value, ci_low, ci_high, note): per-label AUROC, AP,
    sensitivity, specificity and F1, and the summary metrics, with 95% percentile CIs from
    resampling whole patients (``groups``); ``threshold`` (number or one per label) is fixed."""
    y, p = _check(y, p)
    point = _tidy(y, p, labels, threshold)
    notes = dict(zip(labels, per_label(y, p, labels)["note"]))
    boots: dict[tuple[str, str], list[float]] = {key: [] for key in point}
    if groups is not None and n_boot > 0:
        for idx in patient_resamples(groups, n_boot, seed):
            for key, value in _tidy(y[idx], p[idx], labels, threshold).items():
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
    delta (A - B) and two-sided p-value.

    Each model's scores are first replaced by their ranks per label (scaled to (0, 1]), which
    leaves every AUROC as it is: two models seldom share a probability scale (a from-scratch
    network against a probe, a calibrated head against LightGBM), and swapping raw scores
    between scales makes the swapped AUROCs, and so the null distribution, depend on the scales.
    With ranks the p-value depends only on each model's ordering of the rows."""
    y, p_a = _check(y, p_a)
    _, p_b = _check(y, p_b)
    p_a, p_b = (rankdata(p, axis=0) / len(p) for p in (p_a, p_b))

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
