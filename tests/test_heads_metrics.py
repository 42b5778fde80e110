"""Metrics: hand-checkable values, undefined AUROC for one-class labels, CIs, permutation test."""

import numpy as np
import pandas as pd
import pytest

from orthodiff.errors import OrthodiffError
from sklearn.metrics import roc_auc_score

from orthodiff.heads.metrics import (
    auroc_per_label, evaluate, per_label, permutation_test, subgroup_table, summary, youden_thresholds,
)


def test_summary_matches_hand_counts():
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    p = np.array([[0.9, 0.6], [0.4, 0.7], [0.6, 0.2], [0.1, 0.1]])
    s = summary(y, p)
    # label 0: predicted {0,2}, tp 1 -> P 1/2, R 1/2; label 1: predicted {0,1}, tp 1 -> P 1/2, R 1/2
    assert s["CP"] == pytest.approx(0.5) and s["CR"] == pytest.approx(0.5) and s["CF1"] == pytest.approx(0.5)
    assert s["OP"] == pytest.approx(2 / 4) and s["OR"] == pytest.approx(2 / 4)
    # label 0: positives {0.9, 0.4} vs negatives {0.6, 0.1} -> 3/4; label 1: {0.7, 0.2} vs {0.6, 0.1} -> 3/4
    assert s["macro_auroc"] == pytest.approx(0.75)


def test_cf1_is_the_mean_of_per_label_f1_not_the_harmonic_mean_of_cp_and_cr():
    y = np.array([[1, 1], [1, 0], [0, 0], [0, 1], [1, 0], [0, 0]])
    p = np.array([[0.9, 0.8], [0.8, 0.7], [0.2, 0.6], [0.1, 0.3], [0.7, 0.9], [0.3, 0.8]])
    s = summary(y, p)
    # label 0: tp 3, fp 0, fn 0 -> P 1, R 1, F1 1; label 1: tp 1, fp 4, fn 1 -> P 1/5, R 1/2, F1 2/7
    assert s["CP"] == pytest.approx(0.6) and s["CR"] == pytest.approx(0.75)
    assert s["CF1"] == pytest.approx((1 + 2 / 7) / 2)  # 0.643; the harmonic mean of CP and CR is 0.667
    table = per_label(y, p, ["ACL", "PCL"]).set_index("label")
    assert table.loc["PCL", "sensitivity"] == pytest.approx(0.5) and table.loc["PCL", "specificity"] == pytest.approx(0.0)
    assert table.loc["ACL", "sensitivity"] == 1.0 and table.loc["ACL", "specificity"] == 1.0
    assert table.loc["PCL", "f1"] == pytest.approx(2 / 7)


def test_youden_threshold_is_chosen_on_validation_and_frozen():
    y_val = np.array([[0], [0], [0], [1], [1], [1], [1]])
    p_val = np.array([[0.05], [0.1], [0.35], [0.3], [0.4], [0.45], [0.9]])
    # J at 0.3: sens 1, spec 2/3 -> 0.67; at 0.4: sens 3/4, spec 1 -> 0.75 (the maximum)
    assert youden_thresholds(y_val, p_val).tolist() == [0.4]
    assert youden_thresholds(np.zeros((4, 1)), np.full((4, 1), 0.3)).tolist() == [0.5]
    y_test, p_test = np.array([[1], [0], [1]]), np.array([[0.45], [0.42], [0.2]])
    at_youden = summary(y_test, p_test, threshold=[0.4])
    assert at_youden["CP"] == pytest.approx(0.5) and at_youden["CR"] == pytest.approx(0.5)
    assert summary(y_test, p_test)["CR"] == 0.0
    tidy = evaluate(y_test, p_test, ["ACL"], threshold=[0.4], n_boot=0).set_index(["metric", "label"])
    assert tidy.loc[("sensitivity", "ACL"), "value"] == pytest.approx(0.5)
    with pytest.raises(OrthodiffError, match="2 thresholds for 1 labels"):
        summary(y_test, p_test, threshold=[0.4, 0.5])


