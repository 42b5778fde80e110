"""sweep -> select -> fuse (concat, MPAE, EHR) -> compare -> efficiency -> report, on
synthetic features shaped like the store; and the configuration errors of item 8."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from orthodiff.errors import OrthodiffError
from orthodiff.heads.fusion import FusionHead
from orthodiff.heads.metrics import macro_auroc, summary, youden_thresholds
from orthodiff.heads.probe import PlaneProbe
from orthodiff.heads.protocol import FusionData, TwoStageFusion, config_features
from orthodiff.heads.report import build_report
from orthodiff.heads.runs import compare_runs, read_config, run_efficiency, run_fuse, run_select, run_sweep
from orthodiff.heads.synthetic import synthetic_catalog, synthetic_features
from orthodiff.outputs import read_table

# Whole sweep/select/fuse runs on a synthetic store: integration tests, slow as a group.
pytestmark = pytest.mark.slow

LABELS = ["ACL", "PCL", "MM", "LM"]
FAST_FUSION = dict(epochs=20, lr=3e-3, batch_size=32, plane_epochs=20, plane_lr=3e-3, gate_epochs=200)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    catalog = synthetic_catalog(180, LABELS, seed=1, repeat=0.1, missing=0.05)
    train_patients = sorted(catalog.loc[catalog.split == "train", "patient_id"].unique())
    catalog["subset_40"] = catalog["patient_id"].isin(train_patients[:40])
    features = synthetic_features(catalog, LABELS, channels=16, timesteps=(10, 100), blocks=("mid_0", "mid_2"), seed=1)
    data = FusionData.from_tree(xr.DataTree.from_dict({f"features/synthetic/{p}": ds for p, ds in features.items()}), catalog)
    run_sweep(data, LABELS, "gap", out / "sweep", probe_params=dict(lr=5e-3, batch_size=32), provenance={"store": "synthetic"})
    scored, config = run_select(out / "sweep", data, LABELS, out / "config.json", fusion_params=FAST_FUSION, top_k=2)
    return out, catalog, features, scored, config


def test_select_scores_every_cross_plane_combination_and_freezes_the_best(run):
    out, _, _, scored, config = run
    assert len(scored) == 2**3 and scored["val_macro_auroc"].is_monotonic_decreasing
    frozen = read_config(out / "config.json")
    assert frozen == json.loads(json.dumps(config)) and frozen["store"] == "synthetic"
    assert all(choice["timestep"] == 100 for choice in frozen["planes"].values())
    assert (out / "config_selection.parquet").is_file()


@pytest.mark.parametrize("method,ehr", [("concat", False), ("mpae", False), ("mpae", True)])
def test_fuse_writes_metrics_predictions_and_plots(run, method, ehr):
    out, catalog, features, _, config = run
    target = out / f"fuse_{method}_{ehr}"
    metrics, model = run_fuse(config, FusionData(features, catalog), LABELS, method, target, ehr=ehr, n_boot=50)
    macro = metrics[(metrics.metric == "macro_auroc")].iloc[0]
    assert macro.ci_low <= macro.value <= macro.ci_high and macro.value > 0.6  # well above chance
    pred = read_table(target / "predictions.parquet")
    test_exams = set(catalog.loc[catalog.split == "test", "case_id"])
    assert set(pred["case_id"]) | set(read_table(target / "missing_planes.parquet")["case_id"]) == test_exams
    assert set(read_table(target / "subgroups.parquet")["by"]) == {"center", "field_strength", "vendor"}
    assert (target / "gating.png").is_file() == (method == "mpae")
    if method == "mpae":
        gating = read_table(target / "gating.parquet")
        np.testing.assert_allclose(gating.groupby("label")["weight"].sum(), 1.0, rtol=1e-5)
    assert (target / "ehr_weight.parquet").is_file() == ehr


def test_compare_efficiency_and_report(run):
    out, catalog, features, _, config = run
    for method in ("concat", "linear_add"):
        run_fuse(config, FusionData(features, catalog), LABELS, method, out / f"cmp_{method}", n_boot=0, fusion_params=FAST_FUSION)
    table = compare_runs(out / "cmp_concat", out / "cmp_linear_add", n_perm=100).set_index("label")
    assert list(table.index) == [*LABELS, "macro"]
    counts = table["p_value"] * 101  # (1 + permutations at least as extreme) / (1 + 100)
    np.testing.assert_allclose(counts, counts.round(), atol=1e-9)
    same = compare_runs(out / "cmp_concat", out / "cmp_concat", n_perm=20)
    scored = same["delta"].notna()  # labels with both classes among the test exams
    assert scored.sum() >= 2 and same.loc[~scored, "p_value"].isna().all()
    assert (same.loc[scored, "delta"] == 0).all() and (same.loc[scored, "p_value"] == 1).all()  # nothing to find
    assert table.loc["macro", "delta"] == pytest.approx(table.loc["macro", "auroc_a"] - table.loc["macro", "auroc_b"])
    curves = run_efficiency(config, FusionData(features, catalog), LABELS, [40, "all"], out / "efficiency")
    assert set(curves["head"]) == {"concat", "lightgbm"} and list(curves["patients"].unique())[0] == 40
    assert (out / "efficiency" / "efficiency.png").is_file()
    assert ((curves["ci_low"] <= curves["test_macro_auroc"]) & (curves["test_macro_auroc"] <= curves["ci_high"])).all()
    kept = read_table(out / "efficiency" / "predictions.parquet")  # what a paired test of two curves needs
    for row in curves.itertuples():
        pred = kept[(kept["subset"] == row.subset) & (kept["head"] == row.head)]
        assert macro_auroc(pred[LABELS].to_numpy(), pred[[f"p_{c}" for c in LABELS]].to_numpy()) == pytest.approx(row.test_macro_auroc)
    # `fuse --subset 40` trains what the curve's concat point trained: the same test predictions
    run_fuse(config, FusionData(features, catalog), LABELS, "concat", out / "subset_40", n_boot=0, subset=40)
    alone = read_table(out / "subset_40" / "predictions.parquet").set_index("case_id")
    point = kept[(kept["subset"] == "40") & (kept["head"] == "concat")].set_index("case_id").loc[alone.index]
    np.testing.assert_allclose(alone[[f"p_{c}" for c in LABELS]], point[[f"p_{c}" for c in LABELS]], rtol=1e-6)
    assert json.loads((out / "subset_40" / "run.json").read_text())["subset"] == "40"
    html = build_report(out).read_text()
    pngs = sorted(out.rglob("*.png"))  # how many depends on which tests ran first (module-scoped run)
    assert html.count("<img") == len(pngs) + 2 and len(pngs) >= 4 and "macro_auroc" in html  # + ROC and PR curves
    with pytest.raises(OrthodiffError, match="not a fuse or baseline classification run"):
        compare_runs(out / "sweep", out / "cmp_concat")
    with pytest.raises(OrthodiffError, match="no subset column 'subset_500'"):
        run_efficiency(config, FusionData(features, catalog), LABELS, [500], out / "efficiency2")


def test_configuration_naming_what_the_store_lacks(run, tmp_path):
    _, _, features, _, config = run
    for plane, key, value, message in [
        ("axial", "timestep", 75, "axial timestep 75 is not in the store"),
        ("coronal", "block", "mid_9", "coronal block 'mid_9' is not in the store"),
    ]:
        bad = json.loads(json.dumps(config))
        bad["planes"][plane][key] = value
        with pytest.raises(OrthodiffError, match=message):
            config_features(features, bad)
    with pytest.raises(OrthodiffError, match="plane 'axial' is not in the store"):
        config_features({k: v for k, v in features.items() if k != "axial"}, config)
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(OrthodiffError, match="not a JSON configuration"):
        read_config(tmp_path / "c.json")


def test_a_label_with_one_class_in_the_test_split_is_undefined_not_a_crash(run, tmp_path):
    _, catalog, features, _, config = run
    one_class = catalog.copy()
    one_class.loc[one_class.split == "test", "LM"] = 0
    metrics, _ = run_fuse(config, FusionData(features, one_class), LABELS, "concat", tmp_path / "fuse", n_boot=20)
    lm = metrics[(metrics.metric == "auroc") & (metrics.label == "LM")].iloc[0]
    assert np.isnan(lm.value) and "only class [0]" in lm.note
    macro = metrics[metrics.metric == "macro_auroc"].iloc[0]
    assert np.isfinite(macro.value)


def test_youden_thresholds_come_from_validation_and_are_frozen_for_test(run):
    out, catalog, features, _, config = run
    target = out / "fuse_youden"
    metrics, model = run_fuse(config, FusionData(features, catalog), LABELS, "concat", target, n_boot=0, fusion_params=FAST_FUSION,
                              threshold="youden")
    val = model.predict_exams(FusionData(config_features(features, config), catalog[catalog.split == "val"]))
    expected = youden_thresholds(val[LABELS].to_numpy(), val[[f"p_{c}" for c in LABELS]].to_numpy())
    frozen = json.loads((target / "run.json").read_text())["thresholds"]
    np.testing.assert_allclose([frozen[c] for c in LABELS], expected)
    pred = read_table(target / "predictions.parquet")
    cf1 = metrics.set_index(["metric", "label"]).loc[("CF1", "all"), "value"]
    assert cf1 == pytest.approx(summary(pred[LABELS].to_numpy(), pred[[f"p_{c}" for c in LABELS]].to_numpy(), expected)["CF1"])
    with pytest.raises(OrthodiffError, match="expected a number in \\(0, 1\\) or 'youden'"):
        run_fuse(config, FusionData(features, catalog), LABELS, "concat", out / "bad", threshold="otsu")


def test_fusion_runs_share_the_stage_one_probes_of_the_selection(run, tmp_path):
    """A Stage I cache filled by the selection is what `run_heads` hands every fusion run:
    each plane's SAP probe is trained once, and the runs predict what they predict alone."""
    out, catalog, features, _, config = run
    sap = {**config, "pooling": "sap", "probe_params": {"epochs": 1, "lr": 1e-3, "batch_size": 32}}
    cache = {}
    _, first = run_fuse(sap, FusionData(features, catalog), LABELS, "concat", tmp_path / "a", n_boot=0, fusion_params=FAST_FUSION,
                        stage_one=cache)
    assert len(cache) == 3
    _, shared = run_fuse(sap, FusionData(features, catalog), LABELS, "mpae", tmp_path / "b", n_boot=0, fusion_params=FAST_FUSION,
                         stage_one=cache)
    assert all(shared.probes_[p] is first.probes_[p] for p in first.probes_)
    _, alone = run_fuse(sap, FusionData(features, catalog), LABELS, "mpae", tmp_path / "c", n_boot=0, fusion_params=FAST_FUSION)
    assert all(alone.probes_[p] is not first.probes_[p] for p in first.probes_)
    pd.testing.assert_frame_equal(read_table(tmp_path / "b" / "predictions.parquet"), read_table(tmp_path / "c" / "predictions.parquet"))
    assert json.loads((tmp_path / "b" / "run.json").read_text())["stage_one"] == []  # not external probes


