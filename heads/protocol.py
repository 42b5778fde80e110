"""The two-stage protocol over a catalog, with multi-scan exams.

``TwoStageFusion.fit(X, y)`` takes a ``FusionData`` (per-plane features and the catalog of
their series) and ``y``, the labels of those series. Features per plane are xarray
DataArrays with a leading ``series`` dimension labelled by series_id (a store variable, or
numpy wrapped in a DataArray). The labelled unit is the exam (``case_id``): every
cross-plane combination of an exam's series is one fusion sample weighted 1/(its exam's
combinations) in training, and the exam's probability is the mean over its combinations at
inference. Exams missing a plane are left out of fusion (``TwoStageFusion.missing_exams``
lists them). Bootstrap CIs resample patients (``patient_id``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import xarray as xr
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted

from orthodiff.catalogs.tasks import PLANES
from orthodiff.errors import OrthodiffError
from orthodiff.heads.comparators import LightGBMComparator, LogisticComparator
from orthodiff.heads.ehr import EHREncoder, EHROnlyHead
from orthodiff.heads.fusion import FusionHead, fusion_method
from orthodiff.heads.probe import PlaneProbe
from orthodiff.options import Method, Pooling, choice

# heads on the fusion input other than the fusion methods; ehr_only is the paper's EHR-only baseline
COMPARATORS = {Method.lightgbm: LightGBMComparator, Method.logistic: LogisticComparator, Method.ehr_only: EHROnlyHead}
CATALOG_COLUMNS = ("series_id", "case_id", "patient_id", "plane")


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


def config_features(features: dict[str, xr.Dataset], config: dict, source: str = "configuration") -> dict[str, xr.DataArray]:
    """Per plane, the configured (timestep, block) slab: the GAP vectors for GAP pooling,
    the activation otherwise. A plane, timestep or block absent from the store is an error."""
    out = {}
    for plane, chosen in config["planes"].items():
        if plane not in features:
            raise OrthodiffError(f"{source}: plane {plane!r} is not in the store (it has {sorted(features)})")
        ds = features[plane]
        var = Pooling(config["pooling"]).variable
        if var not in ds:
            raise OrthodiffError(f"{source}: the store has no {var!r} variable for plane {plane}")
        for dim in ("timestep", "block"):
            known = ds[dim].to_numpy().tolist()
            if chosen[dim] not in known:
                raise OrthodiffError(f"{source}: {plane} {dim} {chosen[dim]!r} is not in the store (it has {known})")
        out[plane] = ds[var].sel(timestep=chosen["timestep"], block=chosen["block"])
    return out


@dataclass(frozen=True, eq=False)
class FusionData:
    """The inputs of the heads: a set of series, one sample per catalog row. The ``X`` of
    ``TwoStageFusion`` and what every run takes (``runs.run_sweep``, ``run_select``, ``run_fuse``,
    ``run_efficiency``); ``from_tree`` makes it from the tree ``orthodiff.open_store`` returns.

    ``features``: per plane, the features of its series with a leading ``series`` dimension
    labelled by series_id: a plane node of the tree (a Dataset with ``gap`` and ``activation``
    over every timestep and block: what a sweep reads), or one (timestep, block) slab of it per
    plane (a DataArray, or numpy wrapped in one: what fusion reads; ``configured``).
    ``catalog``: one row per series, with series_id, case_id, patient_id and plane (and the EHR
    columns for EHR fusion); its label columns give ``y`` through ``labels``. ``pooled``: Stage I
    outputs by plane (``TwoStageFusion.stage_one_outputs``), read instead of pooling ``features``
    again; they belong to the probes that made them, which ``fit`` then takes as ``probes``.
    ``split_fingerprint``: that of the catalog the series were chosen from (``from_tree`` records
    it before leaving out planes without features; ``rows`` keeps it); None: this catalog's."""

    features: Mapping[str, xr.DataArray | xr.Dataset]
    catalog: pd.DataFrame
    pooled: Mapping[str, xr.DataArray] | None = None
    split_fingerprint: str | None = None

    def __post_init__(self):
        missing = [c for c in CATALOG_COLUMNS if c not in self.catalog.columns]
        if missing:
            raise OrthodiffError(f"the catalog lacks columns {missing}: a fusion input needs {list(CATALOG_COLUMNS)}")

    @classmethod
    def from_tree(cls, tree: xr.DataTree, catalog: pd.DataFrame | None = None, planes=None,
                  source: str = "the store") -> "FusionData":
        """The series of ``catalog`` with their features from ``tree`` (``open_store``'s tree or its
        ``features`` node; one backbone per plane, ``heads.store.plane_nodes``): every catalog
        series of ``planes`` (default: all) must have finite GAP features (``plane_features``;
        errors name ``source``), and rows of planes without features are left out. ``catalog``
        default: the one ``open_store(..., catalog=...)`` joined, read back from the nodes'
        ``series`` coordinates (the series with a split, in stored order; pass the DataFrame to
        keep its row order, row labels and column types). The split fingerprint is that of
        ``catalog`` whole: of a catalog read back, that of the series the tree holds, so pass
        the catalog file's DataFrame to match the runs and configurations of the command line."""
        from orthodiff.catalogs.cohort import split_fingerprint
        from orthodiff.heads.store import joined_catalog, plane_features

        if catalog is None:
            catalog = joined_catalog(tree, source)
        features = plane_features(tree, catalog, planes=planes, source=source)
        return cls(features, catalog[catalog["plane"].isin(list(features))].copy(),
                   split_fingerprint=split_fingerprint(catalog))

    def configured(self, config: Mapping, source: str = "configuration") -> "FusionData":
        """The configured (timestep, block) slab of each plane as the features
        (``config_features``; ``config``: a configuration ``select`` froze, or one like it)."""
        return replace(self, features=config_features(self.features, config, source))

    def rows(self, catalog: pd.DataFrame) -> "FusionData":
        """The same features (and Stage I outputs) for other catalog rows: a split, a subset."""
        return replace(self, catalog=catalog)

    def split(self, name: str) -> "FusionData":
        """The rows of the catalog's ``split`` ``name`` (train, val, test)."""
        return self.rows(self.catalog[self.catalog["split"] == name])

    def __len__(self) -> int:
        return len(self.catalog)

    @property
    def series(self) -> pd.Index:
        """The samples: the catalog's series ids, in catalog order."""
        return pd.Index(self.catalog["series_id"], name="series_id")

    def labels(self, columns) -> pd.DataFrame:
        """The catalog's label ``columns`` as ``y``: one row per series, indexed by series_id."""
        check_labels(self.catalog, list(columns))
        return self.catalog.set_index("series_id")[list(columns)]


