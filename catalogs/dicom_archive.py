"""A DICOM archive (a PACS export, a scanner's media) becomes a pseudonymous cohort catalog.

`scan_archive` walks any folder tree, reads each file's header only, groups the MR images by
series, checks each series as `readers.read_series` would (one orientation, one size, enough
slices at regular positions) and returns the catalog rows of the usable series plus one
reject row for every file or series it does not use, with a reason from `Reject`.

Why pydicom headers and not dcm2niix. dcm2niix converts a whole tree to NIfTI and is the
reference converter, but it decides for the user: it writes every series it can (scouts and
derived series included, as NIfTI with its own names), reports what it skipped only in its
log text, needs a second full copy of the archive on disk, and reads every pixel. Here the
files stay where they are; only the headers are read (`stop_before_pixels`, `specific_tags`:
a few hundred microseconds per file), so the scan of 100,000 files takes minutes per core,
every file not used gets a machine-readable reason, and pixels are decoded later, by
`orthodiff ingest`, through the same pydicom + nibabel reader every DICOM series already goes
through. pydicom and nibabel are dependencies already; dcm2niix would be a binary to ship.

A catalog row names its series by a manifest (`<catalog>.series/<series_id>.json`: the
archive root and the series' files relative to it), because several series often share one
folder; `read_series` reads a manifest as it reads a DICOM folder.

De-identification follows the spirit of DICOM PS3.15 Annex E (Basic Application Level
Confidentiality Profile): nothing of a header that identifies a person, a study or an
institution is written. Patient, study, accession, series and institution values become
keyed hashes (HMAC-SHA256 with the user's salt, `read_salt`), computed in the process that
read the header; descriptions and dates are used for hints and ordering only, never written.
Memory: per file only its relative path, a series key and its position are kept (a few
hundred bytes); per series one small record of acquisition values.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache, partial
from pathlib import Path

import numpy as np
import pandas as pd

from orthodiff.catalogs.cohort import write_catalog
from orthodiff.catalogs.readers import MIN_SLICES, SPACING_TOLERANCE, plane_of
from orthodiff.catalogs.tasks import ehr_schema, get_task
from orthodiff.errors import OrthodiffError
from orthodiff.faults import fault
from orthodiff.files import atomic_write
from orthodiff.outputs import write_table
from orthodiff.progress import Advance, maybe_progress

MANIFEST_FORMAT = "orthodiff-dicom-series"
SALT_BYTES = 32
HASH_CHARS = 16
CHUNK = 64  # files per worker task


class Reject(StrEnum):
    """Why a file or series is not in the catalog (the `reason` column of the rejects table)."""

    NOT_DICOM = "not_dicom"  # no DICOM header (text, images, thumbnails)
    UNREADABLE = "unreadable"  # a DICOM header that does not parse, or a truncated file
    NON_IMAGE = "non_image"  # structured report, presentation state, DICOMDIR, raw data...
    NOT_MR = "not_mr"  # an image of another modality
    MULTIFRAME = "multiframe"  # enhanced (multi-frame) images: one slice per file is read
    NO_DECODER = "no_decoder"  # compressed transfer syntax whose decoder is not installed
    LOCALIZER = "localizer"  # localizer, scout, survey, 3-plane
    DERIVED = "derived"  # derived, secondary capture, reformatted (MPR), projection
    NO_GEOMETRY = "no_geometry"  # no orientation, position or pixel spacing
    MIXED_ORIENTATION = "mixed_orientation"  # one series, several orientations (not a localizer)
    MIXED_SIZE = "mixed_size"  # one series, several matrix sizes or pixel spacings
    TOO_FEW_SLICES = "too_few_slices"
    DUPLICATE_SLICES = "duplicate_slices"  # two images at one position (same echo)
    MISSING_SLICES = "missing_slices"  # a gap of whole slices in the stack
    INCONSISTENT_SPACING = "inconsistent_spacing"
    NO_LABEL = "no_label"  # usable, but the label CSV has no row for its exam


# what the label CSV's join column holds: AccessionNumber (as a hospital's lists have it),
# StudyInstanceUID, or the catalog's own pseudonymous case_id (labels made after a first scan)
JOIN_ON = ("accession", "study-uid", "case-id")


# --- the salt ------------------------------------------------------------------------------

def read_salt(path: str | Path, create: bool = True) -> bytes:
    """The user's salt from `path`, created (random, owner-only) when missing and `create`.

    A salt is needed because a plain hash of a patient ID can be reversed by hashing every
    plausible ID; with a secret key (HMAC) it cannot. It lives in a file rather than on the
    command line, where shell history and process lists would show it, and is the user's to
    keep: the same salt gives the same pseudonyms on every run over the same archive (or a
    later export of it), so labels and stores made later still join; a lost salt means new
    pseudonyms. Keep it apart from whatever is shared (catalog, store, reports).
    """
    path = Path(path)
    if not path.exists():
        if not create:
            raise OrthodiffError(f"{path}: salt file not found")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # owner-only from the first byte; exclusive, so two runs cannot make two salts
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(SALT_BYTES) + "\n")
    text = path.read_text().strip()
    if len(text) < 32:
        raise OrthodiffError(f"{path}: a salt of at least 32 characters is needed (delete the file to create one)")
    return text.encode()


def pseudonym(salt: bytes, kind: str, value: str) -> str:
    """`kind`'s value as a keyed hash: the same (salt, kind, value) always gives the same text;
    `kind` keeps one value in two fields (a PatientID that is also an accession) apart."""
    digest = hmac.new(salt, f"{kind}\0{value.strip()}".encode(), hashlib.sha256).hexdigest()
    return digest[:HASH_CHARS]


# --- one file ------------------------------------------------------------------------------

TAGS = [
    "SOPClassUID", "Modality", "ImageType", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "AccessionNumber",
    "InstitutionName", "SeriesNumber", "SeriesDescription", "ProtocolName", "BodyPartExamined", "Laterality",
    "ImageLaterality", "Manufacturer", "MagneticFieldStrength", "EchoTime", "EchoNumbers", "RepetitionTime",
    "FlipAngle", "SliceThickness", "ScanOptions", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
    "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "SeriesDate", "SeriesTime",
]
_LOCALIZER = re.compile(r"locali[sz]er|scout|survey|3[ -]?pl(ane)?|tri-?pilot|aahscout|\bloc\b", re.I)
_FAT_SAT = re.compile(r"\b(fs|fat ?sat|fatsat|spair|spir|stir|chess|fat ?supp?)\b", re.I)
_SIDES = {"left": "L", "lt": "L", "links": "L", "gauche": "L", "right": "R", "rt": "R", "rechts": "R", "droit": "R",
          "droite": "R"}
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


@dataclass(frozen=True)
class FileRecord:
    """What a worker returns for one image file: pseudonymous keys, the split key, its position
    and the series' acquisition values (kept by the caller for the first file of a series only)."""

    path: str
    series: str
    part: tuple  # (orientation, rows, columns, pixel spacing, echo): files that stack together
    position: tuple[float, float, float]
    flag: tuple[str, str] | None  # a series-level reject (reason, detail) this file implies
    info: dict


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _number(ds, keyword: str) -> float:
    try:
        value = ds.get(keyword, None)
        return float(value) if value not in (None, "") else np.nan
    except (TypeError, ValueError):
        return np.nan