def test_selection_scores_each_combination_as_a_fusion_model_of_its_own(run):
    """The selection pools each series once per plane configuration and shares the vectors
    among that configuration's combinations; every score is the one a model fitted alone on
    that combination gets."""
    _, catalog, features, scored, _ = run
    train, val = catalog[catalog.split == "train"], catalog[catalog.split == "val"]
    for row in scored.itertuples():
        config = {"pooling": "gap", "planes": {p: {"timestep": getattr(row, f"{p}_timestep"), "block": getattr(row, f"{p}_block")}
                                               for p in ("sagittal", "coronal", "axial")}}
        slabs = config_features(features, config)
        model = TwoStageFusion(PlaneProbe("gap", epochs=0, lr=5e-3, batch_size=32), FusionHead("concat", **FAST_FUSION))
        X = FusionData(slabs, train)
        pred = model.fit(X, X.labels(LABELS)).predict_exams(FusionData(slabs, val))
        alone = macro_auroc(pred[LABELS].to_numpy(), pred[[f"p_{c}" for c in LABELS]].to_numpy())
        assert row.val_macro_auroc == pytest.approx(alone, abs=1e-6)


def test_the_sap_sweep_hands_its_probes_to_the_selection_and_the_fusion_runs(run, tmp_path):
    """A SAP sweep's probes are the Stage I probes of the selection and fusion runs on its
    configurations, in memory (the demo) and from its folder (the same commands one by one):
    nothing is trained again, both ways compute the same, and the scores are those of probes
    the selection trains itself, up to float rounding."""
    _, catalog, features, _, _ = run
    params = {"epochs": 2, "lr": 1e-3, "batch_size": 32}
    cache = {}
    run_sweep(FusionData(features, catalog), LABELS, "sap", tmp_path / "sweep", probe_params=params, stage_one=cache)
    assert sorted(cache) == sorted((p, t, b, 0) for p in ("sagittal", "coronal", "axial") for t in (10, 100)
                                   for b in ("mid_0", "mid_2"))
    kept = dict(cache)
    shared, config = run_select(tmp_path / "sweep", FusionData(features, catalog), LABELS, tmp_path / "a.json", fusion_params=FAST_FUSION,
                                top_k=2, stage_one=cache)
    assert cache.keys() == kept.keys() and all(cache[k] is kept[k] for k in kept)
    from_folder, _ = run_select(tmp_path / "sweep", FusionData(features, catalog), LABELS, tmp_path / "b.json", fusion_params=FAST_FUSION, top_k=2)
    pd.testing.assert_frame_equal(shared, from_folder)
    _, in_memory = run_fuse(config, FusionData(features, catalog), LABELS, "concat", tmp_path / "f1", n_boot=0, stage_one=cache)
    _, from_sweep = run_fuse(config, FusionData(features, catalog), LABELS, "concat", tmp_path / "f2", n_boot=0)
    pd.testing.assert_frame_equal(read_table(tmp_path / "f1" / "predictions.parquet"), read_table(tmp_path / "f2" / "predictions.parquet"))
    for plane, probe in from_sweep.probes_.items():
        trained = in_memory.probes_[plane].net_.state_dict()
        assert all(torch.equal(t, trained[name]) for name, t in probe.net_.state_dict().items())
    (tmp_path / "sweep" / "probes.pt").unlink()
    alone, _ = run_select(tmp_path / "sweep", FusionData(features, catalog), LABELS, tmp_path / "c.json", fusion_params=FAST_FUSION, top_k=2)
    columns = [c for c in alone.columns if c != "val_macro_auroc"]
    both = shared.merge(alone, on=columns, suffixes=("_shared", "_alone"))
    assert len(both) == 8
    np.testing.assert_allclose(both["val_macro_auroc_shared"], both["val_macro_auroc_alone"], atol=2e-3)


