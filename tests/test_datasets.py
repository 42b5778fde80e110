"""Importers of the public knee datasets, each on a miniature written here in the dataset's
own published layout (file names, folders, HDF5 groups and attributes, dtypes, label files):
the catalog must pass `catalog validate` and `ingest` must read every series.

Each writer's docstring cites the public source of the layout it imitates.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from orthodiff.catalogs.cohort import read_catalog, validate_catalog
from orthodiff.catalogs.datasets.kneemri import kneemri_catalog, read_volume
from orthodiff.catalogs.datasets.mrnet import mrnet_catalog
from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.ingest import ingest


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orthodiff", *args], capture_output=True, text=True, timeout=180)


def imported(tmp_path, *args: str):
    """Run `orthodiff catalog <args> --out <tmp>/cohort.parquet`, validate the catalog as
    `catalog validate` does and ingest it (16 px); returns (catalog, ingested volumes)."""
    out = tmp_path / "out" / "cohort.parquet"
    result = run_cli("catalog", *args, "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    df = read_catalog(out)
    validate_catalog(df, out)
    store = tmp_path / "store.zarr"
    log = ingest(out, str(store), size=16, progress=False)
    assert set(log["status"]) == {"ingested"}, log
    volumes = xr.open_zarr(store, group="volumes")
    return df, volumes


# --- MRNet ---------------------------------------------------------------------------------

def write_mrnet(root, train=range(4), valid=range(1130, 1132), shape=(256, 256)):
    """MRNet-v1.0 as Stanford publishes it (https://stanfordmlgroup.github.io/competitions/mrnet/;
    layout as read by public loaders, e.g. github.com/bigvisionai/MRnet-Challenge dataset/dataset.py:
    `train|valid/<plane>/NNNN.npy`, `pd.read_csv(..., header=None, names=['id', 'label'])`):
    uint8 arrays (slices, 256, 256) with a different slice count per plane, label files
    `{train,valid}-{abnormal,acl,meniscus}.csv` of rows `0000,1` without a header."""
    rng = np.random.default_rng(0)
    for folder, ids in (("train", train), ("valid", valid)):
        for plane in ("axial", "coronal", "sagittal"):
            (root / folder / plane).mkdir(parents=True)
            for i in ids:
                slices = int(rng.integers(17, 22))
                np.save(root / folder / plane / f"{i:04d}.npy", rng.integers(0, 256, (slices, *shape), dtype=np.uint8))
        for name in ("abnormal", "acl", "meniscus"):
            (root / f"{folder}-{name}.csv").write_text("".join(f"{i:04d},{(i * 7 + len(name)) % 2}\n" for i in ids))


def test_mrnet_miniature_in_the_published_layout_validates_and_ingests(tmp_path):
    root = tmp_path / "MRNet-v1.0"
    write_mrnet(root)
    df, volumes = imported(tmp_path, "from-mrnet", str(root), "--val", "0.25")
    assert len(df) == 6 * 3 and set(df["task"]) == {"mrnet"}
    assert set(df.loc[df["case_id"].str.contains("valid"), "split"]) == {"test"}
    assert set(df.loc[df["case_id"].str.contains("train"), "split"]) == {"train", "val"}
    row = df.set_index("series_id").loc["mrnet-train-0003-coronal-0"]
    assert row["path"].endswith("train/coronal/0003.npy")
    assert (row["ABN"], row["ACL"], row["MEN"]) == ((3 * 7 + 8) % 2, (3 * 7 + 3) % 2, (3 * 7 + 8) % 2)
    assert volumes.sizes["series"] == 18


def test_mrnet_bad_input_names_the_file_and_row(tmp_path):
    def fresh(name):
        write_mrnet(root := tmp_path / name, train=range(2), valid=range(1130, 1131), shape=(256, 256))
        return root

    root = fresh("missing")
    (root / "train" / "axial" / "0001.npy").unlink()
    with pytest.raises(OrthodiffError, match=r"train/axial/0001.npy: series file of labelled exam 0001"):
        mrnet_catalog(root)
    root = fresh("word")
    (root / "valid-acl.csv").write_text("1130,yes\n")
    with pytest.raises(OrthodiffError, match=r"valid-acl.csv: row 0, column 'label', value 'yes'"):
        mrnet_catalog(root)
    root = fresh("twice")
    (root / "train-acl.csv").write_text("0000,1\n0001,0\n0001,1\n")
    with pytest.raises(OrthodiffError, match=r"train-acl.csv: exam 0001 listed twice"):
        mrnet_catalog(root)
    root = fresh("stray")
    np.save(root / "train" / "sagittal" / "0007.npy", np.zeros((20, 256, 256), np.uint8))
    with pytest.raises(OrthodiffError, match=r"train/sagittal/0007.npy: series without a row"):
        mrnet_catalog(root)
    root = fresh("dtype")
    np.save(root / "valid" / "coronal" / "1130.npy", np.zeros((20, 256, 256), np.float64))
    with pytest.raises(OrthodiffError, match=r"valid/coronal/1130.npy: float64 array of shape \(20, 256, 256\); MRNet series are uint8"):
        mrnet_catalog(root)
    root = fresh("shape")
    np.save(root / "train" / "axial" / "0000.npy", np.zeros((20, 128, 128), np.uint8))
    with pytest.raises(OrthodiffError, match=r"train/axial/0000.npy: uint8 array of shape \(20, 128, 128\)"):
        mrnet_catalog(root)


# --- KneeMRI -------------------------------------------------------------------------------

def write_kneemri(root, exams=((329637, 8, 0, 1), (390116, 9, 1, 0), (412857, 8, 2, 1), (412865, 8, 1, 0),
                               (444503, 7, 0, 0), (455741, 8, 2, 1))):
    """KneeMRI as its page publishes it (http://www.riteh.uniri.hr/~istajduh/projects/kneeMRI/;
    layout as read by github.com/nicholasbien/MRNet loader.py: `metadata.csv` with a header,
    column 2 `aclDiagnosis` and column 10 `volumeFilename`, volumes `volNN/<examId>-<seriesNo>.pck`,
    each a pickled numpy array (slices, rows, columns) of 12-bit values): rows
    (examId, seriesNo, aclDiagnosis, kneeLR)."""
    rng = np.random.default_rng(1)
    lines = ["examId,seriesNo,aclDiagnosis,kneeLR,roiX,roiY,roiZ,roiWidth,roiHeight,roiDepth,volumeFilename"]
    for k, (exam, series, grade, side) in enumerate(exams):
        name = f"{exam}-{series}.pck"
        folder = root / f"vol{k % 2 + 1:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        volume = rng.integers(0, 4096, (18, 32, 32)).astype(np.uint16)
        (folder / name).write_bytes(pickle.dumps(volume, protocol=2))
        lines.append(f"{exam},{series},{grade},{side},10,12,8,20,22,4,{name}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


def test_kneemri_miniature_converts_validates_and_ingests(tmp_path):
    root = tmp_path / "kneeMRI"
    write_kneemri(root)
    df, volumes = imported(tmp_path, "from-kneemri", str(root), "--val", "0.2", "--test", "0.2")
    assert len(df) == 6 and set(df["task"]) == {"kneemri"} and set(df["plane"]) == {"sagittal"}
    row = df.set_index("case_id").loc["kneemri-412857"]
    assert (row["acl_grade"], row["ACL"], row["ACL_RUPTURE"]) == (2, 1, 1)
    row = df.set_index("case_id").loc["kneemri-390116"]
    assert (row["acl_grade"], row["ACL"], row["ACL_RUPTURE"]) == (1, 1, 0)
    converted = np.load(tmp_path / "out" / row["path"])
    original = read_volume(root / "vol02" / "390116-9.pck")
    assert converted.dtype == np.uint16 and np.array_equal(converted, original)
    assert set(df["split"]) == {"train", "val", "test"} and volumes.sizes["series"] == 6


def test_kneemri_rerun_skips_converted_volumes(tmp_path):
    root = tmp_path / "kneeMRI"
    write_kneemri(root)
    out = tmp_path / "kneemri.parquet"
    kneemri_catalog(root, out)
    converted = sorted((tmp_path / "kneemri" / "images").iterdir())
    stamps = [p.stat().st_mtime_ns for p in converted]
    (root / "vol01" / "329637-8.pck").write_bytes(b"not read again")
    kneemri_catalog(root, out)
    assert [p.stat().st_mtime_ns for p in converted] == stamps


class Shell:
    """Reduces to os.system(command) when unpickled by an unrestricted loader."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_kneemri_refuses_a_malicious_pickle_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pck"
    evil.write_bytes(pickle.dumps(Shell(f"touch {marker}"), protocol=2))
    with pytest.raises(OrthodiffError, match=r"evil.pck: refused, not a pickled numpy array \(global (posix|os)\.system is not allowed"):
        read_volume(evil)
    assert not marker.exists()
    evil.write_bytes(pickle.dumps(np.array([Shell(f"touch {marker}")], dtype=object), protocol=2))
    with pytest.raises(OrthodiffError, match=r"refused, not a pickled numpy array"):
        read_volume(evil)
    assert not marker.exists()
    evil.write_bytes(pickle.dumps({"volume": np.zeros((2, 2, 2))}, protocol=4))
    with pytest.raises(OrthodiffError, match=r"evil.pck: the pickle holds a dict, not a numpy array"):
        read_volume(evil)
    evil.write_bytes(pickle.dumps(np.zeros((2, 2, 2), np.float32), protocol=5))  # numpy 2 pickles load
    assert read_volume(evil).shape == (2, 2, 2)


