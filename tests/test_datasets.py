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
import pytest
import xarray as xr

from orthodiff.catalogs.cohort import read_catalog, validate_catalog
from orthodiff.catalogs.tasks import get_task
from orthodiff.catalogs.datasets.kneemri import kneemri_catalog, read_volume
from orthodiff.catalogs.datasets.mrnet import mrnet_catalog
from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.ingest import ingest


def test_dataset_catalogs_map_onto_the_knee_structures_and_their_own_labels():
    from orthodiff.catalogs.tasks import dataset_structures, dataset_table, structures

    knee = {s.abbr for s in structures("knee").structures}
    for dataset in ("skmtea", "oaizib"):
        assert get_task(dataset).joint == "knee"
        for structure in dataset_structures(dataset):
            assert set(structure.knee.split("+")) <= knee, (dataset, structure)
    assert set(dataset_table("fastmri_plus").values()) == set(get_task("fastmri").label_columns)
    paper = set(get_task("knee").label_columns)
    assert paper & set(get_task("fastmri").label_columns) == {"ACL", "PCL", "MCL", "LCL", "EFFU"}
    assert get_task("kneemri").label_columns == ["ACL", "ACL_RUPTURE"]


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

def py2_pickle(array: np.ndarray) -> bytes:
    """A numpy array pickled as Python 2 wrote it (protocol 2, `numpy.core.multiarray._reconstruct`,
    8-bit strings for the dtype code and the raw data), opcode by opcode: the form of pickles
    written before Python 3 (KneeMRI dates from 2017); `pickletools.dis` shows the structure."""
    import struct

    def text(value: str) -> bytes:  # SHORT_BINSTRING
        return b"U" + bytes([len(value)]) + value.encode()

    out = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + text("b") + b"\x87R("
    out += b"K\x01(" + b"".join(b"J" + struct.pack("<i", d) for d in array.shape) + b"t"
    out += b"cnumpy\ndtype\n" + text(array.dtype.str[1:]) + b"K\x00K\x01\x87R(K\x03" + text("<")
    out += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    data = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return out + b"\x89T" + struct.pack("<i", len(data)) + data + b"tb."


def write_kneemri(root, exams=((329637, 8, 0, 1), (390116, 9, 1, 0), (412857, 8, 2, 1), (412865, 8, 1, 0),
                               (444503, 7, 0, 0), (455741, 8, 2, 1))):
    """KneeMRI as its page publishes it (http://www.riteh.uniri.hr/~istajduh/projects/kneeMRI/;
    layout as read by github.com/nicholasbien/MRNet loader.py: `metadata.csv` with a header,
    column 2 `aclDiagnosis` and column 10 `volumeFilename`, volumes `volNN/<examId>-<seriesNo>.pck`,
    each a pickled numpy array (slices, rows, columns) of 12-bit values, here pickled as Python 2
    did): rows (examId, seriesNo, aclDiagnosis, kneeLR)."""
    rng = np.random.default_rng(1)
    lines = ["examId,seriesNo,aclDiagnosis,kneeLR,roiX,roiY,roiZ,roiWidth,roiHeight,roiDepth,volumeFilename"]
    for k, (exam, series, grade, side) in enumerate(exams):
        name = f"{exam}-{series}.pck"
        folder = root / f"vol{k % 2 + 1:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        volume = rng.integers(0, 4096, (18, 32, 32)).astype(np.uint16)
        (folder / name).write_bytes(py2_pickle(volume))
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


def test_kneemri_interrupted_import_reruns_and_skips_what_is_done(tmp_path):
    root = tmp_path / "kneeMRI"
    write_kneemri(root)
    good = (root / "vol02" / "412865-8.pck").read_bytes()
    (root / "vol02" / "412865-8.pck").write_bytes(good[:40])  # truncated: the import stops there
    out = tmp_path / "kneemri.parquet"
    with pytest.raises(OrthodiffError, match=r"412865-8.pck: unreadable or truncated pickle"):
        kneemri_catalog(root, out)
    images = tmp_path / "kneemri" / "images"
    done = sorted(images.iterdir())
    assert [p.name for p in done] == ["329637-8.npy", "390116-9.npy", "412857-8.npy"]  # whole files only
    stamps = [p.stat().st_mtime_ns for p in done]
    (root / "vol02" / "412865-8.pck").write_bytes(good)
    (root / "vol01" / "329637-8.pck").write_bytes(b"not read again")
    df = kneemri_catalog(root, out)
    assert len(df) == 6 and len(list(images.iterdir())) == 6
    assert [p.stat().st_mtime_ns for p in done] == stamps


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
    for protocol in (2, 5):  # Python 3 pickles load too
        evil.write_bytes(pickle.dumps(np.zeros((2, 2, 2), np.float32), protocol=protocol))
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


