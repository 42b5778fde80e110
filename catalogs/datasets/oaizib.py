"""Catalog builder for OAI-ZIB (Ambellan et al. 2019, Zuse Institute Berlin): manual bone and
cartilage segmentations of 507 baseline sagittal 3D DESS knee MRIs of the Osteoarthritis
Initiative (OAI).

The archive (its README) holds `segmentation/segmentation_masks/<id>.segmentation_masks.mhd`
(+ `.raw`, ITK MetaImage; 0 background, 1 femoral bone, 2 femoral cartilage, 3 tibial bone,
4 tibial cartilage) and `segmentation/doc/`: `oai_mri_paths.txt` (each scan's DICOM folder
within the OAI baseline data, one path per line, one of whose parts is the mask id) and
`2foldCrossValidation-List1.txt` / `-List2.txt` (the two folds, one id per line). The images
are not part of it: they come from the OAI (`oai`, the baseline folder those paths start in)
and are used where they are, as DICOM series. OAI ids are patients; one exam each.

The masks carry no pose. Their voxel order is taken from public converters of the archive
(MHD array (rows, columns, slices) = DICOM pixel rows flipped, columns as they are, slices
reversed against ITK's position-sorted series, which is also the order `readers` reads), so
the mask is written as NIfTI on its DICOM series' grid and affine (`readers.series_geometry`).

The knee structure set splits tibial cartilage into medial and lateral (MTC, LTC); OAI-ZIB
does not. The importer splits it at the sagittal slice with the least tibial cartilage within
the central half of its left-right extent (the intercondylar region between the plateaus),
and names the halves from the knee's side: DICOM `Laterality`/`ImageLaterality`, else LEFT or
RIGHT in the series description (OAI names its series so, e.g. SAG_3D_DESS_RIGHT). Without
either, the series is refused. This split is the importer's, not the dataset's.
`fold` 1 trains on List1 (split by patient into train and val with `seed`, `val`) and tests
on List2; fold 2 the other way round.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from orthodiff.catalogs.datasets.common import (
    catalog_frame, convert, folder_of, knee_values, need, relative, safe_name, split_train,
)
from orthodiff.catalogs.readers import series_geometry
from orthodiff.catalogs.tasks import dataset_structures
from orthodiff.errors import OrthodiffError

SUFFIX = ".segmentation_masks.mhd"


def _ids(path: Path) -> list[str]:
    if not path.is_file():
        raise OrthodiffError(f"{path}: OAI-ZIB file not found")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    seen = set()
    for i, ident in enumerate(ids):
        if ident in seen:
            raise OrthodiffError(f"{path}: row {i}, id {ident!r}: listed twice")
        seen.add(ident)
    return ids


def _header(folder: Path):
    import pydicom

    for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            return pydicom.dcmread(file, stop_before_pixels=True)
        except Exception:
            continue
    raise OrthodiffError(f"{folder}: no readable DICOM file")


def laterality(header, folder: Path) -> str:
    """'L' or 'R' from the DICOM header of a knee series."""
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(header.get(keyword, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
    words = str(header.get("SeriesDescription", "")).upper().replace("_", " ").split()
    sides = {"L" for w in words if w == "LEFT"} | {"R" for w in words if w == "RIGHT"}
    if len(sides) == 1:
        return sides.pop()
    raise OrthodiffError(f"{folder}: the knee's side is not in the DICOM header (Laterality, ImageLaterality or "
                         "LEFT/RIGHT in SeriesDescription); OAI-ZIB's tibial cartilage cannot be split into medial and lateral")


def split_tibial_cartilage(cartilage: np.ndarray, affine: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    """(medial, lateral) boolean masks of a (slices, rows, columns) tibial cartilage mask on a
    sagittal grid: cut at the slice with the least cartilage in the central half of its
    extent; the medial half lies towards the body's midline (patient left of a right knee)."""
    if int(np.argmax(np.abs(affine[:3, 2]))) != 0:
        raise OrthodiffError("tibial cartilage can only be split on a sagittal series (slices along left-right)")
    counts = cartilage.sum(axis=(1, 2))
    present = np.flatnonzero(counts)
    if present.size == 0:
        return cartilage.copy(), np.zeros_like(cartilage)
    lo, hi = int(present[0]), int(present[-1])
    a, b = lo + (hi - lo) // 4, hi - (hi - lo) // 4
    cut = a + int(np.argmin(counts[a : b + 1]))
    high = np.zeros_like(cartilage)
    high[cut + 1 :] = cartilage[cut + 1 :]
    low = cartilage & ~high
    towards_right = affine[0, 2] > 0  # higher slice index = patient's right (RAS +x)
    medial_is_high = towards_right == (side == "L")  # a left knee's medial side faces the right
    return (high, low) if medial_is_high else (low, high)


