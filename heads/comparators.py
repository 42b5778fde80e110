"""Classical comparators on pooled vectors: one LightGBM / logistic regression per label
(``MultiOutputClassifier``).

``X`` is an (N, D) array or a fusion input dict (plane vectors, and "ehr", concatenated).
``y`` is (N, labels) 0/1 or 1-D binary (``heads.estimator``). A label with one class only
in training predicts its training prevalence (a per-label classifier cannot be fitted).
"""

from __future__ import annotations

import numpy as np
from lightgbm import LGBMClassifier
from scipy.sparse import issparse
from sklearn.linear_model import LogisticRegression
from sklearn.multioutput import MultiOutputClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from orthodiff.catalogs.tasks import PLANES
from orthodiff.heads.estimator import MultiLabelClassifier, check_weights, check_X


def as_matrix(X) -> np.ndarray:
    if isinstance(X, dict):
        keys = [p for p in PLANES if p in X] + (["ehr"] if "ehr" in X else [])
        return np.concatenate([np.asarray(X[k], dtype=np.float32) for k in keys], axis=1)
    return np.asarray(X, dtype=np.float32)


class _PerLabel(MultiLabelClassifier):
    def _make(self):
        raise NotImplementedError

    def _weight_kw(self, sample_weight) -> dict:
        return {} if sample_weight is None else {"sample_weight": np.asarray(sample_weight)}

    def _matrix(self, X, y=None, reset=False):
        fusion_input = isinstance(X, dict) and not issparse(X)  # a scipy DOK matrix is a dict too
        return check_X(self, as_matrix(X) if fusion_input else X, y, reset=reset, dtype=[np.float64, np.float32])

    def fit(self, X, y, sample_weight=None):
        X, y = self._matrix(X, y, reset=True)
        y, sample_weight = self._encode_targets(y), check_weights(sample_weight, X)
        self.prevalence_ = y.mean(0)
        self.fitted_labels_ = np.flatnonzero([len(np.unique(column)) == 2 for column in y.T])
        self.estimator_ = None
        if len(self.fitted_labels_):
            self.estimator_ = MultiOutputClassifier(self._make()).fit(
                X, y[:, self.fitted_labels_].astype(int), **self._weight_kw(sample_weight))
        return self

    def _positive_proba(self, X) -> np.ndarray:
        X = self._matrix(X)
        prob = np.tile(self.prevalence_.astype(np.float64), (len(X), 1))
        if self.estimator_ is not None:
            prob[:, self.fitted_labels_] = np.column_stack([p[:, 1] for p in self.estimator_.predict_proba(X)])
        return prob


class LightGBMComparator(_PerLabel):
    """One LightGBM classifier per label on the concatenated vectors. ``n_jobs=1`` by default:
    on cohorts of hundreds of exams a tree is microseconds of work, and LightGBM's OpenMP
    threads cost more than they save, very much more on a busy machine
    (`bench/benchmarks/heads_threads.py`); raise it for tens of thousands of exams."""

    def __init__(self, n_estimators: int = 200, learning_rate: float = 0.05, num_leaves: int = 15,
                 min_child_samples: int = 10, n_jobs: int = 1, random_state: int = 0):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _make(self):
        return LGBMClassifier(
            n_estimators=self.n_estimators, learning_rate=self.learning_rate, num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples, n_jobs=self.n_jobs, random_state=self.random_state, verbose=-1,
        )


class LogisticComparator(_PerLabel):
    def __init__(self, C: float = 1.0, max_iter: int = 2000, random_state: int = 0):
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def _make(self):
        return make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state))

    def _weight_kw(self, sample_weight) -> dict:
        return {} if sample_weight is None else {"logisticregression__sample_weight": np.asarray(sample_weight)}

    def fit(self, X, y, sample_weight=None) -> "LogisticComparator":
        super().fit(X, y, sample_weight)
        fitted = self.estimator_.estimators_ if self.estimator_ is not None else []
        # iterations of each fitted label's solver (sklearn's n_iter_ for max_iter estimators)
        self.n_iter_ = np.array([int(e[-1].n_iter_[0]) for e in fitted], dtype=int)
        return self
