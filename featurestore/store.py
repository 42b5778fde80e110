"""Opening and creating an orthodiff store (a Zarr v3 group at a path or fsspec URL).

The root group carries `orthodiff_schema`; groups beneath it hold the ingested volumes
(`volumes`, see `featurestore.volumes`) and the features of each backbone. Metadata is
consolidated at the root only when a job finishes, so readers open a store fast while
writers always work on the real (unconsolidated) metadata.
"""

from __future__ import annotations

import warnings

import zarr

from orthodiff.errors import OrthodiffError

SCHEMA_VERSION = 1


def open_root(store: str, create: bool = False) -> zarr.Group:
    """The root group of `store` for writing; `create` makes a new store if none is there."""
    store = str(store)
    try:
        root = zarr.open_group(store, mode="r+", use_consolidated=False)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        if not create:
            raise OrthodiffError(f"{store}: not an orthodiff store (no Zarr group there)") from None
        root = zarr.open_group(store, mode="a", zarr_format=3, use_consolidated=False)
        if "orthodiff_schema" not in root.attrs:
            if len(list(root.keys())):
                raise OrthodiffError(f"{store}: a Zarr group that is not an orthodiff store")
            root.attrs["orthodiff_schema"] = SCHEMA_VERSION
    check_schema(root, store)
    return root


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
