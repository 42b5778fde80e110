"""Segmentation evaluation as clinicians need it (the MSK foundation-model evaluation paper).

Any model's masks (a `segment predict` run, or a folder of `<series_id>.nii.gz` on the
input grids, e.g. from nnU-Net or the SAM adapter) are compared with the catalog's
reference masks: overlap and surface metrics per series and structure, aggregated series
-> subject -> dataset; biomarkers (volumes, cartilage thickness, T2) with agreement
statistics; paired model comparison; mixed-effects acquisition effects. `promptable`
drives SAM-family models from box prompts.
"""
