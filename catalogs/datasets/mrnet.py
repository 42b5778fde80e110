"""Catalog builder for the public MRNet knee dataset as its users have it on disk.

Layout: `train/` and `valid/`, each with `axial/`, `coronal/`, `sagittal/` folders of
`NNNN.npy` uint8 arrays (slices x 256 x 256), and label files
`{train,valid}-{abnormal,acl,meniscus}.csv` (rows `id,label`, no header) beside them.
MRNet's official test set is hidden, so its `valid` folder becomes our `test` split and
`train` is split by patient into train and val. One exam per patient; a patient id is the
exam id. The series files are used where they are (the readers read `.npy`); each one's
header is checked (3D uint8, 256 x 256 slices, as MRNet publishes them) without reading its
voxels, so a wrong file is named here rather than at ingest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from orthodiff.catalogs.datasets.common import catalog_frame, split_train
from orthodiff.catalogs.tasks import PLANES, get_task
from orthodiff.errors import OrthodiffError

LABEL_FILES = {"ABN": "abnormal", "ACL": "acl", "MEN": "meniscus"}
FOLDERS = {"train": "train", "valid": "test"}
SLICE_SHAPE = (256, 256)


def _check_series(path: Path) -> None:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:
        raise OrthodiffError(f"{path}: unreadable or truncated .npy ({type(err).__name__})") from None
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1:] != SLICE_SHAPE:
        raise OrthodiffError(
            f"{path}: {array.dtype} array of shape {array.shape}; MRNet series are uint8 (slices, 256, 256)"
        )


def _read_labels(path: Path) -> pd.Series:
    if not path.is_file():
        raise OrthodiffError(f"{path}: MRNet label file not found")
    try:
        table = pd.read_csv(path, header=None, names=["id", "label"], dtype=str)
    except Exception as err:
        raise OrthodiffError(f"{path}: unreadable label file ({err})") from err
    for row, (ident, label) in enumerate(zip(table["id"], table["label"])):
        if not str(ident).strip().isdigit():
            raise OrthodiffError(f"{path}: row {row}, column 'id', value {ident!r}: not an exam number")
        if str(label).strip() not in ("0", "1"):
            raise OrthodiffError(f"{path}: row {row}, column 'label', value {label!r}: label must be 0 or 1")
    ids = table["id"].str.strip().astype(int)
    if ids.duplicated().any():
        raise OrthodiffError(f"{path}: exam {int(ids[ids.duplicated()].iloc[0]):04d} listed twice")
    return pd.Series(table["label"].str.strip().astype(int).to_numpy(), index=ids.to_numpy())


def mrnet_catalog(root: str | Path, seed: int = 0, val: float = 0.06) -> pd.DataFrame:
    """Build a cohort catalog (task `mrnet`) from an MRNet directory."""
    root = Path(root)
    if not root.is_dir():
        raise OrthodiffError(f"{root}: MRNet directory not found")
    labels = get_task("mrnet").label_columns
    rows = []
    for folder, split in FOLDERS.items():
        table = pd.DataFrame(
            {abbr: _read_labels(root / f"{folder}-{name}.csv") for abbr, name in LABEL_FILES.items()}
        )
        if table.isna().any().any():
            exam = int(table.index[table.isna().any(axis=1)][0])
            raise OrthodiffError(f"{root}: exam {exam:04d} of {folder} lacks a label in some label file")
        for exam, exam_labels in table.iterrows():
            case_id = f"mrnet-{folder}-{exam:04d}"
            for plane in PLANES:
                path = root / folder / plane / f"{exam:04d}.npy"
                if not path.is_file():
                    raise OrthodiffError(f"{path}: series file of labelled exam {exam:04d} not found")
                _check_series(path)
                rows.append(
                    {
                        "series_id": f"{case_id}-{plane}-0",
                        "case_id": case_id,
                        "patient_id": case_id,
                        "task": "mrnet",
                        "joint": "knee",
                        "plane": plane,
                        "scan": 0,
                        "path": str(path.resolve()),
                        "mask_path": None,
                        "center": "stanford",
                        "vendor": "GE",
                        "field_strength": np.nan,
                        "slice_thickness": np.nan,
                        "split": split,
                        **{abbr: int(exam_labels[abbr]) for abbr in labels},
                    }
                )
        _reject_unlabelled(root / folder, set(table.index))
    return split_train(catalog_frame(rows), seed=seed, val=val)


def _reject_unlabelled(folder: Path, labelled: set[int]) -> None:
    for plane in PLANES:
        for path in sorted((folder / plane).glob("*.npy")):
            if not path.stem.isdigit() or int(path.stem) not in labelled:
                raise OrthodiffError(f"{path}: series without a row in the {folder.name} label files")
