"""The two-stage protocol over a catalog, with multi-scan exams.

Features per plane are xarray DataArrays with a leading ``series`` dimension labelled by
series_id (a store variable, or numpy wrapped in a DataArray). The labelled unit is the
exam (``case_id``): every cross-plane combination of an exam's series is one fusion
sample weighted 1/(its exam's combinations) in training, and the exam's probability is the
mean over its combinations at inference. Exams missing a plane are left out of fusion
(``TwoStageFusion.missing_exams`` lists them). Bootstrap CIs resample patients (``patient_id``).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import xarray as xr
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted

from orthodiff.catalogs.tasks import PLANES
from orthodiff.errors import OrthodiffError
from orthodiff.heads.comparators import LightGBMComparator, LogisticComparator
from orthodiff.heads.defaults import METHOD, POOLING
from orthodiff.heads.ehr import EHREncoder, EHROnlyHead
from orthodiff.heads.fusion import FusionHead
from orthodiff.heads.probe import PlaneProbe
from orthodiff.options import Method, Pooling, choice

# heads on the fusion input other than the fusion methods; ehr_only is the paper's EHR-only baseline
COMPARATORS = {Method.lightgbm: LightGBMComparator, Method.logistic: LogisticComparator, Method.ehr_only: EHROnlyHead}


def fusion_samples(series: pd.DataFrame, planes=PLANES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(combinations, missing): one row per cross-plane combination of an exam's series
    (columns case_id, one series_id column per plane, weight), and the exams left out."""
    rows, missing = [], []
    for case, group in series.groupby("case_id", sort=True):
        per_plane = [sorted(group.loc[group["plane"] == p, "series_id"]) for p in planes]
        absent = [p for p, ids in zip(planes, per_plane) if not ids]
        if absent:
            missing.append({"case_id": case, "missing_planes": ",".join(absent)})
            continue
        combos = list(itertools.product(*per_plane))
        rows += [{"case_id": case, **dict(zip(planes, c)), "weight": 1.0 / len(combos)} for c in combos]
    columns = ["case_id", *planes, "weight"]
    return pd.DataFrame(rows, columns=columns), pd.DataFrame(missing, columns=["case_id", "missing_planes"])


def select_series(features: xr.DataArray, ids, plane: str) -> xr.DataArray:
    """Rows of ``features`` for ``ids`` (store order kept, so lazy reads stay contiguous)."""
    index = pd.Index(features["series"].to_numpy())
    positions = index.get_indexer(list(ids))
    if (positions < 0).any():
        absent = [i for i, p in zip(ids, positions) if p < 0]
        raise OrthodiffError(f"the store has no {plane} features for {len(absent)} catalog series, e.g. {absent[0]!r}")
    return features.isel(series=np.sort(positions))


def exam_table(catalog: pd.DataFrame) -> pd.DataFrame:
    """One row per exam (labels and EHR are per exam), indexed by case_id."""
    return catalog.drop_duplicates("case_id").set_index("case_id")


def exam_rows(catalog: pd.DataFrame, case_ids) -> pd.DataFrame:
    """The first catalog row of each exam in ``case_ids`` order, keeping the catalog's row
    labels (so an EHR error names the Parquet row) and the ``case_id`` column."""
    exams = catalog.drop_duplicates("case_id")
    return exams.iloc[pd.Index(exams["case_id"]).get_indexer(list(case_ids))]


def check_labels(catalog: pd.DataFrame, labels: list[str]) -> None:
    missing = [c for c in labels if c not in catalog.columns]
    if missing:
        raise OrthodiffError(f"catalog lacks label columns {missing}")


