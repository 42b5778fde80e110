"""The heads and whole-volume models are scikit-learn estimators.

- every estimator clones, raises NotFittedError before ``fit`` and keeps its state in ``predict``;
- ``y`` may be 1-D (one binary target, sklearn's output layout) or 2-D (labels);
- scikit-learn's own ``check_estimator`` on the estimators that take 2-D arrays
  (``LogisticComparator``, ``LightGBMComparator``, ``PlaneProbe("gap")``). Checks that may
  fail are listed in ``EXPECTED_FAILED`` with the reason, and checks that scikit-learn itself
  skips are listed in ``SKIPPED_BY_SKLEARN``; the test asserts that exactly those did not pass.
  ``FusionHead``/``EHROnlyHead`` (dicts of plane arrays), ``TwoStageFusion`` (``FusionData``: features + catalog),
  ``EHREncoder`` (catalog rows), ``BatchedGAPProbes`` (3-D (N, K, C)), ``BatchedSAPProbes``
  (6-D activations), ``FingerprintClassifier`` (radiomic values with usage inputs) and the volume models
  (volumes keyed by series) take inputs check_estimator cannot generate.
- the README's Python snippets that use ``orthodiff.heads`` run as written.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from orthodiff.heads import (
    BatchedGAPProbes,
    BatchedSAPProbes,
    FingerprintClassifier,
    EHREncoder,
    EHROnlyHead,
    FusionHead,
    LightGBMComparator,
    LogisticComparator,
    PlaneProbe,
    TwoStageFusion,
)
from orthodiff.errors import OrthodiffError
from orthodiff.heads.protocol import FusionData
from orthodiff.heads.synthetic import synthetic_catalog, synthetic_features
from orthodiff.supervised import VolumeClassifier, VolumeSegmenter

LABELS = ["ACL", "MM"]
ESTIMATORS = [
    PlaneProbe("glp", epochs=3), FusionHead("mpae", folds=3), LogisticComparator(C=0.5), LightGBMComparator(n_estimators=7),
    TwoStageFusion(PlaneProbe("gap", epochs=2), FusionHead("linear_concat", lr=1e-3)), EHREncoder(),
    EHROnlyHead(epochs=1), BatchedGAPProbes(epochs=4), BatchedSAPProbes(epochs=2), FingerprintClassifier(),
    VolumeClassifier("resnet18", epochs=1),
    VolumeSegmenter("unet", n_classes=3),
]


def _comparable(params: dict) -> dict:
    """Nested estimators compare by type and parameters (a clone is a new object)."""
    return {k: (type(v), v.get_params()) if isinstance(v, BaseEstimator) else v for k, v in params.items()}


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_clone_keeps_parameters_and_copies_them(estimator):
    copy = clone(estimator)
    assert type(copy) is type(estimator) and copy is not estimator
    assert _comparable(copy.get_params(deep=True)) == _comparable(estimator.get_params(deep=True))
    # dict and estimator parameters are copied, not shared
    for name, value in estimator.get_params().items():
        if isinstance(value, BaseEstimator):
            assert getattr(copy, name) is not value
        if isinstance(value, dict):
            assert getattr(copy, name) is not value


def test_ehr_encoder_reads_its_schema_in_fit():
    encoder = EHREncoder()
    assert encoder.get_params() == {} and not hasattr(encoder, "schema_")
    catalog = synthetic_catalog(20, LABELS, seed=1)
    encoded = encoder.fit_transform(catalog)
    assert encoder.schema_.numeric and encoded.shape[0] == len(catalog)


def test_a_composed_estimator_reaches_the_head_parameters():
    pipe = make_pipeline(StandardScaler(), PlaneProbe("gap", epochs=2))
    params = pipe.get_params(deep=True)
    assert params["planeprobe__epochs"] == 2 and params["planeprobe__pooling"] == "gap"
    pipe.set_params(planeprobe__lr=1e-2)
    assert clone(pipe).named_steps["planeprobe"].lr == 1e-2


@pytest.fixture(scope="module")
def cohort():
    catalog = synthetic_catalog(90, LABELS, seed=4, repeat=0.1, missing=0.1)
    return catalog, synthetic_features(catalog, LABELS, channels=8, activation=False, seed=4)


def _plane_arrays(cohort, n):
    """One row per exam with every plane: (dict of GAP vectors at t=100/mid_2, 2-D y)."""
    catalog, features = cohort
    first = catalog.drop_duplicates(["case_id", "plane"])
    complete = first.groupby("case_id").filter(lambda g: len(g) == 3)
    X = {}
    for plane, rows in complete.groupby("plane"):
        gap = features[plane].gap.sel(timestep=100, block="mid_2").to_pandas()
        X[plane] = gap.loc[rows.sort_values("case_id")["series_id"]].to_numpy()[:n]
    y = complete.drop_duplicates("case_id").sort_values("case_id")[LABELS].to_numpy()[:n]
    return X, y


def test_unfitted_estimators_raise_not_fitted(cohort):
    catalog, features = cohort
    X, _ = _plane_arrays(cohort, 10)
    calls = [
        lambda: PlaneProbe("gap").predict_proba(X["axial"]), lambda: PlaneProbe("gap").decision_function(X["axial"]),
        lambda: PlaneProbe("gap").transform(X["axial"]), lambda: FusionHead().predict_proba(X),
        lambda: FusionHead().decision_function(X), lambda: LogisticComparator().predict(X["axial"]),
        lambda: LightGBMComparator().predict_proba(X), lambda: TwoStageFusion().predict_proba(FusionData(features, catalog)),
        lambda: TwoStageFusion().missing_exams(FusionData(features, catalog)), lambda: EHREncoder().transform(catalog),
        lambda: EHROnlyHead().predict_proba(X), lambda: BatchedGAPProbes().predict_proba(np.zeros((2, 3, 4))),
        lambda: BatchedSAPProbes().predict_proba(np.zeros((2, 3, 4, 1, 2, 2))),
        lambda: VolumeClassifier().predict_proba(np.zeros((1, 4, 4, 4))),
        lambda: VolumeClassifier().decision_function(np.zeros((1, 4, 4, 4))),
        lambda: VolumeSegmenter().predict(np.zeros((1, 4, 4, 4))),
    ]
    for call in calls:
        with pytest.raises(NotFittedError):
            call()


@pytest.mark.parametrize("make", [
    lambda: FusionHead("concat", epochs=3, lr=1e-2, batch_size=16), lambda: LogisticComparator(),
    lambda: PlaneProbe("gap", epochs=3, lr=1e-2, batch_size=16),
], ids=["FusionHead", "LogisticComparator", "PlaneProbe"])
def test_one_binary_column_and_a_label_matrix_give_the_same_model(cohort, make):
    X, y = _plane_arrays(cohort, 40)
    if isinstance(make(), PlaneProbe):
        X = X["sagittal"]
    names = np.where(y[:, 0] == 1, "torn", "intact")
    binary = make().fit(X, names)
    matrix = make().fit(X, y[:, :1])
    both = make().fit(X, y)
    assert list(binary.classes_) == ["intact", "torn"] and list(both.classes_) == [0, 1]
    p = binary.predict_proba(X)
    assert p.shape == (40, 2) and matrix.predict_proba(X).shape == (40, 1) and both.predict_proba(X).shape == (40, 2)
    np.testing.assert_allclose(p[:, 1], matrix.predict_proba(X)[:, 0], rtol=1e-6)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(binary.predict(X), np.where(p[:, 1] > 0.5, "torn", "intact"))
    np.testing.assert_array_equal(both.predict(X), (both.predict_proba(X) > 0.5).astype(int))
    with pytest.raises(ValueError, match="Only binary classification"):
        make().fit(X, np.arange(40) % 3)


def test_batched_probes_keep_the_configuration_axis_for_a_binary_target(cohort):
    X, y = _plane_arrays(cohort, 40)
    stacked = np.stack([X["sagittal"], X["coronal"]], axis=1)  # (N, K=2, C)
    binary = BatchedGAPProbes(epochs=3, lr=1e-2).fit(stacked, y[:, 0].astype(bool))
    matrix = BatchedGAPProbes(epochs=3, lr=1e-2).fit(stacked, y[:, :1])
    assert binary.predict_proba(stacked).shape == (40, 2, 2)
    np.testing.assert_allclose(binary.predict_proba(stacked)[..., 1], matrix.predict_proba(stacked)[..., 0], rtol=1e-6)
    assert binary.predict(stacked).dtype == bool


def test_two_stage_predict_keeps_the_fitted_state(cohort):
    catalog, data = cohort
    features = {plane: ds.gap.sel(timestep=100, block="mid_2") for plane, ds in data.items()}
    model = TwoStageFusion(PlaneProbe("gap", epochs=0, batch_size=32), FusionHead("concat", epochs=3, lr=1e-2))
    assert model.get_params()["probe__batch_size"] == 32 and model.get_params()["head__epochs"] == 3
    model.set_params(head__lr=2e-2)  # the nested head's settings are reachable like any parameter
    X = FusionData(features, catalog[catalog.split == "train"])
    model.fit(X, X.labels(LABELS))
    assert model.head_.lr == 2e-2 and model.head_.method == "concat" and model.probes_["axial"].batch_size == 32
    state = dict(vars(model))
    test = FusionData(features, catalog[catalog.split == "test"])
    pred = model.predict_exams(test)
    assert vars(model).keys() == state.keys() and all(vars(model)[k] is v for k, v in state.items())
    missing = model.missing_exams(test)
    # the exams left out are exactly those without a series in every plane
    planes = test.catalog.groupby("case_id")["plane"].nunique()
    assert sorted(missing["case_id"]) == sorted(planes[planes < 3].index)
    assert sorted(pred["case_id"]) == sorted(planes[planes == 3].index)


def test_two_stage_fusion_keeps_its_nested_estimators_parameters(cohort):
    """Composition as in Pipeline: the probe and the head are cloned and fitted with their own
    parameters (seeds included), and fitting draws nothing from the global random generators."""
    catalog, data = cohort
    features = {plane: ds.gap.sel(timestep=100, block="mid_2") for plane, ds in data.items()}
    model = TwoStageFusion(PlaneProbe("gap", epochs=2, lr=1e-2, random_state=5),
                           FusionHead("linear_add", epochs=3, lr=1e-2, shared_dim=8, random_state=7))
    params = model.get_params(deep=True)
    assert _comparable(clone(model).get_params(deep=True)) == _comparable(params)
    X = FusionData(features, catalog[catalog.split == "train"])
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    model.fit(X, X.labels(LABELS))
    assert torch.equal(torch.get_rng_state(), torch_state) and np.array_equal(np.random.get_state()[1], numpy_state[1])
    assert _comparable(model.get_params(deep=True)) == _comparable(params)  # fit changes no parameter
    assert model.head_.get_params() == model.head.get_params() and model.head_ is not model.head
    assert all(probe.get_params() == model.probe.get_params() for probe in model.probes_.values())
    refit = clone(model).fit(X, X.labels(LABELS))
    test = FusionData(features, catalog[catalog.split == "test"])
    np.testing.assert_array_equal(refit.predict_proba(test), model.predict_proba(test))


def test_two_stage_fusion_takes_y_aligned_with_the_series_of_x(cohort):
    """``y``: a DataFrame or Series indexed by series_id (any order), or an array in catalog
    order; all give the same model. A y that does not cover X's series is an OrthodiffError."""
    catalog, data = cohort
    features = {plane: ds.gap.sel(timestep=100, block="mid_2") for plane, ds in data.items()}
    X, test = (FusionData(features, catalog[catalog.split == split]) for split in ("train", "test"))

    def fit(y):
        return TwoStageFusion(PlaneProbe("gap", epochs=0), FusionHead(epochs=3, lr=1e-2)).fit(X, y)

    frame = fit(X.labels(["ACL"]))
    pred = frame.predict_exams(test)
    np.testing.assert_array_equal(frame.predict_proba(test), pred[["p_ACL"]].to_numpy())
    assert pred["case_id"].is_monotonic_increasing and frame.labels_ == ["ACL"]
    series = X.labels(["ACL"])["ACL"]
    shuffled = series.sample(frac=1.0, random_state=0)
    array = fit(X.catalog["ACL"].to_numpy())
    assert array.labels_ == ["label_0"]
    for other in (fit(series), fit(shuffled), array):
        np.testing.assert_array_equal(other.predict_proba(test), frame.predict_proba(test))
    with pytest.raises(OrthodiffError, match=r"y's index does not match X's series \(\d+ series of X have no row in y"):
        fit(X.catalog["ACL"])  # indexed by catalog row, not by series
    with pytest.raises(OrthodiffError, match=r"1 series of X have no row in y, e\.g\. '.+'\)"):
        fit(series.iloc[1:])
    with pytest.raises(OrthodiffError, match=rf"y has shape \(3,\), X has {len(X)} series"):
        fit(np.zeros(3))
    with pytest.raises(OrthodiffError, match=r"catalog lacks columns \['patient_id'\]"):
        FusionData(features, catalog.drop(columns="patient_id"))


