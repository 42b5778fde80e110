"""Segmentation evaluation: metrics, biomarkers, agreement, comparison, acquisition effects,
the `evaluate seg` command, and bad input."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from orthodiff.catalogs.cohort import read_catalog, resolve_path, write_catalog
from orthodiff.catalogs.tasks import structures
from orthodiff.errors import OrthodiffError

KNEE = structures("knee")


def _save_like(path, data_szyx, like):
    """Write (slices, rows, columns) data as NIfTI with `like`'s affine."""
    image = nib.Nifti1Image(np.ascontiguousarray(np.asarray(data_szyx).transpose(2, 1, 0)), nib.load(like).affine)
    nib.save(image, str(path))


def _mask(catalog_path, row):
    return np.asarray(nib.load(resolve_path(catalog_path, row.mask_path)).dataobj).transpose(2, 1, 0)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A tiny knee cohort with T2 maps and acquisition columns, and three models' mask
    folders: a copy of the reference, the reference shifted by one column, and a run
    layout (masks/) with femoral cartilage removed."""
    from orthodiff.catalogs.synth import synthesize

    root = tmp_path_factory.mktemp("evaluation")
    catalog_path = synthesize("knee", 8, 64, 0, root / "cohort", progress=False)
    catalog = read_catalog(catalog_path)
    rng = np.random.default_rng(0)
    exams = catalog["case_id"].unique()
    per_exam = pd.DataFrame({"case_id": exams, "echo_time": rng.uniform(10, 40, len(exams)),
                             "repetition_time": rng.uniform(1000, 3000, len(exams)),
                             "flip_angle": rng.choice([90.0, 120.0, np.nan], len(exams)), "pixel_spacing": 150 / 64})
    catalog = catalog.drop(columns=[c for c in per_exam.columns if c != "case_id"], errors="ignore").merge(per_exam, on="case_id")
    t2_paths = []
    folders = {name: root / name for name in ("copy", "shifted", "no_fc/masks")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for row in catalog.itertuples():
        if not isinstance(row.mask_path, str) or not row.mask_path:
            t2_paths.append("")
            continue
        like = resolve_path(catalog_path, row.path)
        mask = _mask(catalog_path, row)
        t2 = np.where(mask == 4, 40.0, np.where(mask == 5, 150.0, 20.0)).astype(np.float32)  # MTC clips to 100
        _save_like(root / "cohort" / f"{row.series_id}_t2.nii.gz", t2, like)
        t2_paths.append(f"{row.series_id}_t2.nii.gz")
        _save_like(folders["copy"] / f"{row.series_id}.nii.gz", mask, like)
        _save_like(folders["shifted"] / f"{row.series_id}.nii.gz", np.roll(mask, 1, axis=2), like)
        _save_like(folders["no_fc/masks"] / f"{row.series_id}.nii.gz", np.where(mask == 4, 0, mask).astype(np.uint8), like)
    catalog["t2_path"] = t2_paths
    write_catalog(catalog, catalog_path)
    return catalog_path, [root / "copy", root / "shifted", root / "no_fc"]


def test_series_metrics_are_spacing_aware():
    from orthodiff.evaluation.metrics import series_metrics

    true = np.zeros((8, 20, 20), np.uint8)
    true[2:6, 5:15, 5:15] = 1  # femur: a 4 x 10 x 10 box
    pred = np.roll(true, 1, axis=2)  # one column over
    table = series_metrics(pred, true, (3.0, 0.5, 0.5), KNEE, nsd_tolerance=1.0).set_index("structure")
    assert table.loc["Femur", "dice"] == pytest.approx(2 * 360 / 800)
    assert table.loc["Femur", "iou"] == pytest.approx(360 / 440)
    assert table.loc["Femur", "hd95"] == pytest.approx(0.5)  # one column of 0.5 mm
    assert table.loc["Femur", "nsd"] == pytest.approx(1.0)  # within the 1 mm tolerance everywhere
    assert np.isnan(table.loc["Tibia", "dice"])  # absent from the reference: undefined, left out
    slice_shift = series_metrics(np.roll(true, 1, axis=0), true, (3.0, 0.5, 0.5), KNEE).set_index("structure")
    assert slice_shift.loc["Femur", "hd95"] == pytest.approx(3.0)
    assert slice_shift.loc["Femur", "nsd"] < 1.0
    missed = series_metrics(np.zeros_like(true), true, (3.0, 0.5, 0.5), KNEE).set_index("structure")
    assert missed.loc["Femur", ["dice", "iou", "nsd"]].tolist() == [0.0, 0.0, 0.0]


def test_cartilage_thickness_two_ways_and_t2():
    from orthodiff.evaluation.biomarkers import series_biomarkers, skeleton_thickness

    mask = np.zeros((3, 30, 30), np.uint8)
    mask[:, 10:15, 5:25] = 4  # femoral cartilage: 5 rows of 0.5 mm
    spacing = (3.0, 0.5, 0.7)
    t2 = np.full(mask.shape, 150.0, np.float32)
    values, notes = series_biomarkers(mask, spacing, KNEE, {"t2": t2, "t1rho": t2 / 3})
    assert values["thickness_FC"] == pytest.approx(2.5)  # row axis: 5 voxels x 0.5 mm
    # skeleton: the centre row lies 3 rows (1.5 mm) from the nearest background row (EDT to
    # background pixel centres, so 2 x EDT counts one row more than the 5 of the strip);
    # at the ends it forks into the corners: 16 pixels at 1.5, 4 at 1.0, 4 at 0.5 mm
    assert values["skeleton_thickness_FC"] == pytest.approx(2 * (16 * 1.5 + 4 * 1.0 + 4 * 0.5) / 24)
    # a second compartment beside the first, and a slice of its own, measure independently
    mask[1, 20:25, 5:25] = 7
    assert skeleton_thickness(mask == 4, spacing) == pytest.approx(values["skeleton_thickness_FC"])
    assert series_biomarkers(mask, spacing, KNEE)[0]["skeleton_thickness_PC"] == pytest.approx(2.5)
    assert values["t2_FC"] == 100.0 and values["t1rho_FC"] == 50.0  # clipped to 0-100 ms
    assert values["volume_FC"] == pytest.approx(3 * 5 * 20 * 3.0 * 0.5 * 0.7)
    assert np.isnan(values["skeleton_thickness_PC"]) and np.isnan(values["t2_PC"])
    assert "no PC voxels" in " ".join(notes) and not any("FC" in n for n in notes)


def test_agreement_paths():
    from orthodiff.evaluation.agreement import agree

    rng = np.random.default_rng(2)  # a draw that passes Shapiro-Wilk and Levene
    b = rng.normal(10, 2, 30)
    a = b + rng.normal(0.5, 0.5, 30)
    parametric = agree(a, b, n_boot=200)
    assert parametric["method"] == "parametric" and parametric["icc_form"] == "ICC(3,1)"
    diff = a - b
    assert parametric["bias"] == pytest.approx(diff.mean())
    assert parametric["loa_high"] - parametric["loa_low"] == pytest.approx(2 * 1.96 * diff.std(ddof=1))
    assert parametric["icc_low"] <= parametric["icc"] <= parametric["icc_high"]
    assert parametric["icc_a1"] < parametric["icc"]  # a constant bias costs absolute agreement, not consistency
    skewed = rng.exponential(1.0, 40) ** 2
    nonparametric = agree(skewed * 1.1, skewed, n_boot=300)
    assert nonparametric["method"] == "nonparametric" and "bootstrap median of 300" in nonparametric["icc_form"]
    assert nonparametric["bias"] == pytest.approx(np.median(skewed * 0.1))
    assert nonparametric["bias_ci_low"] <= nonparametric["bias"] <= nonparametric["bias_ci_high"]
    assert nonparametric["spearman_rho"] == pytest.approx(1.0)


def test_friedman_then_wilcoxon_with_bh():
    from orthodiff.evaluation.comparison import compare_models

    subjects = [f"s{i}" for i in range(8)]
    rows = [{"model": m, "dataset": "d", "subject": s, "dice": base + 0.01 * i}
            for m, base in (("a", 0.9), ("b", 0.8), ("c", 0.7)) for i, s in enumerate(subjects)]
    friedman, pairwise = compare_models(pd.DataFrame(rows))
    assert friedman.loc[0, "statistic"] == pytest.approx(16.0)  # every subject ranks a > b > c
    assert pairwise["p"].tolist() == pytest.approx([2 / 2**8] * 3)  # exact two-sided signed-rank
    assert pairwise["p_adjusted"].tolist() == pytest.approx([2 / 2**8] * 3)


def test_acquisition_effects_recover_te_and_drop_collinear_tr():
    from orthodiff.evaluation.acquisition import acquisition_effects

    rng = np.random.default_rng(0)
    n = 120
    catalog = pd.DataFrame({"series_id": [f"s{i}" for i in range(n)], "center": [f"c{i % 6}" for i in range(n)],
                            "echo_time": rng.uniform(10, 50, n)})
    catalog["repetition_time"] = 40 * catalog["echo_time"] + rng.normal(0, 1, n)  # collinear with TE
    catalog.loc[::10, "echo_time"] = np.nan  # imputed
    centre = {f"c{k}": v for k, v in enumerate(rng.normal(0, 0.03, 6))}
    te = catalog["echo_time"].fillna(30)
    dice = 0.8 - 0.004 * te + catalog["center"].map(centre) + rng.normal(0, 0.01, n)
    table, fit = acquisition_effects(pd.DataFrame({"model": "m", "series_id": catalog["series_id"], "dice": dice}), catalog, "center")
    assert fit["fit"] == "mixedlm" and fit["groups"] == 6 and len(fit["vif_dropped"]) == 1
    effect = table.set_index("effect").drop("const")
    assert len(effect) == 1
    per_sd = -0.004 * te.std(ddof=0) * (1 if effect.index[0] == "echo_time" else 1)
    assert effect["ci_low"].iloc[0] < per_sd < effect["ci_high"].iloc[0]


@pytest.mark.slow
def test_evaluate_seg_end_to_end(cohort, tmp_path):
    from typer.testing import CliRunner

    from orthodiff.cli import app

    catalog_path, models = cohort
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", "seg", *map(str, models), "--catalog", str(catalog_path), "--out", str(out),
                                      "--split", "", "--plane", "sagittal", "--bootstrap", "200",
                                      "--min-pixels", "0", "--min-voxels", "0"])  # the 64-px phantom's structures are small
    assert result.exit_code == 0, result.output
    assert set(pd.read_parquet(out / "series_metrics.parquet")["dataset"]) == {"knee_sagittal"}
    tier = pd.read_parquet(out / "tier_dataset.parquet").set_index(["model", "dataset"])
    assert (tier.loc["copy", "dice"] == 1.0).all() and (tier.loc["copy", "hd95"] == 0.0).all()
    assert (tier.loc["shifted", "dice"] < 0.9).all()
    tissue = pd.read_parquet(out / "tier_tissue.parquet").set_index(["model", "dataset", "tissue"])
    assert (tissue.xs("bone", level="tissue").loc["no_fc", "dice"] == 1.0).all()
    assert (tissue.xs("cartilage", level="tissue").loc["no_fc", "dice"] < 1.0).all()
    agreement = pd.read_parquet(out / "agreement.parquet").set_index(["model", "biomarker"])
    assert agreement.loc[("copy", "skeleton_thickness_FC"), "bias"] == 0.0
    assert agreement.loc[("copy", "skeleton_thickness_FC"), "icc"] == pytest.approx(1.0)
    markers = pd.read_parquet(out / "biomarkers.parquet")
    reference = markers[markers["model"] == "reference"]
    assert set(reference["t2_FC"].dropna()) == {40.0} and set(reference["t2_MTC"].dropna()) == {100.0}
    assert markers.loc[markers["model"] == "no_fc", "skeleton_thickness_FC"].isna().all()
    notes = pd.read_parquet(out / "notes.parquet")
    assert (notes["model"] == "no_fc").any() and notes["note"].str.contains("no FC voxels").any()
    wilcoxon = pd.read_parquet(out / "wilcoxon.parquet")
    assert (wilcoxon["p_adjusted"] >= wilcoxon["p"] - 1e-12).all() and len(pd.read_parquet(out / "friedman.parquet"))
    effects = pd.read_parquet(out / "acquisition_effects.parquet").set_index("effect")
    assert effects.loc["model_shifted", "coefficient"] < effects.loc["model_no_fc", "coefficient"] < 0
    counts = pd.read_parquet(out / "case_counts.parquet").set_index(["model", "structure"])
    assert counts.loc[("no_fc", "FC"), "missed_series"] == counts.loc[("copy", "FC"), "scored_series"] > 0
    assert (counts["false_positive_series"] == 0).all()
    wide = pd.read_parquet(out / "dice_tiers.parquet")  # the paper's table: a column per model, three tiers of rows
    assert list(wide.columns[:4]) == ["tier", "dataset", "tissue", "structure"] and {"copy", "shifted", "no_fc"} <= set(wide.columns)
    row = wide[(wide["tier"] == "label") & (wide["structure"] == "FC")].iloc[0]
    assert row["copy"] == 1.0 and row["no_fc"] == 0.0 and (wide["tier"] == "dataset").sum() == 1
    label = pd.read_parquet(out / "tier_label.parquet")
    assert {"missed_series", "false_positive_series", "both_empty_series", "both_empty_slices"} <= set(label.columns)
    page = (out / "evaluation.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and "tier_label" in page
    # the summary as sections of definition lists, not a dict printed as text
    assert "<h2 id='s-run'>Run</h2><dl><dt>models</dt><dd>copy, shifted, no_fc</dd>" in page and "<pre>" not in page
    assert "<dt>reference cleaning</dt><dd><dl><dt>min pixels per slice</dt><dd>" in page
    assert "<h2 id='s-scoring-conventions'>" in page and "<dt>empty structures</dt><dd>reference empty" in page
    assert "<a href='#s-acquisition-model'>" in page and "<a href='#s-tier-label'>tier_label</a>" in page

    from orthodiff.heads.report import build_report

    report = build_report(tmp_path).read_text()  # the main report gains the evaluation's section and a link
    section = report.split("<section id='evaluation'>")[1].split("</section>")[0]
    assert "href='./eval/evaluation.html'" in section and "copy, shifted, no_fc" in section.replace("&#x27;", "")
    assert "Friedman" in section and "skeleton_thickness_FC" in section and "volume_" not in section
    assert section.count("data:image/png;base64,") == 5 == report.count("data:image/png;base64,")  # shown once


def _first_reference(catalog_path):
    catalog = read_catalog(catalog_path)
    return catalog[catalog["mask_path"].fillna("") != ""].iloc[0]


def test_bad_model_folders_are_named(cohort, tmp_path):
    from orthodiff.evaluation.run import run_evaluate_seg

    catalog_path, models = cohort
    row = _first_reference(catalog_path)
    like = resolve_path(catalog_path, row.path)
    mask = np.asarray(nib.load(resolve_path(catalog_path, row.mask_path)).dataobj).transpose(2, 1, 0)

    def variant(name, edit):
        folder = tmp_path / name
        shutil.copytree(models[0], folder)
        edit(folder / f"{row.series_id}.nii.gz")
        return folder

    missing = variant("missing", lambda p: p.unlink())
    with pytest.raises(OrthodiffError, match=rf"'missing' has no mask for 1 of .*{row.series_id}"):
        run_evaluate_seg([missing], catalog_path, tmp_path / "o1", split=None)

    def moved(p):
        image = nib.load(like)
        affine = image.affine.copy()
        affine[0, 3] += 5.0
        nib.save(nib.Nifti1Image(np.ascontiguousarray(mask.transpose(2, 1, 0)), affine), str(p))

    with pytest.raises(OrthodiffError, match="another grid than its series"):
        run_evaluate_seg([variant("moved", moved)], catalog_path, tmp_path / "o2", split=None)
    with pytest.raises(OrthodiffError, match=r"mask labels \[15\] are not structures"):
        run_evaluate_seg([variant("labels", lambda p: _save_like(p, np.where(mask == 1, 15, mask), like))], catalog_path,
                         tmp_path / "o3", split=None)
    with pytest.raises(OrthodiffError, match="shape"):
        run_evaluate_seg([variant("cropped", lambda p: _save_like(p, mask[:, :-2], like))], catalog_path, tmp_path / "o4", split=None)


def test_nan_in_a_t2_map_is_noted_and_left_out_for_reference_and_model_alike():
    """A NaN voxel made the reference's T2 NaN while a model that missed the voxel scored a number."""
    from orthodiff.evaluation.biomarkers import series_biomarkers

    reference = np.zeros((2, 8, 8), np.uint8)
    reference[:, 2:6, 2:6] = 4  # FC
    model = reference.copy()
    model[0, 2, 2] = 0  # the model misses the voxel whose T2 is NaN
    t2 = np.full(reference.shape, 30.0, np.float32)
    t2[0, 2, 2], t2[1, 3, 3] = np.nan, 50.0
    spacing = (1.0, 1.0, 1.0)
    ref_values, ref_notes = series_biomarkers(reference, spacing, KNEE, {"t2": t2})
    model_values, model_notes = series_biomarkers(model, spacing, KNEE, {"t2": t2})
    assert ref_values["t2_FC"] == pytest.approx((30.0 * 30 + 50.0) / 31)  # the 31 voxels with a value
    assert model_values["t2_FC"] == ref_values["t2_FC"]  # the same voxels: the NaN one counts for neither
    assert "1 of 32 FC voxels have no T2 value (NaN or Inf in the map): left out of T2 of FC" in ref_notes
    assert not any("T2 value" in n for n in model_notes)  # its FC holds no voxel without a value


def test_definitions_render_a_summary_record():
    from orthodiff.pages import definitions

    html = definitions({"split_name": "test", "models": ["a", "b"], "cleaning": {"min_pixels": 100}, "none": None,
                        "ks": [{"column": "te", "p": 0.5}], "icc": float("nan"), "note": "<b>"})
    assert html.startswith("<dl><dt>split name</dt><dd>test</dd><dt>models</dt><dd>a, b</dd>")
    assert "<dt>cleaning</dt><dd><dl><dt>min pixels</dt><dd>100</dd></dl></dd>" in html
    assert "<dt>none</dt><dd>—</dd>" in html and "<dt>icc</dt><dd>—</dd>" in html and "&lt;b&gt;" in html
    assert "<table><thead><tr><th>column</th><th>p</th></tr></thead><tbody><tr><td>te</td><td>0.5</td>" in html