def test_kneemri_bad_input_names_the_file_and_row(tmp_path):
    def fresh(name):
        write_kneemri(root := tmp_path / name)
        return root

    root = fresh("missing")
    (root / "vol02" / "412865-8.pck").unlink()
    with pytest.raises(OrthodiffError, match=r"metadata.csv: row 3, column 'volumeFilename', value '412865-8.pck': file not found"):
        kneemri_catalog(root, tmp_path / "a.parquet")
    root = fresh("grade")
    text = (root / "metadata.csv").read_text().replace("390116,9,1,", "390116,9,3,")
    (root / "metadata.csv").write_text(text)
    with pytest.raises(OrthodiffError, match=r"metadata.csv: row 1, column 'aclDiagnosis', value '3': ACL grade must be 0, 1 or 2"):
        kneemri_catalog(root, tmp_path / "b.parquet")
    root = fresh("twice")
    with open(root / "metadata.csv", "a") as handle:
        handle.write("390116,10,2,0,10,12,8,20,22,4,390116-10.pck\n")
    pickle_bytes = (root / "vol02" / "390116-9.pck").read_bytes()
    (root / "vol02" / "390116-10.pck").write_bytes(pickle_bytes)
    with pytest.raises(OrthodiffError, match=r"metadata.csv: rows \[1, 6\]: exam 390116 labelled twice with different ACL grades"):
        kneemri_catalog(root, tmp_path / "c.parquet")
    root = fresh("stray")
    (root / "vol01" / "999999-1.pck").write_bytes(pickle_bytes)
    with pytest.raises(OrthodiffError, match=r"vol01/999999-1.pck: volume without a row"):
        kneemri_catalog(root, tmp_path / "d.parquet")
    root = fresh("shape")
    (root / "vol01" / "329637-8.pck").write_bytes(pickle.dumps(np.zeros((32, 32), np.uint16), protocol=2))
    with pytest.raises(OrthodiffError, match=r"329637-8.pck: uint16 array of shape \(32, 32\); expected a numeric 3D volume"):
        kneemri_catalog(root, tmp_path / "e.parquet")
