"""The scikit-learn contract shared by orthodiff's classifiers (binary or multi-label).

``y`` is either 1-D with two class values (any dtype: one binary task, sklearn's layout:
``predict_proba`` (N, 2), ``decision_function`` (N,), ``predict`` returns class values) or
2-D 0/1 of shape (N, labels) (multi-label, the layout the heads use: ``predict_proba`` is
the (N, labels) probability of each label being present, as ``MLPClassifier`` gives for a
label-indicator ``y``; ``predict`` is the (N, labels) 0/1 matrix at 0.5). A label column
with one class only is allowed in the multi-label layout (the heads predict it anyway).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data


class MultiLabelClassifier(ClassifierMixin, BaseEstimator):
    """Subclasses implement ``_positive_proba(X) -> (N, labels)`` and call
    ``_encode_targets(y)`` in ``fit``; this class maps to sklearn's output layouts.
    ``classes_``: the two class values of a 1-D ``y``, ``array([0, 1])`` for a 2-D one."""

    def _encode_targets(self, y) -> np.ndarray:
        """Set ``classes_`` / ``multilabel_``; return y as (N, labels) float32 0/1."""
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] > 0:
            if not np.isin(y, (0, 1)).all():
                raise ValueError("a 2-D y is a multi-label indicator matrix: every value must be 0 or 1")
            self.multilabel_ = True
            self.classes_ = np.array([0, 1])  # every label column's values (as MLPClassifier)
            return y.astype(np.float32)
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D (binary) or 2-D (N, labels) 0/1, got shape {y.shape}")
        check_classification_targets(y)
        classes, codes = np.unique(y, return_inverse=True)
        if len(classes) != 2:
            found = f"{len(classes)} class{'' if len(classes) == 1 else 'es'} ({classes[:5].tolist()})"
            raise ValueError(f"Only binary classification is supported for a 1-D y, which holds {found}; "
                             "for several findings pass a 2-D 0/1 matrix, one column per label")
        self.multilabel_ = False
        self.classes_ = classes
        return codes.astype(np.float32)[:, None]

    def _positive_proba(self, X) -> np.ndarray:
        raise NotImplementedError

    def _layout(self, scores: np.ndarray, binary_negative=None) -> np.ndarray:
        """(N, ..., labels) scores in the layout of the ``y`` seen in ``fit``: unchanged for
        multi-label; for binary the label axis is dropped (decision values) or becomes the
        (negative, positive) class axis (probabilities, ``binary_negative`` given)."""
        if self.multilabel_:
            return scores
        positive = scores[..., 0]
        return positive if binary_negative is None else np.stack([binary_negative(positive), positive], axis=-1)

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        return self._layout(self._positive_proba(X), binary_negative=lambda p: 1.0 - p)

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        present = (self._positive_proba(X) > 0.5).astype(int)
        return present if self.multilabel_ else self.classes_[present[..., 0]]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.classifier_tags.multi_class = False
        tags.classifier_tags.multi_label = True
        return tags


def is_lazy(X) -> bool:
    """A store-backed array (xarray DataArray, Dask, Zarr) that must not be read whole."""
    return hasattr(X, "chunks")


def check_X(estimator, X, y=None, *, reset: bool, **kwargs):
    """``validate_data`` for in-memory arrays: ``(X, y)`` in ``fit`` (``reset``, multi-output
    ``y`` allowed), ``X`` otherwise. Lazy arrays are only checked for their feature count
    (axis 1), so they stay lazy."""
    if reset and y is None:
        raise ValueError(f"{type(estimator).__name__} requires y to be passed, but the target y is None")
    if is_lazy(X):
        if reset:
            estimator.n_features_in_ = int(X.shape[1])
        elif X.shape[1] != estimator.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(estimator).__name__} "
                             f"is expecting {estimator.n_features_in_} features as input")
        return (X, y) if reset else X
    if reset:
        return validate_data(estimator, X, y, multi_output=True, **kwargs)
    return validate_data(estimator, X, reset=False, **kwargs)


def check_weights(sample_weight, X):
    """None, or float weights one per row of ``X``, non-negative and not all zero."""
    return None if sample_weight is None else _check_sample_weight(sample_weight, X, ensure_non_negative=True)