# sklearn checks that these estimators fail, and why
EXPECTED_FAILED = {
    "check_sample_weight_equivalence_on_dense_data": (
        "weight 2 is not the same as a repeated row: the probe trains with shuffled mini-batches (a repeated row "
        "is a second step), LightGBM's leaf sizes count rows, and the comparator's StandardScaler ignores weights"
    ),
}
# checks that scikit-learn skips itself, and why
SKIPPED_BY_SKLEARN = {
    "check_array_api_input": "runs only with SCIPY_ARRAY_API=1 and an array-API library; the heads take numpy",
    "check_classifiers_multilabel_output_format_decision_function": "the comparators have no decision_function",
}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")  # the skips are asserted below
@pytest.mark.parametrize("estimator", [
    LogisticComparator(), LightGBMComparator(n_estimators=20, n_jobs=1), PlaneProbe("gap", epochs=2, batch_size=32),
], ids=lambda e: type(e).__name__)
def test_sklearn_check_estimator(estimator):
    results = check_estimator(estimator, expected_failed_checks=EXPECTED_FAILED, on_fail=None)
    not_passed = {r["check_name"]: r["status"] for r in results if r["status"] != "passed"}
    expected = {name: "xfail" for name in EXPECTED_FAILED}
    expected.update({name: "skipped" for name in SKIPPED_BY_SKLEARN})
    if hasattr(estimator, "decision_function"):
        del expected["check_classifiers_multilabel_output_format_decision_function"]
    assert not_passed == expected
    assert len(results) > 60


def _readme_snippets_using_heads() -> list[str]:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    return [b for b in blocks if "orthodiff.heads" in b]


@pytest.mark.slow
def test_readme_snippets_using_the_heads_run_as_written(tmp_path, monkeypatch, capsys):
    snippets = _readme_snippets_using_heads()
    assert snippets, "the README has no Python snippet that uses orthodiff.heads"
    monkeypatch.chdir(tmp_path)
    for code in snippets:
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    aucs = [float(v) for v in re.findall(r"\d\.\d+", printed.splitlines()[0])]
    assert len(aucs) == 3 and min(aucs) > 0.6  # the synthetic label is learnable
