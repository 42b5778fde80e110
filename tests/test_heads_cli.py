"""The heads commands end to end through the CLI, on a synthetic store-shaped Dataset."""

import base64
import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

import orthodiff
from orthodiff.catalogs.tasks import get_task
from orthodiff.cli import app
from orthodiff.heads.synthetic import synthetic_catalog, synthetic_features

LABELS = get_task("knee").label_columns


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    catalog = synthetic_catalog(150, LABELS, seed=2, repeat=0.1, missing=0.05)
    train = sorted(catalog.loc[catalog.split == "train", "patient_id"].unique())
    catalog["subset_30"] = catalog["patient_id"].isin(train[:30])
    catalog.to_parquet(root / "catalog.parquet", index=False)
    per_plane = synthetic_features(catalog, LABELS, channels=16, timesteps=(10, 100), blocks=("mid_2",), seed=2)
    store = xr.DataTree.from_dict({f"features/synthetic/{p}": ds for p, ds in per_plane.items()})  # open_store's layout
    return root, store


@pytest.fixture
def fake_store(cohort, monkeypatch):
    root, store = cohort
    monkeypatch.setattr(orthodiff, "open_store", lambda path, backbone=None, catalog=None: store, raising=False)
    return root


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.mark.slow
def test_sweep_select_fuse_compare_efficiency_report(fake_store):
    root = fake_store
    runner = CliRunner()
    out = _ok(runner.invoke(app, ["sweep", "--store", "S", "--catalog", str(root / "catalog.parquet"),
                                  "--out", str(root / "run/sweep"), "--lr", "5e-3", "--pooling", "gap"]))
    assert "Top 4" in out
    sweep, top = (pd.read_parquet(root / f"run/sweep/{name}.parquet") for name in ("sweep", "top4"))
    best = sweep[sweep["label"] == "macro"].groupby("plane")["auroc"].max()
    first = top[top["rank"] == 1].set_index("plane")
    np.testing.assert_allclose(first["auroc"], best[first.index])  # rank 1 is each plane's best
    assert (first["timestep"] == 100).all()  # where the synthetic signal peaks
    out = _ok(runner.invoke(app, ["select", "--sweep", str(root / "run/sweep"), "--out", str(root / "run/config.json"),
                                  "--epochs", "5", "--lr", "1e-2"]))
    config = json.loads((root / "run/config.json").read_text())
    assert set(config["planes"]) == {"sagittal", "coronal", "axial"} and "combinations" in out
    for method, extra in [("concat", []), ("mpae", ["--ehr"])]:
        out = _ok(runner.invoke(app, ["fuse", "--config", str(root / "run/config.json"), "--method", method, *extra,
                                      "--out", str(root / f"run/{method}"), "--bootstrap", "30"]))
        assert "macro_auroc" in out
    gating = pd.read_parquet(root / "run/mpae/gating.parquet")  # what gating.png draws
    np.testing.assert_allclose(gating.groupby("label")["weight"].sum(), 1.0, rtol=1e-5)
    out = _ok(runner.invoke(app, ["compare", str(root / "run/concat"), str(root / "run/mpae"), "--permutations", "50"]))
    assert "macro" in out and "p_value" in out
    out = _ok(runner.invoke(app, ["efficiency", "--config", str(root / "run/config.json"), "--subsets", "30,all",
                                  "--out", str(root / "run/efficiency")]))
    assert "lightgbm" in out
    out = _ok(runner.invoke(app, ["report", str(root / "run")]))
    html = (root / "run/report.html").read_text()
    pngs = sorted((root / "run").rglob("*.png"))
    # every figure of the run, plus the report's own ROC and precision-recall curves
    assert "heatmap_sagittal.png" in out and html.count("<img") == len(pngs) + 2 and len(pngs) >= 4
    assert all(base64.b64encode(png.read_bytes()).decode() in html for png in pngs)  # every figure, embedded whole


def test_bad_input_is_one_named_error(fake_store, cohort, monkeypatch):
    root, store = fake_store, cohort[1]
    result = CliRunner().invoke(app, ["efficiency", "--config", str(root / "nope.json"), "--out", str(root / "e")])
    assert isinstance(result.exception, orthodiff.errors.OrthodiffError) and "configuration file not found" in str(result.exception)
    partial = store.copy()
    partial["features/synthetic/sagittal"] = store["features/synthetic/sagittal"].to_dataset().isel(series=slice(1, None))
    monkeypatch.setattr(orthodiff, "open_store", lambda path, backbone=None, catalog=None: partial)
    result = CliRunner().invoke(app, ["sweep", "--store", "S", "--catalog", str(root / "catalog.parquet"), "--out", str(root / "x")])
    assert "no sagittal features for 1 of the catalog's" in str(result.exception)
    assert not (root / "x").exists()