# --- fastMRI knee + fastMRI+ ----------------------------------------------------------------

def ismrmrd_header(matrix=32, fov=14.0, thickness=3.0, tesla=2.89362) -> bytes:
    """The parts of an ISMRMRD header that fastMRI's loader (github.com/facebookresearch/fastMRI
    fastmri/data/mri_data.py, `et_query` in the http://www.ismrm.org/ISMRMRD namespace) and
    fastMRI+'s DICOM export (github.com/microsoft/fastmri-plus ExampleScripts/fastmri_to_dicom.py:
    pixel = reconSpace fieldOfView_mm / matrixSize, SliceThickness = fieldOfView_mm z, TR, TE,
    flipAngle_deg) read."""
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
 <acquisitionSystemInformation><systemVendor>SIEMENS</systemVendor><systemModel>Skyra</systemModel>
  <systemFieldStrength_T>{tesla}</systemFieldStrength_T><receiverChannels>15</receiverChannels></acquisitionSystemInformation>
 <encoding>
  <encodedSpace><matrixSize><x>{2 * matrix}</x><y>{matrix + 4}</y><z>1</z></matrixSize>
   <fieldOfView_mm><x>{2 * fov}</x><y>{fov}</y><z>4.5</z></fieldOfView_mm></encodedSpace>
  <reconSpace><matrixSize><x>{matrix}</x><y>{matrix}</y><z>1</z></matrixSize>
   <fieldOfView_mm><x>{fov}</x><y>{fov}</y><z>{thickness}</z></fieldOfView_mm></reconSpace>
  <encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{matrix + 3}</maximum><center>{matrix // 2 + 2}</center></kspace_encoding_step_1></encodingLimits>
 </encoding>
 <sequenceParameters><TR>2750</TR><TE>27</TE><TI>100</TI><flipAngle_deg>140</flipAngle_deg><sequence_type>TurboSpinEcho</sequence_type></sequenceParameters>
</ismrmrdHeader>""".encode()


def write_fastmri_file(path, acquisition="CORPD_FBK", coils=0, slices=16, matrix=32, seed=0):
    """One fastMRI knee volume as fastMRI publishes it (fastmri/data/README.md: single-coil train/val
    files hold `kspace` (slices, h, w), `reconstruction_esc` and `reconstruction_rss` (slices, 320,
    320); multi-coil ones `kspace` (slices, coils, h, w) and `reconstruction_rss`; attributes
    `acquisition` (CORPD_FBK / CORPDFS_FBK), `max`, `norm`; the `ismrmrd_header` XML as a string
    dataset), at 32 x 32."""
    import h5py

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    rss = rng.random((slices, matrix, matrix), dtype=np.float32) + np.linspace(0, 1, matrix, dtype=np.float32)
    kspace_shape = (slices, coils, matrix + 4, 2 * matrix) if coils else (slices, matrix + 4, 2 * matrix)
    with h5py.File(path, "w") as f:
        f["kspace"] = np.zeros(kspace_shape, np.complex64)
        f["reconstruction_rss"] = rss
        if not coils:
            f["reconstruction_esc"] = rss * 0.9
        f["ismrmrd_header"] = ismrmrd_header(matrix)
        f.attrs["acquisition"] = acquisition
        f.attrs["max"], f.attrs["norm"] = float(rss.max()), float(np.linalg.norm(rss))
    return rss


def write_fastmri(tmp_path):
    """fastMRI knee folders plus fastMRI+ `Annotations/` (github.com/microsoft/fastmri-plus README:
    `knee.csv` one row per box with header `file,slice,study_level,x,y,width,height,label`, label
    text as published, e.g. 'Joint Effusion ' with its trailing space, study-level rows without a
    box; `knee_file_list.csv` the reviewed files, no header). file1000003 is not reviewed."""
    root = tmp_path / "fastMRI"
    for k, stem in enumerate(["file1000000", "file1000001", "file1000002", "file1000003", "file1000005"]):
        write_fastmri_file(root / "knee_singlecoil_train" / f"{stem}.h5", ("CORPD_FBK", "CORPDFS_FBK")[k % 2], seed=k)
    write_fastmri_file(root / "knee_multicoil_val" / "file1000010.h5", "CORPDFS_FBK", coils=2, seed=9)
    notes = tmp_path / "Annotations"
    notes.mkdir()
    (notes / "knee_file_list.csv").write_text("file1000000\nfile1000001\nfile1000002\nfile1000005\nfile1000010\nfile1009999\n")
    (notes / "knee.csv").write_text(
        "file,slice,study_level,x,y,width,height,label\n"
        "file1000001,14,No,90,173,35,10,Cartilage - Partial Thickness loss/defect\n"
        "file1000001,15,No,264,122,17,39,Ligament - MCL Low-Mod Grade Sprain\n"
        "file1000001,15,No,215,189,30,9,Meniscus Tear\n"
        "file1000002,7,No,100,100,20,20,Joint Effusion \n"
        "file1000002,8,No,100,100,20,20,Ligament - ACL High Grade Sprain\n"
        "file1000010,0,Yes,,,,,artifact\n"
        "file1009999,3,No,1,1,2,2,Meniscus Tear\n"
    )
    return root, notes


def test_fastmri_miniature_converts_with_geometry_validates_and_ingests(tmp_path):
    import nibabel as nib

    from orthodiff.catalogs.readers import read_series

    root, notes = write_fastmri(tmp_path)
    df, volumes = imported(tmp_path, "from-fastmri", str(root), "--annotations", str(notes), "--val", "0.25")
    assert sorted(df["case_id"]) == [f"fastmri-file100000{i}" for i in (0, 1, 2, 5)] + ["fastmri-file1000010"]
    exam = df.set_index("case_id")
    assert exam.loc["fastmri-file1000001", ["MCL", "MEN", "CART_PARTIAL", "ACL", "EFFU"]].tolist() == [1, 1, 1, 0, 0]
    assert exam.loc["fastmri-file1000002", ["ACL", "EFFU", "MEN"]].tolist() == [1, 1, 0]
    assert exam.loc["fastmri-file1000000", get_task("fastmri").label_columns].sum() == 0  # reviewed, no finding
    assert exam.loc["fastmri-file1000010", "ARTIFACT"] == 1 and exam.loc["fastmri-file1000010", "split"] == "test"
    assert set(df.loc[df["case_id"] != "fastmri-file1000010", "split"]) == {"train", "val"}
    assert exam.loc["fastmri-file1000001", "fat_suppression"] and not exam.loc["fastmri-file1000000", "fat_suppression"]
    row = exam.loc["fastmri-file1000005"]
    assert (row["vendor"], row["field_strength"], row["slice_thickness"], row["echo_time"]) == ("SIEMENS", 3.0, 3.0, 27.0)
    image = nib.load(tmp_path / "out" / row["path"])
    assert np.allclose(nib.affines.voxel_sizes(image.affine), [14 / 32, 14 / 32, 3.0])
    assert "".join(nib.aff2axcodes(image.affine)) == "RSP"
    data = read_series(tmp_path / "out" / row["path"], expected_plane="coronal").data
    rss = write_fastmri_file(tmp_path / "again.h5", seed=4)
    assert np.array_equal(data, rss)
    assert volumes.sizes["series"] == 5


def test_fastmri_bad_input_names_the_file_and_row(tmp_path):
    from orthodiff.catalogs.datasets.fastmri import fastmri_catalog

    root, notes = write_fastmri(tmp_path)
    out = tmp_path / "c.parquet"
    boxes = (notes / "knee.csv").read_text()
    (notes / "knee.csv").write_text(boxes + "file1000002,3,No,1,1,2,2,Tendon Snap\n")
    with pytest.raises(OrthodiffError, match=r"knee.csv: row 7, column 'label', value 'Tendon Snap': no fastmri label"):
        fastmri_catalog(root, out, notes)
    (notes / "knee.csv").write_text(boxes + "file7777777,3,No,1,1,2,2,Meniscus Tear\n")
    with pytest.raises(OrthodiffError, match=r"knee.csv: row 7, column 'file', value 'file7777777': not in knee_file_list.csv"):
        fastmri_catalog(root, out, notes)
    (notes / "knee.csv").write_text(boxes + "file1000005,16,No,1,1,2,2,Meniscus Tear\n")
    with pytest.raises(OrthodiffError, match=r"file file1000005 has a box on slice 16 but .*file1000005.h5 has 16 slices"):
        fastmri_catalog(root, out, notes)
    (notes / "knee.csv").write_text(boxes)
    listing = (notes / "knee_file_list.csv").read_text()
    (notes / "knee_file_list.csv").write_text(listing + "file1000001\n")
    with pytest.raises(OrthodiffError, match=r"knee_file_list.csv: row 6, value 'file1000001': listed twice"):
        fastmri_catalog(root, out, notes)
    (notes / "knee_file_list.csv").write_text(listing)
    write_fastmri_file(root / "knee_multicoil_train" / "file1000002.h5", coils=2)
    with pytest.raises(OrthodiffError, match=r"file1000002.h5: the same fastMRI file is also at"):
        fastmri_catalog(root, out, notes)
    (root / "knee_multicoil_train" / "file1000002.h5").unlink()
    write_fastmri_file(root / "knee_singlecoil_train" / "file1000005.h5", acquisition="AXT2")
    with pytest.raises(OrthodiffError, match=r"file1000005.h5: acquisition 'AXT2' is not a fastMRI knee one"):
        fastmri_catalog(root, out, notes)
    (root / "knee_singlecoil_train" / "file1000005.h5").write_bytes(b"\x89HDF\r\n truncated")
    with pytest.raises(OrthodiffError, match=r"file1000005.h5: unreadable or truncated HDF5"):
        fastmri_catalog(root, out, notes)


# --- SKM-TEA ---------------------------------------------------------------------------------

SKMTEA_PARAMS = {"RepetitionTime": 18.2, "EchoTime1": 5.8, "FlipAngle": 20.0, "SpoilerGradientArea": 3132.0,
                 "SpoilerGradientTime": 1800.0}
SKMTEA_T2 = {0: 60.0, 1: 30.0, 2: 35.0, 3: 40.0, 4: 45.0, 5: 12.0, 6: 15.0}  # ms per seg channel + 1 (0: none)


def write_skmtea(root, scans=(("train", "MTR_001", 1), ("train", "MTR_002", 2), ("train", "MTR_003", 1),
                              ("val", "MTR_004", 3), ("test", "MTR_005", 4)), shape=(20, 18, 16)):
    """SKM-TEA as its DATASET.md (github.com/StanfordMIMI/skm-tea) describes it: `image_files/<scan>.h5`
    with `echo1`, `echo2` (X=SI, Y=AP, Z=LR) and one-hot `seg` (X, Y, Z, 6; order PC, FC, medial and
    lateral TC, medial and lateral meniscus) and `stats`; `annotations/v1.0.0/{train,val,test}.json`
    with COCO-like `images` entries (`file_name`, `scan_id`, `subject_id`, `timepoint`,
    `voxel_spacing`, `matrix_shape`, `orientation`); `all_metadata.csv` with `MTR_ID` and the
    sequence parameters read by skm_tea/evaluation/qdess_evaluation.py. Echo 2 follows the qDESS
    signal ratio for the T2 of `SKMTEA_T2` per tissue, so the T2 map has a known answer."""
    import json

    import h5py

    rng = np.random.default_rng(2)
    (root / "image_files").mkdir(parents=True)
    images = {split: [] for split in ("train", "val", "test")}
    for k, (split, scan, subject) in enumerate(scans):
        labels = np.zeros(shape, np.int64)
        for c in range(6):  # six slabs along SI, one per class, away from the edges
            labels[3 + 2 * c : 5 + 2 * c, 4:14, 3:13] = c + 1
        seg = np.stack([labels == c + 1 for c in range(6)], -1).astype(np.uint8)
        echo1 = (200 + 100 * rng.random(shape)).astype(np.float32)
        t2 = np.vectorize(SKMTEA_T2.get)(labels).astype(float)
        t1 = np.where(labels >= 5, 1000.0, 1200.0)
        p = SKMTEA_PARAMS  # echo2 / echo1 = k exp(-c1) exp(-2 (TR - TE) / T2), TR, TE, T2 in ms
        echo2 = echo1 * _qdess_scale(t1, p) * np.exp(-2 * (p["RepetitionTime"] - p["EchoTime1"]) / t2)
        with h5py.File(root / "image_files" / f"{scan}.h5", "w") as f:
            f["echo1"], f["echo2"], f["seg"] = echo1, echo2.astype(np.float32), seg
            for key, volume in (("echo1", echo1), ("echo2", echo2), ("rss", np.sqrt(echo1**2 + echo2**2))):
                for stat in ("mean", "std", "min", "max"):
                    f[f"stats/{key}/{stat}"] = getattr(np, stat)(volume)
        images[split].append({"id": k + 1, "file_name": f"{scan}.h5", "msp_id": f"{k:07d}_V00", "scan_id": scan,
                              "subject_id": subject, "timepoint": 0, "voxel_spacing": [0.3125, 0.3125, 0.8],
                              "matrix_shape": list(shape), "orientation": ["SI", "AP", "LR"], "num_echoes": 2,
                              "inspected": True})
    for split, entries in images.items():
        folder = root / "annotations" / "v1.0.0"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{split}.json").write_text(json.dumps({"info": {"version": "v1.0.0"}, "categories": [], "tissues": [],
                                                          "images": entries, "annotations": []}))
    header = "MTR_ID,MedialDirection," + ",".join(SKMTEA_PARAMS)
    lines = [f"{scan},L," + ",".join(str(v) for v in SKMTEA_PARAMS.values()) for _, scan, _ in scans]
    (root / "all_metadata.csv").write_text("\n".join([header, *lines]) + "\n")


def _qdess_scale(t1_ms, p):
    """k * exp(-c1) of Sveinsson et al. 2017: the echo ratio apart from its T2 term."""
    tr, tg = p["RepetitionTime"] * 1e-3, p["SpoilerGradientTime"] * 1e-6
    alpha, t1 = np.deg2rad(p["FlipAngle"]), t1_ms * 1e-3
    dk = 4258 * 2 * np.pi * (p["SpoilerGradientArea"] / (tg * 1e6) * 100) * tg
    e = np.exp(-tr / t1 - tr * dk**2 * 1.25e-9)
    return np.sin(alpha / 2) ** 2 * (1 + e) / (1 - np.cos(alpha) * e) * np.exp(-(tr - tg / 3) * dk**2 * 1.25e-9)


def test_skmtea_miniature_gives_images_masks_t2_and_the_official_split(tmp_path):
    import nibabel as nib

    from orthodiff.catalogs.readers import read_mask, read_series
    from orthodiff.catalogs.tasks import structures

    root = tmp_path / "skm-tea"
    write_skmtea(root)
    df, volumes = imported(tmp_path, "from-skmtea", str(root))
    exam = df.set_index("case_id")
    assert exam["split"].to_dict() == {"skmtea-MTR_001": "train", "skmtea-MTR_002": "train", "skmtea-MTR_003": "train",
                                       "skmtea-MTR_004": "val", "skmtea-MTR_005": "test"}
    assert exam.loc["skmtea-MTR_001", "patient_id"] == exam.loc["skmtea-MTR_003", "patient_id"]
    row = exam.loc["skmtea-MTR_002"]
    image = nib.load(tmp_path / "out" / row["path"])
    assert "".join(nib.aff2axcodes(image.affine)) == "PIR"  # columns A->P, rows S->I, slices L->R
    assert np.allclose(nib.affines.voxel_sizes(image.affine), [0.3125, 0.3125, 0.8])
    data = read_series(tmp_path / "out" / row["path"], expected_plane="sagittal").data
    assert data.shape == (16, 20, 18)
    knee = {s.abbr: s.value for s in structures("knee").structures}
    mask = read_mask(tmp_path / "out" / row["mask_path"], data.shape, list(knee.values()))
    order = ["PC", "FC", "MTC", "LTC", "MM", "LM"]
    assert [int(mask[8, 3 + 2 * c, 8]) for c in range(6)] == [knee[a] for a in order]
    t2 = np.asarray(nib.load(tmp_path / "out" / row["t2_path"]).dataobj).transpose(2, 1, 0)
    for c in range(6):
        assert t2[8, 3 + 2 * c, 8] == pytest.approx(SKMTEA_T2[c + 1], rel=1e-3)
    assert t2[8, 0, 0] == pytest.approx(60.0, rel=1e-3)
    assert volumes.sizes["series"] == 5 and int(volumes["mask"].max()) == knee["LM"]


def test_skmtea_bad_input_names_the_file_and_row(tmp_path):
    import json

    from orthodiff.catalogs.datasets.skmtea import skmtea_catalog

    root = tmp_path / "skm-tea"
    write_skmtea(root, scans=(("train", "MTR_001", 1), ("val", "MTR_002", 2), ("test", "MTR_003", 3)))
    val = root / "annotations" / "v1.0.0" / "val.json"
    doc = json.loads(val.read_text())
    doc["images"].append(dict(doc["images"][0], scan_id="MTR_001", file_name="MTR_001.h5"))
    val.write_text(json.dumps(doc))
    with pytest.raises(OrthodiffError, match=r"val.json: images\[1\], scan 'MTR_001': also in train.json images\[0\]"):
        skmtea_catalog(root, tmp_path / "a.parquet")
    doc["images"].pop()
    val.write_text(json.dumps(doc))
    with pytest.raises(OrthodiffError, match=r"no SKM-TEA annotation version 'v9'; found \['v1.0.0'\]"):
        skmtea_catalog(root, tmp_path / "a.parquet", version="v9")
    (root / "image_files" / "MTR_003.h5").unlink()
    with pytest.raises(OrthodiffError, match=r"test.json: images\[0\]: file .*MTR_003.h5 not found"):
        skmtea_catalog(root, tmp_path / "a.parquet")
    import h5py

    with h5py.File(root / "image_files" / "MTR_003.h5", "w") as f:
        f["echo1"] = f["echo2"] = np.ones((20, 18, 16), np.float32)
        f["seg"] = np.ones((20, 18, 16, 6), np.uint8)
    with pytest.raises(OrthodiffError, match=r"MTR_003.h5: seg has voxels in two classes"):
        skmtea_catalog(root, tmp_path / "a.parquet")


# --- OAI-ZIB ---------------------------------------------------------------------------------

OAIZIB_IDS = {"9001104": 1, "9002430": 1, "9003126": 2}  # id -> cross-validation list


def oaizib_truth(shape=(20, 24, 24)) -> np.ndarray:
    """OAI-ZIB labels in the readers' (slices, rows, columns) order: femur, femoral cartilage,
    tibia, and tibial cartilage on two plateaus (slices 2-7 and 11-17; one voxel on slice 9)."""
    m = np.zeros(shape, np.uint8)
    m[2:18, 2:9, 4:20] = 1
    m[2:18, 9:11, 4:20] = 2
    m[2:18, 14:22, 4:20] = 3
    m[2:8, 12:14, 5:19] = 4
    m[11:18, 12:14, 5:19] = 4
    m[9, 12, 10] = 4
    return m


def write_mhd(path, array: np.ndarray) -> None:
    """An uncompressed ITK MetaImage: a text header (DimSize in x y z order, i.e. the numpy axes
    reversed) and the raw uint8 voxels in a `.raw` file beside it."""
    path.with_suffix(".raw").write_bytes(np.ascontiguousarray(array, np.uint8).tobytes())
    size = " ".join(str(n) for n in array.shape[::-1])
    path.write_text("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                    "CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\n"
                    "CenterOfRotation = 0 0 0\nElementSpacing = 0.36 0.36 0.7\n"
                    f"DimSize = {size}\nElementType = MET_UCHAR\nElementDataFile = {path.with_suffix('.raw').name}\n")


def write_oaizib(tmp_path):
    """The OAI-ZIB archive as its README describes it (pubdata.zib.de; README quoted in public
    copies): `segmentation/segmentation_masks/<id>.segmentation_masks.mhd` + `.raw` (labels 1 femoral
    bone, 2 femoral cartilage, 3 tibial bone, 4 tibial cartilage, no pose), `segmentation/doc/
    oai_mri_paths.txt` and `2foldCrossValidation-List{1,2}.txt`; the OAI baseline DICOM series they
    name, sagittal, with OAI's SAG_3D_DESS_RIGHT series description. The MHD voxel order is the one
    public converters undo (MHD array (rows, columns, slices), rows flipped and slices reversed
    against the position-sorted series)."""
    from orthodiff.catalogs.writers import write_dicom_series

    root, oai = tmp_path / "OAI-ZIB", tmp_path / "OAI" / "00m"
    (root / "segmentation" / "segmentation_masks").mkdir(parents=True)
    (root / "segmentation" / "doc").mkdir()
    truth = oaizib_truth()
    paths, lists = [], {1: [], 2: []}
    rng = np.random.default_rng(3)
    for k, (ident, fold) in enumerate(OAIZIB_IDS.items()):
        line = f"1.C.2/{ident}/2004090{k}/1042200{k}"
        image = 100 * rng.random(truth.shape) + 1000 * (truth > 0)
        write_dicom_series(oai / line, image.astype(np.float32), "sagittal", 0.36, 0.7, f"P{k}", f"oai{k}",
                           {"SeriesDescription": "SAG_3D_DESS_RIGHT", "Manufacturer": "Siemens",
                            "MagneticFieldStrength": 3.0})
        write_mhd(root / "segmentation" / "segmentation_masks" / f"{ident}.segmentation_masks.mhd",
                  np.moveaxis(truth[::-1, ::-1, :], 0, -1))
        paths.append(line)
        lists[fold].append(ident)
    (root / "segmentation" / "doc" / "oai_mri_paths.txt").write_text("\n".join(paths) + "\n")
    for fold, ids in lists.items():
        (root / "segmentation" / "doc" / f"2foldCrossValidation-List{fold}.txt").write_text("\n".join(ids) + "\n")
    return root, oai


def test_oaizib_masks_land_on_their_dicom_series_and_ingest(tmp_path):
    import nibabel as nib

    from orthodiff.catalogs.readers import read_series
    from orthodiff.catalogs.tasks import structures

    root, oai = write_oaizib(tmp_path)
    df, volumes = imported(tmp_path, "from-oaizib", str(root), "--oai", str(oai), "--val", "0")
    exam = df.set_index("case_id")
    assert exam["split"].to_dict() == {"oaizib-9001104": "train", "oaizib-9002430": "train", "oaizib-9003126": "test"}
    row = exam.loc["oaizib-9002430"]
    assert (row["laterality"], row["vendor"], row["field_strength"]) == ("R", "Siemens", 3.0)
    image = read_series(row["path"], expected_plane="sagittal").data
    mask = np.asarray(nib.load(tmp_path / "out" / row["mask_path"]).dataobj).transpose(2, 1, 0)
    assert np.array_equal(mask > 0, image > 900)  # the mask sits on its image
    knee = {s.abbr: s.value for s in structures("knee").structures}
    truth = oaizib_truth()
    for native, abbr in ((1, "Femur"), (2, "FC"), (3, "Tibia")):
        assert np.array_equal(mask == knee[abbr], truth == native)
    # sagittal slices run towards the patient's left, so a right knee's medial plateau is the higher one
    assert set(np.unique(mask[11:18][truth[11:18] == 4])) == {knee["MTC"]}
    assert set(np.unique(mask[2:8][truth[2:8] == 4])) == {knee["LTC"]}
    assert volumes.sizes["series"] == 3


def test_oaizib_bad_input_is_named(tmp_path):
    import pydicom

    from orthodiff.catalogs.datasets.oaizib import oaizib_catalog

    root, oai = write_oaizib(tmp_path)
    doc = root / "segmentation" / "doc"
    (doc / "2foldCrossValidation-List2.txt").write_text("9003126\n9001104\n")
    with pytest.raises(OrthodiffError, match=r"id '9001104' is in both cross-validation lists"):
        oaizib_catalog(root, oai, tmp_path / "a.parquet")
    (doc / "2foldCrossValidation-List2.txt").write_text("9003126\n")
    with pytest.raises(OrthodiffError, match=r"DICOM folder .*1.C.2/9001104/20040900/10422000 of mask 9001104 not found \(is --oai"):
        oaizib_catalog(root, tmp_path, tmp_path / "a.parquet")
    folder = oai / "1.C.2/9001104/20040900/10422000"
    for file in folder.iterdir():
        ds = pydicom.dcmread(file)
        ds.SeriesDescription = "SAG_3D_DESS"
        ds.save_as(file)
    with pytest.raises(OrthodiffError, match=r"10422000: the knee's side is not in the DICOM header"):
        oaizib_catalog(root, oai, tmp_path / "a.parquet")
