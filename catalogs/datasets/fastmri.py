"""Catalog builder for fastMRI knee (NYU) with the fastMRI+ knee pathology annotations.

fastMRI: one HDF5 file per coronal volume (`file1000001.h5`) in folders such as
`knee_singlecoil_train/`, `knee_multicoil_val/`. Read here: `reconstruction_rss` (slices, 320,
320) float32, present in the single- and multi-coil train and val files (the emulated
single-coil `reconstruction_esc` exists in single-coil files only, and test/challenge files
carry no reconstruction, so they cannot be imported); the `acquisition` attribute (CORPD_FBK:
proton density, CORPDFS_FBK: proton density fat-suppressed); and the ISMRMRD XML header in
`ismrmrd_header`: voxel size = reconSpace fieldOfView_mm / matrixSize in plane, slice
thickness = its fieldOfView_mm z (fastMRI+'s DICOM export uses it as the slice spacing too:
no gap), field strength (nominal, to the nearest 0.5 T), vendor, TR, TE, flip angle. `kspace` is not read.

Geometry: the files keep no slice positions or orientation, only the voxel size. The image is
coronal; fastMRI+ flipped it up/down to show it as DICOM would, so rows are written to run from
inferior to superior. Which side is the patient's left and whether slices run anterior or
posterior are not recorded: the affine takes columns to run towards the right and slices
posterior (column x row), so left and right knees are not told apart.

fastMRI+ (`Annotations/knee.csv`: one row per bounding box, `file, slice, study_level, x, y,
width, height, label`; `knee_file_list.csv`: every reviewed file, no header): a reviewed file
is positive for a label when any of its rows names it (mapping in `datasets.toml`
`[fastmri_plus]`), negative otherwise; files nobody reviewed have no labels and are left out
(their names are returned in `df.attrs["unreviewed"]`). fastMRI's `train` folders become our
train and val (split by patient with `seed`, `val`); its `val` folders, the labelled held-out
set, become test. fastMRI gives no patient ids: each file is its own exam and patient.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pandas as pd

from orthodiff.catalogs.datasets.common import (
    affine_from, catalog_frame, convert, folder_of, need, relative, safe_name, split_train,
)
from orthodiff.catalogs.tasks import dataset_table, get_task
from orthodiff.errors import OrthodiffError

NS = {"m": "http://www.ismrm.org/ISMRMRD"}
ACQUISITIONS = {"CORPD_FBK": False, "CORPDFS_FBK": True}  # -> fat suppression
# RAS directions of a column step, a row step (inferior -> superior) and a slice step
DIRECTIONS = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def _split_of(path: Path) -> str:
    name = path.parent.name.lower()
    if "train" in name:
        return "train"
    if "val" in name:
        return "test"
    raise OrthodiffError(f"{path}: its folder {path.parent.name!r} names neither a fastMRI train nor val set "
                         "(test and challenge files carry no reconstruction)")


def _number(root, path: Path, *tags: str) -> float:
    node = root.find("/".join(f"m:{t}" for t in tags), NS)
    try:
        return float(node.text)
    except (AttributeError, TypeError, ValueError):
        raise OrthodiffError(f"{path}: ismrmrd_header has no number at {'/'.join(tags)}") from None


def read_facts(path: Path, with_data: bool = False) -> tuple[np.ndarray | None, dict]:
    """(reconstruction_rss (slices, rows, columns) float32 if `with_data`, acquisition facts)
    of one fastMRI file, checked against its header."""
    h5py = need("h5py", "fastMRI")
    try:
        with h5py.File(path, "r") as f:
            if "reconstruction_rss" not in f:
                raise OrthodiffError(f"{path}: no reconstruction_rss (fastMRI test and challenge files have none)")
            recon = f["reconstruction_rss"]
            dtype, shape = recon.dtype, recon.shape
            data = recon[()].astype(np.float32) if with_data and dtype.kind == "f" and len(shape) == 3 else None
            acquisition = f.attrs.get("acquisition")
            header = f["ismrmrd_header"][()] if "ismrmrd_header" in f else None
    except OSError as err:
        raise OrthodiffError(f"{path}: unreadable or truncated HDF5 ({err})") from None
    acquisition = acquisition.decode() if isinstance(acquisition, bytes) else acquisition
    if acquisition not in ACQUISITIONS:
        raise OrthodiffError(f"{path}: acquisition {acquisition!r} is not a fastMRI knee one ({', '.join(ACQUISITIONS)})")
    if header is None:
        raise OrthodiffError(f"{path}: no ismrmrd_header")
    if dtype.kind != "f" or len(shape) != 3:
        raise OrthodiffError(f"{path}: reconstruction_rss is {dtype} of shape {shape}; expected float (slices, rows, columns)")
    try:
        root = ElementTree.fromstring(header)
    except ElementTree.ParseError as err:
        raise OrthodiffError(f"{path}: ismrmrd_header is not XML ({err})") from None
    recon_space = ("encoding", "reconSpace")
    matrix = [_number(root, path, *recon_space, "matrixSize", axis) for axis in ("y", "x")]
    fov = [_number(root, path, *recon_space, "fieldOfView_mm", axis) for axis in ("z", "y", "x")]
    if tuple(shape[1:]) != tuple(int(m) for m in matrix):
        raise OrthodiffError(f"{path}: reconstruction_rss slices are {shape[1:]} but the header's reconSpace matrix is "
                             f"{int(matrix[0])} x {int(matrix[1])}")
    vendor = root.find("m:acquisitionSystemInformation/m:systemVendor", NS)
    facts = {
        "slices": int(shape[0]),
        "spacing": (fov[0], fov[1] / matrix[0], fov[2] / matrix[1]),
        "fat_suppression": ACQUISITIONS[acquisition],
        # nominal field (nearest 0.5 T): Siemens reports a 3 T magnet as 2.89362
        "field_strength": round(2 * _number(root, path, "acquisitionSystemInformation", "systemFieldStrength_T")) / 2,
        "vendor": vendor.text.strip() if vendor is not None and vendor.text else "",
        "repetition_time": _number(root, path, "sequenceParameters", "TR"),
        "echo_time": _number(root, path, "sequenceParameters", "TE"),
        "flip_angle": _number(root, path, "sequenceParameters", "flipAngle_deg"),
    }
    return data, facts


def _key(text: str) -> str:
    return " ".join(str(text).split()).casefold()


def read_annotations(folder: Path) -> tuple[dict[str, set[str]], pd.Series]:
    """({reviewed file: labels found}, the last annotated slice per file) from fastMRI+ `Annotations/`."""
    listing, boxes = folder / "knee_file_list.csv", folder / "knee.csv"
    for path in (listing, boxes):
        if not path.is_file():
            raise OrthodiffError(f"{path}: fastMRI+ annotation file not found")
    files = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    seen: set[str] = set()
    for i, name in enumerate(files):
        if name in seen:
            raise OrthodiffError(f"{listing}: row {i}, value {name!r}: listed twice")
        seen.add(name)
    mapping = {_key(k): v for k, v in dataset_table("fastmri_plus").items()}
    table = pd.read_csv(boxes, dtype=str, keep_default_na=False)
    for column in ("file", "slice", "label"):
        if column not in table.columns:
            raise OrthodiffError(f"{boxes}: missing column {column!r}")
    found: dict[str, set[str]] = {name: set() for name in files}
    for i, (name, label) in enumerate(zip(table["file"].str.strip(), table["label"])):
        if name not in found:
            raise OrthodiffError(f"{boxes}: row {i}, column 'file', value {name!r}: not in {listing.name} (no reviewed exam)")
        if _key(label) not in mapping:
            raise OrthodiffError(f"{boxes}: row {i}, column 'label', value {label!r}: no fastmri label maps it "
                                 "(datasets.toml [fastmri_plus])")
        found[name].add(mapping[_key(label)])
    slices = pd.to_numeric(table["slice"], errors="coerce")
    if slices.isna().any():
        i = int(np.flatnonzero(slices.isna())[0])
        raise OrthodiffError(f"{boxes}: row {i}, column 'slice', value {table.at[i, 'slice']!r}: not a slice number")
    return found, slices.groupby(table["file"].str.strip()).max()


def fastmri_catalog(root: str | Path, out: str | Path, annotations: str | Path, seed: int = 0,
                    val: float = 0.06) -> pd.DataFrame:
    """Convert the reviewed fastMRI knee files under `root` into NIfTI series beside catalog
    `out`; returns the catalog (task `fastmri`), written by `common.finish`."""
    root, annotations = Path(root), Path(annotations)
    if not root.is_dir():
        raise OrthodiffError(f"{root}: fastMRI directory not found")
    found, last_slice = read_annotations(annotations)
    sources: dict[str, Path] = {}
    for path in sorted(root.rglob("*.h5")):
        if path.stem in sources:
            raise OrthodiffError(f"{path}: the same fastMRI file is also at {sources[path.stem]} "
                                 "(single- and multi-coil hold the same volumes: import one of them)")
        sources[path.stem] = path
    if not sources:
        raise OrthodiffError(f"{root}: no fastMRI .h5 files")
    labels = get_task("fastmri").label_columns
    folder, rows, unreviewed = folder_of(out), [], []
    for stem, path in sources.items():
        if stem not in found:
            unreviewed.append(stem)
            continue
        split = _split_of(path)
        _, facts = read_facts(path)

        def make(path=path, spacing=facts["spacing"]):
            data = read_facts(path, with_data=True)[0]
            return data, affine_from(DIRECTIONS, spacing, data.shape)

        target = convert(folder / "images" / f"{safe_name(stem, str(path))}.nii.gz", make)
        if stem in last_slice and last_slice[stem] >= facts["slices"]:
            raise OrthodiffError(f"{annotations / 'knee.csv'}: file {stem} has a box on slice {int(last_slice[stem])} "
                                 f"but {path} has {facts['slices']} slices")
        case = f"fastmri-{stem}"
        rows.append({
            "series_id": f"{case}-coronal-0", "case_id": case, "patient_id": case, "task": "fastmri",
            "joint": "knee", "plane": "coronal", "scan": 0, "path": relative(target, out), "mask_path": None,
            "center": "nyu", "vendor": facts["vendor"], "field_strength": facts["field_strength"],
            "slice_thickness": facts["spacing"][0], "split": split,
            "pixel_spacing": facts["spacing"][1], "echo_time": facts["echo_time"],
            "repetition_time": facts["repetition_time"], "flip_angle": facts["flip_angle"],
            "fat_suppression": facts["fat_suppression"],
            **{label: int(label in found[stem]) for label in labels},
        })
    if not rows:
        raise OrthodiffError(f"{root}: none of its {len(sources)} fastMRI files is in {annotations / 'knee_file_list.csv'}")
    df = split_train(catalog_frame(rows), seed=seed, val=val)
    df.attrs["unreviewed"] = unreviewed
    return df