def series_targets(X: FusionData, y) -> pd.DataFrame:
    """``y`` as one 0/1 column per label and one row per series of ``X``, in catalog order.
    A DataFrame or Series is matched to X's series by its index (series ids); a Series is
    one label (named by its name); an array is matched by position, its labels named
    ``label_<j>``."""
    if isinstance(y, pd.Series):
        y = y.to_frame(name="label" if y.name is None else y.name)
    if not isinstance(y, pd.DataFrame):
        values = np.asarray(y)
        values = values[:, None] if values.ndim == 1 else values
        if values.ndim != 2 or len(values) != len(X):
            raise OrthodiffError(f"y has shape {np.shape(y)}, X has {len(X)} series: give one row per catalog row "
                                 f"(or a DataFrame indexed by series_id, e.g. X.labels(columns))")
        return pd.DataFrame(values, index=X.series, columns=[f"label_{j}" for j in range(values.shape[1])])
    if y.index.has_duplicates:
        raise OrthodiffError(f"y's index repeats series {y.index[y.index.duplicated()][0]!r}: give one row per series")
    absent, extra = X.series.difference(y.index), y.index.difference(X.series)
    if len(absent) or len(extra):
        found = [f"{len(ids)} {what}, e.g. {ids[0]!r}" for ids, what in
                 ((absent, "series of X have no row in y"), (extra, "rows of y are no series of X")) if len(ids)]
        raise OrthodiffError(f"y's index does not match X's series ({'; '.join(found)}): index y by series_id, "
                             f"e.g. X.labels(columns)")
    return y.loc[X.series]


def stage_one_probe(pooling: str, params: Mapping | None = None, random_state: int = 0) -> PlaneProbe:
    """The Stage I probe of ``pooling`` with the probe settings ``params`` (epochs, lr, ...;
    ``random_state`` is the argument's). A pooling without weights (GAP) has nothing to train:
    its probe only fits the standardisation statistics (``epochs=0``)."""
    settings = {**(params or {}), "pooling": str(pooling), "random_state": random_state}
    if not choice(Pooling, pooling, "pooling").trained:
        settings["epochs"] = 0
    return PlaneProbe(**settings)


