"""What every public-dataset importer shares: catalog rows, safe file names, atomic and
resumable conversion of a source volume into a file the series readers read, and the
optional packages they need.

A converted series is written once, atomically, under the catalog's folder; a rerun finds it
and skips the conversion (the file exists only when it is complete), so an interrupted import
reruns and finishes. Catalog paths are relative to the catalog file's folder.
"""

from __future__ import annotations

import gzip
import importlib
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from orthodiff.catalogs.cohort import split_catalog, validate_catalog, write_catalog
from orthodiff.catalogs.tasks import ehr_schema, structures
from orthodiff.errors import OrthodiffError
from orthodiff.files import atomic_write

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def need(module: str, dataset: str):
    """Import an optional package, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise OrthodiffError(
            f"{dataset} import needs the Python package {module!r}: pip install 'orthodiff[datasets]'"
        ) from None


def safe_name(value: str, where: str) -> str:
    """A dataset id as a file-name stem; anything but letters, digits, `_`, `.`, `-` is refused."""
    text = str(value).strip()
    if not _SAFE.fullmatch(text) or ".." in text:
        raise OrthodiffError(f"{where}: id {text!r} cannot name a file (letters, digits, '_', '.', '-' only)")
    return text


def folder_of(out: str | Path) -> Path:
    """Where an importer writes the converted files of catalog `out`: `<out without suffix>/`."""
    out = Path(out)
    return out.parent / out.name.split(".")[0]


def relative(target: Path, out: str | Path) -> str:
    """`target` as a catalog path: relative to the catalog file's folder."""
    return Path(target).resolve().relative_to(Path(out).resolve().parent).as_posix()


def convert(target: Path, make: Callable[[], tuple[np.ndarray, np.ndarray | None]]) -> Path:
    """Write `make()`'s (slices, rows, columns) array to `target` unless it is there already.

    `.nii.gz` targets get the NIfTI affine that `make` returns (it maps column, row, slice
    indices to RAS mm, as `readers.read_series` expects); `.npy` targets carry no geometry.
    """
    if target.is_file():
        return target
    data, affine = make()
    if target.name.endswith(".nii.gz"):
        import nibabel as nib

        image = nib.Nifti1Image(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)), affine)
        image.header.set_xyzt_units("mm")
        payload = gzip.compress(image.to_bytes(), compresslevel=1)
        atomic_write(target, lambda tmp: Path(tmp).write_bytes(payload))
    elif target.suffix == ".npy":
        def save(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, np.ascontiguousarray(data), allow_pickle=False)

        atomic_write(target, save)
    else:
        raise ValueError(f"unsupported target {target}")
    return target


def affine_from(directions: np.ndarray, spacing: tuple[float, float, float], shape: tuple[int, int, int]) -> np.ndarray:
    """NIfTI affine of a (slices, rows, columns) array centred on the origin.

    `directions` holds the RAS unit vectors of a column step, a row step and a slice step as
    its rows; `spacing` is (slice, row, column) in mm.
    """
    directions = np.asarray(directions, dtype=float)
    step = directions * np.array([spacing[2], spacing[1], spacing[0]])[:, None]
    out = np.eye(4)
    out[:3, :3] = step.T
    out[:3, 3] = -(out[:3, :3] @ ((np.array([shape[2], shape[1], shape[0]]) - 1) / 2))
    return out


def knee_values(abbrs: str) -> list[int]:
    """The knee structure values (`structures.toml`) of `+`-joined abbreviations."""
    known = {s.abbr: s.value for s in structures("knee").structures}
    return [known[a] for a in abbrs.split("+")]


def catalog_frame(rows: list[dict]) -> pd.DataFrame:
    """Catalog rows plus the EHR columns, all missing (no public knee dataset ships them)."""
    df = pd.DataFrame(rows)
    schema = ehr_schema()
    for column in schema.numeric:
        df[column] = np.nan
    for column in schema.categorical:
        df[column] = pd.Series([None] * len(df), dtype=object)
    return df


def split_train(df: pd.DataFrame, seed: int, val: float, test: float = 0.0) -> pd.DataFrame:
    """Split the rows marked `train` into train/val(/test) by patient; other splits stay."""
    df = df.copy()
    train = df["split"] == "train"
    if train.any():
        df.loc[train, "split"] = split_catalog(df[train], seed=seed, val=val, test=test)["split"]
    return df


def finish(df: pd.DataFrame, out: str | Path) -> pd.DataFrame:
    """Validate the catalog against its files and write it atomically (the last step, so a
    catalog exists only once every series it names does)."""
    if df.empty:
        raise OrthodiffError(f"{out}: no series found to import")
    validate_catalog(df, out)
    write_catalog(df, out)
    return df
