"""A synthetic PACS export: what `catalog from-dicom` meets in a hospital's archive, in small.

Per exam, three usable MR series (sagittal, coronal with fat suppression, axial) interleaved in
one folder under meaningless file names, and a dual-echo sagittal series elsewhere; in the
first exam also every kind of file a real export carries and `from-dicom` must not use: a
3-plane localizer, a derived (MPR) series, a series too short, a series with a missing slice,
a JPEG-LS series (its decoder is not a dependency), a structured report, a truncated file,
a DICOMDIR record and non-DICOM files. Headers carry realistic-looking (invented) patient,
study and institution identifiers, returned so a test can check that none leaves the scan.

Written by the project for its tests, benchmark and documentation; series come from
`writers.write_dicom_series` and are then given the archive's identifiers and names.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from orthodiff.catalogs.writers import write_dicom_series


def _volume(rng: np.random.Generator, slices: int, size: int) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (slices, size, size)), indexing="ij")
    ball = (x**2 + y**2 + z**2 < 0.5).astype(np.float32)
    return ball + 0.1 * rng.random((slices, size, size), dtype=np.float32)


class _Writer:
    """Writes series of one exam into the archive with its identifiers and random file names."""

    def __init__(self, root: Path, rng: np.random.Generator, exam: dict, size: int):
        self.root, self.rng, self.exam, self.size = root, rng, exam, size

    def name(self) -> str:
        return "".join(self.rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"), 8))

    def series(self, folder: str, plane: str, slices: int, uid: str, tags: dict | None = None,
               keep=None, acquisition: dict | None = None) -> list[Path]:
        """One series' files (those whose slice index `keep` accepts) under `folder`."""
        with tempfile.TemporaryDirectory() as tmp:
            write_dicom_series(tmp, _volume(self.rng, slices, self.size), plane, 0.5, 3.0, "x", uid,
                               acquisition={"EchoTime": 30.0, "RepetitionTime": 3000.0, "FlipAngle": 90.0,
                                            "MagneticFieldStrength": 3.0, "Manufacturer": "SIEMENS",
                                            **(acquisition or {})})
            return [self.relabel(f, folder, {"SeriesInstanceUID": uid, **(tags or {})})
                    for k, f in enumerate(sorted(Path(tmp).iterdir())) if keep is None or keep(k)]

    def relabel(self, source: Path, folder: str, tags: dict) -> Path:
        import pydicom

        ds = pydicom.dcmread(source)
        for keyword, value in {**self.exam, **tags}.items():
            setattr(ds, keyword, value)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{tags['SeriesInstanceUID']}.{ds.InstanceNumber}"
        target = self.root / folder / self.name()
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)
        return target


def write_pacs_export(root: str | Path, exams: int = 2, slices: int = 16, size: int = 32, seed: int = 0,
                      traps: bool = True) -> dict:
    """Write the export under `root`; returns the identifiers planted in the headers
    (`identifiers`: strings that must appear in no output) and the number of files."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    planted = ["St Elsewhere General Hospital"]
    for e in range(exams):
        uid = f"1.2.826.0.1.3680043.8.498.{9000 + seed}.{e + 1}"
        exam = {"PatientName": f"DOE^JANE{e}", "PatientID": f"PID{seed}{4711 + e}", "AccessionNumber": f"ACC{seed}{90210 + e}",
                "PatientBirthDate": f"1961{e % 12 + 1:02d}04", "InstitutionName": planted[0], "StudyInstanceUID": uid,
                "ReferringPhysicianName": "HOUSE^GREGORY", "StudyID": f"ST{seed}{e}",
                "Laterality": "L" if e % 2 else "R"}
        planted += [exam[k] for k in ("PatientName", "PatientID", "AccessionNumber", "PatientBirthDate", "StudyInstanceUID")]
        write = _Writer(root, rng, exam, size)
        mixed = f"export/{write.name()}/{write.name()}"  # three series interleaved in one folder
        for n, (plane, extra) in enumerate((("sagittal", {}), ("coronal", {"ScanOptions": "FS"}), ("axial", {}))):
            write.series(mixed, plane, slices, f"{uid}.{n + 1}", {"SeriesNumber": n + 1}, acquisition=extra)
        echoes = f"export/{write.name()}"
        for echo, te in ((1, 12.0), (2, 80.0)):
            write.series(echoes, "sagittal", slices, f"{uid}.4", {"SeriesNumber": 4, "EchoNumbers": echo},
                         acquisition={"EchoTime": te})
        planted += [f"{uid}.{n}" for n in range(1, 5)]
        if traps and e == 0:
            _traps(write, root, uid, slices)
            planted += [f"{uid}.{n}" for n in range(10, 17)]
    return {"identifiers": planted, "files": sum(1 for p in root.rglob("*") if p.is_file())}


def _traps(write: _Writer, root: Path, uid: str, slices: int) -> None:
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    other = f"export/{write.name()}"
    for n, plane in enumerate(("sagittal", "coronal", "axial")):  # a 3-plane localizer: one series, 3 x 3 slices
        write.series(other, plane, 3, f"{uid}.10", {"SeriesNumber": 10, "InstanceNumber": n})
    write.series(other, "coronal", slices, f"{uid}.11", {"SeriesNumber": 11, "ImageType": ["DERIVED", "SECONDARY", "MPR"]})
    write.series(other, "axial", slices // 2, f"{uid}.12", {"SeriesNumber": 12})
    write.series(other, "sagittal", slices + 1, f"{uid}.13", {"SeriesNumber": 13}, keep=lambda k: k != slices // 2)
    for path in write.series(other, "axial", slices, f"{uid}.14", {"SeriesNumber": 14}):
        ds = pydicom.dcmread(path)
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(64) + b"\xff\xd9"])  # not decoded: the decoder is absent
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        ds.save_as(path, enforce_file_format=True)
    truncated = write.series(other, "sagittal", 1, f"{uid}.15", {"SeriesNumber": 15})[0]
    truncated.write_bytes(truncated.read_bytes()[:-700])
    report = write.series(other, "sagittal", 1, f"{uid}.16", {"SeriesNumber": 16})[0]
    ds = pydicom.dcmread(report)
    del ds.PixelData
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.Modality = "SR"
    ds.save_as(report, enforce_file_format=True)
    directory = pydicom.dcmread(report)
    directory.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"  # Media Storage Directory
    del directory.SOPClassUID
    directory.save_as(root / "DICOMDIR", enforce_file_format=False)
    (root / "export" / "README.TXT").write_text("Exported by the PACS for St Elsewhere General Hospital\n")
    (root / "export" / "Thumbs.db").write_bytes(bytes(range(256)))