def stage_two_head(method: str, params: Mapping | None = None, random_state: int = 0):
    """The Stage II head of ``method``: a ``FusionHead`` with the fusion settings ``params``
    (``random_state`` is the argument's), or a comparator with its own defaults."""
    method = choice(Method, method, "fusion method")
    if method.comparator:
        return COMPARATORS[method](random_state=random_state)
    return FusionHead(**{**(params or {}), "method": method.value, "random_state": random_state})


class TwoStageFusion(BaseEstimator):
    """Stage I: ``probe`` (an unfitted ``PlaneProbe``; its ``pooling`` is the model's) fitted
    per plane on that plane's series. Stage II: the pooling is frozen and only ``head`` is
    trained on fusion samples: an unfitted ``FusionHead`` (its ``method`` is the fusion) or a
    comparator on the concatenated pooled vectors (``LightGBMComparator``,
    ``LogisticComparator``, ``EHROnlyHead``: the paper's EHR-only baseline, on the same exams
    as fusion). ``ehr``: late-fuse an EHR head (``FusionHead`` reads it as ``X["ehr"]``).

    Composition as in ``Pipeline``: the nested estimators are cloned and fitted with their own
    parameters (``stage_one_probe`` and ``stage_two_head`` build them from a run's settings),
    so ``get_params(deep=True)``, ``set_params`` (``probe__epochs``, ``head__lr``) and
    ``clone`` reach them, and their randomness is their ``random_state``. Defaults: the
    paper's ``PlaneProbe()`` and ``FusionHead()``.

    ``fit(X, y)``: ``X`` a ``FusionData``, ``y`` the labels of its series (``X.labels``).
    Predictions are per exam with every plane: ``predict_proba(X)`` is (exams, labels) in
    case_id order, ``predict_exams(X)`` the same as a table. The Stage I and II models are
    ``probes_`` and ``head_``."""

    def __init__(self, probe: PlaneProbe | None = None, head=None, ehr: bool = False):
        self.probe = probe
        self.head = head
        self.ehr = ehr

    def _pooled(self, X: FusionData) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
        catalog, stored = X.catalog, X.pooled or {}
        combos, missing = fusion_samples(catalog, self.planes_)
        pooled = {}
        for plane in self.planes_:
            ids = catalog.loc[catalog["plane"] == plane, "series_id"]
            ids = ids[ids.isin(combos[plane])]
            if plane in stored:
                selected = select_series(stored[plane], ids, plane)
                vectors = selected.to_numpy()
            else:
                selected = select_series(X.features[plane], ids, plane)
                vectors = self.probes_[plane].transform(selected.data)
            row = pd.Series(np.arange(len(selected)), index=selected["series"].to_numpy())
            pooled[plane] = vectors[row[combos[plane]].to_numpy()]
        if self.uses_ehr_:
            pooled["ehr"] = self.ehr_encoder_.transform(exam_rows(catalog, combos["case_id"]))
        return pooled, combos, missing

    def fit(self, X: FusionData, y, probes: dict | None = None) -> "TwoStageFusion":
        """``y``: 0/1 labels of X's series (``series_targets``; labels are per exam: Stage II
        reads each exam's first catalog row). ``probes``: already fitted Stage I probes by plane,
        reused frozen (e.g. when many cross-plane combinations share a plane's configuration);
        they are required for the planes of ``X.pooled``."""
        head = clone(self.head if self.head is not None else FusionHead())
        if isinstance(head, FusionHead):
            fusion_method(head.method)  # an unknown method fails before Stage I trains
        targets = series_targets(X, y)
        self._fit_stage_one(X, targets, probes)
        unbacked = [p for p in (X.pooled or {}) if p in self.planes_ and p not in (probes or {})]
        if unbacked:
            raise OrthodiffError(f"X.pooled holds Stage I outputs of {unbacked} but fit got no probes for them: "
                                 "pass the probes that made them (probes=...)")
        self.uses_ehr_ = self.ehr or isinstance(head, EHROnlyHead)
        if self.uses_ehr_:
            self.ehr_encoder_ = EHREncoder().fit(X.catalog.drop_duplicates("case_id"))
        pooled, combos, _ = self._pooled(X)
        first = ~X.catalog["case_id"].duplicated().to_numpy()
        per_exam = targets[first].set_axis(X.catalog["case_id"].to_numpy()[first])
        y_exam, weight = per_exam.loc[combos["case_id"]].to_numpy(), combos["weight"].to_numpy()
        if isinstance(head, FusionHead):
            patients = exam_table(X.catalog).loc[combos["case_id"], "patient_id"].to_numpy()
            self.head_ = head.fit(pooled, y_exam, weight, groups=patients)
        else:
            self.head_ = head.fit(pooled, y_exam, weight)
        return self

    def fit_stage_one(self, X: FusionData, y, probes: dict | None = None) -> "TwoStageFusion":
        """Stage I alone: a probe per plane of ``X.features`` on its series (``y``, ``probes``: as in ``fit``)."""
        return self._fit_stage_one(X, series_targets(X, y), probes)

    def _fit_stage_one(self, X: FusionData, targets: pd.DataFrame, probes: dict | None) -> "TwoStageFusion":
        self.labels_ = list(targets.columns)
        self.planes_ = [p for p in PLANES if p in X.features]
        probe = self.probe if self.probe is not None else PlaneProbe()
        self.probes_ = dict(probes or {})
        for plane in [p for p in self.planes_ if p not in self.probes_]:
            rows = X.catalog[X.catalog["plane"] == plane]
            selected = select_series(X.features[plane], rows["series_id"], plane)
            self.probes_[plane] = clone(probe).fit(selected.data, targets.loc[selected["series"].to_numpy()].to_numpy())
        return self

    @property
    def _gated(self) -> bool:
        return isinstance(self.head_, FusionHead) and fusion_method(self.head_.method).gated

    def predict_exams(self, X: FusionData) -> pd.DataFrame:
        """One row per exam with all planes, by case_id: case_id, patient_id, the labels (those
        the catalog has), ``p_<label>`` (mean over the exam's combinations) and, for MPAE,
        ``gate_<label>_<plane>``. Exams missing a plane are left out (``missing_exams``)."""
        check_is_fitted(self)
        pooled, combos, _ = self._pooled(X)
        if combos.empty:
            raise OrthodiffError("no exam has series in every plane: nothing to fuse")
        prob = pd.DataFrame(self.head_.predict_proba(pooled), columns=[f"p_{c}" for c in self.labels_])
        if self._gated:
            gates = self.head_.gating_weights(pooled)
            for j, label in enumerate(self.labels_):
                for k, plane in enumerate(self.planes_):
                    prob[f"gate_{label}_{plane}"] = gates[:, j, k]
        prob["case_id"] = combos["case_id"].to_numpy()
        per_exam = prob.groupby("case_id", sort=True).mean()
        exams = exam_table(X.catalog).loc[per_exam.index]
        truth = [c for c in self.labels_ if c in exams.columns]
        return pd.concat([exams[["patient_id", *truth]], per_exam], axis=1).reset_index()

    def predict_proba(self, X: FusionData) -> np.ndarray:
        """(exams, labels): the probability of each label for each exam with every plane,
        exams in case_id order (the rows of ``predict_exams``)."""
        return self.predict_exams(X)[[f"p_{c}" for c in self.labels_]].to_numpy()

    def stage_one_outputs(self, X: FusionData) -> dict[str, xr.DataArray]:
        """The Stage I output (pooled, standardised vector) of every series of ``X``, by plane,
        labelled by series: computed once, it serves every fit and predict on these probes
        (as ``FusionData.pooled``)."""
        check_is_fitted(self, "probes_")
        out, catalog = {}, X.catalog
        for plane in [p for p in self.planes_ if p in X.features]:
            selected = select_series(X.features[plane], catalog.loc[catalog["plane"] == plane, "series_id"], plane)
            out[plane] = xr.DataArray(self.probes_[plane].transform(selected.data), dims=("series", "feature"),
                                      coords={"series": selected["series"].to_numpy()})
        return out

    def missing_exams(self, X: FusionData) -> pd.DataFrame:
        """The exams of ``X`` that the predictions leave out: case_id, missing_planes."""
        check_is_fitted(self)
        return fusion_samples(X.catalog, self.planes_)[1]