def test_one_class_label_is_undefined_with_a_note_not_a_crash():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    p = np.array([[0.8, 0.3], [0.2, 0.1], [0.7, 0.5], [0.4, 0.2]])
    table = per_label(y, p, ["ACL", "PCL"])
    assert np.isnan(table.loc[1, "auroc"]) and "only class [0]" in table.loc[1, "note"]
    assert table.loc[0, "auroc"] == 1.0
    assert summary(y, p)["macro_auroc"] == 1.0  # the defined label only
    tidy = evaluate(y, p, ["ACL", "PCL"], groups=["a", "b", "c", "d"], n_boot=20)
    row = tidy[(tidy.metric == "auroc") & (tidy.label == "PCL")].iloc[0]
    assert np.isnan(row.value) and row.note


def test_bootstrap_resamples_patients_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (300, 2))
    p = np.clip(y * 0.3 + rng.random((300, 2)) * 0.7, 0, 1)
    patients = np.repeat(np.arange(100), 3)
    tidy = evaluate(y, p, ["A", "B"], groups=patients, n_boot=100, seed=1).set_index(["metric", "label"])
    for key in [("auroc", "A"), ("macro_auroc", "all"), ("OF1", "all")]:
        row = tidy.loc[key]
        assert row.ci_low < row.value < row.ci_high
        assert row.ci_high - row.ci_low < 0.3


def test_permutation_test_separates_a_better_model_from_a_copy():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (200, 2))
    good = np.clip(y * 0.5 + rng.random((200, 2)) * 0.5, 0, 1)
    noise = rng.random((200, 2))
    groups = np.arange(200) // 2
    res = permutation_test(y, good, noise, ["A", "B"], groups, n_perm=200).set_index("label")
    assert res.loc["macro", "delta"] > 0.2 and res.loc["macro", "p_value"] < 0.01
    same = permutation_test(y, good, good, ["A", "B"], groups, n_perm=50).set_index("label")
    assert same.loc["macro", "delta"] == 0 and same.loc["macro", "p_value"] == 1.0


