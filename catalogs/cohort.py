"""Cohort catalogs: one Parquet row per series (one scan of one plane of one exam).

Columns: `series_id`, `case_id` (exam), `patient_id`, `task`, `joint`, `plane`, `scan`,
`path`, `mask_path`, `center`, `vendor`, `field_strength`, `slice_thickness`, `split`, one
0/1 column per label of the task (none at all in an unlabelled cohort for pretraining), the EHR columns of `ehr.toml`, and optionally nested
label-efficiency subsets `subset_<N>` (booleans), a quantitative T2 map `t2_path` (NIfTI in
ms on the series grid, empty where none), acquisition columns (`echo_time`,
`repetition_time`, `flip_angle`, `fat_suppression`, `pixel_spacing`; `catalog from-dicom` adds
`slice_spacing`, `laterality`, `slices`, `rows`, `columns`) and synthetic truth
(`true_thickness_<structure>`, mm). Relative paths are relative to the
catalog file's directory, so a cohort folder can be moved as a whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from orthodiff.catalogs.tasks import PLANES, ehr_schema, get_task, joints, tasks
from orthodiff.errors import OrthodiffError
from orthodiff.files import atomic_write, unsafe_reason

SPLITS = ("train", "val", "test")
ID_COLUMNS = ["series_id", "case_id", "patient_id"]
REQUIRED_COLUMNS = [
    *ID_COLUMNS,
    "task",
    "joint",
    "plane",
    "scan",
    "path",
    "mask_path",
    "center",
    "vendor",
    "field_strength",
    "slice_thickness",
    "split",
]
# what the heads read of a catalog (they never open the image files)
HEADS_COLUMNS = [*ID_COLUMNS, "task", "joint", "plane", "scan", "split"]
SUBSET_PREFIX = "subset_"


def read_catalog(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise OrthodiffError(f"{path}: catalog file not found")
    try:
        df = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for non-Parquet input
        raise OrthodiffError(f"{path}: not a readable Parquet catalog ({err})") from err
    check_names(df)
    return df


def write_catalog(df: pd.DataFrame, path: str | Path) -> Path:
    """Write atomically so a crash never leaves half a catalog."""
    return atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def resolve_path(catalog_path: str | Path, value: str) -> Path:
    """A catalog `path`/`mask_path` value as a filesystem path."""
    p = Path(value)
    return p if p.is_absolute() else Path(catalog_path).resolve().parent / p


def label_columns(df: pd.DataFrame) -> list[str]:
    """The label columns of the catalog's (single) task; an unlabelled catalog is an error here."""
    names = df["task"].dropna().unique()
    if len(names) != 1:
        raise OrthodiffError(f"catalog must hold exactly one task, found {sorted(names)}")
    columns = get_task(str(names[0])).label_columns
    if not is_labelled(df):
        raise OrthodiffError(f"the catalog has no label columns {columns} (an unlabelled cohort: fine for ingest, "
                             "pretrain and extract); add labels, e.g. with `catalog from-dicom --labels`")
    return columns


def is_labelled(df: pd.DataFrame) -> bool:
    """Whether the catalog carries its task's label columns (an unlabelled cohort, as
    `catalog from-dicom` writes without `--labels`, has none of them)."""
    return any(c in df.columns for task in df["task"].dropna().unique() for c in get_task(str(task)).label_columns)


def subset_sizes(df: pd.DataFrame) -> list[int]:
    return sorted(int(c[len(SUBSET_PREFIX) :]) for c in df.columns if c.startswith(SUBSET_PREFIX))


def plain(value):
    """A cell as Python shows it to a user: -5.0, not np.float64(-5.0)."""
    return value.item() if isinstance(value, np.generic) else value


def check_names(df: pd.DataFrame, columns=ID_COLUMNS) -> None:
    """Raise naming the first row whose id in `columns` cannot be a file name (`safe_name`):
    series ids name the files written per series, so unsafe ones are refused on reading."""
    for column in [c for c in columns if c in df.columns]:
        for i, value in enumerate(df[column].tolist()):
            if value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip():
                continue  # missing ids are reported by `validate_catalog`
            why = unsafe_reason(value)
            if why:
                raise _fail(i, column, value, f"cannot name a file ({why}); use letters, digits, '-', '_' and '.'")


def _fail(row: int, column: str, value, reason: str) -> OrthodiffError:
    return OrthodiffError(f"row {row}, column {column!r}, value {plain(value)!r}: {reason}")


