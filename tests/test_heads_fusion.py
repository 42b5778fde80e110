"""Probes, fusion heads, EHR fusion, comparators and the two-stage multi-scan protocol."""

import numpy as np
import pandas as pd
import pytest
import torch

from orthodiff.errors import OrthodiffError
from orthodiff.heads.comparators import LightGBMComparator, LogisticComparator
from orthodiff.heads.ehr import EHREncoder, LateFusion
from orthodiff.heads.fusion import METHODS
from orthodiff.heads.metrics import macro_auroc
from orthodiff.heads.probe import PlaneProbe
from orthodiff.heads.protocol import TwoStageFusion, fusion_samples
from orthodiff.heads.synthetic import synthetic_catalog, synthetic_features

LABELS = ["ACL", "PCL", "MM", "LM"]
FAST = dict(probe_params=dict(epochs=8, lr=5e-3), fusion_params=dict(epochs=25, lr=3e-3))


@pytest.fixture(scope="module")
def cohort():
    catalog = synthetic_catalog(160, LABELS, seed=3, repeat=0.15, missing=0.1)
    data = synthetic_features(catalog, LABELS, channels=16, timesteps=(100,), blocks=("mid_1",), seed=3)
    features = {p: ds.activation.sel(timestep=100, block="mid_1") for p, ds in data.items()}
    return catalog, features


def _auroc(pred):
    return macro_auroc(pred[LABELS].to_numpy(), pred[[f"p_{c}" for c in LABELS]].to_numpy())


def test_fusion_samples_enumerate_combinations_weights_and_missing_planes():
    rows = [("A", "sagittal", "A-s0"), ("A", "sagittal", "A-s1"), ("A", "coronal", "A-c0"), ("A", "axial", "A-a0"),
            ("A", "axial", "A-a1"), ("B", "sagittal", "B-s0"), ("B", "coronal", "B-c0")]
    series = pd.DataFrame(rows, columns=["case_id", "plane", "series_id"])
    combos, missing = fusion_samples(series)
    assert len(combos) == 4 and set(combos["case_id"]) == {"A"}
    assert np.allclose(combos["weight"], 0.25) and combos["weight"].sum() == pytest.approx(1.0)
    assert {tuple(r) for r in combos[["sagittal", "axial"]].to_numpy()} == {
        ("A-s0", "A-a0"), ("A-s0", "A-a1"), ("A-s1", "A-a0"), ("A-s1", "A-a1")}
    assert missing.to_dict("records") == [{"case_id": "B", "missing_planes": "axial"}]


@pytest.mark.parametrize("method", [*METHODS, "lightgbm", "logistic"])
def test_every_fusion_method_learns_and_averages_multi_scan_exams(cohort, method):
    catalog, features = cohort
    model = TwoStageFusion("gap", method, random_state=0, **FAST).fit(features, catalog[catalog.split == "train"], LABELS)
    test = catalog[catalog.split == "test"]
    pred = model.predict(features, test)
    assert _auroc(pred) > 0.8
    counted = set(pred["case_id"]) | set(model.missing_["case_id"])
    assert counted == set(test["case_id"]) and len(model.missing_) > 0
    # an exam with a repeat scan: its probability is the mean over its combinations
    combos, _ = fusion_samples(test)
    multi = combos["case_id"].value_counts()
    case = multi.index[0]
    assert multi.iloc[0] > 1
    X, c, _ = model._pooled(features, test)
    rows = (c["case_id"] == case).to_numpy()
    expected = model.head_.predict_proba({k: v[rows] for k, v in X.items()}).mean(0)
    got = pred.set_index("case_id").loc[case, [f"p_{l}" for l in LABELS]].to_numpy(float)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    if method == "mpae":
        gates = pred[[f"gate_ACL_{p}" for p in ("sagittal", "coronal", "axial")]].to_numpy()
        np.testing.assert_allclose(gates.sum(1), 1.0, rtol=1e-5)


def test_stage_two_keeps_stage_one_pooling_frozen(cohort):
    catalog, features = cohort
    train = catalog[catalog.split == "train"]
    model = TwoStageFusion("sap", "concat", random_state=1, **FAST).fit(features, train, LABELS)
    rows = train[train.plane == "coronal"]
    X = features["coronal"].sel(series=rows["series_id"].to_numpy())
    alone = PlaneProbe("sap", random_state=1, **FAST["probe_params"]).fit(X.data, rows[LABELS].to_numpy())
    for name, value in alone.net_.state_dict().items():
        torch.testing.assert_close(model.probes_["coronal"].net_.state_dict()[name], value)


def test_lazy_dask_features_stream_through_probes(cohort):
    catalog, features = cohort
    rows = catalog[catalog.plane == "sagittal"]
    X = features["sagittal"].sel(series=rows["series_id"].to_numpy())
    lazy = X.chunk({"series": 20}).data
    assert not isinstance(lazy, np.ndarray)
    train = (rows.split == "train").to_numpy()
    y = rows[LABELS].to_numpy()
    eager = PlaneProbe("glp", epochs=8, lr=5e-3, block_rows=20).fit(X.data[train], y[train])
    np.testing.assert_allclose(eager.predict_proba(lazy), eager.predict_proba(X.data), atol=1e-6)
    streamed = PlaneProbe("glp", epochs=8, lr=5e-3, block_rows=20).fit(lazy[train], y[train])
    assert macro_auroc(y[~train], streamed.predict_proba(lazy[~train])) > 0.75


