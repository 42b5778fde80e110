"""`orthodiff synth`: a synthetic cohort (images, masks, catalog) from the joint phantoms.

Per exam: one patient anatomy with labels drawn at the target prevalence and co-occurrence,
imaged in sagittal, coronal and axial series of thick slices. The acquisition varies the
way real cohorts do: field strength sets the noise, the vendor sets contrast and the bias
field, the center sets vendor, field strength and slice thickness. Everything derives from
the seed and the exam's index, so the same seed gives the same bytes, however many workers.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from orthodiff.catalogs.cohort import split_catalog, write_catalog
from orthodiff.catalogs.phantom import TISSUE_NAMES, TISSUE_TABLE, Anatomy, Volume, render, true_biomarkers, true_thickness
from orthodiff.catalogs.tasks import PLANES, ehr_schema, get_task, joints, structures
from orthodiff.catalogs.writers import affine, write_dicom_series, write_nifti
from orthodiff.errors import OrthodiffError
from orthodiff.progress import Advance, maybe_progress

SLICES = 20  # more than the 16 kept by ingestion, so the central crop matters
FOV_MM = {"knee": 150.0, "ankle": 140.0, "shoulder": 160.0, "spine": 240.0, "thigh": 200.0}
# Joints imaged with their own sequences instead of their center's proton-density protocol:
# per scan, (sequence, TE ms, TR ms, flip angle); every exam has exactly these series.
SEQUENCES = {"spine": {("sagittal", 0): ("T1", 12.0, 600.0, 90.0), ("sagittal", 1): ("T2", 100.0, 4000.0, 90.0)},
             "thigh": {("axial", 0): ("T1", 12.0, 600.0, 90.0)}}
# Prevalence model: a driver label with its prevalence, and for every other label its
# probability when the driver is present / absent. Counts are drawn as exact quotas, so a
# cohort of any size hits the marginals and the co-occurrence closely.
PRIORS = {
    "knee": ("ACL", 0.57, {"PCL": (0.11, 0.063), "MM": (0.65, 0.42), "LM": (0.62, 0.32), "MCL": (0.20, 0.084),
                           "LCL": (0.17, 0.077), "PD": (0.02, 0.066), "EFFU": (0.58, 0.30)}),
    "ankle": ("ATFL", 0.45, {"CFL": (0.40, 0.05), "ATR": (0.08, 0.20), "OLT": (0.20, 0.12)}),
    "shoulder": ("SSP", 0.45, {"ISP": (0.25, 0.06), "SSC": (0.30, 0.10), "LHBT": (0.40, 0.12), "AC": (0.05, 0.18),
                               "LHBT_EFFU": (0.45, 0.18), "SASD": (0.55, 0.18)}),
    "spine": ("DDD", 0.4, {}),
    "thigh": ("SARC", 0.3, {}),
}
# Vendor: contrast (gamma on the signal) and bias-field strength.
VENDORS = {"vendor_a": (0.85, 0.10), "vendor_b": (1.0, 0.20), "vendor_c": (1.15, 0.15), "vendor_d": (1.3, 0.25)}
# Center: vendor, share of 3T exams, slice thickness (mm), then its proton-density protocol:
# TE (ms), TR (ms), flip angle (degrees), fat suppression.
CENTERS = {
    "center_1": ("vendor_a", 0.8, 3.0, 30.0, 3000.0, 90.0, False),
    "center_2": ("vendor_a", 0.3, 3.5, 25.0, 2600.0, 90.0, True),
    "center_3": ("vendor_b", 0.6, 3.5, 35.0, 3400.0, 90.0, False),
    "center_4": ("vendor_b", 0.0, 4.0, 28.0, 2200.0, 90.0, True),
    "center_5": ("vendor_c", 1.0, 3.0, 33.0, 3800.0, 90.0, False),
    "center_6": ("vendor_c", 0.5, 4.0, 40.0, 2800.0, 80.0, True),
    "center_7": ("vendor_d", 0.4, 3.5, 22.0, 2500.0, 70.0, False),
}
NOISE = {1.5: 0.06, 3.0: 0.03}  # Rician sigma relative to the fluid signal
FAT_SUPPRESSION = 0.9  # share of the fat signal a fat-suppressed protocol removes
REPEAT_RATE, MISSING_RATE, EHR_MISSING_RATE = 0.05, 0.02, 0.10


def draw_labels(joint: str, n: int, rng: np.random.Generator, healthy_share: float | None = None) -> pd.DataFrame:
    """0/1 labels of `n` exams with exact quotas per driver stratum (see PRIORS).

    With `healthy_share`, exactly round(share * n) exams have every label 0 (at random
    positions) and the others are drawn from the same priors conditioned on at least one
    positive label, so their co-occurrence is the default cohort's; None keeps the priors'
    own share (about 9% for the knee) and the default cohort's bytes."""
    if healthy_share is None:
        return _prior_labels(joint, n, rng)
    if not 0 <= healthy_share <= 1:
        raise OrthodiffError(f"--healthy-share {healthy_share}: expected a share between 0 and 1")
    healthy = int(round(healthy_share * n))
    lesion = np.zeros((0, len(get_task(joint).label_columns)), int)
    while len(lesion) < n - healthy:  # rejection: keep the exams with a lesion
        batch = _prior_labels(joint, max(2 * (n - healthy), 16), rng).to_numpy()
        lesion = np.concatenate([lesion, batch[batch.any(axis=1)]])
    labels = pd.DataFrame(0, index=range(n), columns=get_task(joint).label_columns)
    labels.iloc[np.flatnonzero(rng.permutation(n) >= healthy)] = lesion[: n - healthy]
    return labels


