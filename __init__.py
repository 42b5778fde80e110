"""orthodiff: diffusion-feature research on musculoskeletal MRI.

Tier 1 (once per backbone): ingest series, pretrain per-plane 3D diffusion U-Nets, extract
middle-block activations into a Zarr feature store. Tier 2 (many times): pooling, probes,
fusion and reports read that store lazily and never run the backbone.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("orthodiff")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"


def open_store(path, backbone=None, catalog=None, series_per_chunk: int = 64):
    """The whole store as one lazy `xarray.DataTree`: `tree["volumes"]`,
    `tree["features/<backbone id>/<plane>"]`, `tree["personas/<backbone id>/<plane>"]`,
    `tree["radiomics/<settings id>/<plane>"]` (see `orthodiff.tree.open_store`)."""
    from orthodiff.tree import open_store as _open_store

    return _open_store(path, backbone=backbone, catalog=catalog, series_per_chunk=series_per_chunk)