def test_ehr_fusion_uses_ehr_and_reports_the_mri_weight(cohort):
    catalog, features = cohort
    assert torch.sigmoid(LateFusion(3).p).tolist() == [0.5] * 3
    model = TwoStageFusion("gap", "linear_concat", ehr=True, random_state=0, **FAST)
    model.fit(features, catalog[catalog.split == "train"], LABELS)
    weight = model.head_.mri_weight_
    assert weight.shape == (4,) and np.all((weight > 0) & (weight < 1)) and not np.allclose(weight, 0.5)
    assert _auroc(model.predict(features, catalog[catalog.split == "test"])) > 0.8


def test_ehr_encoding_layout_and_garbage_named_by_column_and_row():
    df = pd.DataFrame({"case_id": ["a", "b", "c"], "age": [20.0, np.nan, 40.0], "height": [170, 180, 160],
                       "weight": [70, 80, 60], "sex": ["M", None, "X"], "athlete": ["yes", "no", "no"],
                       "injury_event": ["sports", "moon landing", None]})
    enc = EHREncoder().fit(df)
    out = enc.transform(df)
    assert out.shape == (3, 3 + 3 + 3 + 1)
    assert out[1, 0] == 0.0 and out[0, 0] == pytest.approx(-1.0)  # z-scored age; missing -> 0
    assert out[:, 3:6].tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]  # sex one-hot, None and "X" -> UNK
    assert out[:, -1].tolist() == [4, 8, 8]  # "sports" is class 4; unlisted and missing -> UNK (8)
    bad = df.assign(weight=[70, "heavy", 60])
    with pytest.raises(OrthodiffError, match=r"column 'weight', row 1 \(case b\): value 'heavy' is not a number"):
        enc.transform(bad)
    with pytest.raises(OrthodiffError, match=r"column 'age', row 2.*outside"):
        enc.transform(df.assign(age=[20.0, 30.0, 400.0]))
    with pytest.raises(OrthodiffError, match=r"column 'sex', row 0.*not a category"):
        enc.transform(df.assign(sex=[3.5, "M", "F"]))


def test_comparators_handle_a_one_class_label():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 6))
    y = np.stack([(X[:, 0] > 0).astype(int), np.zeros(120, int)], axis=1)
    for model in (LightGBMComparator(n_estimators=30), LogisticComparator()):
        p = model.fit(X[:80], y[:80], sample_weight=np.ones(80)).predict_proba(X[80:])
        assert p.shape == (40, 2) and np.all(p[:, 1] == 0.0)
        assert macro_auroc(y[80:, :1], p[:, :1]) > 0.9


def test_bad_input_is_named(cohort):
    catalog, features = cohort
    train = catalog[catalog.split == "train"]
    with pytest.raises(OrthodiffError, match="lacks label columns"):
        TwoStageFusion().fit(features, train.drop(columns="MM"), LABELS)
    short = {**features, "axial": features["axial"].isel(series=slice(1, None))}
    with pytest.raises(OrthodiffError, match="no axial features for 1 catalog series"):
        TwoStageFusion().fit(short, catalog, LABELS)
    with pytest.raises(OrthodiffError, match="unknown fusion method"):
        TwoStageFusion(method="stack").fit(features, train, LABELS)


def test_prefitted_stage_one_probes_are_reused_frozen(cohort):
    catalog, features = cohort
    train = catalog[catalog.split == "train"]
    first = TwoStageFusion("glp", "concat", random_state=2, **FAST).fit(features, train, LABELS)
    reused = TwoStageFusion("glp", "concat", random_state=2, **FAST).fit(features, train, LABELS, probes=first.probes_)
    assert all(reused.probes_[p] is first.probes_[p] for p in first.probes_)
    test = catalog[catalog.split == "test"]
    np.testing.assert_allclose(reused.predict(features, test)["p_ACL"], first.predict(features, test)["p_ACL"], rtol=1e-6)


def test_ehr_garbage_in_the_catalog_names_the_catalog_row_and_case(cohort):
    catalog, features = cohort
    bad = catalog.assign(height=catalog["height"].astype(object))
    row = int(np.flatnonzero(bad.split == "train")[5])
    bad.loc[bad.case_id == bad.at[row, "case_id"], "height"] = "tall"
    first = int(bad.index[bad.case_id == bad.at[row, "case_id"]][0])
    with pytest.raises(OrthodiffError, match=rf"column 'height', row {first} \(case {bad.at[row, 'case_id']}\): value 'tall'"):
        TwoStageFusion("gap", "concat", ehr=True, **FAST).fit(features, bad[bad.split == "train"], LABELS)