def _prior_labels(joint: str, n: int, rng: np.random.Generator) -> pd.DataFrame:
    driver, p_driver, others = PRIORS[joint]
    labels = pd.DataFrame(0, index=range(n), columns=get_task(joint).label_columns)
    positive = rng.permutation(n) < round(p_driver * n)
    labels[driver] = positive.astype(int)
    for abbr, (p_pos, p_neg) in others.items():
        for stratum, p in ((positive, p_pos), (~positive, p_neg)):
            idx = np.flatnonzero(stratum)
            labels.loc[rng.permutation(idx)[: round(p * len(idx))], abbr] = 1
    return labels


def draw_ehr(labels: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """EHR fields weakly tied to the labels (injured exams: younger, more often athletes
    injured in sports), each missing in about 10% of exams."""
    n = len(labels)
    injured = labels.iloc[:, 0].to_numpy().astype(bool)
    sex = np.where(rng.random(n) < 0.6, "M", "F")
    athlete = rng.random(n) < np.where(injured, 0.45, 0.2)
    age = np.clip(rng.normal(np.where(injured, 31, 42), 12), 14, 85).round()
    height = np.where(sex == "M", rng.normal(176, 7, n), rng.normal(163, 6, n)).round(1)
    weight = (rng.normal(24.5, 3.5, n) * (height / 100) ** 2).round(1)
    events = ehr_schema().categorical["injury_event"]["classes"]
    p_sports = np.where(athlete, 0.7, np.where(injured, 0.35, 0.1))
    other = rng.choice([e for e in events if e != "sports"], n)
    ehr = pd.DataFrame({
        "age": age, "height": height, "weight": weight, "sex": sex.astype(object),
        "athlete": np.where(athlete, "yes", "no").astype(object),
        "injury_event": np.where(rng.random(n) < p_sports, "sports", other).astype(object),
    })
    for column in ehr.columns:
        missing = rng.random(n) < EHR_MISSING_RATE
        ehr.loc[missing, column] = np.nan if ehr[column].dtype.kind == "f" else None
    return ehr


@dataclass(frozen=True)
class Exam:
    """Everything needed to image one exam, drawn up front from the cohort seed."""

    index: int
    joint: str
    labels: dict
    center: str
    field_strength: float
    series: tuple[tuple[str, int], ...]  # (plane, scan)

    @property
    def patient_id(self) -> str:
        return f"P{self.index:05d}"


def plan_exams(joint: str, cases: int, seed: int, healthy_share: float | None = None) -> tuple[list[Exam], pd.DataFrame]:
    rng = np.random.default_rng([seed, 0])
    labels = draw_labels(joint, cases, rng, healthy_share)
    ehr = draw_ehr(labels, rng)
    exams = []
    for i in range(cases):
        center = str(rng.choice(list(CENTERS)))
        field = 3.0 if rng.random() < CENTERS[center][1] else 1.5
        planes = list(PLANES)
        if rng.random() < MISSING_RATE:
            planes.remove(str(rng.choice(planes)))
        series = [(p, 0) for p in planes]
        if rng.random() < REPEAT_RATE:
            series.append((str(rng.choice(planes)), 1))
        if joint in SEQUENCES:  # drawn above all the same, so other joints' cohorts keep their values
            series = list(SEQUENCES[joint])
        exams.append(Exam(i, joint, labels.iloc[i].to_dict(), center, field, tuple(series)))
    return exams, ehr


@dataclass(frozen=True)
class Protocol:
    """A center's proton-density acquisition (times in ms, angle in degrees, lengths in mm)."""

    echo_time: float
    repetition_time: float
    flip_angle: float
    fat_suppression: bool
    slice_thickness: float
    pixel_spacing: float

    @classmethod
    def of(cls, exam: Exam, size: int, series: tuple[str, int] | None = None) -> Protocol:
        _, _, thickness, te, tr, flip, fat_sat = CENTERS[exam.center]
        if exam.joint in SEQUENCES:
            _, te, tr, flip = SEQUENCES[exam.joint][series]
            fat_sat = False
        return cls(te, tr, flip, fat_sat, thickness, FOV_MM[exam.joint] / size)

    def columns(self) -> dict:
        return {"echo_time": self.echo_time, "repetition_time": self.repetition_time, "flip_angle": self.flip_angle,
                "fat_suppression": self.fat_suppression, "pixel_spacing": self.pixel_spacing}


def mr_signal(volume: Volume, protocol: Protocol) -> np.ndarray:
    """Spin-echo signal of the phantom's tissues relative to fluid (fluid ~ 1):
    PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE / T2), fat share suppressed if asked."""
    pd, t1, _, fat = TISSUE_TABLE.T
    angle = np.deg2rad(protocol.flip_angle)
    e1 = np.exp(-protocol.repetition_time / t1)
    per_tissue = pd * np.sin(angle) * (1 - e1) / (1 - np.cos(angle) * e1)  # T1 saturation
    if protocol.fat_suppression:
        per_tissue *= 1 - FAT_SUPPRESSION * fat
    fluid = TISSUE_NAMES.index("fluid")
    reference = per_tissue[fluid] / (1 - FAT_SUPPRESSION * fat[fluid] if protocol.fat_suppression else 1)
    reference *= np.exp(-protocol.echo_time / TISSUE_TABLE[fluid, 2])
    signal = per_tissue[volume.tissue] * volume.pd * np.exp(-protocol.echo_time / volume.t2)
    return (signal / reference).astype(np.float32)


def _supersampling(protocol: Protocol) -> int:
    """Samples per slice for partial-volume averaging: about 1 mm apart, 3 to 5."""
    return int(np.clip(np.ceil(protocol.slice_thickness / max(protocol.pixel_spacing, 1.0)), 3, 5))


def _majority(labels: np.ndarray) -> np.ndarray:
    """(slices, samples, rows, cols) labels -> the label covering most of each voxel."""
    values = np.unique(labels)
    counts = np.stack([(labels == v).sum(1, dtype=np.uint8) for v in values])
    return values[counts.argmax(0)].astype(np.uint8)


def image_series(exam: Exam, plane: str, scan: int, size: int, seed: int) -> dict[str, np.ndarray]:
    """One series, each array (slices, size, size): `image` (float32, fluid ~ 1), `mask`
    (uint8 structures, majority over the slice profile), `t2` (float32 ms)."""
    rng = np.random.default_rng([seed, exam.index, PLANES.index(plane), scan, 1])
    anatomy = exam_anatomy(exam, seed)
    protocol = Protocol.of(exam, size, (plane, scan))
    gamma, bias = VENDORS[CENTERS[exam.center][0]]
    shape = (SLICES, size, size)
    grid = affine(plane, shape, protocol.pixel_spacing, protocol.slice_thickness)
    samples = _supersampling(protocol)
    fine = np.eye(4)  # fine slice index -> slice index, samples evenly across each slice
    fine[2, 2], fine[2, 3] = 1 / samples, 0.5 / samples - 0.5
    if scan:  # a repeat scan: the patient moved a little between the two
        fine[:2, 3] += rng.uniform(-1.5, 1.5, 2)
    volume = render(exam.joint, anatomy, exam.labels, (SLICES * samples, size, size), grid @ fine)
    fine_shape = (SLICES, samples, size, size)
    image = mr_signal(volume, protocol).reshape(fine_shape).mean(1)
    t2 = volume.t2.reshape(fine_shape).mean(1)
    mask = _majority(volume.label.reshape(fine_shape))
    direction = rng.normal(size=3)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    unit = (grid[:3, :3].T @ (direction / np.linalg.norm(direction))).astype(np.float32)
    along = i * unit[0] + j * unit[1] + k * unit[2] + float(grid[:3, 3] @ direction / np.linalg.norm(direction))
    image = (image**gamma) * (1 + bias * along / (FOV_MM[exam.joint] / 2))
    sigma = NOISE[exam.field_strength]
    image = np.hypot(image + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))
    return {"image": image.astype(np.float32), "mask": mask, "t2": t2.astype(np.float32)}