def _knee_mask(mhd: Path, series: Path, shape, affine, side: str, itk) -> np.ndarray:
    try:
        native = np.asarray(itk.GetArrayFromImage(itk.imread(str(mhd))))
    except Exception as err:
        raise OrthodiffError(f"{mhd}: unreadable MetaImage ({type(err).__name__})") from None
    if native.ndim != 3:
        raise OrthodiffError(f"{mhd}: not a 3D mask (shape {native.shape})")
    native = np.moveaxis(native, -1, 0)[::-1, ::-1, :]
    if native.shape != tuple(shape):
        raise OrthodiffError(f"{mhd}: mask of shape {native.shape} (slices, rows, columns) does not fit its series "
                             f"{series} of shape {tuple(shape)}")
    known = {s.value: s for s in dataset_structures("oaizib")}
    values = set(np.unique(native).astype(int).tolist()) - {0}
    if values - set(known):
        raise OrthodiffError(f"{mhd}: labels {sorted(values - set(known))} are not OAI-ZIB labels {sorted(known)}")
    out = np.zeros(native.shape, np.uint8)
    for value, structure in known.items():
        targets = knee_values(structure.knee)
        if len(targets) == 1:
            out[native == value] = targets[0]
        else:  # tibial cartilage -> medial and lateral tibial cartilage
            medial, lateral = split_tibial_cartilage(native == value, affine, side)
            out[medial], out[lateral] = targets
    return out


def oaizib_catalog(root: str | Path, oai: str | Path, out: str | Path, fold: int = 1, seed: int = 0,
                   val: float = 0.06) -> pd.DataFrame:
    """Convert OAI-ZIB masks onto their OAI DICOM series' grids beside catalog `out`; returns
    the catalog (task `oaizib`), written by `common.finish`."""
    itk = need("itk", "OAI-ZIB")
    root, oai = Path(root), Path(oai)
    seg = root / "segmentation"
    if not (seg / "segmentation_masks").is_dir():
        raise OrthodiffError(f"{root}: no segmentation/segmentation_masks folder (the OAI-ZIB archive's root expected)")
    if fold not in (1, 2):
        raise OrthodiffError(f"--fold {fold}: 1 or 2")
    lists = [_ids(seg / "doc" / f"2foldCrossValidation-List{k}.txt") for k in (1, 2)]
    split_of = {i: ("train" if k == fold - 1 else "test") for k, ids in enumerate(lists) for i in ids}
    both = set(lists[0]) & set(lists[1])
    if both:
        raise OrthodiffError(f"{seg / 'doc'}: id {sorted(both)[0]!r} is in both cross-validation lists")
    paths_file = seg / "doc" / "oai_mri_paths.txt"
    masks = {p.name[: -len(SUFFIX)]: p for p in sorted((seg / "segmentation_masks").glob(f"*{SUFFIX}"))}
    if not masks:
        raise OrthodiffError(f"{seg / 'segmentation_masks'}: no *{SUFFIX} masks")
    series_of: dict[str, Path] = {}
    for i, line in enumerate(_ids(paths_file)):
        owners = [part for part in Path(line).parts if part in masks]
        if len(owners) == 1:
            series_of[owners[0]] = oai / line
    folder, rows = folder_of(out), []
    for ident, mhd in masks.items():
        name = safe_name(ident, str(mhd))
        if ident not in series_of:
            raise OrthodiffError(f"{paths_file}: no path names mask {ident} ({mhd})")
        if ident not in split_of:
            raise OrthodiffError(f"{mhd}: id {ident} is in neither cross-validation list")
        series = series_of[ident]
        if not series.is_dir():
            raise OrthodiffError(f"{paths_file}: DICOM folder {series} of mask {ident} not found (is --oai the OAI baseline folder?)")
        header = _header(series)
        side = laterality(header, series)
        shape, affine = series_geometry(series)
        target = convert(folder / "masks" / f"{name}.nii.gz",
                         lambda: (_knee_mask(mhd, series, shape, affine, side, itk), affine))
        case = f"oaizib-{name}"
        rows.append({
            "series_id": f"{case}-sagittal-0", "case_id": case, "patient_id": case, "task": "oaizib", "joint": "knee",
            "plane": "sagittal", "scan": 0, "path": str(series.resolve()), "mask_path": relative(target, out),
            "center": "oai", "vendor": str(header.get("Manufacturer", "") or ""),
            "field_strength": float(header.get("MagneticFieldStrength", np.nan) or np.nan),
            "slice_thickness": float(header.get("SliceThickness", np.nan) or np.nan), "split": split_of[ident],
            "laterality": side,
        })
    return split_train(catalog_frame(rows), seed=seed, val=val)