def test_report_links_are_dot_relative_so_a_folder_name_is_never_a_url(tmp_path):
    """A run folder named `javascript:alert(1)` became a live `javascript:` link (WHATWG URL
    standard: a relative URL whose first segment has a colon parses as a scheme)."""
    folder = tmp_path / "javascript:alert(1)"
    folder.mkdir()
    (folder / "notes.csv").write_text("a,b\n1,2\n")
    html = build_report(tmp_path).read_text()
    assert "href='./javascript:alert(1)/notes.csv'" in html and "href='javascript:" not in html


def test_run_records_hold_input_paths_relative_to_their_folder(tmp_path, monkeypatch):
    """run.json and configurations carried absolute paths (a user name under a home folder);
    they are relative to the run folder now, and readers resolve them from anywhere."""
    from orthodiff.outputs import read_run, write_run

    (tmp_path / "data" / "store.zarr").mkdir(parents=True)
    (tmp_path / "data" / "c.parquet").write_text("")
    out = tmp_path / "home" / "runs" / "sweep"
    out.mkdir(parents=True)
    write_run({"kind": "sweep", "store": str(tmp_path / "data" / "store.zarr"), "catalog": str(tmp_path / "data" / "c.parquet"),
               "config": {"sweep": str(out)}, "backbone": "b1"}, out)
    saved = json.loads((out / "run.json").read_text())
    assert saved["store"] == "../../../data/store.zarr" and saved["catalog"] == "../../../data/c.parquet"
    assert saved["config"]["sweep"] == "." and saved["backbone"] == "b1" and str(tmp_path) not in json.dumps(saved)
    monkeypatch.chdir(tmp_path / "home")  # read from another folder
    run = read_run(out, ("sweep",), "a sweep")
    assert run["store"] == str((tmp_path / "data" / "store.zarr").resolve()) and run["config"]["sweep"] == str(out.resolve())
