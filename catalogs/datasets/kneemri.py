"""Catalog builder for the public KneeMRI dataset (Stajduhar et al. 2017, Clinical Hospital
Centre Rijeka: sagittal PD fat-suppressed volumes from a 1.5 T Siemens Avanto, one ACL grade
each).

Layout as its users unpack it: `metadata.csv` (header `examId, seriesNo, aclDiagnosis, kneeLR,
roiX, roiY, roiZ, roiWidth, roiHeight, roiDepth, volumeFilename`; `aclDiagnosis` 0 healthy,
1 partially injured, 2 completely ruptured) and the volumes, one pickled numpy array
(slices, rows, columns) per `volumeFilename` (`<examId>-<seriesNo>.pck`), in folders
`vol01/` ... (any folder under the root is searched).

The pickles are data we did not write, and unpickling runs whatever callable a pickle names.
They are therefore read by `NumpyUnpickler`, a `pickle.Unpickler` whose `find_class` resolves
only the numpy globals an ndarray's pickle needs and refuses every other one before anything
is called; the result must be a numeric 3D ndarray. The module-level convenience loader of the
`pickle` module is not used (it cannot be restricted; the project's checks also flag it).
Each volume is converted once to `.npy` (no geometry: the pickles carry no voxel size) beside
the catalog. KneeMRI has no official split and no patient ids: an exam is a patient, and
exams are split by `catalog split`'s rule with `seed`, `val`, `test`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd

from orthodiff.catalogs.datasets.common import catalog_frame, convert, folder_of, relative, safe_name, split_train
from orthodiff.errors import OrthodiffError

COLUMNS = ["examId", "seriesNo", "aclDiagnosis", "kneeLR", "volumeFilename"]
# (module, name) of every global a numpy array's pickle may name: array reconstruction
# (`numpy.core` before numpy 2, `numpy._core` since), the ndarray and dtype classes, the
# buffer constructor of protocol-5 pickles, and `_codecs.encode`, by which Python 3 writes
# bytes in protocol 2 (it only converts text to bytes; torch's weights-only loader allows it too).
NUMPY_GLOBALS = frozenset(
    (module, name)
    for core in ("numpy.core", "numpy._core")
    for module, name in ((f"{core}.multiarray", "_reconstruct"), (f"{core}.numeric", "_frombuffer"))
) | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside `NUMPY_GLOBALS`."""


class NumpyUnpickler(pickle.Unpickler):
    """Resolves only `NUMPY_GLOBALS`; any other global (os.system, builtins.eval, ...) raises
    `RefusedGlobal` when the pickle names it, before it could be called."""

    def find_class(self, module: str, name: str):
        if (module, name) not in NUMPY_GLOBALS:
            raise RefusedGlobal(f"global {module}.{name} is not allowed (numpy arrays only)")
        return super().find_class(module, name)


def read_volume(path: str | Path) -> np.ndarray:
    """A KneeMRI volume (slices, rows, columns) from its pickle, numpy arrays only."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            # latin1: pickles written by Python 2 hold the array bytes as 8-bit str
            value = NumpyUnpickler(handle, encoding="latin1").load()
    except RefusedGlobal as err:
        raise OrthodiffError(f"{path}: refused, not a pickled numpy array ({err})") from None
    except Exception as err:
        raise OrthodiffError(f"{path}: unreadable or truncated pickle ({type(err).__name__}: {err})") from None
    if not isinstance(value, np.ndarray):
        raise OrthodiffError(f"{path}: the pickle holds a {type(value).__name__}, not a numpy array")
    if value.dtype.kind not in "uif" or value.ndim != 3:
        raise OrthodiffError(f"{path}: {value.dtype} array of shape {value.shape}; expected a numeric 3D volume")
    return value


def _read_metadata(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise OrthodiffError(f"{path}: KneeMRI metadata file not found")
    try:
        table = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except Exception as err:
        raise OrthodiffError(f"{path}: unreadable metadata file ({err})") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise OrthodiffError(f"{path}: missing columns {missing}")
    for column in ("examId", "seriesNo", "aclDiagnosis", "kneeLR"):
        bad = ~table[column].fillna("").str.strip().str.fullmatch(r"\d+")
        if column == "aclDiagnosis":
            bad |= ~table[column].fillna("").str.strip().isin(["0", "1", "2"])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise OrthodiffError(f"{path}: row {i}, column {column!r}, value {table.at[i, column]!r}: "
                                 + ("ACL grade must be 0, 1 or 2" if column == "aclDiagnosis" else "not an integer"))
    dup = table["volumeFilename"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise OrthodiffError(f"{path}: row {i}, column 'volumeFilename', value {table.at[i, 'volumeFilename']!r}: listed twice")
    for column in ("examId", "seriesNo", "aclDiagnosis", "kneeLR"):
        table[column] = table[column].str.strip().astype(int)
    grades = table.groupby("examId")["aclDiagnosis"].nunique()
    if (grades > 1).any():
        exam = int(grades[grades > 1].index[0])
        rows = np.flatnonzero(table["examId"] == exam).tolist()
        raise OrthodiffError(f"{path}: rows {rows}: exam {exam} labelled twice with different ACL grades")
    return table


def kneemri_catalog(root: str | Path, out: str | Path, seed: int = 0, val: float = 0.06,
                    test: float = 0.12) -> pd.DataFrame:
    """Convert a KneeMRI folder into `.npy` series beside catalog `out`; returns the catalog
    (task `kneemri`, not yet written: `common.finish` writes it)."""
    root = Path(root)
    if not root.is_dir():
        raise OrthodiffError(f"{root}: KneeMRI directory not found")
    meta_path = root / "metadata.csv"
    table = _read_metadata(meta_path)
    volumes: dict[str, Path] = {}
    for path in sorted(root.rglob("*.pck")):
        if path.name in volumes:
            raise OrthodiffError(f"{path}: volume file also at {volumes[path.name]}")
        volumes[path.name] = path
    listed = set(table["volumeFilename"].str.strip())
    stray = sorted(set(volumes) - listed)
    if stray:
        raise OrthodiffError(f"{volumes[stray[0]]}: volume without a row in {meta_path}")
    folder = folder_of(out)
    rows = []
    for i, row in table.iterrows():
        name = str(row["volumeFilename"]).strip()
        source = volumes.get(name)
        if source is None:
            raise OrthodiffError(f"{meta_path}: row {i}, column 'volumeFilename', value {name!r}: file not found under {root}")
        stem = safe_name(Path(name).stem, f"{meta_path}: row {i}")
        target = convert(folder / "images" / f"{stem}.npy", lambda source=source: (read_volume(source), None))
        exam = f"kneemri-{row['examId']}"
        grade = int(row["aclDiagnosis"])
        rows.append({
            "series_id": f"kneemri-{stem}", "case_id": exam, "patient_id": exam, "task": "kneemri",
            "joint": "knee", "plane": "sagittal", "scan": 0, "path": relative(target, out),
            "mask_path": None, "center": "rijeka", "vendor": "Siemens", "field_strength": 1.5,
            "slice_thickness": np.nan, "split": "train", "fat_suppression": True,
            "ACL": int(grade >= 1), "ACL_RUPTURE": int(grade == 2), "acl_grade": grade,
            "knee_lr": int(row["kneeLR"]),
        })
    df = catalog_frame(rows)
    df["scan"] = df.groupby("case_id").cumcount()
    return split_train(df, seed=seed, val=val, test=test)