def validate_catalog(df: pd.DataFrame, catalog_path: str | Path, check_files: bool = True,
                     columns: list[str] = REQUIRED_COLUMNS) -> None:
    """Raise OrthodiffError naming row, column and value of the first problem found: ids,
    splits and patient leakage across them, labels 0/1, EHR ranges, and (`check_files`) files.

    The one check every command that reads a catalog runs; `columns` are those it needs
    (the heads need no image paths). Row numbers are 0-based positions in the Parquet table.
    """
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise OrthodiffError(f"{catalog_path}: missing columns {missing}")
    df = df.reset_index(drop=True)

    known_tasks, known_joints = tasks(), joints()
    for column, allowed in (("joint", known_joints), ("task", list(known_tasks)), ("plane", PLANES)):
        bad = ~df[column].isin(allowed)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _fail(i, column, df.at[i, column], f"unknown {column}; expected one of {list(allowed)}")
    mismatch = df["joint"] != df["task"].map(lambda t: known_tasks[t].joint)
    if mismatch.any():
        i = int(np.flatnonzero(mismatch)[0])
        raise _fail(i, "joint", df.at[i, "joint"], f"task {df.at[i, 'task']!r} belongs to another joint")

    for column in [c for c in (*ID_COLUMNS, "path") if c in columns]:
        blank = df[column].isna() | (df[column].astype(str).str.strip() == "")
        if blank.any():
            i = int(np.flatnonzero(blank)[0])
            raise _fail(i, column, df.at[i, column], "empty value")
    check_names(df, [c for c in ID_COLUMNS if c in columns])
    dup = df.duplicated("series_id", keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise _fail(i, "series_id", df.at[i, "series_id"], "duplicate series_id")
    dup = df.duplicated(["case_id", "plane", "scan"], keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        key = (df.at[i, "case_id"], df.at[i, "plane"], int(df.at[i, "scan"]))
        raise _fail(i, "scan", int(df.at[i, "scan"]), f"duplicate (case, plane, scan) {key}")
    owners = df.groupby("case_id")["patient_id"].nunique()
    if (owners > 1).any():
        case = owners[owners > 1].index[0]
        i = int(np.flatnonzero(df["case_id"] == case)[1])
        raise _fail(i, "patient_id", df.at[i, "patient_id"], f"case {case!r} belongs to two patients")

    bad = ~df["split"].isin(SPLITS)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _fail(i, "split", df.at[i, "split"], f"unknown split; expected one of {list(SPLITS)}")
    splits_per_patient = df.groupby("patient_id")["split"].nunique()
    if (splits_per_patient > 1).any():
        patient = splits_per_patient[splits_per_patient > 1].index[0]
        rows = np.flatnonzero(df["patient_id"] == patient)
        first = df.at[int(rows[0]), "split"]
        i = int(next(r for r in rows if df.at[int(r), "split"] != first))
        raise _fail(i, "split", df.at[i, "split"], f"patient {patient!r} is also in split {first!r} (leakage)")

    for name in df["task"].unique() if is_labelled(df) else ():  # an unlabelled cohort has no label column at all
        rows = np.flatnonzero(df["task"] == name)
        for column in get_task(name).label_columns:
            if column not in df.columns:
                raise OrthodiffError(f"{catalog_path}: missing label column {column!r} of task {name!r}")
            values = df[column].iloc[rows]
            numbers = pd.to_numeric(values, errors="coerce")
            bad = ~numbers.isin([0, 1])  # names the first value that is no 0/1 at all ("yes", 2, NaN)
            if not bad.any() and not pd.api.types.is_numeric_dtype(values):
                bad = values.notna()  # "0"/"1" as text: the column itself is the problem
            if bad.any():
                i = int(rows[np.flatnonzero(bad.to_numpy())[0]])
                raise _fail(i, column, df.at[i, column], "label must be 0 or 1")

    _validate_ehr(df)

    if check_files:
        for column in ("path", "mask_path", "t2_path"):
            for i, value in (df[column].items() if column in df.columns else ()):
                if isinstance(value, str) and value and not resolve_path(catalog_path, value).exists():
                    raise _fail(int(i), column, value, "file not found")


def _validate_ehr(df: pd.DataFrame) -> None:
    schema = ehr_schema()
    for column, spec in schema.numeric.items():
        if column not in df.columns:
            continue
        values = pd.to_numeric(df[column], errors="coerce")
        garbage = values.isna() & df[column].notna()
        out = values.notna() & ~values.between(spec["min"], spec["max"])
        for mask, reason in ((garbage, "not a number"), (out, f"outside [{spec['min']}, {spec['max']}] {spec['unit']}")):
            if mask.any():
                i = int(np.flatnonzero(mask)[0])
                raise _fail(i, column, df[column].iloc[i], reason)


def split_catalog(
    df: pd.DataFrame, seed: int = 0, val: float = 0.06, test: float = 0.12, stratify: str | None = None
) -> pd.DataFrame:
    """Assign train/val/test by patient, so no patient's exams straddle two splits. With
    `stratify` (a catalog column, e.g. `sex` as the MSK evaluation paper does), each value's
    patients are split by the same fractions (a patient's first value counts; missing is a
    value of its own)."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise OrthodiffError(f"--val {val} and --test {test} must be fractions summing below 1")
    if stratify and stratify not in df.columns:
        raise OrthodiffError(f"catalog has no column {stratify!r} to stratify the split by; pass --stratify '' for none")
    patients = np.sort(df["patient_id"].unique())
    strata = (df.groupby("patient_id")[stratify].first().reindex(patients).astype(object).fillna("").astype(str).to_numpy(object) if stratify
              else np.zeros(len(patients), str))
    rng = np.random.default_rng(seed)
    split = np.full(len(patients), "train", dtype=object)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        order = members[rng.permutation(len(members))]
        n_val, n_test = round(val * len(members)), round(test * len(members))
        split[order[:n_test]] = "test"
        split[order[n_test : n_test + n_val]] = "val"
    out = df.copy()
    out["split"] = out["patient_id"].map(dict(zip(patients, split))).astype(str)
    return out


def split_fingerprint(df: pd.DataFrame) -> str:
    """12 hex digits that change whenever a series moves to another split: recorded by every
    heads run and configuration, checked before they are reused. Subsets and other columns
    do not count, so adding `subset_<N>` columns to the same split keeps it."""
    import hashlib

    rows = df[["series_id", "split"]].astype(str).sort_values("series_id").to_csv(index=False)
    return hashlib.sha256(rows.encode()).hexdigest()[:12]


def add_subsets(df: pd.DataFrame, sizes: Iterable[int], seed: int = 0) -> pd.DataFrame:
    """Add nested patient-level label-efficiency subsets of the training split.

    One random order of training patients is drawn; `subset_<N>` marks the first N patients
    of it, so every subset contains the smaller ones.
    """
    sizes = sorted(set(int(n) for n in sizes))
    if not sizes or sizes[0] <= 0:
        raise OrthodiffError(f"subset sizes must be positive integers, got {sizes}")
    patients = np.sort(df.loc[df["split"] == "train", "patient_id"].unique())
    if sizes[-1] > len(patients):
        raise OrthodiffError(
            f"subset size {sizes[-1]} exceeds the {len(patients)} training patients of the catalog"
        )
    rank = dict(zip(patients[np.random.default_rng(seed).permutation(len(patients))], range(len(patients))))
    patient_rank = df["patient_id"].map(rank)
    out = df.drop(columns=[c for c in df.columns if c.startswith(SUBSET_PREFIX)])
    for n in sizes:
        out[f"{SUBSET_PREFIX}{n}"] = (patient_rank < n).fillna(False).astype(bool)
    return out


def cohort_summary(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Tables describing a cohort, counted per exam (labels and acquisition are per exam).

    `labels`: prevalence of each label overall and in each split (columns named by split); `sites`: exams per center and
    field strength; `planes`: series per plane and scan (repeat scans, missing planes).
    """
    exams = df.drop_duplicates("case_id")
    labels = label_columns(df)
    prevalence = pd.DataFrame(
        {"exams": exams[labels].notna().sum(), "positive": exams[labels].sum(), "prevalence": exams[labels].mean()}
    )
    for split in SPLITS:
        part = exams[exams["split"] == split]
        if len(part):
            prevalence[split] = part[labels].mean()
    prevalence.index.name = "label"
    sites = (
        exams.groupby(["center", "field_strength"], observed=True).size().unstack("field_strength", fill_value=0)
    )
    sites.columns = [f"{fs:g}T" for fs in sites.columns]
    sites["exams"] = sites.sum(axis=1)
    planes = df.groupby(["plane", "scan"], observed=True).size().unstack("scan", fill_value=0)
    planes.columns = [f"scan_{s}" for s in planes.columns]
    planes["exams_missing"] = [
        exams["case_id"].nunique() - df.loc[df["plane"] == p, "case_id"].nunique() for p in planes.index
    ]
    return {"labels": prevalence.reset_index(), "sites": sites.reset_index(), "planes": planes.reset_index()}
