"""Probes, fusion heads, EHR fusion, comparators and the two-stage multi-scan protocol."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import GroupKFold

from orthodiff.errors import OrthodiffError
from orthodiff.heads.comparators import LightGBMComparator, LogisticComparator
from orthodiff.heads.ehr import EHREncoder, LateFusion
from orthodiff.heads.fusion import METHODS, CrossAttentionClassifier, FusionHead, MPAEGate
from orthodiff.heads.metrics import macro_auroc
from orthodiff.heads.probe import PlaneProbe
from orthodiff.heads.protocol import FusionData, TwoStageFusion, fusion_samples, stage_one_probe, stage_two_head
from orthodiff.heads.synthetic import synthetic_catalog, synthetic_features

LABELS = ["ACL", "PCL", "MM", "LM"]
FAST_PROBE = dict(epochs=8, lr=5e-3, batch_size=32)
FAST_HEAD = dict(epochs=25, lr=3e-3, batch_size=32, plane_epochs=25, plane_lr=3e-3, gate_epochs=200)


def two_stage(pooling, method, random_state=0, ehr=False):
    """A two-stage model at the fast settings: ``pooling``'s probe, ``method``'s head, one seed."""
    return TwoStageFusion(stage_one_probe(pooling, FAST_PROBE, random_state),
                          stage_two_head(method, FAST_HEAD, random_state), ehr=ehr)


def fitted(model, features, catalog):
    X = FusionData(features, catalog)
    return model.fit(X, X.labels(LABELS))


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


@pytest.mark.slow
@pytest.mark.parametrize("method", [*METHODS, "lightgbm", "logistic"])
def test_every_fusion_method_learns_and_averages_multi_scan_exams(cohort, method):
    catalog, features = cohort
    model = fitted(two_stage("gap", method), features, catalog[catalog.split == "train"])
    test = catalog[catalog.split == "test"]
    pred = model.predict_exams(FusionData(features, test))
    assert _auroc(pred) > 0.8
    missing = model.missing_exams(FusionData(features, test))
    counted = set(pred["case_id"]) | set(missing["case_id"])
    assert counted == set(test["case_id"]) and len(missing) > 0 and not set(missing["case_id"]) & set(pred["case_id"])
    # an exam with a repeat scan: its probability is the mean over its combinations
    combos, _ = fusion_samples(test)
    multi = combos["case_id"].value_counts()
    case = multi.index[0]
    assert multi.iloc[0] > 1
    X, c, _ = model._pooled(FusionData(features, test))
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
    model = fitted(two_stage("sap", "concat", random_state=1), features, train)
    rows = train[train.plane == "coronal"]
    X = features["coronal"].sel(series=rows["series_id"].to_numpy())
    alone = stage_one_probe("sap", FAST_PROBE, 1).fit(X.data, rows[LABELS].to_numpy())
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
    model = fitted(two_stage("gap", "linear_concat", ehr=True), features, catalog[catalog.split == "train"])
    weight = model.head_.mri_weight_
    assert weight.shape == (4,) and np.all((weight > 0) & (weight < 1)) and not np.allclose(weight, 0.5)
    assert _auroc(model.predict_exams(FusionData(features, catalog[catalog.split == "test"]))) > 0.8


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
        fitted(TwoStageFusion(), features, train.drop(columns="MM"))
    short = {**features, "axial": features["axial"].isel(series=slice(1, None))}
    with pytest.raises(OrthodiffError, match="no axial features for 1 catalog series"):
        fitted(TwoStageFusion(), short, catalog)
    with pytest.raises(OrthodiffError, match="unknown fusion method"):
        fitted(TwoStageFusion(head=FusionHead("stack")), features, train)


def test_prefitted_stage_one_probes_are_reused_frozen(cohort):
    catalog, features = cohort
    train = catalog[catalog.split == "train"]
    first = fitted(two_stage("glp", "concat", random_state=2), features, train)
    X = FusionData(features, train)
    reused = two_stage("glp", "concat", random_state=2).fit(X, X.labels(LABELS), probes=first.probes_)
    assert all(reused.probes_[p] is first.probes_[p] for p in first.probes_)
    test = FusionData(features, catalog[catalog.split == "test"])
    np.testing.assert_allclose(reused.predict_exams(test)["p_ACL"], first.predict_exams(test)["p_ACL"], rtol=1e-6)


def test_ehr_garbage_in_the_catalog_names_the_catalog_row_and_case(cohort):
    catalog, features = cohort
    bad = catalog.assign(height=catalog["height"].astype(object))
    row = int(np.flatnonzero(bad.split == "train")[5])
    bad.loc[bad.case_id == bad.at[row, "case_id"], "height"] = "tall"
    first = int(bad.index[bad.case_id == bad.at[row, "case_id"]][0])
    with pytest.raises(OrthodiffError, match=rf"column 'height', row {first} \(case {bad.at[row, 'case_id']}\): value 'tall'"):
        fitted(two_stage("gap", "concat", ehr=True), features, bad[bad.split == "train"])


DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def fusion_reference():
    state = torch.load(DATA / "fusion_format_tiny.pt", weights_only=True)
    return state, {k: torch.from_numpy(v) for k, v in np.load(DATA / "fusion_format_tiny_io.npz").items()}


def test_mpae_gate_loads_the_reference_weights_and_reproduces_fused_logits_and_gates(fusion_reference):
    state, io = fusion_reference
    gate = MPAEGate(n_labels=io["plane_logits"].shape[2]).eval()
    gate.load_state_dict(state["mpae_gate"], strict=True)
    with torch.no_grad():
        torch.testing.assert_close(gate(io["plane_logits"]), io["mpae_fused"], atol=1e-5, rtol=0)
        torch.testing.assert_close(gate.gate(io["plane_logits"]), io["mpae_gate"], atol=1e-5, rtol=0)


def test_cross_attention_loads_the_reference_weights_and_reproduces_its_logits(fusion_reference):
    state, io = fusion_reference
    dims = [io[k].shape[1] for k in ("fa", "fb", "fc")]
    model = CrossAttentionClassifier(dims, n_labels=8, embed_dim=64, heads=4, mode="mean").eval()
    model.load_state_dict(state["cross_attention"], strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(io["fa"], io["fb"], io["fc"]), io["cross_attention_logits"], atol=1e-5, rtol=0)


def test_mpae_is_one_gate_over_out_of_fold_plane_logits_with_patient_folds(monkeypatch):
    rng = np.random.default_rng(0)
    n, patients = 120, np.repeat(np.arange(40), 3)
    y = (rng.random((n, 2)) < 0.4).astype(np.float32)
    X = {"sagittal": rng.normal(size=(n, 6)) + 2 * y[:, :1], "coronal": rng.normal(size=(n, 5)) + 2 * y[:, 1:],
         "axial": rng.normal(size=(n, 4))}
    seen = []
    real_split = GroupKFold.split

    def spy(self, X_, y_=None, groups=None):
        for fit_rows, held_out in real_split(self, X_, y_, groups):
            assert not set(groups[fit_rows]) & set(groups[held_out])
            seen.append(held_out)
            yield fit_rows, held_out

    monkeypatch.setattr(GroupKFold, "split", spy)
    head = FusionHead("mpae", plane_epochs=10, plane_lr=3e-2, batch_size=40, gate_epochs=30, random_state=0).fit(X, y, groups=patients)
    assert len(seen) == 5 and sorted(np.concatenate(seen).tolist()) == list(range(n))
    gate = head.net_.fusion.fuser
    assert [tuple(p.shape) for p in gate.gate.parameters()] == [(32, 3), (32,), (3, 32), (3,)]
    assert [tuple(p.shape) for p in gate.meta.parameters()] == [(128, 2), (128,), (2, 128), (2,)]
    weights = head.gating_weights(X)
    np.testing.assert_allclose(weights.sum(2), 1.0, rtol=1e-5)
    # the gate leans on the plane that carries each label
    assert weights[:, 0, 0].mean() > weights[:, 0, 2].mean() and weights[:, 1, 1].mean() > weights[:, 1, 2].mean()
    assert macro_auroc(y, head.predict_proba(X)) > 0.85
    with pytest.raises(OrthodiffError, match="at least 5 patients"):
        FusionHead("mpae").fit(X, y, groups=patients % 3)


def test_ehr_only_baseline_sees_the_ehr_alone_on_the_fusion_exams(cohort):
    catalog, features = cohort
    train, test = catalog[catalog.split == "train"], catalog[catalog.split == "test"]
    model = fitted(two_stage("gap", "ehr_only"), features, train)
    pred = model.predict_exams(FusionData(features, test))
    shuffled = {p: f.copy(data=np.random.default_rng(1).permutation(f.values)) for p, f in features.items()}
    np.testing.assert_allclose(model.predict_exams(FusionData(shuffled, test))["p_ACL"], pred["p_ACL"], rtol=1e-6)
    fusion = fitted(two_stage("gap", "concat"), features, train)
    assert set(pred["case_id"]) == set(fusion.predict_exams(FusionData(features, test))["case_id"])
    assert model.head_.epochs == 3 and pred[[f"p_{c}" for c in LABELS]].std().min() > 0


def test_one_plane_concat_is_a_single_plane_probe_and_gated_methods_need_two():
    """The study scores each plane alone through the fusion commands: concat of one plane is
    a linear head on that plane's pooled vectors; MPAE and cross-attention combine planes."""
    rng = np.random.default_rng(1)
    y = (rng.random((80, 1)) < 0.5).astype(np.float32)
    X = {"sagittal": rng.normal(size=(80, 6)) + 2 * y}
    head = FusionHead("concat", epochs=30, lr=3e-2, batch_size=16, random_state=0).fit(X, y)
    assert macro_auroc(y, head.predict_proba(X)) > 0.85
    for method in ("mpae", "cross_attention"):
        with pytest.raises(OrthodiffError, match=f"{method} fusion needs at least two planes"):
            FusionHead(method).fit(X, y, groups=np.arange(80))
