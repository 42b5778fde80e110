"""The synthetic cohort: label model, images and masks, geometry, determinism, formats."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from orthodiff.catalogs.cohort import read_catalog, resolve_path, validate_catalog
from orthodiff.catalogs.phantom import TISSUE_NAMES, Anatomy, render, true_thickness
from orthodiff.catalogs.readers import read_series
from orthodiff.catalogs.synth import _majority, draw_labels, plan_exams, synthesize
from orthodiff.catalogs.tasks import get_task, structures
from orthodiff.errors import OrthodiffError

TARGETS = {"ACL": 0.57, "PCL": 0.09, "MM": 0.55, "LM": 0.49, "MCL": 0.15, "LCL": 0.13, "PD": 0.04, "EFFU": 0.46}


@pytest.mark.parametrize("n", [60, 120, 1000])
def test_knee_prevalence_is_within_three_points_at_any_cohort_size(n):
    labels = draw_labels("knee", n, np.random.default_rng(n))
    for abbr, target in TARGETS.items():
        assert abs(labels[abbr].mean() - target) <= 0.03, abbr


def test_acl_tears_come_with_meniscal_tears_and_effusion():
    labels = draw_labels("knee", 1000, np.random.default_rng(1))
    acl = labels["ACL"] == 1
    for abbr in ("MM", "LM", "EFFU"):
        assert labels.loc[acl, abbr].mean() > labels.loc[~acl, abbr].mean() + 0.15, abbr


def _knee(labels: dict, anatomy: Anatomy = Anatomy(), spacing: float = 1.0, half: float = 40.0):
    """The phantom on an isotropic grid centred on the joint (arrays indexed [z, y, x])."""
    n = int(2 * half / spacing) + 1
    grid = np.diag([spacing, spacing, spacing, 1.0])
    grid[:3, 3] = -half
    return render("knee", anatomy, labels, (n, n, n), grid)


def test_acl_tear_is_a_local_change_in_the_ligament():
    healthy, torn = _knee({"ACL": 0}), _knee({"ACL": 1})  # default anatomy: no bone bruise
    changed = (healthy.tissue != torn.tissue) | (healthy.label != torn.label)
    assert 0 < changed.sum() < 0.004 * changed.size  # a small lesion (under 2 cm3), not a global change
    assert set(np.unique(healthy.label[changed])) <= {0, 10}  # the ligament and what surrounds it
    assert (torn.label == 10).sum() < 0.85 * (healthy.label == 10).sum()  # a discontinuity
    assert torn.t2[changed].mean() > healthy.t2[changed].mean() + 40  # fluid and oedema are bright


def test_bone_bruises_come_with_some_acl_tears_inside_the_bone():
    bruised = _knee({"ACL": 1}, Anatomy(bruise=0.1))
    plain = _knee({"ACL": 1}, Anatomy(bruise=0.9))
    changed = bruised.tissue != plain.tissue
    assert changed.sum() > 500 and set(np.unique(bruised.label[changed])) <= {1, 2}


@pytest.mark.slow
def test_meniscal_tear_is_a_cleft_in_the_posterior_horn():
    small = Anatomy(meniscus=(0.1, 0.1))
    healthy, torn = _knee({"MM": 0}, small, spacing=0.5, half=40), _knee({"MM": 1}, small, spacing=0.5, half=40)
    changed = healthy.tissue != torn.tissue
    assert changed.sum() > 50 and (healthy.label[changed] == 8).all()  # only the medial meniscus
    y = np.nonzero(changed)[1] * 0.5 - 40
    assert (y < -8).all()  # posterior horn


@pytest.mark.slow
def test_larger_meniscal_tears_lose_the_free_edge_and_grow_a_cyst():
    fluid = TISSUE_NAMES.index("fluid")
    healthy = _knee({"LM": 0}, spacing=0.5, half=40)
    tears = {e: _knee({"LM": 1}, Anatomy(meniscus=(0.5, e)), spacing=0.5, half=40) for e in (0.1, 0.5, 0.95)}
    changed = {e: (healthy.tissue != t.tissue) & (t.tissue == fluid) for e, t in tears.items()}
    assert changed[0.1].sum() < changed[0.5].sum() < changed[0.95].sum()
    meniscus = [(t.label == 9).sum() for t in tears.values()]
    assert meniscus[0] == (healthy.label == 9).sum() > meniscus[1] > meniscus[2]  # the fragment is gone
    cyst = changed[0.95] & (healthy.label != 9)  # fluid outside the meniscus: the parameniscal cyst
    assert cyst.sum() > 100 and not (changed[0.5] & (healthy.label != 9)).any()
    z, y, x = (np.median(i) * 0.5 - 40 for i in np.nonzero(cyst))
    assert x > 10 and y < -15  # lateral, behind the posterior horn


@pytest.mark.slow
def test_healthy_menisci_may_carry_mucoid_signal_that_reaches_no_surface():
    from scipy.ndimage import binary_dilation

    plain, degenerate = (_knee({}, Anatomy(meniscus=(d, 0.0)), spacing=0.5, half=40) for d in (0.1, 0.9))
    changed = plain.tissue != degenerate.tissue
    assert changed.sum() > 20 and (degenerate.tissue[changed] == TISSUE_NAMES.index("mucoid")).all()
    around = binary_dilation(changed) & ~changed
    assert (degenerate.label[changed] == 8).all()  # in the medial meniscus,
    assert set(np.unique(degenerate.label[around])) <= {8, 11}  # surrounded by it (the PCL passes behind the horn)


def test_effusion_is_a_graded_amount_of_fluid_that_overlaps_healthy_knees():
    fluid = TISSUE_NAMES.index("fluid")
    amounts = [(_knee({}, Anatomy(fluid=f), spacing=1.0, half=60).tissue == fluid).sum() for f in (0.0, 0.3, 1.0)]
    assert amounts[0] < amounts[1] < amounts[2] and amounts[2] > 5 * amounts[0]
    rng = np.random.default_rng(0)
    drawn = {v: np.array([Anatomy.draw(rng, {"EFFU": v}).fluid for _ in range(400)]) for v in (0, 1)}
    assert drawn[1].min() < drawn[0].max()  # overlapping classes
    auroc = (drawn[1][:, None] > drawn[0][None, :]).mean()  # an ideal reader of the fluid alone
    assert 0.85 < auroc < 0.97


def test_anatomy_is_layered_like_a_knee():
    knee = _knee({}, Anatomy(flexion=0.0), spacing=0.5)
    index = lambda v: int(round((v + 40) / 0.5))  # noqa: E731
    # Vertically through the medial compartment: tibia, tibial then femoral cartilage, femur.
    column = knee.label[:, index(-1), index(-21)]
    order = [v for i, v in enumerate(column) if v and (i == 0 or column[i - 1] != v)]
    assert order[:4] == [2, 5, 4, 1]
    # Front to back at the patellofemoral joint: femur, femoral cartilage, patellar cartilage, patella.
    row = knee.label[index(26), :, index(0)]
    order = [v for i, v in enumerate(row) if v and (i == 0 or row[i - 1] != v)]
    assert order == [1, 4, 7, 3]
    # Menisci sit on the plateau rims, not over the plateau centres.
    assert knee.label[index(-1) : index(2), index(-1), index(-21)].max() != 8
    assert (knee.label == 8).sum() > 1000 and (knee.label == 9).sum() > 1000
    # The ACL runs from the lateral femoral notch wall down to the anterior tibia.
    z, y, x = (np.nonzero(knee.label == 10)[i] * 0.5 - 40 for i in range(3))
    assert z.max() - z.min() > 12 and y[z.argmax()] < y[z.argmin()] - 15


def test_true_cartilage_thickness_is_realistic_and_thins_with_degeneration():
    normal = true_thickness(Anatomy(), {})
    assert set(normal) == {4, 5, 6, 7}
    for value in (4, 5, 6):
        assert 1.3 < normal[value] < 3.0, value
    assert normal[7] > max(normal[5], normal[4])  # patellar cartilage is the thickest
    worn = true_thickness(Anatomy(degeneration=(0.9, 0.0)), {})
    assert worn[5] < 0.7 * normal[5] and worn[6] == pytest.approx(normal[6])


def test_cartilage_t2_rises_with_degeneration():
    knee = _knee({}, Anatomy(degeneration=(0.8, 0.0)))
    medial, lateral = knee.t2[knee.label == 5], knee.t2[knee.label == 6]
    assert 30 < lateral.mean() < 45 and medial.mean() > lateral.mean() + 8
    assert knee.t2[knee.label == 8].mean() < 15 and knee.t2[knee.tissue == TISSUE_NAMES.index("fluid")].min() > 200


def test_masks_take_the_structure_covering_most_of_each_thick_voxel():
    samples = np.array([[4, 0], [4, 1], [1, 1]], np.uint8).reshape(1, 3, 1, 2)  # (slices, samples, rows, cols)
    assert _majority(samples).tolist() == [[[4, 1]]]


@pytest.fixture(scope="module")
def knee_cohort(tmp_path_factory) -> Path:
    return synthesize("knee", 6, 32, seed=3, out=tmp_path_factory.mktemp("knee"), progress=False)


def test_tiny_knee_cohort_is_valid_with_masks_on_sagittal_and_coronal(knee_cohort):
    df = read_catalog(knee_cohort)
    validate_catalog(df, knee_cohort)
    assert set(df["plane"]) == {"sagittal", "coronal", "axial"} and df["case_id"].nunique() == 6
    assert df["mask_path"].notna().eq(df["plane"].isin(["sagittal", "coronal"])).all()
    allowed = {0, *structures("knee").values}
    row = df[df["plane"] == "sagittal"].iloc[0]
    mask = np.asarray(nib.load(resolve_path(knee_cohort, row.mask_path)).dataobj)
    assert set(np.unique(mask)) <= allowed and len(np.unique(mask)) >= 8
    for row in df.itertuples():
        image = nib.load(resolve_path(knee_cohort, row.path))
        assert image.shape[2] >= 16 and 3.0 <= image.header.get_zooms()[2] <= 4.0
        read_series(resolve_path(knee_cohort, row.path), expected_plane=row.plane)  # geometry matches


def test_knee_series_have_t2_maps_acquisition_columns_and_true_thickness(knee_cohort):
    df = read_catalog(knee_cohort)
    for row in df.head(4).itertuples():
        image, t2 = nib.load(resolve_path(knee_cohort, row.path)), nib.load(resolve_path(knee_cohort, row.t2_path))
        assert t2.get_data_dtype() == np.float32 and t2.shape == image.shape
        np.testing.assert_allclose(t2.affine, image.affine)
        values = np.asarray(t2.dataobj)
        assert 0 < np.median(values) < 100 and values.max() > 200  # tissue T2 in ms, fluid high
        mask = np.asarray(nib.load(resolve_path(knee_cohort, row.mask_path)).dataobj) if isinstance(row.mask_path, str) else None
        if mask is not None:
            assert 25 < values[mask == 4].mean() < 60  # femoral cartilage (partial volume included)
    centers = df.drop_duplicates("center")
    assert (centers["echo_time"].between(20, 45) & centers["repetition_time"].between(2000, 4000)).all()
    assert np.allclose(df["pixel_spacing"], 150 / 32) and df["flip_angle"].between(60, 90).all()
    for name in ("FC", "MTC", "LTC", "PC"):
        assert df[f"true_thickness_{name}"].between(1.0, 4.5).all(), name
    assert (df.groupby("case_id")["true_thickness_FC"].nunique() == 1).all()  # per exam


def test_same_seed_same_bytes(knee_cohort, tmp_path):
    again = synthesize("knee", 6, 32, seed=3, out=tmp_path, progress=False, workers=2)

    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}

    assert digest(knee_cohort.parent) == digest(again.parent)


def test_dicom_cohort_reads_back_without_real_identifiers(tmp_path):
    catalog = synthesize("knee", 2, 24, seed=1, out=tmp_path, fmt="dicom", progress=False)
    df = read_catalog(catalog)
    validate_catalog(df, catalog)
    row = df.iloc[0]
    folder = resolve_path(catalog, row.path)
    ds = pydicom.dcmread(sorted(folder.iterdir())[0])
    assert str(ds.PatientName) == row.patient_id == ds.PatientID
    assert float(ds.EchoTime) == row.echo_time and float(ds.RepetitionTime) == row.repetition_time
    assert float(ds.FlipAngle) == row.flip_angle and float(ds.PixelSpacing[0]) == pytest.approx(row.pixel_spacing, abs=1e-4)
    assert read_series(folder, expected_plane=row.plane).data.shape[0] >= 16


# Where each ankle / shoulder lesion lies (patient mm from the joint centre: x lateral,
# y anterior, z superior), judged on the median position of the voxels it changes.
LESION_SITES = {
    ("ankle", "ATFL"): lambda x, y, z: x > 8 and y > 0,  # lateral, in front of the malleolus
    ("ankle", "CFL"): lambda x, y, z: x > 8 and z < -15,  # lateral, down to the calcaneus
    ("ankle", "ATR"): lambda x, y, z: y < -30 and z > 0,  # Achilles, above its insertion
    ("ankle", "OLT"): lambda x, y, z: x < -3 and abs(z) < 8,  # medial talar dome
    ("shoulder", "SSP"): lambda x, y, z: z > 10,
    ("shoulder", "ISP"): lambda x, y, z: y < -5,
    ("shoulder", "SSC"): lambda x, y, z: y > 5,
    ("shoulder", "LHBT"): lambda x, y, z: y > 10 and z < -10,  # in the bicipital groove
    ("shoulder", "LHBT_EFFU"): lambda x, y, z: y > 5,
    ("shoulder", "SASD"): lambda x, y, z: z > 0 and x > 0,  # over the cuff, under the deltoid
    ("shoulder", "AC"): lambda x, y, z: x > -25,  # capsule around the head
}


@pytest.mark.parametrize("joint,abbr", list(LESION_SITES))
def test_ankle_and_shoulder_lesions_are_local_bright_and_where_they_belong(joint, abbr):
    spacing, half = 1.5, 60.0
    n = int(2 * half / spacing) + 1
    grid = np.diag([spacing, spacing, spacing, 1.0])
    grid[:3, 3] = -half
    healthy, lesion = (render(joint, Anatomy(), {abbr: v}, (n, n, n), grid) for v in (0, 1))
    changed = healthy.tissue != lesion.tissue
    assert 0 < changed.sum() < 0.01 * changed.size, abbr  # local, not a global change
    assert lesion.t2[changed].mean() > healthy.t2[changed].mean() + 20, abbr  # fluid, oedema, sprain
    z, y, x = (np.median(i) * spacing - half for i in np.nonzero(changed))
    assert LESION_SITES[(joint, abbr)](x, y, z), (abbr, x, y, z)


def test_achilles_rupture_is_graded_and_tendinopathy_thickens_healthy_tendons():
    spacing, half = 1.0, 60.0
    n = int(2 * half / spacing) + 1
    grid = np.diag([spacing, spacing, spacing, 1.0])
    grid[:3, 3] = -half
    fluid, mucoid = TISSUE_NAMES.index("fluid"), TISSUE_NAMES.index("mucoid")

    def ankle(labels, tendon):
        return render("ankle", Anatomy(tendon=tendon), labels, (n, n, n), grid).tissue

    gaps = [(ankle({"ATR": 1}, e) == fluid).sum() - (ankle({}, 0.0) == fluid).sum() for e in (0.0, 1.0)]
    assert 0 < gaps[0] < gaps[1] / 2  # a short partial gap to a long retracted one
    healthy, tendinopathy = ankle({}, 0.2), ankle({}, 0.95)
    changed = healthy != tendinopathy
    assert changed.any() and set(np.unique(tendinopathy[changed])) <= {TISSUE_NAMES.index("ligament"), mucoid}  # band tissue
    assert not (tendinopathy == fluid)[changed].any()


@pytest.mark.parametrize("joint,start,step", [("ankle", (-5.0, 0.0, 20.0), (0.0, 0.0, -0.1)),
                                               ("shoulder", (-45.0, 0.0, 1.0), (0.1, 0.0, 0.0))])
def test_ankle_and_shoulder_joints_are_cartilage_on_cartilage(joint, start, step):
    """A line down through the tibial plafond into the talar dome (or from the glenoid into
    the humeral head) crosses cortex, the two cartilage layers with at most a film of joint
    fluid between them (2-3 mm together), cortex."""
    grid = np.eye(4)
    grid[:3, 0], grid[:3, 1] = (0.0, 1.0, 0.0), np.cross(step, (0.0, 1.0, 0.0)) * 10  # any other two axes
    grid[:3, 2], grid[:3, 3] = step, start
    names = [TISSUE_NAMES[t] for t in render(joint, Anatomy(), {}, (300, 1, 1), grid).tissue[:, 0, 0]]
    joint_space = [(k, len(list(g))) for k, g in itertools.groupby(n if n in ("cortex", "cartilage", "fluid") else "other"
                                                                  for n in names)]
    cortices = [i for i, (k, _) in enumerate(joint_space) if k == "cortex"]
    between = [joint_space[i + 1 : j] for i, j in zip(cortices, cortices[1:]) if j > i + 1]
    between = [b for b in between if {k for k, _ in b} <= {"cartilage", "fluid"}]
    assert len(between) == 1, joint_space
    mm = {k: 0.1 * sum(n for name, n in between[0] if name == k) for k in ("cartilage", "fluid")}
    assert 2.0 <= mm["cartilage"] + mm["fluid"] <= 3.0 and mm["fluid"] <= 0.5, between


@pytest.mark.parametrize("joint", ["ankle", "shoulder"])
def test_other_joints_have_their_own_labels_and_no_masks(tmp_path, joint):
    catalog = synthesize(joint, 3, 24, seed=0, out=tmp_path, progress=False)
    df = read_catalog(catalog)
    validate_catalog(df, catalog)
    assert set(get_task(joint).label_columns) <= set(df.columns) and "ACL" not in df.columns
    assert df["mask_path"].isna().all() and df["t2_path"].isna().all()


def test_repeat_scans_and_missing_planes_occur_at_their_rates():
    exams, ehr = plan_exams("knee", 2000, seed=0)
    repeats = np.mean([any(scan for _, scan in e.series) for e in exams])
    missing = np.mean([len({p for p, _ in e.series}) < 3 for e in exams])
    assert 0.03 < repeats < 0.07 and 0.01 < missing < 0.035
    assert all(0.07 < ehr[c].isna().mean() < 0.13 for c in ehr.columns)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(OrthodiffError, match="--joint 'hip'"):
        synthesize("hip", 2, 32, 0, tmp_path)
    with pytest.raises(OrthodiffError, match="--format 'png'"):
        synthesize("knee", 2, 32, 0, tmp_path, fmt="png")


@pytest.mark.parametrize("share", [0.0, 0.5, 0.9, 1.0])
def test_healthy_share_sets_exactly_that_many_all_negative_exams(share):
    labels = draw_labels("knee", 50, np.random.default_rng(0), healthy_share=share)
    healthy = (labels == 0).all(axis=1)
    assert int(healthy.sum()) == round(share * 50)
    if share < 1:  # the others keep the priors' co-occurrence: ACL tears mostly with effusion
        lesion = labels[~healthy]
        assert lesion.any(axis=1).all()
        assert lesion.loc[lesion.ACL == 1, "EFFU"].mean() > lesion.loc[lesion.ACL == 0, "EFFU"].mean()


def test_healthy_share_default_keeps_the_cohort_and_bad_shares_are_named(tmp_path):
    default = draw_labels("knee", 200, np.random.default_rng(1))
    assert default.equals(draw_labels("knee", 200, np.random.default_rng(1), healthy_share=None))
    assert 0.04 < (default == 0).all(axis=1).mean() < 0.14  # the priors' own share
    exams, _ = plan_exams("knee", 40, seed=0, healthy_share=0.75)
    assert sum(not any(e.labels.values()) for e in exams) == 30
    with pytest.raises(OrthodiffError, match="--healthy-share 1.5"):
        synthesize("knee", 2, 32, 0, tmp_path, healthy_share=1.5)
