"""Catalog builder for SKM-TEA (Stanford Knee MRI Multi-Task Evaluation): sagittal 3D qDESS
knee scans with two echoes, 6-class tissue segmentations and official splits.

Layout (the dataset's DATASET.md and its loader, skm_tea/data/dataset.py): `image_files/
<scan_id>.h5` (DICOM track) holding `echo1` and `echo2` (X, Y, Z) and `seg` (X, Y, Z, 6),
one-hot in the order patellar cartilage, femoral cartilage, medial and lateral tibial
cartilage, medial and lateral meniscus; `annotations/<version>/{train,val,test}.json`
(COCO-like) whose `images` give each scan's `file_name`, `scan_id`, `subject_id`,
`voxel_spacing` (mm), `matrix_shape` and `orientation` (per axis, e.g. `SI` = superior to
inferior); `all_metadata.csv` with one row per `MTR_ID` and the sequence parameters
(`RepetitionTime`, `EchoTime1` in ms, `FlipAngle` in degrees, `SpoilerGradientArea`,
`SpoilerGradientTime` in microseconds; `Manufacturer` and `MagneticFieldStrength` are used
where present).

Written per scan beside the catalog, each once (a rerun skips what exists):
- the image: the root-sum-of-squares of the echoes, sqrt(echo1^2 + echo2^2), the `rss` input
  of the dataset's own loader and statistics, as a sagittal NIfTI (slices along left-right,
  rows superior-inferior, columns anterior-posterior as the orientation codes say);
- the mask: the `seg` channels as knee structure values (`datasets.toml` `[structures.skmtea]`,
  an exact match: PC, FC, MTC, LTC, MM, LM);
- a T2 map in ms (`t2_path`) by the analytic two-echo qDESS model of Sveinsson et al. 2017
  (Magn Reson Imaging 38:63-70), with the constants SKM-TEA's evaluation passes to DOSMA
  (skm_tea/evaluation/qdess_evaluation.py): with TR, TE in s, Tg the spoiler duration in s,
  Gl = area / (Tg * 1e6) * 100, gamma = 4258 * 2 pi rad/(G s), dk = gamma Gl Tg,
  D = 1.25e-9 m^2/s (cartilage ADC), T1 = 1.2 s (1.0 s in meniscus voxels),
  E = exp(-TR / T1 - TR dk^2 D), k = sin^2(alpha / 2) (1 + E) / (1 - cos(alpha) E),
  c1 = (TR - Tg / 3) dk^2 D, and T2 = -2000 (TR - TE) / (ln(|echo2 / echo1| / k) + c1) ms;
  values outside (0, 100] ms or undefined (echo1 = 0) are 0, as SKM-TEA's bounds set them.
  DOSMA's optional fat and fluid suppression masks are not applied (the biomarkers read T2
  inside the cartilage masks).
Splits are SKM-TEA's own (train, val, test of the chosen annotation version); a patient is a
`subject_id`, an exam a scan (a subject's later timepoints are further exams).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from orthodiff.catalogs.datasets.common import (
    affine_from, catalog_frame, convert, folder_of, knee_values, need, relative, safe_name,
)
from orthodiff.catalogs.tasks import dataset_structures
from orthodiff.errors import OrthodiffError

SPLITS = ("train", "val", "test")
PARAMETERS = ["RepetitionTime", "EchoTime1", "FlipAngle", "SpoilerGradientArea", "SpoilerGradientTime"]
# orientation code -> RAS direction of an index step along that axis
CODES = {"SI": (0, 0, -1), "IS": (0, 0, 1), "AP": (0, -1, 0), "PA": (0, 1, 0), "LR": (1, 0, 0), "RL": (-1, 0, 0)}
ADC, T1_MS, T1_MENISCUS_MS, T2_MAX_MS = 1.25e-9, 1200.0, 1000.0, 100.0


def qdess_t2(echo1: np.ndarray, echo2: np.ndarray, t1_ms: np.ndarray, tr_ms: float, te_ms: float,
             flip_deg: float, gl_area: float, tg_us: float) -> np.ndarray:
    """T2 in ms from the two qDESS echoes (the model and constants of the module docstring),
    float32; `t1_ms` takes few distinct values, so k is computed once per value."""
    tr, te, tg = tr_ms * 1e-3, te_ms * 1e-3, tg_us * 1e-6
    alpha = np.deg2rad(flip_deg)
    dk = 4258 * 2 * np.pi * (gl_area / (tg * 1e6) * 100) * tg
    c1 = (tr - tg / 3) * dk**2 * ADC
    t1_ms = np.broadcast_to(np.asarray(t1_ms, np.float32), np.shape(echo1))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t2 = np.abs(np.asarray(echo2, np.float32) / np.asarray(echo1, np.float32))
        np.log(t2, out=t2)
        for t1 in np.unique(t1_ms):
            e = np.exp(-tr / (float(t1) * 1e-3) - tr * dk**2 * ADC)
            log_k = np.log(np.sin(alpha / 2) ** 2 * (1 + e) / (1 - np.cos(alpha) * e))
            t2[t1_ms == t1] -= np.float32(log_k - c1)
        np.divide(np.float32(-2000 * (tr - te)), t2, out=t2)
    t2[~np.isfinite(t2) | (t2 <= 0) | (t2 > T2_MAX_MS)] = 0.0
    return t2


def _axes(orientation, where: str) -> tuple[list[int], np.ndarray]:
    """(file axes in our (slices, rows, columns) order, their RAS directions): slices along
    left-right, rows superior-inferior, columns anterior-posterior."""
    codes = [str(c).upper() for c in orientation]
    if len(codes) != 3 or any(c not in CODES for c in codes):
        raise OrthodiffError(f"{where}: orientation {orientation!r} is not three of {sorted(CODES)}")
    order = []
    for axis in ("LR", "SI", "AP"):
        match = [i for i, c in enumerate(codes) if c in (axis, axis[::-1])]
        if len(match) != 1:
            raise OrthodiffError(f"{where}: orientation {orientation!r} has no single {axis} axis")
        order.append(match[0])
    slices, rows, cols = (np.array(CODES[codes[i]], float) for i in order)
    return order, np.stack([cols, rows, slices])


def _read_splits(root: Path, version: str) -> list[tuple[str, int, dict]]:
    folder = root / "annotations" / version
    if not folder.is_dir():
        found = sorted(p.name for p in (root / "annotations").glob("*") if p.is_dir())
        raise OrthodiffError(f"{folder}: no SKM-TEA annotation version {version!r}; found {found}")
    scans, where = [], {}
    for split in SPLITS:
        path = folder / f"{split}.json"
        if not path.is_file():
            raise OrthodiffError(f"{path}: SKM-TEA annotation file not found")
        try:
            images = json.loads(path.read_text())["images"]
        except (ValueError, KeyError) as err:
            raise OrthodiffError(f"{path}: not an SKM-TEA annotation file ({type(err).__name__}: {err})") from None
        for i, image in enumerate(images):
            missing = [k for k in ("file_name", "scan_id", "subject_id", "voxel_spacing", "orientation") if k not in image]
            if missing:
                raise OrthodiffError(f"{path}: images[{i}] lacks {missing}")
            scan = str(image["scan_id"])
            if scan in where:
                raise OrthodiffError(f"{path}: images[{i}], scan {scan!r}: also in {where[scan]} (a scan in two splits)")
            where[scan] = f"{path.name} images[{i}]"
            scans.append((split, i, image))
    return scans


def _read_metadata(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise OrthodiffError(f"{path}: SKM-TEA metadata file not found")
    table = pd.read_csv(path)
    missing = [c for c in ["MTR_ID", *PARAMETERS] if c not in table.columns]
    if missing:
        raise OrthodiffError(f"{path}: missing columns {missing}")
    dup = table["MTR_ID"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise OrthodiffError(f"{path}: row {i}, column 'MTR_ID', value {table.at[i, 'MTR_ID']!r}: listed twice")
    return table.set_index("MTR_ID")


def _read_scan(path: Path, image: dict, h5py) -> dict[str, np.ndarray]:
    """`echo1`, `echo2` and `mask` (knee structure values) of one scan, in the file's axis order;
    `seg` is read one channel at a time (at 512 x 512 x 160 x 6 it is 250 MB as uint8)."""
    structures = dataset_structures("skmtea")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("echo1", "echo2", "seg") if k not in f]
            if missing:
                raise OrthodiffError(f"{path}: no {missing} (an SKM-TEA image_files scan holds echo1, echo2, seg)")
            expected = tuple(image.get("matrix_shape", f["echo1"].shape))
            for key, want in (("echo1", expected), ("echo2", expected), ("seg", (*expected, len(structures)))):
                if f[key].shape != tuple(want) or f[key].dtype.kind not in "uifb":
                    raise OrthodiffError(f"{path}: {key} is {f[key].dtype} of shape {f[key].shape}; "
                                         f"expected numbers of shape {tuple(want)}")
            out = {k: f[k][()].astype(np.float32) for k in ("echo1", "echo2")}
            mask = np.zeros(expected, np.uint8)
            for channel, structure in enumerate(structures):
                voxels = f["seg"][..., channel] > 0
                if (voxels & (mask > 0)).any():
                    raise OrthodiffError(f"{path}: seg has voxels in two classes (one-hot expected)")
                mask[voxels] = knee_values(structure.knee)[0]
    except OSError as err:
        raise OrthodiffError(f"{path}: unreadable or truncated HDF5 ({err})") from None
    return {**out, "mask": mask}


def _write_scan(targets: dict[str, Path], scan: dict[str, np.ndarray], order: list[int],
                directions: np.ndarray, spacing: tuple, params: pd.Series) -> None:
    """Write what is missing of a scan's mask, T2 map and RSS image (each atomically), in our
    (slices, rows, columns) order."""
    echo1, echo2, mask = (np.transpose(scan[k], order) for k in ("echo1", "echo2", "mask"))
    affine = affine_from(directions, spacing, mask.shape)
    meniscus = [knee_values(s.knee)[0] for s in dataset_structures("skmtea") if s.abbr in ("MM", "LM")]
    t1 = np.where(np.isin(mask, meniscus), np.float32(T1_MENISCUS_MS), np.float32(T1_MS))
    convert(targets["masks"], lambda: (mask, affine))
    convert(targets["t2"], lambda: (qdess_t2(echo1, echo2, t1, *params[PARAMETERS]), affine))
    convert(targets["images"], lambda: (np.sqrt(echo1**2 + echo2**2), affine))


def skmtea_catalog(root: str | Path, out: str | Path, version: str = "v1.0.0") -> pd.DataFrame:
    """Convert SKM-TEA's DICOM-track scans into image, mask and T2 NIfTI files beside catalog
    `out`; returns the catalog (task `skmtea`, SKM-TEA's splits), written by `common.finish`."""
    h5py = need("h5py", "SKM-TEA")
    root = Path(root)
    if not root.is_dir():
        raise OrthodiffError(f"{root}: SKM-TEA directory not found")
    scans = _read_splits(root, version)
    meta_path = root / "all_metadata.csv"
    meta = _read_metadata(meta_path)
    listed = {str(image["file_name"]) for _, _, image in scans}
    stray = sorted(p for p in (root / "image_files").glob("*.h5") if p.name not in listed)
    if stray:
        raise OrthodiffError(f"{stray[0]}: scan in no {version} annotation file")
    folder, rows = folder_of(out), []
    for split, i, image in scans:
        where = f"{root / 'annotations' / version / (split + '.json')}: images[{i}]"
        scan = safe_name(image["scan_id"], where)
        source = root / "image_files" / str(image["file_name"])
        if not source.is_file():
            raise OrthodiffError(f"{where}: file {source} not found")
        if scan not in meta.index:
            raise OrthodiffError(f"{meta_path}: no row for MTR_ID {scan!r} ({where})")
        params = meta.loc[scan, PARAMETERS].astype(float)
        order, directions = _axes(image["orientation"], where)
        spacing = tuple(float(image["voxel_spacing"][a]) for a in order)
        targets = {kind: folder / kind / f"{scan}.nii.gz" for kind in ("images", "masks", "t2")}
        if not all(t.is_file() for t in targets.values()):
            _write_scan(targets, _read_scan(source, image, h5py), order, directions, spacing, params)
        case = f"skmtea-{scan}"
        rows.append({
            "series_id": f"{case}-sagittal-0", "case_id": case, "patient_id": f"skmtea-subject-{image['subject_id']}",
            "task": "skmtea", "joint": "knee", "plane": "sagittal", "scan": 0,
            "path": relative(targets["images"], out), "mask_path": relative(targets["masks"], out),
            "t2_path": relative(targets["t2"], out), "center": "stanford",
            # DICOM keywords, where all_metadata.csv has them; k-space was completed with GE's ARC
            "vendor": str(meta.loc[scan].get("Manufacturer", "GE")),
            "field_strength": float(meta.loc[scan].get("MagneticFieldStrength", np.nan)),
            "slice_thickness": spacing[0], "pixel_spacing": spacing[1], "split": split,
            "echo_time": float(params["EchoTime1"]), "repetition_time": float(params["RepetitionTime"]),
            "flip_angle": float(params["FlipAngle"]),
        })
    return catalog_frame(rows)