def exam_anatomy(exam: Exam, seed: int) -> Anatomy:
    """The exam's body, the same in every series."""
    return Anatomy.draw(np.random.default_rng([seed, exam.index, 2]), exam.labels)


def _write_exam(exam: Exam, size: int, seed: int, out: Path, fmt: str) -> list[dict]:
    rows = []
    try:
        masked = structures(exam.joint).mask_planes
    except KeyError:  # a joint without segmentation structures
        masked = ()
    protocol = Protocol.of(exam, size, exam.series[0])
    truth = {}
    if exam.joint == "knee":
        names = {s.value: s.abbr for s in structures("knee").structures}
        truth = {f"true_thickness_{names[v]}": t for v, t in true_thickness(exam_anatomy(exam, seed), exam.labels).items()}
    slab = SLICES * protocol.slice_thickness
    truth.update({f"true_{k}": v for k, v in true_biomarkers(exam.joint, exam_anatomy(exam, seed), exam.labels, slab).items()})
    for plane, scan in exam.series:
        protocol = Protocol.of(exam, size, (plane, scan))
        series = image_series(exam, plane, scan, size, seed)
        case = f"{exam.patient_id}-1"
        series_id = f"{case}-{plane}-{scan}"
        thickness, pixel = protocol.slice_thickness, protocol.pixel_spacing
        scaled = np.round(series["image"] * 1000).astype(np.int16)
        if fmt == "dicom":
            path = f"images/{series_id}"
            write_dicom_series(out / path, scaled, plane, pixel, thickness, exam.patient_id, f"{seed}-{series_id}",
                               acquisition=dicom_acquisition(protocol, exam.field_strength))
        else:
            path = f"images/{series_id}.nii.gz"
            write_nifti(out / path, scaled, plane, pixel, thickness)
        mask_path = t2_path = None
        if plane in masked:
            mask_path = f"masks/{series_id}.nii.gz"
            write_nifti(out / mask_path, series["mask"], plane, pixel, thickness)
        if exam.joint == "knee":
            t2_path = f"t2/{series_id}.nii.gz"
            write_nifti(out / t2_path, series["t2"], plane, pixel, thickness)
        rows.append({
            "series_id": series_id, "case_id": case, "patient_id": exam.patient_id, "task": exam.joint,
            "joint": exam.joint, "plane": plane, "scan": scan, "path": path, "mask_path": mask_path,
            "t2_path": t2_path, "center": exam.center, "vendor": CENTERS[exam.center][0],
            "field_strength": exam.field_strength, "slice_thickness": thickness, **protocol.columns(), **truth, **exam.labels,
            **({"sequence": SEQUENCES[exam.joint][(plane, scan)][0]} if exam.joint in SEQUENCES else {}),
        })
    return rows


