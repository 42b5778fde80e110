"""Opening and creating an orthodiff store (a Zarr v3 group at a path or fsspec URL).

The root group carries `orthodiff_schema`; groups beneath it hold the ingested volumes
(`volumes`, see `featurestore.volumes`) and the features of each backbone. Metadata is
consolidated at the root only when a job finishes, so readers open a store fast while
writers always work on the real (unconsolidated) metadata.
"""

from __future__ import annotations

import warnings

import numpy as np
import zarr

from orthodiff.errors import OrthodiffError
from orthodiff.faults import fault

SCHEMA_VERSION = 1


def open_root(store: str, create: bool = False) -> zarr.Group:
    """The root group of `store` for writing; `create` makes a new store if none is there."""
    store = str(store)
    try:
        root = zarr.open_group(store, mode="r+", use_consolidated=False)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        if not create:
            raise OrthodiffError(f"{store}: not an orthodiff store (no Zarr group there)") from None
        # the schema attribute is written with the group itself, so a new root is whole or absent
        root = zarr.open_group(store, mode="a", zarr_format=3, use_consolidated=False,
                               attributes={"orthodiff_schema": SCHEMA_VERSION})
    check_schema(root, store)
    return root


def ensure_group(parent: zarr.Group, name: str, attributes: dict | None = None) -> tuple[zarr.Group, bool]:
    """`parent[name]`, created with its attributes in one write if absent; True when this call made it.

    Of several jobs creating the same group at once, each gets the group (one job's attributes)."""
    try:
        return parent.create_group(name, attributes=attributes or {}, overwrite=False), True
    except zarr.errors.ContainsGroupError:
        return parent[name], False


def ensure_arrays(group: zarr.Group, specs: dict[str, dict], point: str) -> None:
    """Create every array of `specs` (name -> `create_array` arguments) that `group` lacks.

    Each array's metadata is one object written whole, so a group is complete exactly when
    all its arrays exist: a job killed between two arrays, or one racing another job that
    creates the same group, leaves a group that this call finishes. A spec's `values` (the
    content of a constant coordinate such as ROI names) is written right after its array and
    rewritten whenever the stored content differs (a kill between the two)."""
    have = set(group.array_keys())
    for name, spec in specs.items():
        spec = dict(spec)
        values = spec.pop("values", None)
        made = name not in have
        if made:
            try:
                group.create_array(name, overwrite=False, **spec)
            except zarr.errors.ContainsArrayError:
                pass  # another job made it first: array metadata is written atomically
        if values is not None:
            values = np.asarray(values, dtype=object if spec.get("dtype") is str else spec.get("dtype"))
            stored = group[name][:]
            if stored.shape != values.shape or not (stored == values).all():
                group[name][:] = values
                made = True
        if made:
            fault(f"{point}:{name}")


def complete(group: zarr.Group, names) -> bool:
    """Whether `group` holds all the arrays `names` (else its creation was interrupted or is running)."""
    return set(names) <= set(group.array_keys())


def check_schema(root: zarr.Group, store: str) -> None:
    version = root.attrs.get("orthodiff_schema")
    if version is None:
        raise OrthodiffError(f"{store}: a Zarr group that is not an orthodiff store (no 'orthodiff_schema')")
    if version != SCHEMA_VERSION:
        raise OrthodiffError(
            f"{store}: store schema version {version}, this orthodiff reads version {SCHEMA_VERSION}"
        )


def consolidate(store: str) -> None:
    """Refresh the root's consolidated metadata (called once at the end of a writing job)."""
    with warnings.catch_warnings():  # zarr: consolidation is not in the v3 spec; non-Zarr files at the root
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        warnings.filterwarnings("ignore", message="Object at .* is not recognized", category=UserWarning)
        zarr.consolidate_metadata(str(store))
