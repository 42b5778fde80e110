"""Heads tier: everything that reads the feature store and never runs the backbone.

- ``pooling``: GAP, GLP, SAP (reference parameter names).
- ``probe``: ``PlaneProbe`` (pooling + linear) for one (plane, timestep, block).
- ``fusion``: ``FusionHead`` (concat, linear_concat, linear_add, cross_attention, mpae).
- ``ehr``: ``EHREncoder``, the EHR head and per-label late fusion.
- ``comparators``: ``LightGBMComparator``, ``LogisticComparator`` on pooled vectors.
- ``protocol``: ``TwoStageFusion`` (``fit(X, y)`` with ``X`` a ``FusionData``) and multi-scan ``fusion_samples``.
- ``sweep``: batched GAP and SAP sweeps (``batched_sap``), ``top_configs``, heatmaps.
- ``fingerprint``: ``FingerprintClassifier``, the radiomic fingerprint head.
- ``metrics``: AUROC/AP, CP/CR/CF1, OP/OR/OF1, patient bootstrap, permutation tests.
- ``runs``: the CLI's sweep / select / fuse / compare / efficiency runs; ``report``: HTML;
  ``inputs``: a run's ``FusionData`` (the store's tree opened with the catalog) and provenance.
- ``store``: per-plane features from the tree ``orthodiff.open_store`` returns.
- ``estimator``: ``MultiLabelClassifier``, the scikit-learn contract the classifiers share.

The estimators are importable from here (``from orthodiff.heads import PlaneProbe``),
loaded on first use so that importing a submodule stays cheap. The whole-volume
estimators (``VolumeClassifier``, ``VolumeSegmenter``) run a backbone and live in
``orthodiff.supervised`` (the heads never import it, see docs/development/architecture.md).
"""

from importlib import import_module

_EXPORTS = {
    "PlaneProbe": "probe",
    "FusionHead": "fusion",
    "LogisticComparator": "comparators",
    "LightGBMComparator": "comparators",
    "TwoStageFusion": "protocol",
    "FusionData": "protocol",
    "EHREncoder": "ehr",
    "EHROnlyHead": "ehr",
    "BatchedGAPProbes": "sweep",
    "BatchedSAPProbes": "batched_sap",
    "FingerprintClassifier": "fingerprint",
    "MultiLabelClassifier": "estimator",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