def dicom_acquisition(protocol: Protocol, field_strength: float) -> dict:
    """DICOM attributes (keyword: value) of a series acquired with `protocol`."""
    return {
        "EchoTime": protocol.echo_time, "RepetitionTime": protocol.repetition_time, "FlipAngle": protocol.flip_angle,
        "MagneticFieldStrength": field_strength, "ScanningSequence": "SE", "SequenceVariant": "SK",
        "ScanOptions": "FS" if protocol.fat_suppression else "",
    }


def synthesize(
    joint: str, cases: int, size: int, seed: int, out: str | Path, fmt: str = "nifti",
    progress: bool | Advance = True, workers: int | None = None, val: float = 0.15, test: float = 0.2,
    healthy_share: float | None = None,
) -> Path:
    """Write a synthetic cohort to `out` (images/, masks/, catalog.parquet); returns the
    catalog path. The catalog is written last, so its presence means the cohort is complete.
    `healthy_share`: the share of exams with every label 0 (see `draw_labels`)."""
    if joint not in joints():
        raise OrthodiffError(f"--joint {joint!r}: expected one of {joints()}")
    if fmt not in ("nifti", "dicom"):
        raise OrthodiffError(f"--format {fmt!r}: expected 'nifti' or 'dicom'")
    if cases < 1 or size < 16:
        raise OrthodiffError(f"need at least 1 case and --size 16 (got {cases} cases, size {size})")
    if healthy_share is not None and not 0 <= healthy_share <= 1:
        raise OrthodiffError(f"--healthy-share {healthy_share}: expected a share between 0 and 1")
    out = Path(out)
    for sub in ("images", "masks", "t2"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    exams, ehr = plan_exams(joint, cases, seed, healthy_share)
    workers = workers or (min(os.cpu_count() or 1, 4) if cases >= 8 else 1)
    rows: list[dict] = []
    with maybe_progress(progress, f"synth {joint}", cases, "exams") as advance:
        if workers == 1:
            results = (_write_exam(e, size, seed, out, fmt) for e in exams)
        else:
            pool = ProcessPoolExecutor(workers)
            results = pool.map(_write_exam, exams, *zip(*[(size, seed, out, fmt)] * cases), chunksize=4)
        for exam_rows in results:
            rows.extend(exam_rows)
            advance()
        if workers > 1:
            pool.shutdown()
    df = pd.DataFrame(rows)
    ehr["patient_id"] = [e.patient_id for e in exams]
    df = df.merge(ehr, on="patient_id", how="left")
    df = split_catalog(df.assign(split="train"), seed=seed, val=val, test=test)
    return write_catalog(df, out / "catalog.parquet")


def preview(catalog_path: str | Path, png: str | Path) -> Path:
    """A montage of the first exam's central slices per plane, masks overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    from orthodiff.catalogs.cohort import read_catalog, resolve_path
    from orthodiff.catalogs.readers import read_series

    df = read_catalog(catalog_path)
    first = df[(df["case_id"] == df["case_id"].iloc[0]) & (df["scan"] == 0)]
    fig, axes = plt.subplots(1, len(first), figsize=(4 * len(first), 4.8))
    cmap, shown = plt.get_cmap("tab20"), set()
    for ax, row in zip(np.atleast_1d(axes), first.itertuples()):
        image = read_series(resolve_path(catalog_path, row.path)).data
        mid = image.shape[0] // 2
        ax.imshow(image[mid], cmap="gray")
        if isinstance(row.mask_path, str):
            mask = np.asarray(nib.load(resolve_path(catalog_path, row.mask_path)).dataobj).transpose(2, 1, 0)[mid]
            ax.imshow(np.ma.masked_equal(mask, 0), cmap=cmap, alpha=0.45, vmin=0, vmax=20, interpolation="nearest")
            shown |= set(np.unique(mask).tolist()) - {0}
        positives = [c for c in get_task(row.task).label_columns if getattr(row, c) == 1]
        ax.set_title(f"{row.plane}: {'lesions ' + ' '.join(positives) if positives else 'no lesion (all labels 0)'}",
                     fontsize=10)
        ax.axis("off")
    if shown:
        from matplotlib.patches import Patch

        handles = [Patch(color=cmap(s.value / 20), alpha=0.6, label=s.abbr)
                   for s in structures(first["joint"].iloc[0]).structures if s.value in shown]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 11), fontsize=8, title="mask")
    fig.suptitle(f"exam {first['case_id'].iloc[0]}: central slice per plane, mask overlaid", fontsize=11)
    fig.tight_layout(rect=(0, 0.1 if shown else 0, 1, 1))
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return Path(png)
