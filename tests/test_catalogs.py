"""Task catalogs, cohort catalog validation/splitting, and the MRNet importer."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from orthodiff.catalogs import ehr_schema, get_task, structures, tasks
from orthodiff.catalogs.cohort import (
    add_subsets,
    cohort_summary,
    read_catalog,
    split_catalog,
    validate_catalog,
    write_catalog,
)
from orthodiff.catalogs.mrnet import mrnet_catalog
from orthodiff.errors import OrthodiffError


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orthodiff", *args], capture_output=True, text=True, timeout=120
    )


def make_catalog(tmp_path, n_patients: int = 10) -> pd.DataFrame:
    """A small valid knee catalog whose series files exist (empty placeholders)."""
    rows = []
    for p in range(n_patients):
        case = f"P{p:03d}-1"
        for plane in ("sagittal", "coronal", "axial"):
            series = f"{case}-{plane}-0"
            (tmp_path / f"{series}.nii").write_bytes(b"")
            rows.append(
                {
                    "series_id": series, "case_id": case, "patient_id": f"P{p:03d}",
                    "task": "knee", "joint": "knee", "plane": plane, "scan": 0,
                    "path": f"{series}.nii", "mask_path": None, "center": "A", "vendor": "GE",
                    "field_strength": 3.0, "slice_thickness": 3.5, "split": "train",
                    **{label: p % 2 for label in get_task("knee").label_columns},
                    "age": 20.0 + p % 60, "height": 175.0, "weight": np.nan,
                    "sex": "M", "athlete": None, "injury_event": "sports",
                }
            )
    return pd.DataFrame(rows)


def test_task_catalogs_hold_the_paper_label_sets():
    assert get_task("knee").label_columns == ["ACL", "PCL", "MM", "LM", "MCL", "LCL", "PD", "EFFU"]
    assert get_task("ankle").label_columns == ["ATFL", "CFL", "ATR", "OLT"]
    assert len(get_task("shoulder").labels) == 7
    assert get_task("mrnet").joint == "knee"
    assert {t.joint for t in tasks().values()} == {"knee", "ankle", "shoulder", "spine", "thigh"}  # spine, thigh: the evaluation phantoms
    knee = structures("knee")
    assert [s.tissue for s in structures("spine").structures] == ["bone"] + ["disc"] * 4
    assert knee.values == list(range(1, 12))
    assert knee.mask_planes == ("sagittal", "coronal")
    ehr = ehr_schema()
    assert len(ehr.categorical["injury_event"]["classes"]) == 8
    assert ehr.columns == ["age", "height", "weight", "sex", "athlete", "injury_event"]
    with pytest.raises(KeyError, match="unknown task 'elbow'"):
        get_task("elbow")


def test_valid_catalog_passes_and_round_trips(tmp_path):
    df = make_catalog(tmp_path)
    path = write_catalog(df, tmp_path / "catalog.parquet")
    back = read_catalog(path)
    validate_catalog(back, path)
    pd.testing.assert_frame_equal(back, df)


@pytest.mark.parametrize(
    ("row", "column", "value", "message"),
    [
        (4, "joint", "elbow", "row 4, column 'joint', value 'elbow': unknown joint"),
        (2, "plane", "oblique", "row 2, column 'plane', value 'oblique': unknown plane"),
        (5, "ACL", 2, "row 5, column 'ACL', value 2: label must be 0 or 1"),
        (7, "MM", np.nan, "row 7, column 'MM', value nan: label must be 0 or 1"),
        (3, "path", "nowhere.nii", "row 3, column 'path', value 'nowhere.nii': file not found"),
        (1, "age", "forty", "row 1, column 'age', value 'forty': not a number"),
        (6, "split", "holdout", "row 6, column 'split', value 'holdout': unknown split"),
    ],
)
def test_validate_names_row_column_and_value(tmp_path, row, column, value, message):
    df = make_catalog(tmp_path)
    if column in ("age", "MM"):
        df[column] = df[column].astype(object)
    df.at[row, column] = value
    with pytest.raises(OrthodiffError) as err:
        validate_catalog(df, tmp_path / "catalog.parquet")
    assert message in str(err.value)


def test_validate_rejects_duplicates_and_leakage(tmp_path):
    df = make_catalog(tmp_path)
    dup = df.copy()
    dup.at[4, "plane"] = "sagittal"  # second sagittal scan 0 of case P001-1
    with pytest.raises(OrthodiffError, match=r"row 4, column 'scan'.*duplicate \(case, plane, scan\)"):
        validate_catalog(dup, tmp_path / "c.parquet")
    leak = make_catalog(tmp_path)
    leak.loc[leak["patient_id"] == "P002", "split"] = "test"
    leak.at[8, "split"] = "train"  # one of P002's series stays in train
    with pytest.raises(OrthodiffError, match=r"patient 'P002' is also in split .*leakage"):
        validate_catalog(leak, tmp_path / "c.parquet")


def test_split_is_by_patient_and_deterministic(tmp_path):
    df = make_catalog(tmp_path, n_patients=200)
    out = split_catalog(df, seed=3, val=0.06, test=0.12)
    assert out.groupby("patient_id")["split"].nunique().max() == 1
    per_split = out.groupby("split")["patient_id"].nunique()
    assert (per_split["val"], per_split["test"], per_split["train"]) == (12, 24, 164)
    assert out["split"].equals(split_catalog(df, seed=3)["split"])
    assert not out["split"].equals(split_catalog(df, seed=4)["split"])
    validate_catalog(out, tmp_path / "c.parquet")


def test_subsets_are_nested_patient_sets_of_the_training_split(tmp_path):
    df = split_catalog(make_catalog(tmp_path, n_patients=120), seed=0)
    out = add_subsets(df, [10, 50, 25], seed=1)
    previous: set[str] = set()
    for n in (10, 25, 50):
        patients = set(out.loc[out[f"subset_{n}"], "patient_id"])
        assert len(patients) == n
        assert previous <= patients
        assert set(out.loc[out[f"subset_{n}"], "split"]) == {"train"}
        # whole patients: every series of a chosen patient is in the subset
        assert out.loc[out["patient_id"].isin(patients), f"subset_{n}"].all()
        previous = patients
    with pytest.raises(OrthodiffError, match="exceeds the"):
        add_subsets(df, [10_000])


def test_cli_validate_reports_one_line_and_exit_code_2(tmp_path):
    df = make_catalog(tmp_path)
    df.at[0, "plane"] = "oblique"
    path = write_catalog(df, tmp_path / "catalog.parquet")
    result = run_cli("catalog", "validate", str(path))
    assert result.returncode == 2
    assert "row 0, column 'plane', value 'oblique'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_split_with_subsets(tmp_path):
    path = write_catalog(make_catalog(tmp_path, n_patients=60), tmp_path / "catalog.parquet")
    before = path.read_bytes()
    result = run_cli("catalog", "split", str(path), "--seed", "1", "--subsets", "5,20")
    assert result.returncode == 0, result.stderr
    assert path.read_bytes() == before  # a new catalog by default: stores made under the old split stay valid
    split = tmp_path / "catalog.split.parquet"
    df = read_catalog(split)
    assert {"subset_5", "subset_20"} <= set(df.columns)
    assert df.groupby("patient_id")["split"].nunique().max() == 1
    assert run_cli("catalog", "validate", str(split)).returncode == 0


def write_mrnet(root, n_train: int = 12, n_valid: int = 4):
    rng = np.random.default_rng(0)
    for folder, ids in (("train", range(n_train)), ("valid", range(1130, 1130 + n_valid))):
        for plane in ("axial", "coronal", "sagittal"):
            (root / folder / plane).mkdir(parents=True)
            for i in ids:
                np.save(root / folder / plane / f"{i:04d}.npy", rng.integers(0, 255, (20, 8, 8), dtype=np.uint8))
        for name in ("abnormal", "acl", "meniscus"):
            lines = [f"{i:04d},{(i * 7 + len(name)) % 2}" for i in ids]
            (root / f"{folder}-{name}.csv").write_text("\n".join(lines) + "\n")


def test_mrnet_importer_builds_a_valid_catalog(tmp_path):
    write_mrnet(tmp_path / "MRNet")
    df = mrnet_catalog(tmp_path / "MRNet", seed=0, val=0.25)
    validate_catalog(df, tmp_path / "catalog.parquet")
    assert len(df) == (12 + 4) * 3
    assert set(df.loc[df["case_id"].str.contains("valid"), "split"]) == {"test"}
    assert set(df.loc[df["case_id"].str.contains("train"), "split"]) == {"train", "val"}
    row = df.set_index("series_id").loc["mrnet-train-0003-coronal-0"]
    assert row["path"].endswith("train/coronal/0003.npy")
    assert (row["ABN"], row["ACL"], row["MEN"]) == ((3 * 7 + 8) % 2, (3 * 7 + 3) % 2, (3 * 7 + 8) % 2)


def test_mrnet_importer_names_the_bad_file(tmp_path):
    root = tmp_path / "MRNet"
    write_mrnet(root)
    (root / "train" / "axial" / "0005.npy").unlink()
    with pytest.raises(OrthodiffError, match=r"train/axial/0005.npy: series file of labelled exam 0005"):
        mrnet_catalog(root)
    write_mrnet(other := tmp_path / "other")
    (other / "valid-acl.csv").write_text("1130,1\n1131,yes\n")
    with pytest.raises(OrthodiffError, match=r"valid-acl.csv: row 1, column 'label', value 'yes'"):
        mrnet_catalog(other)


def test_cli_from_mrnet(tmp_path):
    write_mrnet(tmp_path / "MRNet")
    out = tmp_path / "mrnet.parquet"
    result = run_cli("catalog", "from-mrnet", str(tmp_path / "MRNet"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert read_catalog(out)["task"].unique().tolist() == ["mrnet"]


def test_cohort_summary_counts_exams_not_series(tmp_path):
    df = make_catalog(tmp_path, n_patients=10)
    df.loc[df["patient_id"].isin(["P000", "P001"]), "center"] = "B"
    df.loc[df["patient_id"] == "P000", "field_strength"] = 1.5
    repeat = df[(df["case_id"] == "P002-1") & (df["plane"] == "axial")].assign(scan=1, series_id="P002-1-axial-1")
    df = pd.concat([df[~((df["case_id"] == "P003-1") & (df["plane"] == "coronal"))], repeat])

    summary = cohort_summary(df)

    labels = summary["labels"].set_index("label")
    assert labels.loc["ACL", "exams"] == 10 and labels.loc["ACL", "positive"] == 5
    assert labels.loc["ACL", "prevalence"] == pytest.approx(0.5)
    sites = summary["sites"].set_index("center")
    assert sites.loc["B", "1.5T"] == 1 and sites.loc["B", "3T"] == 1 and sites.loc["A", "exams"] == 8
    planes = summary["planes"].set_index("plane")
    assert planes.loc["axial", "scan_1"] == 1 and planes.loc["coronal", "exams_missing"] == 1
