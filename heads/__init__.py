"""Heads tier: everything that reads the feature store and never runs the backbone.

- ``pooling``: GAP, GLP, SAP (reference parameter names).
- ``probe``: ``PlaneProbe`` (pooling + linear) for one (plane, timestep, block).
- ``fusion``: ``FusionHead`` (concat, linear_concat, linear_add, cross_attention, mpae).
- ``ehr``: ``EHREncoder``, the EHR head and per-label late fusion.
- ``comparators``: ``LightGBMComparator``, ``LogisticComparator`` on pooled vectors.
- ``protocol``: ``TwoStageFusion`` and multi-scan ``fusion_samples``.
- ``sweep``: batched GAP sweeps, ``top_configs``, heatmaps.
- ``metrics``: AUROC/AP, CP/CR/CF1, OP/OR/OF1, patient bootstrap, permutation tests.
- ``runs``: the CLI's sweep / select / fuse / compare / efficiency runs; ``report``: HTML.
- ``store``: per-plane features from ``orthodiff.open_store``.
"""