@cache
def _decoder_missing(transfer_syntax) -> str:
    """'' when pixels of `transfer_syntax` can be decoded here, else the packages that would."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(transfer_syntax)
    except (NotImplementedError, ValueError):
        return f"{transfer_syntax.name}: pydicom has no decoder for it"
    if decoder.is_available:
        return ""
    options = []
    for line in decoder.missing_dependencies:  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
        requires = line.split("requires", 1)[-1]
        names = [re.split(r"[<>=!~ ]", part.strip())[0] for part in requires.split(" and ")]
        names = ["python-gdcm" if n == "gdcm" else n for n in names if n and n != "numpy"]
        options.append(" + ".join(names))
    return f"{transfer_syntax.name}: install {' or '.join(options)}"


def _truncated(fp, ds, size: int) -> bool:
    """Whether the pixel data element that follows the header (at `fp`'s position) is cut
    short: its declared length, or for encapsulated data its items up to the sequence
    delimiter (PS3.5 A.4), run past the end of the file."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None or syntax.is_deflated or not syntax.is_little_endian:
        return False  # the stream position does not map to the file's bytes
    header = fp.read(8)
    if len(header) < 8:
        return True  # no pixel data at all
    if header[4:6].isalpha():  # explicit VR (OB, OW): 2 reserved bytes, then a 4-byte length
        header = fp.read(4)    # (the bytes decide: some files contradict their transfer syntax)
    length = int.from_bytes(header[-4:], "little")
    position = fp.tell()
    if length != 0xFFFFFFFF:
        return size - position < length
    while True:  # items (FFFE,E000) until the sequence delimiter (FFFE,E0DD)
        item = fp.read(8)
        if len(item) < 8:
            return True
        if item[:4] == _SEQUENCE_DELIMITER[:4]:
            return False
        position += 8 + int.from_bytes(item[4:], "little")
        if position > size:
            return True
        fp.seek(position)


def _laterality(ds) -> str:
    side = (_text(ds, "Laterality") or _text(ds, "ImageLaterality")).upper()
    if side in ("L", "R"):
        return side
    words = re.split(r"[^a-z]+", " ".join(_text(ds, k) for k in ("BodyPartExamined", "SeriesDescription", "ProtocolName")).lower())
    sides = {_SIDES[w] for w in words if w in _SIDES}
    return sides.pop() if len(sides) == 1 else ""


def _flag(ds, sop_name: str) -> tuple[str, str] | None:
    image_type = [v.upper() for v in _text(ds, "ImageType").split("\\")]
    if "LOCALIZER" in image_type or _LOCALIZER.search(_text(ds, "SeriesDescription") + " " + _text(ds, "ProtocolName")):
        return Reject.LOCALIZER, "ImageType or series description says localizer"
    if "Secondary Capture" in sop_name:
        return Reject.DERIVED, "secondary capture"
    derived = {"DERIVED", "SECONDARY", "MPR", "REFORMATTED", "PROJECTION IMAGE", "MIP"} & set(image_type)
    if derived:
        return Reject.DERIVED, f"ImageType {'/'.join(sorted(derived))}"
    return None


def _info(ds, salt: bytes) -> dict:
    field_strength = _number(ds, "MagneticFieldStrength")
    if field_strength > 100:  # some scanners write gauss
        field_strength /= 10000
    institution = _text(ds, "InstitutionName")
    spacing = [float(v) for v in ds.get("PixelSpacing", [np.nan, np.nan]) or [np.nan, np.nan]]
    study = pseudonym(salt, "study", _text(ds, "StudyInstanceUID"))
    patient = _text(ds, "PatientID")
    accession = _text(ds, "AccessionNumber")
    return {
        "study": study,
        "patient": pseudonym(salt, "patient", patient) if patient else study,  # no PatientID: one patient per exam
        "accession": pseudonym(salt, "accession", accession) if accession else "",
        "center": "c-" + pseudonym(salt, "institution", institution)[:8] if institution else "",
        "order": (_number(ds, "SeriesNumber"), _text(ds, "SeriesDate") + _text(ds, "SeriesTime")),
        "vendor": _text(ds, "Manufacturer"),
        "field_strength": field_strength,
        "slice_thickness": _number(ds, "SliceThickness"),
        "repetition_time": _number(ds, "RepetitionTime"),
        "flip_angle": _number(ds, "FlipAngle"),
        "fat_suppression": bool({"FS", "SFS", "FAT_SAT", "FATSAT"} & set(_text(ds, "ScanOptions").upper().split("\\"))
                                or _FAT_SAT.search(_text(ds, "SeriesDescription") + " " + _text(ds, "ProtocolName"))),
        "pixel_spacing": float(np.mean(spacing)),
        "laterality": _laterality(ds),
    }


def read_header(root: Path, relative: str, salt: bytes) -> FileRecord | tuple[str, str, str]:
    """One file's record, or (path, reason, detail) when the file itself is not usable.

    Runs in a worker: identifiers are hashed here and never leave it; error details name the
    exception type only (a pydicom message may quote a value)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID

    path = root / relative
    try:
        size = path.stat().st_size
        with open(path, "rb") as fp:
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=TAGS)
            except InvalidDicomError:
                return relative, Reject.NOT_DICOM, "no DICOM preamble or header"
            truncated = "Rows" in ds and "BitsAllocated" in ds and _truncated(fp, ds, size)
    except Exception as err:  # pydicom raises many types on damaged files
        return relative, Reject.UNREADABLE, f"header does not parse ({type(err).__name__})"
    sop = UID(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    sop_name = sop.name if sop.is_valid else "no SOP class"
    if "Image Storage" not in sop_name or "Rows" not in ds:
        return relative, Reject.NON_IMAGE, sop_name
    if truncated:
        return relative, Reject.UNREADABLE, "truncated pixel data"
    if _text(ds, "Modality") != "MR":
        return relative, Reject.NOT_MR, f"modality {_text(ds, 'Modality') or 'missing'}"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return relative, Reject.MULTIFRAME, sop_name
    flag = _flag(ds, sop_name)
    missing = _decoder_missing(UID(ds.file_meta.TransferSyntaxUID)) if ds.file_meta.get("TransferSyntaxUID") else ""
    if flag is None and missing:
        flag = (Reject.NO_DECODER, missing)
    try:
        orientation = tuple(round(float(v), 3) for v in ds.ImageOrientationPatient)
        position = tuple(float(v) for v in ds.ImagePositionPatient)
        spacing = tuple(round(float(v), 4) for v in ds.PixelSpacing)
        if len(orientation) != 6 or len(position) != 3 or len(spacing) != 2:
            raise ValueError
    except (AttributeError, TypeError, ValueError):
        flag = flag or (Reject.NO_GEOMETRY, "no ImageOrientationPatient, ImagePositionPatient or PixelSpacing")
        orientation, position, spacing = (), (np.nan,) * 3, ()
    echo = (_text(ds, "EchoNumbers"), _number(ds, "EchoTime"))  # each echo of a multi-echo series is a stack
    return FileRecord(relative, pseudonym(salt, "series", _text(ds, "SeriesInstanceUID")),
                      (orientation, int(ds.Rows), int(ds.Columns), spacing, echo), position, flag, _info(ds, salt))


def _read_chunk(root: Path, salt: bytes, chunk: list[str]) -> list:
    """`read_header` of each file with pydicom's warnings and log silenced: they quote values
    (an invalid UID, a name), and nothing of a header may reach a log."""
    import logging
    import warnings

    log = logging.getLogger("pydicom")
    disabled, log.disabled = log.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [read_header(root, relative, salt) for relative in chunk]
    finally:
        log.disabled = disabled


def archive_files(root: Path) -> Iterator[str]:
    """Every file under `root` (relative, POSIX, sorted per folder), links to folders not followed."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            yield (Path(folder) / name).relative_to(root).as_posix()


# --- series --------------------------------------------------------------------------------

@dataclass
class _Series:
    info: dict
    flag: tuple[str, str] | None = None
    parts: dict = field(default_factory=lambda: defaultdict(list))  # part key -> [(path, position)]

    def files(self) -> list[str]:
        return [p for members in self.parts.values() for p, _ in members]


def _normal(orientation: tuple) -> np.ndarray:
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    return np.cross(row, col)


def _check_stack(members: list, orientation: tuple) -> tuple[str, str] | tuple[list[str], float]:
    """(files in slice order, slice gap) of one stack, or (reason, detail)."""
    if len(members) < MIN_SLICES:
        return Reject.TOO_FEW_SLICES, f"{len(members)} slices, at least {MIN_SLICES} needed"
    along = np.array([np.dot(_normal(orientation), p) for _, p in members])
    order = np.argsort(-along)  # as `readers._dicom_slices` stacks them
    gaps = -np.diff(along[order])
    step = float(np.median(gaps))
    if gaps.min() < 1e-3 * max(step, 1e-3):
        return Reject.DUPLICATE_SLICES, f"{int((gaps < 1e-3 * max(step, 1e-3)).sum())} positions hold two images"
    if gaps.max() - gaps.min() > SPACING_TOLERANCE * gaps.mean():
        whole = np.round(gaps / step)
        if (whole >= 2).any() and np.allclose(gaps, whole * step, rtol=SPACING_TOLERANCE):
            return Reject.MISSING_SLICES, f"{int((whole - 1).sum())} missing at {step:.2f} mm slice spacing"
        return Reject.INCONSISTENT_SPACING, f"slice gaps {gaps.min():.2f} to {gaps.max():.2f} mm"
    return [members[i][0] for i in order], step


def _series_rows(series: _Series) -> Iterator[tuple]:
    """('row', part key, files, gap) per usable stack and ('reject', reason, detail, files)."""
    if series.flag is not None:
        yield "reject", *series.flag, series.files()
        return
    orientations = {key[0] for key in series.parts}
    if len(orientations) > 1:
        few = all(sum(len(m) for k, m in series.parts.items() if k[0] == o) < MIN_SLICES for o in orientations)
        reason = Reject.LOCALIZER if few else Reject.MIXED_ORIENTATION
        yield "reject", reason, f"{len(orientations)} orientations in one series", series.files()
        return
    if len({key[1:4] for key in series.parts}) > 1:
        yield "reject", Reject.MIXED_SIZE, f"{len({k[1:4] for k in series.parts})} image sizes or pixel spacings", series.files()
        return
    for key in sorted(series.parts):  # one stack per echo
        checked = _check_stack(series.parts[key], key[0])
        if isinstance(checked[0], str):
            yield "reject", *checked, [p for p, _ in series.parts[key]]
        else:
            yield "row", key, *checked


# --- the archive ---------------------------------------------------------------------------

@dataclass
class ArchiveScan:
    """The catalog of usable series, the rejects, and where the manifests go."""

    catalog: pd.DataFrame
    rejects: pd.DataFrame
    manifests: dict[str, dict] = field(default_factory=dict)  # series_id -> manifest


def scan_archive(root: str | Path, salt: bytes, task: str = "knee", workers: int = 1,
                 progress: bool | Advance = False, manifest_dir: str = "series") -> ArchiveScan:
    """Read every header under `root` and build the catalog rows (`split` train, no labels)
    and one reject row per unused file or series (`path`: the file, or the series' folders;
    `files`; `reason`; `detail`). `manifest_dir` is the manifests' folder relative to the
    catalog, as the rows' `path` names them."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise OrthodiffError(f"{root}: DICOM folder not found")
    cores = os.cpu_count() or 1
    if not 1 <= workers <= cores:
        raise OrthodiffError(f"--workers {workers}: between 1 and the {cores} cores of this machine")
    joint = get_task(task).joint
    series: dict[str, _Series] = {}
    rejects = []
    for record in _scan(root, salt, workers, progress):
        if isinstance(record, tuple):
            path, reason, detail = record
            rejects.append({"path": path, "files": 1, "reason": str(reason), "detail": detail})
            continue
        entry = series.get(record.series)
        if entry is None:
            entry = series[record.series] = _Series(record.info)
        entry.flag = entry.flag or record.flag
        entry.parts[record.part].append((record.path, record.position))

    rows, manifests = [], {}
    for key, entry in sorted(series.items(), key=lambda kv: (kv[1].info["study"], kv[1].info["order"], kv[0])):
        for kind, *rest in _series_rows(entry):
            if kind == "reject":
                reason, detail, files = rest
                folders = sorted({str(Path(f).parent.as_posix()) for f in files})
                rejects.append({"path": ";".join(folders), "files": len(files), "reason": str(reason), "detail": detail})
                continue
            part, files, gap = rest
            info = entry.info
            echo_number, echo_time = part[4]
            series_id = f"s-{pseudonym(salt, 'series-part', f'{key}|{echo_number}|{echo_time:g}')}"
            affine = np.eye(4)
            affine[:3, 0], affine[:3, 1], affine[:3, 2] = part[0][:3], part[0][3:], _normal(part[0])
            manifests[series_id] = {"format": MANIFEST_FORMAT, "version": 1, "root": str(root), "files": files}
            rows.append({
                "series_id": series_id, "case_id": f"e-{info['study']}", "patient_id": f"p-{info['patient']}",
                "task": task, "joint": joint, "plane": plane_of(affine), "scan": 0, "order": (*info["order"], echo_number),
                "path": f"{manifest_dir}/{series_id}.json", "mask_path": None, "center": info["center"],
                "vendor": info["vendor"], "field_strength": info["field_strength"],
                "slice_thickness": info["slice_thickness"], "split": "train",
                "echo_time": echo_time, "repetition_time": info["repetition_time"],
                "flip_angle": info["flip_angle"], "fat_suppression": info["fat_suppression"],
                "pixel_spacing": info["pixel_spacing"], "slice_spacing": gap, "laterality": info["laterality"],
                "slices": len(files), "rows": part[1], "columns": part[2], "accession": info["accession"],
            })
    catalog = pd.DataFrame(rows, columns=_CATALOG_COLUMNS)
    if len(catalog):
        catalog = catalog.sort_values(["case_id", "plane", "order", "series_id"], kind="stable")
        catalog["scan"] = catalog.groupby(["case_id", "plane"]).cumcount().astype(int)
    catalog = catalog.drop(columns="order").reset_index(drop=True)
    schema = ehr_schema()
    for column in schema.numeric:
        catalog[column] = np.nan
    for column in schema.categorical:
        catalog[column] = pd.Series([None] * len(catalog), dtype=object)
    table = pd.DataFrame(rejects, columns=["path", "files", "reason", "detail"])
    return ArchiveScan(catalog, table.sort_values(["reason", "path"], kind="stable").reset_index(drop=True), manifests)


_CATALOG_COLUMNS = [
    "series_id", "case_id", "patient_id", "task", "joint", "plane", "scan", "order", "path", "mask_path", "center", "vendor",
    "field_strength", "slice_thickness", "split", "echo_time", "repetition_time", "flip_angle", "fat_suppression",
    "pixel_spacing", "slice_spacing", "laterality", "slices", "rows", "columns", "accession",
]


def _scan(root: Path, salt: bytes, workers: int, progress: bool | Advance) -> Iterator:
    files = list(archive_files(root))
    chunks = [files[i : i + CHUNK] for i in range(0, len(files), CHUNK)]
    read = partial(_read_chunk, root, salt)
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        with maybe_progress(progress, "from-dicom", len(files), "files") as advance:
            for chunk, records in zip(chunks, pool.map(read, chunks) if pool else map(read, chunks)):
                yield from records
                advance(len(chunk))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


# --- labels --------------------------------------------------------------------------------

def join_labels(catalog: pd.DataFrame, csv: str | Path, column: str, join_on: str, salt: bytes
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The catalog with the task's labels (and EHR columns the CSV has) joined per exam, and
    the rows of exams the CSV has no row for (rejected as `no_label`).

    A CSV row matching no exam, or two rows matching one exam, is an error naming the CSV
    lines (never their key values: an accession number is an identifier)."""
    csv = Path(csv)
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except Exception as err:
        raise OrthodiffError(f"{csv}: unreadable label CSV ({type(err).__name__})") from None
    labels = get_task(str(catalog["task"].iloc[0]) if len(catalog) else "knee").label_columns
    missing = [c for c in [column, *labels] if c not in table.columns]
    if missing:
        raise OrthodiffError(f"{csv}: missing columns {missing} (the join column and the task's labels)")
    raw = table[column].str.strip()
    if join_on == "case-id":
        keys, exam_key = raw, catalog["case_id"]
    elif join_on == "study-uid":
        keys, exam_key = raw.map(lambda v: f"e-{pseudonym(salt, 'study', v)}"), catalog["case_id"]
    elif join_on == "accession":
        keys, exam_key = raw.map(lambda v: pseudonym(salt, "accession", v)), catalog["accession"]
    else:
        raise OrthodiffError(f"--join-on {join_on!r}: expected one of {list(JOIN_ON)}")
    exams = dict(zip(exam_key, catalog["case_id"]))
    lines = pd.Series(np.arange(len(table)) + 2)  # CSV line numbers (line 1 is the header)
    matched = keys.map(exams)
    unmatched = lines[matched.isna().to_numpy() | (raw == "").to_numpy()]
    if len(unmatched):
        raise OrthodiffError(f"{csv}: {_lines(unmatched)} match no exam of the archive (column {column!r}, "
                             f"joined on {join_on}); remove them or export the missing exams")
    twice = matched.duplicated(keep=False).to_numpy()
    if twice.any():
        raise OrthodiffError(f"{csv}: {_lines(lines[twice])} match the same exam twice; keep one row per exam")
    ehr = [c for c in ehr_schema().columns if c in table.columns]
    values = table[labels + ehr].replace("", np.nan).assign(case_id=matched.to_numpy())
    for label in labels:
        values[label] = pd.to_numeric(values[label], errors="coerce")  # validation names a non-0/1 value
    for number in [c for c in ehr if c in ehr_schema().numeric]:
        values[number] = pd.to_numeric(values[number], errors="coerce")
    out = catalog.drop(columns=ehr).merge(values, on="case_id", how="left")
    has_label = out["case_id"].isin(values["case_id"])
    return out[has_label].reset_index(drop=True), out[~has_label].reset_index(drop=True)


def _lines(lines: pd.Series) -> str:
    shown = [str(int(v)) for v in lines[:10]]
    more = f" and {len(lines) - 10} more" if len(lines) > 10 else ""
    return ("line " if len(lines) == 1 else "lines ") + ", ".join(shown) + more


# --- writing -------------------------------------------------------------------------------

def rejects_path(catalog_path: str | Path) -> Path:
    """`<catalog>.rejects.parquet` (and `.csv`) beside the catalog."""
    catalog_path = Path(catalog_path)
    return catalog_path.with_name(catalog_path.stem + ".rejects.parquet")


def write_archive_catalog(scan: ArchiveScan, out: str | Path) -> Path:
    """Manifests, rejects, then the catalog (so a killed run leaves no catalog naming missing
    manifests; a rerun rewrites all three); manifests of series no longer found are removed."""
    out = Path(out)
    folder = out.parent / f"{out.stem}.series"
    for series_id, manifest in scan.manifests.items():
        atomic_write(folder / f"{series_id}.json", lambda tmp, m=manifest: Path(tmp).write_text(json.dumps(m, indent=1)))
        fault("from-dicom:manifest")
    write_table(scan.rejects, rejects_path(out))
    write_catalog(scan.catalog.drop(columns="accession"), out)
    for stale in folder.glob("*.json"):
        if stale.stem not in scan.manifests:
            stale.unlink()
    return out


def build_from_dicom(root: str | Path, out: str | Path, salt_file: str | Path, task: str = "knee",
                     labels: str | Path | None = None, join_column: str | None = None,
                     join_on: str = "accession", workers: int = 1, progress: bool | Advance = False) -> ArchiveScan:
    """`orthodiff catalog from-dicom`: scan, join labels, validate, write; returns what was written."""
    from orthodiff.catalogs.cohort import validate_catalog

    if (labels is None) != (join_column is None):
        raise OrthodiffError("--labels and --join-column go together: the CSV and the column that names each exam")
    out = Path(out)
    salt = read_salt(salt_file)
    scan = scan_archive(root, salt, task, workers, progress, manifest_dir=f"{out.stem}.series")
    if not len(scan.catalog):
        raise OrthodiffError(f"{root}: no usable MR series found ({len(scan.rejects)} files or series rejected)")
    if labels is not None:
        scan.catalog, unlabelled = join_labels(scan.catalog, labels, join_column, join_on, salt)
        folders = [";".join(sorted({Path(f).parent.as_posix() for f in scan.manifests[s]["files"]}))
                   for s in unlabelled["series_id"]]
        extra = pd.DataFrame({"path": folders, "files": unlabelled["slices"], "reason": str(Reject.NO_LABEL),
                              "detail": "no row for its exam in " + Path(labels).name})
        scan.rejects = pd.concat([scan.rejects, extra], ignore_index=True)
        scan.manifests = {k: v for k, v in scan.manifests.items() if k in set(scan.catalog["series_id"])}
    validate_catalog(scan.catalog, out, check_files=False)
    write_archive_catalog(scan, out)
    return scan


def reject_summary(rejects: pd.DataFrame) -> pd.DataFrame:
    """Per reason: rows (files or series) and files."""
    return (rejects.groupby("reason").agg(rows=("path", "size"), files=("files", "sum")).reset_index()
            .sort_values("files", ascending=False, kind="stable"))