class TwoStageFusion(BaseEstimator):
    """Stage I: a pooling probe per plane on that plane's training series (for GAP, whose
    pooling has no parameters, only the standardisation statistics). Stage II: the pooling
    is frozen and only the fusion head (``method``: a fusion method, or ``lightgbm`` /
    ``logistic`` on the concatenated pooled vectors) is trained on fusion samples.

    ``probe`` (an unfitted ``PlaneProbe``) and ``head`` (an unfitted ``FusionHead``) carry the
    training settings of each stage; they are cloned with this model's ``pooling``,
    ``method`` and ``random_state``, so ``get_params(deep=True)`` and ``set_params`` reach
    them (``probe__epochs``, ``head__lr``); the comparators use their own defaults.

    A scikit-learn estimator (``clone``, ``get_params``) over a catalog rather than arrays:
    ``fit(features, catalog, labels)`` and ``predict`` returns a per-exam table, so it has
    no ``ClassifierMixin`` score; the Stage I and II models are ``probes_`` and ``head_``."""

    def __init__(self, pooling: str = POOLING, method: str = METHOD, ehr: bool = False,
                 probe: PlaneProbe | None = None, head: FusionHead | None = None, random_state: int = 0):
        self.pooling = pooling
        self.method = method
        self.ehr = ehr
        self.probe = probe
        self.head = head
        self.random_state = random_state

    def _pooled(self, features: dict, catalog: pd.DataFrame, outputs: dict | None = None
                ) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
        combos, missing = fusion_samples(catalog, self.planes_)
        pooled = {}
        for plane in self.planes_:
            ids = catalog.loc[catalog["plane"] == plane, "series_id"]
            ids = ids[ids.isin(combos[plane])]
            if outputs is not None and plane in outputs:
                selected = select_series(outputs[plane], ids, plane)
                vectors = selected.to_numpy()
            else:
                selected = select_series(features[plane], ids, plane)
                vectors = self.probes_[plane].transform(selected.data)
            row = pd.Series(np.arange(len(selected)), index=selected["series"].to_numpy())
            pooled[plane] = vectors[row[combos[plane]].to_numpy()]
        if self.uses_ehr_:
            pooled["ehr"] = self.ehr_encoder_.transform(exam_rows(catalog, combos["case_id"]))
        return pooled, combos, missing

    def fit(self, features: dict, catalog: pd.DataFrame, labels: list[str], probes: dict | None = None,
            outputs: dict | None = None) -> "TwoStageFusion":
        """``probes``: already fitted Stage I probes by plane (reused frozen, e.g. when many
        cross-plane combinations share a plane's configuration). ``outputs``: what those
        probes output (``stage_one_outputs``), by plane, read instead of pooling the features again."""
        method = choice(Method, self.method, "fusion method")
        self.fit_stage_one(features, catalog, labels, probes)
        # the EHR-only baseline is scored on the same exams as fusion (those with every plane)
        self.uses_ehr_ = self.ehr or method is Method.ehr_only
        if self.uses_ehr_:
            self.ehr_encoder_ = EHREncoder().fit(catalog.drop_duplicates("case_id"))
        X, combos, _ = self._pooled(features, catalog, outputs)
        exams = exam_table(catalog).loc[combos["case_id"]]
        y = exams[labels].to_numpy()
        if method.comparator:
            self.head_ = COMPARATORS[method](random_state=self.random_state).fit(X, y, combos["weight"].to_numpy())
        else:
            head = clone(self.head if self.head is not None else FusionHead())
            self.head_ = head.set_params(method=self.method, random_state=self.random_state).fit(
                X, y, combos["weight"].to_numpy(), groups=exams["patient_id"].to_numpy())
        return self

    def fit_stage_one(self, features: dict, catalog: pd.DataFrame, labels: list[str], probes: dict | None = None
                      ) -> "TwoStageFusion":
        """Stage I alone: a probe per plane of ``features`` on its training series (``probes``: as in ``fit``)."""
        check_labels(catalog, labels)
        self.labels_ = list(labels)
        self.planes_ = [p for p in PLANES if p in features]
        probe = clone(self.probe if self.probe is not None else PlaneProbe()).set_params(
            pooling=self.pooling, random_state=self.random_state, **({} if Pooling(self.pooling).trained else {"epochs": 0}))
        self.probes_ = dict(probes or {})
        for plane in [p for p in self.planes_ if p not in self.probes_]:
            rows = catalog[catalog["plane"] == plane]
            X = select_series(features[plane], rows["series_id"], plane)
            y = rows.set_index("series_id").loc[X["series"].to_numpy(), labels].to_numpy()
            self.probes_[plane] = clone(probe).fit(X.data, y)
        return self

    def predict(self, features: dict, catalog: pd.DataFrame, outputs: dict | None = None) -> pd.DataFrame:
        """One row per exam with all planes: case_id, patient_id, the labels, ``p_<label>``
        (mean over the exam's combinations) and, for MPAE, ``gate_<label>_<plane>``.
        Exams missing a plane are left out (``missing_exams``). ``outputs``: as in ``fit``."""
        check_is_fitted(self)
        X, combos, _ = self._pooled(features, catalog, outputs)
        if combos.empty:
            raise OrthodiffError("no exam has series in every plane: nothing to fuse")
        prob = pd.DataFrame(self.head_.predict_proba(X), columns=[f"p_{c}" for c in self.labels_])
        if Method(self.method).gated:
            gates = self.head_.gating_weights(X)
            for j, label in enumerate(self.labels_):
                for k, plane in enumerate(self.planes_):
                    prob[f"gate_{label}_{plane}"] = gates[:, j, k]
        prob["case_id"] = combos["case_id"].to_numpy()
        per_exam = prob.groupby("case_id", sort=True).mean()
        exams = exam_table(catalog).loc[per_exam.index]
        return pd.concat([exams[["patient_id", *self.labels_]], per_exam], axis=1).reset_index()

    def stage_one_outputs(self, features: dict, catalog: pd.DataFrame) -> dict[str, xr.DataArray]:
        """The Stage I output (pooled, standardised vector) of every series of ``catalog``, by plane,
        labelled by series: computed once, it serves every fit and predict on these probes."""
        check_is_fitted(self, "probes_")
        out = {}
        for plane in [p for p in self.planes_ if p in features]:
            selected = select_series(features[plane], catalog.loc[catalog["plane"] == plane, "series_id"], plane)
            out[plane] = xr.DataArray(self.probes_[plane].transform(selected.data), dims=("series", "feature"),
                                      coords={"series": selected["series"].to_numpy()})
        return out

    def missing_exams(self, catalog: pd.DataFrame) -> pd.DataFrame:
        """The exams of ``catalog`` that ``predict`` leaves out: case_id, missing_planes."""
        check_is_fitted(self)
        return fusion_samples(catalog, self.planes_)[1]
