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
from orthodiff.catalogs.phantom import Anatomy, render
from orthodiff.catalogs.tasks import PLANES, ehr_schema, get_task, joints, structures
from orthodiff.catalogs.writers import DIRECTIONS, affine, write_dicom_series, write_nifti
from orthodiff.errors import OrthodiffError
from orthodiff.progress import Advance, maybe_progress

SLICES = 20  # more than the 16 kept by ingestion, so the central crop matters
FOV_MM = {"knee": 150.0, "ankle": 140.0, "shoulder": 160.0}
# Prevalence model: a driver label with its prevalence, and for every other label its
# probability when the driver is present / absent. Counts are drawn as exact quotas, so a
# cohort of any size hits the marginals and the co-occurrence closely.
PRIORS = {
    "knee": ("ACL", 0.57, {"PCL": (0.11, 0.063), "MM": (0.65, 0.42), "LM": (0.62, 0.32), "MCL": (0.20, 0.084),
                           "LCL": (0.17, 0.077), "PD": (0.02, 0.066), "EFFU": (0.58, 0.30)}),
    "ankle": ("ATFL", 0.45, {"CFL": (0.40, 0.05), "ATR": (0.08, 0.20), "OLT": (0.20, 0.12)}),
    "shoulder": ("SSP", 0.45, {"ISP": (0.25, 0.06), "SSC": (0.30, 0.10), "LHBT": (0.40, 0.12), "AC": (0.05, 0.18),
                               "LHBT_EFFU": (0.45, 0.18), "SASD": (0.55, 0.18)}),
}
# Vendor: contrast (gamma on tissue intensity) and bias-field strength.
VENDORS = {"vendor_a": (0.85, 0.10), "vendor_b": (1.0, 0.20), "vendor_c": (1.15, 0.15), "vendor_d": (1.3, 0.25)}
# Center: vendor, share of 3T exams, slice thickness (mm).
CENTERS = {
    "center_1": ("vendor_a", 0.8, 3.0), "center_2": ("vendor_a", 0.3, 3.5), "center_3": ("vendor_b", 0.6, 3.5),
    "center_4": ("vendor_b", 0.0, 4.0), "center_5": ("vendor_c", 1.0, 3.0), "center_6": ("vendor_c", 0.5, 4.0),
    "center_7": ("vendor_d", 0.4, 3.5),
}
NOISE = {1.5: 0.06, 3.0: 0.03}  # Rician sigma relative to fluid signal
REPEAT_RATE, MISSING_RATE, EHR_MISSING_RATE = 0.05, 0.02, 0.10


def draw_labels(joint: str, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """0/1 labels of `n` exams with exact quotas per driver stratum (see PRIORS)."""
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


def plan_exams(joint: str, cases: int, seed: int) -> tuple[list[Exam], pd.DataFrame]:
    rng = np.random.default_rng([seed, 0])
    labels = draw_labels(joint, cases, rng)
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
        exams.append(Exam(i, joint, labels.iloc[i].to_dict(), center, field, tuple(series)))
    return exams, ehr


def image_series(exam: Exam, plane: str, scan: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, structure mask uint8), each (slices, size, size), of one series."""
    rng = np.random.default_rng([seed, exam.index, PLANES.index(plane), scan, 1])
    anatomy = Anatomy.draw(np.random.default_rng([seed, exam.index, 2]))  # same body in every series
    vendor = CENTERS[exam.center][0]
    gamma, bias = VENDORS[vendor]
    thickness, pixel = CENTERS[exam.center][2], FOV_MM[exam.joint] / size
    shape = (SLICES, size, size)
    grid = affine(plane, shape, pixel, thickness)
    k, j, i = np.meshgrid(np.arange(SLICES), np.arange(size), np.arange(size), indexing="ij")
    voxels = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(k.size)], axis=1).astype(np.float32)
    if scan:  # a repeat scan: the patient moved a little between the two
        voxels[:, :2] += rng.uniform(-1.5, 1.5, 2)
    image, mask = 0.0, None
    for offset in (-1 / 3, 0.0, 1 / 3):  # thick slices average what they cover
        points = (voxels + [0, 0, offset, 0]) @ grid.T.astype(np.float32)
        intensity, label = render(exam.joint, anatomy, exam.labels, points[:, :3])
        image = image + intensity / 3
        if offset == 0.0:
            mask, centre = label, points[:, :3]
    direction = rng.normal(size=3)
    field = 1 + bias * (centre @ (direction / np.linalg.norm(direction))) / (FOV_MM[exam.joint] / 2)
    image = (image**gamma) * field
    sigma = NOISE[exam.field_strength]
    image = np.hypot(image + rng.normal(0, sigma, image.shape), rng.normal(0, sigma, image.shape))
    return image.reshape(shape).astype(np.float32), mask.reshape(shape)


def _write_exam(exam: Exam, size: int, seed: int, out: Path, fmt: str) -> list[dict]:
    rows = []
    try:
        masked = structures(exam.joint).mask_planes
    except KeyError:  # a joint without segmentation structures
        masked = ()
    for plane, scan in exam.series:
        image, mask = image_series(exam, plane, scan, size, seed)
        case = f"{exam.patient_id}-1"
        series_id = f"{case}-{plane}-{scan}"
        thickness, pixel = CENTERS[exam.center][2], FOV_MM[exam.joint] / size
        scaled = np.round(image * 1000).astype(np.int16)
        if fmt == "dicom":
            path = f"images/{series_id}"
            write_dicom_series(out / path, scaled, plane, pixel, thickness, exam.patient_id, f"{seed}-{series_id}")
        else:
            path = f"images/{series_id}.nii.gz"
            write_nifti(out / path, scaled, plane, pixel, thickness)
        mask_path = None
        if plane in masked:
            mask_path = f"masks/{series_id}.nii.gz"
            write_nifti(out / mask_path, mask, plane, pixel, thickness)
        rows.append({
            "series_id": series_id, "case_id": case, "patient_id": exam.patient_id, "task": exam.joint,
            "joint": exam.joint, "plane": plane, "scan": scan, "path": path, "mask_path": mask_path,
            "center": exam.center, "vendor": CENTERS[exam.center][0], "field_strength": exam.field_strength,
            "slice_thickness": thickness, **exam.labels,
        })
    return rows


def synthesize(
    joint: str, cases: int, size: int, seed: int, out: str | Path, fmt: str = "nifti",
    progress: bool | Advance = True, workers: int | None = None, val: float = 0.15, test: float = 0.2,
) -> Path:
    """Write a synthetic cohort to `out` (images/, masks/, catalog.parquet); returns the
    catalog path. The catalog is written last, so its presence means the cohort is complete."""
    if joint not in joints():
        raise OrthodiffError(f"--joint {joint!r}: expected one of {joints()}")
    if fmt not in ("nifti", "dicom"):
        raise OrthodiffError(f"--format {fmt!r}: expected 'nifti' or 'dicom'")
    if cases < 1 or size < 16:
        raise OrthodiffError(f"need at least 1 case and --size 16 (got {cases} cases, size {size})")
    out = Path(out)
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    exams, ehr = plan_exams(joint, cases, seed)
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
        image = read_series(resolve_path(catalog_path, row.path))
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
