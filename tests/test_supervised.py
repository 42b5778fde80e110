"""Stage I fine-tuning, segmentation, baselines and biomarkers on a tiny synthetic knee cohort."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from matplotlib import pyplot as plt
from sklearn.metrics import roc_auc_score

from orthodiff import open_store
from orthodiff.backbone import backbone_id, load_backbone
from orthodiff.catalogs.cohort import add_subsets, read_catalog
from orthodiff.catalogs.readers import series_geometry
from orthodiff.catalogs.synth import synthesize
from orthodiff.catalogs.tasks import structures
from orthodiff.catalogs.writers import write_dicom_series, write_nifti
from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.extract import extract
from orthodiff.featurestore.ingest import ingest
from orthodiff.heads.runs import compare_runs
from orthodiff.evaluation.biomarkers import agreement, biomarkers, thickness_map
from orthodiff.supervised.data import plane_volumes, split_rows
from orthodiff.supervised.estimators import VolumeClassifier, segmentation_loss, soft_dice_loss
from orthodiff.supervised.networks import SegHead
from orthodiff.supervised.runs import (
    comparison, finetuned_probes, load_segmenter, run_baseline_classify, run_finetune, run_segment, run_segment_predict,
)
from helpers import random_checkpoint


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """16 knee exams at 32 px, ingested, and an untrained `demo` backbone per masked plane."""
    root = tmp_path_factory.mktemp("supervised")
    catalog = synthesize("knee", 16, 32, 0, root / "cohort", progress=False)
    store = str(root / "store.zarr")
    ingest(catalog, store, size=32, progress=False)
    ckpt = Path(random_checkpoint(root / "sagittal.pt", "sagittal"))
    return {"root": root, "catalog": catalog, "store": store, "backbone": ckpt}


@pytest.mark.slow
def test_finetune_writes_a_new_backbone_whose_features_extract_into_their_own_group(cohort, tmp_path):
    out = tmp_path / "sagittal_ft.pt"
    summary = run_finetune(cohort["store"], cohort["catalog"], "sagittal", cohort["backbone"], 10, "mid_1", out,
                           pooling="gap", epochs=1, lr=1e-3, batch_size=4)
    parent = backbone_id(cohort["backbone"])
    assert summary["finetuned_from"] == parent and summary["backbone"] == backbone_id(out) != parent
    before, after = load_backbone(cohort["backbone"], "cpu").state_dict(), load_backbone(out, "cpu").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("input_blocks.") for k in changed)
    assert any(k.startswith("middle_block.0.") for k in changed) and any(k.startswith("middle_block.1.") for k in changed)
    assert not any(k.startswith(("output_blocks.", "out.", "time_embed.", "middle_block.2.")) for k in changed)
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["plane"] == "sagittal" and ckpt["finetune"]["block"] == "mid_1"
    assert {"classifier.weight", "mean", "scale"} <= set(ckpt["finetune_head"])
    config = {"pooling": "gap", "planes": {"sagittal": {"timestep": 10, "block": "mid_1"}}}
    probe = finetuned_probes({"sagittal": out}, config)["sagittal"]
    for name, value in ckpt["finetune_head"].items():
        torch.testing.assert_close(probe.net_.state_dict()[name], value)
    with pytest.raises(OrthodiffError, match="fine-tuned at timestep 10 block 'mid_1'"):
        finetuned_probes({"sagittal": out}, {**config, "planes": {"sagittal": {"timestep": 10, "block": "mid_2"}}})
    with pytest.raises(OrthodiffError, match="no fine-tuned pooling head"):
        finetuned_probes({"sagittal": cohort["backbone"]}, config)

    extract(cohort["store"], out, "sagittal", (10,), ("mid_1",), progress=False)
    ds = open_store(cohort["store"], backbone=summary["backbone"])[f"features/{summary['backbone']}/sagittal"].to_dataset()
    catalog = pd.read_parquet(cohort["catalog"])
    assert set(ds.series.values) == set(catalog.loc[catalog.plane == "sagittal", "series_id"])
    assert np.isfinite(ds.gap.sel(timestep=10, block="mid_1").values).all()


@pytest.mark.slow
def test_finetune_on_a_label_efficiency_subset_trains_on_its_patients_only(cohort, tmp_path):
    catalog = add_subsets(read_catalog(cohort["catalog"]), [3])
    catalog.to_parquet(tmp_path / "catalog.parquet", index=False)
    summary = run_finetune(cohort["store"], tmp_path / "catalog.parquet", "sagittal", cohort["backbone"], 10, "mid_1",
                           tmp_path / "ft.pt", pooling="gap", epochs=1, batch_size=4, subset=3)
    chosen = catalog[(catalog["plane"] == "sagittal") & catalog["subset_3"].fillna(False).astype(bool)]
    assert summary["train_series"] == len(chosen) < (catalog[catalog["plane"] == "sagittal"]["split"] == "train").sum()
    assert torch.load(tmp_path / "ft.pt", weights_only=True)["finetune"]["subset"] == 3
    with pytest.raises(OrthodiffError, match="no column 'subset_7'"):
        run_finetune(cohort["store"], tmp_path / "catalog.parquet", "sagittal", cohort["backbone"], 10, "mid_1",
                     tmp_path / "x.pt", pooling="gap", epochs=1, subset=7)


@pytest.mark.slow
def test_ft_opt_keeps_the_timestep_and_block_best_on_validation(cohort, tmp_path):
    out = tmp_path / "ftopt.pt"
    summary = run_finetune(cohort["store"], cohort["catalog"], "sagittal", cohort["backbone"], 10, "mid_1", out,
                           pooling="gap", epochs=1, lr=1e-3, batch_size=4, timesteps=[10, 300], blocks=["mid_1"])
    selection = pd.DataFrame(summary["selection"])
    assert selection[["timestep", "block"]].values.tolist() == [[10, "mid_1"], [300, "mid_1"]]
    best = selection.loc[selection["val_macro_auroc"].idxmax()]
    assert summary["timestep"] == best["timestep"] and summary["val_macro_auroc"] == best["val_macro_auroc"]
    assert torch.load(out, weights_only=True)["finetune"]["timestep"] == best["timestep"]


@pytest.mark.slow
def test_finetune_and_segmentation_refuse_bad_planes(cohort, tmp_path):
    with pytest.raises(OrthodiffError, match="trained on sagittal series cannot be used for coronal series"):
        run_finetune(cohort["store"], cohort["catalog"], "coronal", cohort["backbone"], 10, "mid_2", tmp_path / "x.pt")
    with pytest.raises(OrthodiffError, match="trained on sagittal series cannot be used for coronal series"):
        run_segment(cohort["store"], cohort["catalog"], "coronal", "diffusion", tmp_path / "seg", cohort["backbone"])
    with pytest.raises(OrthodiffError, match="no axial series has a mask .*sagittal, coronal"):
        run_segment(cohort["store"], cohort["catalog"], "axial", "unet", tmp_path / "seg")
    with pytest.raises(OrthodiffError, match="expected one of"):
        run_segment(cohort["store"], cohort["catalog"], "sagittal", "vnet", tmp_path / "seg")
    volumes = xr.DataArray(np.zeros((2, 16, 64, 64), np.float16), dims=("series", "z", "y", "x"),
                           coords={"series": ["a", "b"]})
    with pytest.raises(OrthodiffError, match="backbone expects 32 px volumes, the store holds 64 px"):
        VolumeClassifier("finetune", str(cohort["backbone"])).fit(volumes, np.zeros((2, 3)))
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "seg").exists()


@pytest.mark.slow
def test_bad_masks_are_named_at_ingestion(cohort, tmp_path):
    catalog = pd.read_parquet(cohort["catalog"])
    row = catalog[catalog.mask_path.notna()].iloc[0]
    src = cohort["catalog"].parent
    mask_file = src / row.mask_path
    saved = mask_file.read_bytes()
    original = nib.load(mask_file)
    data, affine = np.asarray(original.dataobj).copy(), original.affine
    for bad, message in ((np.where(data > 0, 99, 0), r"mask labels \[99\] are not structures"),
                         (data[:-2], "mask shape .* differs from its series")):
        nib.save(nib.Nifti1Image(bad.astype(np.uint8), affine), mask_file)
        try:
            with pytest.raises(OrthodiffError, match=message):
                ingest(cohort["catalog"], str(tmp_path / f"s{len(message)}.zarr"), size=32, progress=False)
        finally:
            mask_file.write_bytes(saved)


@pytest.mark.slow
def test_segmentation_trains_scores_dice_and_writes_aligned_masks(cohort, tmp_path):
    run = tmp_path / "diffusion"
    dice = run_segment(cohort["store"], cohort["catalog"], "sagittal", "diffusion", run, backbone=cohort["backbone"],
                       epochs=1, batch_size=4)
    knee = structures("knee")
    assert dice["structure"].tolist() == [s.abbr for s in knee.structures]
    model, saved = load_segmenter(run)
    assert saved["plane"] == "sagittal" and saved["params"]["model"] == "diffusion"
    assert saved["params"]["decoder"] == "light" and any(k.startswith("head.net.2.block.") for k in saved["state"])
    # the saved model's test predictions give the Dice table again, counted by hand with
    # `evaluate seg`'s conventions: a series where the structure is in either mask counts (a
    # false positive scores 0), one where it is in neither is left out
    ds, rows = plane_volumes(cohort["store"], read_catalog(cohort["catalog"]), "sagittal", masks=True)
    test_ds, _ = split_rows(ds, rows, "test")
    pred, true = model.predict(test_ds.volume), test_ds.mask.to_numpy()
    for row in dice.itertuples():
        value = knee.values[[st.abbr for st in knee.structures].index(row.structure)]
        a, b = pred == value, true == value
        defined = b.any(axis=(1, 2, 3)) | a.any(axis=(1, 2, 3))
        by_series = 2 * (a & b).sum(axis=(1, 2, 3)) / np.maximum(a.sum(axis=(1, 2, 3)) + b.sum(axis=(1, 2, 3)), 1)
        assert row.series == defined.sum() > 0
        np.testing.assert_allclose(row.dice, by_series[defined].mean(), rtol=1e-5)
    overlay = plt.imread(run / "overlay.png")  # image, reference, prediction for the first 3 test series
    assert overlay.shape[:2] == (round(2.5 * min(3, len(true)) * 110), round(7.5 * 110))

    pred_dir = tmp_path / "pred"
    table = run_segment_predict(run, cohort["store"], cohort["catalog"], pred_dir)
    catalog = pd.read_parquet(cohort["catalog"])
    test = catalog[(catalog.plane == "sagittal") & (catalog.split == "test")]
    for row in test.itertuples():
        written = nib.load(pred_dir / "masks" / f"{row.series_id}.nii.gz")
        image = nib.load(cohort["catalog"].parent / row.path)
        assert written.shape == image.shape and np.allclose(written.affine, image.affine)
        assert set(np.unique(np.asarray(written.dataobj))) <= {0, *knee.values}
    assert {"volume_Femur", "thickness_FC"} <= set(table["biomarker"])
    assert plt.imread(pred_dir / "thickness_maps.png").std() > 0 and plt.imread(pred_dir / "bland_altman.png").std() > 0
    assert (table["n"] == len(test)).any()


def test_training_draws_fresh_noise_per_step_and_evaluation_the_keyed_noise():
    from orthodiff.backbone import PRESETS, DiffusionUNet
    from orthodiff.supervised.networks import NoisedEncoder, classifier, segmenter

    encoder = NoisedEncoder(DiffusionUNet(PRESETS["demo"]), 100, "mid_2")
    x0, keys = torch.zeros(2, 16, 32, 32), torch.tensor([3, 4])
    encoder.eval()
    assert torch.equal(encoder.noised(x0, keys), encoder.noised(x0, keys))
    encoder.train()
    torch.manual_seed(0)
    first, second = encoder.noised(x0, keys), encoder.noised(x0, keys)
    assert not torch.equal(first, second)
    torch.manual_seed(0)
    assert torch.equal(encoder.noised(x0, keys), first)  # reproducible from the seed
    baseline = classifier("unet_encoder", 3, image_size=32, block="mid_2", pooling="sap")
    assert baseline.encoder.block == "mid_0" and baseline.head.pool.__class__.__name__ == "GAP"
    with pytest.raises(OrthodiffError, match="UNETR size 'huge'"):
        segmenter("unetr", 3, 32, unetr_size="huge")


def test_light_head_and_soft_dice_reproduce_the_reference():
    data = Path(__file__).parent / "data"
    io = {k: torch.from_numpy(v) for k, v in np.load(data / "seghead_format_tiny_io.npz").items()}
    head = SegHead(64, 12, upsamplings=4).eval()
    head.load_state_dict(torch.load(data / "seghead_format_tiny.pt", weights_only=True)["seg_head"], strict=True)
    with torch.no_grad():
        torch.testing.assert_close(head(io["x"]), io["y"], atol=1e-5, rtol=0)
    assert (io["target"] == -1).any()  # partially annotated: label -1 is ignored
    dice = soft_dice_loss(io["logits"], io["target"])
    assert dice.item() == pytest.approx(io["soft_dice_loss"].item(), abs=1e-6)
    ce = torch.nn.functional.cross_entropy(io["logits"], io["target"], ignore_index=-1)
    assert segmentation_loss(io["logits"], io["target"]).item() == pytest.approx(0.2 * ce.item() + dice.item(), abs=1e-6)
    with pytest.raises(OrthodiffError, match="cannot be halved"):
        SegHead(20, 3, upsamplings=2)


@pytest.mark.slow
def test_skip_decoder_and_timestep_block_selection_on_validation(cohort, tmp_path):
    run = tmp_path / "skip"
    run_segment(cohort["store"], cohort["catalog"], "sagittal", "diffusion", run, backbone=cohort["backbone"],
                epochs=1, batch_size=4, decoder="skip", timesteps=[10, 100], blocks=["mid_2"])
    selection = pd.read_parquet(run / "selection.parquet")
    assert selection[["timestep", "block"]].values.tolist() == [[10, "mid_2"], [100, "mid_2"]]
    chosen = json.loads((run / "run.json").read_text())
    best = selection.loc[selection["val_mean_dice"].idxmax()]
    assert chosen["decoder"] == "skip" and chosen["timestep"] == best["timestep"]
    model, saved = load_segmenter(run)
    assert saved["params"]["decoder"] == "skip" and saved["params"]["timestep"] == best["timestep"]


@pytest.mark.slow
def test_segmentation_baseline_learns_the_large_bones(cohort, tmp_path):
    dice = run_segment(cohort["store"], cohort["catalog"], "sagittal", "unet", tmp_path / "unet", epochs=8, batch_size=2)
    bones = dice.set_index("structure").loc[["Femur", "Tibia"], "dice"]
    assert (bones > 0.5).all(), bones


@pytest.mark.slow
def test_baseline_classification_runs_compare_and_tabulate(cohort, tmp_path):
    runs = []
    for model, planes in (("resnet18", ["sagittal", "coronal"]), ("unet_encoder", ["sagittal"])):
        metrics = run_baseline_classify(cohort["store"], cohort["catalog"], model, planes, tmp_path / model,
                                        epochs=1, batch_size=4, n_boot=10)
        assert "macro_auroc" in set(metrics["metric"])
        runs.append(tmp_path / model)
    pred = pd.read_parquet(tmp_path / "resnet18" / "predictions.parquet")
    catalog = pd.read_parquet(cohort["catalog"])
    test_cases = catalog.loc[(catalog.split == "test") & catalog.plane.isin(["sagittal", "coronal"]), "case_id"]
    assert sorted(pred["case_id"]) == sorted(test_cases.unique())
    metrics = pd.read_parquet(tmp_path / "resnet18" / "metrics.parquet").set_index(["metric", "label"])["value"]
    labels = json.loads((tmp_path / "resnet18" / "run.json").read_text())["labels"]
    scored = [c for c in labels if pred[c].nunique() == 2]
    aurocs = [roc_auc_score(pred[c], pred[f"p_{c}"]) for c in scored]  # the metrics are the written predictions'
    np.testing.assert_allclose(metrics[("macro_auroc", "all")], np.mean(aurocs), rtol=1e-9)
    assert "macro" in set(compare_runs(*runs, n_perm=20)["label"])
    table = comparison(runs)
    assert table["model"].tolist() == ["resnet18", "unet_encoder"] and table["macro_auroc"].notna().all()
    with pytest.raises(OrthodiffError, match="not a fuse, baseline or segment run"):
        comparison([tmp_path])
    assert json.loads((tmp_path / "resnet18" / "run.json").read_text())["kind"] == "baseline"


def test_biomarkers_measure_known_plates_and_agreement():
    knee = structures("knee")
    mask = np.zeros((16, 20, 10), np.uint8)
    mask[4:12, 5:8, :] = 4  # femoral cartilage: 3 voxels thick along rows
    mask[4:12, 12:16, 2:6] = 1  # femur block
    spacing = (3.0, 0.5, 0.5)
    values = biomarkers(mask, spacing, knee)
    assert values["thickness_FC"] == pytest.approx(1.5)
    assert values["volume_FC"] == pytest.approx(8 * 3 * 10 * 0.75)
    assert values["volume_Femur"] == pytest.approx(8 * 4 * 4 * 0.75)
    assert np.isnan(values["thickness_MTC"]) and values["volume_MTC"] == 0
    assert thickness_map(mask, 4, spacing).shape == (16, 10)

    ref = pd.DataFrame({"volume_FC": [100.0, 200.0, 300.0, 400.0]}, index=list("abcd"))
    pred = ref + np.array([[10.0], [10.0], [10.0], [30.0]])
    row = agreement(pred, ref).iloc[0]
    assert row["bias"] == pytest.approx(15.0) and row["sd"] == pytest.approx(10.0)
    assert row["loa_low"] == pytest.approx(15 - 19.6) and row["loa_high"] == pytest.approx(15 + 19.6)


def test_series_geometry_agrees_between_nifti_and_dicom(tmp_path):
    data = np.random.default_rng(0).uniform(0, 100, (18, 24, 20)).astype(np.float32)
    for plane in ("sagittal", "coronal", "axial"):
        nifti = write_nifti(tmp_path / f"{plane}.nii.gz", data, plane, 0.7, 3.5)
        dicom = write_dicom_series(tmp_path / plane, data, plane, 0.7, 3.5, "ANON", f"0-{plane}-x")
        (shape_n, affine_n), (shape_d, affine_d) = series_geometry(nifti), series_geometry(dicom)
        assert shape_n == shape_d == data.shape
        np.testing.assert_allclose(affine_d, affine_n, atol=1e-3)


@pytest.mark.slow
def test_cli_segment_train_predict_and_table(cohort, tmp_path):
    from typer.testing import CliRunner

    from orthodiff.cli import app

    common = ["--store", cohort["store"], "--catalog", str(cohort["catalog"])]
    with_subsets = tmp_path / "catalog.parquet"  # nested training subsets for the efficiency curve
    add_subsets(read_catalog(cohort["catalog"]), [4]).to_parquet(with_subsets, index=False)
    runner = CliRunner()
    result = runner.invoke(app, ["baseline", "segment", "--model", "unet", "--plane", "sagittal", "--store", cohort["store"],
                                 "--catalog", str(with_subsets), "--out", str(tmp_path / "unet"), "--epochs", "1",
                                 "--subsets", "4,all"])
    assert result.exit_code == 0, result.output
    assert "Test Dice per structure" in result.output and "Femur" in result.output
    curve = pd.read_csv(tmp_path / "unet" / "efficiency.csv")
    assert curve["subset"].astype(str).tolist() == ["4", "all"] and curve["series"].iloc[0] < curve["series"].iloc[1]
    assert (curve["ci_low"] <= curve["macro_dice"]).all() and (curve["macro_dice"] <= curve["ci_high"]).all()
    # the per-series Dice behind each point: the "all" point is the run's own test Dice
    per_series = pd.read_parquet(tmp_path / "unet" / "efficiency_series.parquet")
    full = per_series[per_series["subset"] == "all"]
    dice = pd.read_csv(tmp_path / "unet" / "dice.csv").set_index("structure")["dice"]
    assert full[dice.index].mean().to_numpy() == pytest.approx(dice.to_numpy(), nan_ok=True)
    assert curve["macro_dice"].iloc[1] == pytest.approx(dice.mean())
    assert (tmp_path / "unet" / "efficiency.png").is_file()
    result = runner.invoke(app, ["segment", "predict", "--run", str(tmp_path / "unet"), *common, "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "Biomarker agreement" in result.output and (tmp_path / "p" / "agreement.csv").is_file()
    result = runner.invoke(app, ["table", str(tmp_path / "unet"), "--out", str(tmp_path / "table")])
    assert result.exit_code == 0 and (tmp_path / "table.csv").is_file()
    result = runner.invoke(app, ["baseline", "segment", "--model", "vnet", "--plane", "sagittal", *common, "--out", str(tmp_path / "v")])
    assert result.exit_code == 2 and "'vnet' is not one of" in result.output  # refused by the CLI
    # `evaluate seg` takes the predict run: the same Dice per series, by the same conventions, as training scored
    result = runner.invoke(app, ["evaluate", "seg", str(tmp_path / "p"), "--catalog", str(cohort["catalog"]), "--out",
                                 str(tmp_path / "e"), "--plane", "sagittal", "--central", "16", "--bootstrap", "100",
                                 "--min-pixels", "0", "--min-voxels", "0"])
    assert result.exit_code == 0, result.output
    evaluated = pd.read_parquet(tmp_path / "e" / "series_metrics.parquet").groupby("structure")["dice"].mean()
    trained = pd.read_csv(tmp_path / "unet" / "dice.csv").set_index("structure")["dice"]
    assert evaluated.reindex(trained.index).to_numpy() == pytest.approx(trained.to_numpy(), abs=1e-6)


def test_macro_dice_skips_undefined_structures_and_its_ci_resamples_patients():
    from orthodiff.supervised.runs import efficiency_point, macro_dice

    scores = np.array([[1.0, np.nan], [0.5, 0.2], [0.0, 0.4]])
    assert macro_dice(scores) == pytest.approx((0.5 + 0.3) / 2)
    rows = pd.DataFrame({"patient_id": ["a", "b", "b"]})
    point = efficiency_point(scores, rows, n_boot=200)
    assert point["macro_dice"] == pytest.approx(0.4)
    # patient b's two series are always drawn together, so b alone gives structure means 0.25 and 0.3
    # and a alone 1.0 (its second structure undefined): no resample falls outside those extremes
    assert 0.275 - 1e-9 <= point["ci_low"] <= point["macro_dice"] <= point["ci_high"] <= 1.0
    same = efficiency_point(np.array([[0.6, 0.2], [0.6, 0.2]]), pd.DataFrame({"patient_id": ["a", "b"]}), n_boot=50)
    assert same["ci_low"] == same["ci_high"] == pytest.approx(0.4)


def test_segment_predict_loads_a_run_trained_on_the_shipped_encoder_only_weights(cohort, tmp_path):
    """`segment train --backbone weights/demo_sagittal.pt` (encoder and middle block only) made
    runs that `segment predict` could not load (missing `output_blocks` keys)."""
    shipped = Path(__file__).resolve().parents[1] / "weights" / "demo_sagittal.pt"
    run = tmp_path / "encoder_only"
    run_segment(cohort["store"], cohort["catalog"], "sagittal", "diffusion", run, backbone=shipped, epochs=1, batch_size=4)
    model, saved = load_segmenter(run)
    assert not any("output_blocks" in key for key in saved["state"])
    table = run_segment_predict(run, cohort["store"], cohort["catalog"], tmp_path / "pred")
    test = read_catalog(cohort["catalog"]).query("plane == 'sagittal' and split == 'test'")
    assert all((tmp_path / "pred" / "masks" / f"{s}.nii.gz").is_file() for s in test.series_id)
    assert not table.empty