def test_permutation_test_depends_on_the_orderings_not_the_score_scales():
    """A model compressed into a narrow band (another calibration, same ordering) gets the
    same AUROCs and the same p-values: swapping raw scores between scales would not."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (120, 3))
    a = np.clip(y * 0.3 + rng.random((120, 3)), 0, 1)
    b = np.clip(y * 0.25 + rng.random((120, 3)), 0, 1)
    groups = np.arange(120)
    plain = permutation_test(y, a, b, ["A", "B", "C"], groups, n_perm=300)
    squeezed = permutation_test(y, a, 0.5 + 0.01 * b**3, ["A", "B", "C"], groups, n_perm=300)
    pd.testing.assert_frame_equal(plain, squeezed)
    assert plain["p_value"].between(0, 1).all() and (plain["delta"] != 0).all()


def test_subgroups_by_center_field_strength_vendor():
    y = np.array([[1], [0], [1], [1], [1], [1]])
    p = np.array([[0.9], [0.1], [0.2], [0.8], [0.6], [0.7]])
    meta = pd.DataFrame({"center": list("AAABBB"), "field_strength": [1.5, 3.0] * 3, "vendor": ["GE"] * 6})
    table = subgroup_table(y, p, ["ACL"], meta)
    a = table[(table.by == "center") & (table.group == "A") & (table.label == "ACL")].iloc[0]
    b = table[(table.by == "center") & (table.group == "B") & (table.label == "ACL")].iloc[0]
    assert a.auroc == 1.0 and np.isnan(b.auroc)  # centre B has positives only
    assert set(table.by) == {"center", "field_strength", "vendor"}
    with pytest.raises(OrthodiffError, match="subgroup columns"):
        subgroup_table(y, p, ["ACL"], meta.drop(columns="vendor"))


def test_vectorised_auroc_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (150, 4))
    p = np.round(rng.random((150, 4)), 1)  # many ties
    expected = [roc_auc_score(y[:, j], p[:, j]) for j in range(4)]
    np.testing.assert_allclose(auroc_per_label(y, p), expected, rtol=1e-12)
    assert np.isnan(auroc_per_label(np.zeros((5, 1)), rng.random((5, 1)))[0])


def test_bootstrap_metrics_equal_sklearns_per_label_table_and_summary():
    from sklearn.metrics import average_precision_score

    from orthodiff.heads.metrics import _tidy, average_precision_per_label

    rng = np.random.default_rng(3)
    y = (rng.random((40, 5)) < 0.35).astype(float)
    y[:, 4] = 0  # one class: undefined AUROC and AP
    p = np.round(rng.random((40, 5)), 1)  # many ties
    labels = ["a", "b", "c", "d", "e"]
    ap = average_precision_per_label(y, p)
    assert np.isnan(ap[4])
    np.testing.assert_allclose(ap[:4], [average_precision_score(y[:, j], p[:, j]) for j in range(4)], rtol=1e-12)
    fast = _tidy(y, p, labels, threshold=[0.3, 0.5, 0.5, 0.7, 0.5])
    table = per_label(y, p, labels, threshold=[0.3, 0.5, 0.5, 0.7, 0.5]).set_index("label")
    for (metric, label), value in fast.items():
        expected = table.loc[label, metric] if label != "all" else summary(y, p, [0.3, 0.5, 0.5, 0.7, 0.5])[metric]
        np.testing.assert_allclose(value, expected, rtol=1e-12, err_msg=f"{metric} {label}")


def test_compare_predictions_pairs_the_common_exams_in_the_first_tables_order():
    """`orthodiff compare` and the study's `paired` pair two exam-prediction tables on their
    common exams in the first table's row order, whatever the second's: the permutation test
    draws one swap per patient in the order patients first appear, so that order is part of
    its p-values."""
    from orthodiff.heads.runs import compare_predictions

    rng = np.random.default_rng(3)
    order = rng.permutation(60)  # rows not sorted by case
    y = (rng.random((60, 2)) < 0.4).astype(int)
    a = pd.DataFrame({"case_id": [f"C{i:03d}" for i in order], "patient_id": [f"P{i // 2:03d}" for i in order],
                      "ACL": y[:, 0], "MM": y[:, 1], "p_ACL": y[:, 0] + rng.random(60), "p_MM": rng.random(60)})
    b = a.assign(p_ACL=rng.random(60), p_MM=y[:, 1] + rng.random(60)).iloc[7:].sample(frac=1.0, random_state=1)
    b = pd.concat([b, b.iloc[:1].assign(case_id="C999")])  # an exam only b has
    table = compare_predictions(a, b, ["ACL", "MM"], n_perm=200)
    kept = a[a["case_id"].isin(b["case_id"])]
    b_scores = {case: row for case, row in zip(b["case_id"], b[["p_ACL", "p_MM"]].to_numpy())}
    expected = permutation_test(kept[["ACL", "MM"]].to_numpy(), kept[["p_ACL", "p_MM"]].to_numpy(),
                                np.array([b_scores[case] for case in kept["case_id"]]), ["ACL", "MM"],
                                kept["patient_id"].to_numpy(), n_perm=200)
    pd.testing.assert_frame_equal(table, expected)
    pd.testing.assert_frame_equal(compare_predictions(a, b.iloc[::-1], ["ACL", "MM"], n_perm=200), table)
    with pytest.raises(OrthodiffError, match="B predicts exam 'C999' more than once"):
        compare_predictions(a, pd.concat([b, b.tail(1)]), ["ACL", "MM"])
    with pytest.raises(OrthodiffError, match="A and B share no test exams"):
        compare_predictions(a, b.tail(1), ["ACL", "MM"])
