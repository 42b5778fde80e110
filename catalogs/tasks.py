"""Task catalogs: label sets per task, segmentation structures, the EHR schema.

The definitions live in the TOML files beside this module (`tasks.toml`, `structures.toml`,
`ehr.toml`, and `datasets.toml` for the public knee datasets' tasks and structure sets);
this module only reads them.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

PLANES: tuple[str, ...] = ("sagittal", "coronal", "axial")


@cache
def _read(name: str) -> dict:
    return tomllib.loads(files("orthodiff.catalogs").joinpath(name).read_text("utf-8"))


@dataclass(frozen=True)
class Label:
    abbr: str
    name: str


@dataclass(frozen=True)
class Task:
    """A diagnostic task: a joint and its labels (one 0/1 catalog column per label)."""

    name: str
    joint: str
    labels: tuple[Label, ...]

    @property
    def label_columns(self) -> list[str]:
        return [label.abbr for label in self.labels]


@dataclass(frozen=True)
class Structure:
    value: int
    abbr: str
    name: str
    tissue: str = ""


@dataclass(frozen=True)
class StructureSet:
    """Segmentation structures of a joint; mask voxels hold `value`, 0 is background."""

    joint: str
    mask_planes: tuple[str, ...]
    structures: tuple[Structure, ...]

    @property
    def values(self) -> list[int]:
        return [s.value for s in self.structures]


@dataclass(frozen=True)
class EHRSchema:
    """EHR fields; categorical values outside `categorical[field]` map to `unknown`."""

    unknown: str
    numeric: dict[str, dict]
    categorical: dict[str, dict]

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]


def tasks() -> dict[str, Task]:
    """Every task by name (`knee`, `ankle`, `shoulder`, `mrnet`, and the public datasets'
    `fastmri`, `kneemri`, `skmtea`, `oaizib`)."""
    specs = {**_read("tasks.toml")["tasks"], **_read("datasets.toml")["tasks"]}
    return {
        name: Task(name, spec["joint"], tuple(Label(**label) for label in spec["labels"]))
        for name, spec in specs.items()
    }


def get_task(name: str) -> Task:
    known = tasks()
    if name not in known:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(known)}")
    return known[name]


def joints() -> list[str]:
    return sorted({task.joint for task in tasks().values()})


def structures(joint: str) -> StructureSet:
    table = _read("structures.toml")
    if joint not in table:
        raise KeyError(f"no segmentation structures are defined for joint {joint!r}")
    spec = table[joint]
    return StructureSet(
        joint,
        tuple(spec["mask_planes"]),
        tuple(Structure(**s) for s in spec["structures"]),
    )


@dataclass(frozen=True)
class DatasetStructure:
    """A label of a public dataset's masks and the knee structure(s) (`structures.toml`
    abbreviations, `+`-joined) its voxels are written as."""

    value: int
    abbr: str
    name: str
    knee: str


def dataset_structures(dataset: str) -> tuple[DatasetStructure, ...]:
    """The mask labels of a public dataset (`skmtea`, `oaizib`) in `datasets.toml`."""
    table = _read("datasets.toml")["structures"]
    if dataset not in table:
        raise KeyError(f"no structure set for dataset {dataset!r}; known: {', '.join(table)}")
    return tuple(DatasetStructure(**s) for s in table[dataset]["structures"])


def dataset_table(name: str) -> dict:
    """Another table of `datasets.toml` (e.g. `fastmri_plus`, the fastMRI+ label mapping)."""
    return dict(_read("datasets.toml")[name])


def ehr_schema() -> EHRSchema:
    spec = _read("ehr.toml")
    return EHRSchema(spec["unknown"], dict(spec["numeric"]), dict(spec["categorical"]))
