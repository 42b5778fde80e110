"""The store: one Zarr v3 hierarchy holding preprocessed volumes and extracted features."""
