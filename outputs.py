"""Run outputs written atomically: tables (Parquet + CSV), JSON, PNG figures and NIfTI masks.

Every command that leaves results in a folder writes them through these, so a reader (or a
resumed job) never sees half a file.
"""

from __future__ import annotations

import json
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
    return run


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
