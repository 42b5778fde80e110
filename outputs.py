"""Run outputs written atomically: tables (Parquet + CSV), JSON, PNG figures and NIfTI masks.

Every command that leaves results in a folder writes them through these, so a reader (or a
resumed job) never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from orthodiff.errors import OrthodiffError
from orthodiff.files import atomic_write


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """``path``.parquet and ``path``.csv (tidy, no index); returns the Parquet path."""
    path = Path(path)
    atomic_write(path.with_suffix(".csv"), lambda tmp: df.to_csv(tmp, index=False))
    return atomic_write(path.with_suffix(".parquet"), lambda tmp: df.to_parquet(tmp, index=False))


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise OrthodiffError(f"{path}: result table not found")
    return pd.read_parquet(path)


def write_json(obj, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


PATH_KEYS = ("store", "catalog", "sweep", "checkpoint", "prompt_masks", "catalogs", "mix")  # recorded paths of inputs


def _paths(record: dict, change) -> dict:
    def one(value):
        return (change(value) or value) if isinstance(value, str) and value and "://" not in value else value

    out = dict(record)
    for key, value in record.items():
        if key in PATH_KEYS:
            out[key] = [one(v) for v in value] if isinstance(value, list | tuple) else one(value)
        elif key == "config" and isinstance(value, dict):
            out[key] = _paths(value, change)
    return out


def portable(record: dict, folder: str | Path) -> dict:
    """`record` with its input paths (`PATH_KEYS`, one or a list, also inside `config`) relative to `folder`,
    the folder it is written in: a shared run folder carries no home directory or user name,
    and moves with its inputs. URLs and names that are no local path stay as they are."""
    base = Path(folder).resolve()
    return _paths(record, lambda value: Path(value).exists() and Path(os.path.relpath(Path(value).resolve(), base)).as_posix())


def resolved(record: dict, folder: str | Path) -> dict:
    """`record` read from a file in `folder`, with its relative input paths made usable from
    anywhere (absolute paths of older runs, and names that are no path there, stay as they are)."""
    return _paths(record, lambda value: not Path(value).is_absolute() and (Path(folder) / value).exists()
                  and str((Path(folder) / value).resolve()))


def write_run(record: dict, folder: str | Path) -> Path:
    """`folder`/run.json: the run's record, input paths relative to the folder (`portable`)."""
    return write_json(portable(record, folder), Path(folder) / "run.json")


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def atomic_savefig(fig, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def read_run(run_dir: str | Path, kinds: tuple[str, ...], what: str) -> dict:
    """The ``run.json`` record of ``run_dir``, checked to be one of ``kinds`` (e.g. ("sweep",));
    anything else (no record, unreadable JSON, another kind) is an OrthodiffError saying the
    folder is not ``what`` (e.g. "a sweep directory")."""
    run_file = Path(run_dir) / "run.json"
    try:
        run = json.loads(run_file.read_text())
    except (OSError, json.JSONDecodeError):
        run = None
    if not isinstance(run, dict) or run.get("kind") not in kinds:
        found = (f"its run.json is of kind {run.get('kind')!r}" if isinstance(run, dict)
                 else "no readable run.json" if run is None else "a malformed run.json")
        raise OrthodiffError(f"{run_dir}: not {what} ({found}; expected kind {' or '.join(kinds)})")
    return resolved(run, run_dir)


def write_mask(path: Path, mask, affine) -> Path:
    """(slices, rows, columns) labels as a uint8 NIfTI with its series' affine, atomically."""
    import nibabel as nib

    image = nib.Nifti1Image(np.ascontiguousarray(np.asarray(mask, np.uint8).transpose(2, 1, 0)), affine)
    image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(image, str(tmp))
    tmp.replace(path)
    return path
